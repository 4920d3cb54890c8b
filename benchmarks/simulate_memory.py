"""Peak memory and wall time of one ``cartkin.simulate`` call of N Hardiansyah patients whose
parameters are one value each except two (rE and dE vary), over a short horizon so that the solve
is small and the population's handling shows.

    python benchmarks/simulate_memory.py [N] [label] [arrays]

With ``arrays`` every parameter is passed as an array of N values (as ``Population.sample``
returns them).

Run it at two commits (a git worktree on PYTHONPATH) to compare; each run is its own process, so
each peak is its own call's.
"""

from __future__ import annotations

import resource
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import cartkin as ck  # noqa: E402
from cartkin._models import Hardiansyah2019  # noqa: E402


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    label = sys.argv[2] if len(sys.argv) > 2 else ""
    m = Hardiansyah2019()
    rng = np.random.default_rng(0)
    th = m.default_theta()
    th = dict(th, rE=th["rE"] * np.exp(0.2 * rng.normal(size=n)),
              dE=th["dE"] * np.exp(0.3 * rng.normal(size=n)))
    times = np.array([0.0, 0.01])
    if len(sys.argv) > 3 and sys.argv[3] == "arrays":  # every parameter an array of N
        th = {k: np.broadcast_to(v, (n,)).copy() for k, v in th.items()}
    kw = dict(progress=False, chunk_size=1 << 16)
    small = {k: (v[:1000] if np.ndim(v) else v) for k, v in th.items()}
    ck.simulate(m, small, times, m.regimen(), **kw)  # compiles
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    ck.simulate(m, th, times, m.regimen(), **kw)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{label} N={n:,}: {wall:.2f} s; peak RSS {peak / 1024:.0f} MB, "
          f"{(peak - before) / 1024:.0f} MB above the process before the call")


if __name__ == "__main__":
    main()
