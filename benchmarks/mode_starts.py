"""The per-subject mode search's starts: which conditional modes fewer starts miss.

The Stein closed-form fit of a simulated cohort (``--n`` subjects, the -2LL SE target of
``fit_ode.py --scale-se per-subject``) runs once; at its estimate the last importance-sampling
call runs again with the mode search anew, once per set of start offsets (``MOVES`` of
``cartkin/_estimate/modes.py``: the chain's mean with one coordinate moved to mu_ij + c IIV SDs,
beside the chain's mean and mu_i). Reported per set: the starts per subject, the seconds of the
call, the subjects given more than one mode, the -2LL (MC SE), and against the widest set the
subjects whose log-likelihood fell by more than 0.5 (a mode missed, beyond Monte Carlo noise).

First, per set, the subject of ``tests/test_fit_modes.py`` (the 5,000-subject ODE fit's chain
sat at Tmax 55 days, 35 log-likelihood units below its early mode): its log-likelihood from that
chain, three sampler seeds, against the test's independent numpy/scipy reference.

    python benchmarks/mode_starts.py [--n 5000] [--stuck-only]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import stein_sampler  # host devices and float64, before JAX starts its backend

import cartkin._estimate.modes as modes
from cartkin._estimate.importance import ISOptions

# the widest set first: the others are compared with it
SETS = {"-2,-1,+1,+2": (-2.0, -1.0, 1.0, 2.0), "-2,+2": (-2.0, 2.0), "-1.5,+1.5": (-1.5, 1.5),
        "-1,+1": (-1.0, 1.0), "none (chain mean, mu)": ()}


def stuck_subject():
    """The stuck chain's subject from each set of starts, against the reference."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import test_fit_modes as t

    from cartkin._estimate.importance import make_importance_sampler

    stat, data = t.subject.__wrapped__()
    ref, ref_se, _ = t._reference_loglik(stat)
    print(f"stuck subject {int(data.ids[0])}: reference log-likelihood {ref:.3f} (SE "
          f"{ref_se:.3f})", flush=True)
    params = {"beta": t.BETA[:, None], "omega": t.OMEGA, "log_sigma": np.log([t.SIGMA])}
    default = modes.MOVES
    for name, moves in SETS.items():
        modes.MOVES = moves
        out = []
        for seed in (3, 4, 5):
            sample = make_importance_sampler(
                stat, t.make_draws_predictor(stat), t.data_arrays(data), stat.design_matrix(data),
                t.kind_codes(stat.endpoints),
                ISOptions(target_se=0.02, max_draws=4000, mode_iterations=10, seed=seed))
            r = sample(params, t.CHAIN_MEAN[None], np.diag(t.CHAIN_SD**2)[None])
            out.append(f"{r['loglik_i'][0] - ref:+.3f} (SE {r['m2ll_se'] / 2:.3f}"
                       f"{', multimodal' if r['multimodal'][0] else ''})")
        name += " (default)" if moves == default else ""
        print(f"  {name}: seeds 3, 4, 5 against the reference: {'; '.join(out)}", flush=True)
    modes.MOVES = default


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--stuck-only", action="store_true", help="the stuck subject alone")
    args = ap.parse_args()
    stuck_subject()
    if args.stuck_only:
        return
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
        name += " (default)" if moves == default else ""
        print(f"{name}: {2 + len(moves) * len(stein_sampler.IIV)} starts, {sec:.1f} s, "
              f"{int(r['multimodal'].sum())} multimodal subjects, -2LL {r['m2ll']:.2f} "
              f"(SE {r['m2ll_se']:.2f}); log-likelihood more than 0.5 below the widest set's: "
              f"{len(worse)} subjects {data.ids[worse][:8].tolist()} "
              f"(by {np.round((base - ll)[worse][:8], 2).tolist()})", flush=True)
    modes.MOVES = default


if __name__ == "__main__":
    main()
