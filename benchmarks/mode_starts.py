"""The per-subject mode search's starts: which conditional modes fewer starts miss.

The Stein closed-form fit of a simulated cohort (``--n`` subjects, the -2LL SE target of
``fit_ode.py --scale-se per-subject``) runs once; at its estimate the last importance-sampling
call runs again with the mode search anew, once per set of start offsets (``MOVES`` of
``cartkin/_estimate/modes.py``: the chain's mean with one coordinate moved to mu_ij + c IIV SDs,
beside the chain's mean and mu_i). Reported per set: the starts per subject, the seconds of the
call, the subjects given more than one mode, the -2LL (MC SE), and against the default set the
subjects whose log-likelihood fell by more than 0.5 (a mode missed, beyond Monte Carlo noise).

    python benchmarks/mode_starts.py [--n 5000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import stein_sampler  # host devices and float64, before JAX starts its backend

import cartkin._estimate.modes as modes
from cartkin._estimate.importance import ISOptions

SETS = {"-2,-1,+1,+2 (default)": (-2.0, -1.0, 1.0, 2.0), "-2,+2": (-2.0, 2.0),
        "-1.5,+1.5": (-1.5, 1.5), "none (chain mean, mu)": ()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    args = ap.parse_args()
    target = 0.5 * (args.n / 200) ** 0.5
    _, data, res, _, again = stein_sampler.fit_keeping_sampler(
        args.n, progress=False, importance=ISOptions(target_se=target))
    a, k = again.call
    k = dict(k, modes=None)  # the search anew
    default = modes.MOVES
    base = None
    for name, moves in SETS.items():
        modes.MOVES = moves
        sample = again.sampler(ISOptions(target_se=target))
        t0 = time.perf_counter()
        r = sample(*a, **k)
        sec = time.perf_counter() - t0
        ll = r["loglik_i"]
        base = ll if base is None else base
        worse = np.flatnonzero(ll < base - 0.5)
        print(f"{name}: {2 + len(moves) * len(stein_sampler.IIV)} starts, {sec:.1f} s, "
              f"{int(r['multimodal'].sum())} multimodal subjects, -2LL {r['m2ll']:.2f} "
              f"(SE {r['m2ll_se']:.2f}); log-likelihood more than 0.5 below the default's: "
              f"{len(worse)} subjects {data.ids[worse][:8].tolist()} "
              f"(by {np.round((base - ll)[worse][:8], 2).tolist()})", flush=True)
    modes.MOVES = default


if __name__ == "__main__":
    main()
