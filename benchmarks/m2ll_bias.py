"""The -2LL's bias at its Monte Carlo SE target: importance sampling at one estimate, repeated over
IS seeds, against a reference with 400,000 draws per subject.

The Stein closed-form fit of the bundled-size cohort (200 subjects) runs once; at its estimate
the final -2LL pass runs again with ``--seeds`` IS seeds: as the fit runs it (rounds of one
more row of draws for every subject until SE <= 0.5), with the greedy allocation (each round's
rows where that round's variances are largest, until SE <= 0.5), with a fixed count (every
subject ``--fixed`` draws), and once with 400,000 draws per subject. The mean over
the seeds minus the reference is the bias (its SE from the seeds' spread).

    python benchmarks/m2ll_bias.py [--seeds 40] [--fixed 3500]

Ten seeds measure a bias to about 0.15 (SE), too coarse to tell these allocations apart; forty,
to about 0.09 (about 10 minutes on the 2-core CPU).

Results: docs/estimation.md (importance sampling, step 2).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import stein_sampler  # host devices and float64, before JAX starts its backend

from cartkin._estimate.importance import ISOptions


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--fixed", type=int, default=3500, help="draws per subject, fixed count")
    args = ap.parse_args()
    _, _, res, _, again = stein_sampler.fit_keeping_sampler(200, progress=False)
    print(f"fit: -2LL {res.m2ll:.2f} (SE {res.m2ll_se:.2f})", flush=True)

    def run(options):
        t0 = time.perf_counter()
        r = again(again.sampler(options))
        return r, time.perf_counter() - t0

    ref, seconds = run(ISOptions(target_se=0.04, min_draws=400_000, max_draws=400_000))
    print(f"reference: {ref['m2ll']:.3f} (SE {ref['m2ll_se']:.3f}, {ref['draws']} draws per "
          f"subject, {seconds:.0f} s)", flush=True)
    for name, options in (("equal counts (the fit's)", lambda s: ISOptions(seed=s)),
                          ("greedy", lambda s: ISOptions(seed=s, allocation="greedy")),
                          (f"fixed {args.fixed}",
                           lambda s: ISOptions(seed=s, min_draws=args.fixed, target_se=1e3))):
        values, ses, draws = [], [], []
        for seed in range(1, args.seeds + 1):
            r, _ = run(options(seed))
            values.append(r["m2ll"])
            ses.append(r["m2ll_se"])
            draws.append(r["draws"])
        values = np.asarray(values)
        se_mean = values.std(ddof=1) / np.sqrt(len(values))
        print(f"{name}: mean {values.mean():.3f}, bias {values.mean() - ref['m2ll']:+.3f} "
              f"(SE {np.hypot(se_mean, ref['m2ll_se']):.3f}); SD over seeds "
              f"{values.std(ddof=1):.3f}, reported SE {np.mean(ses):.3f}, draws per subject "
              f"{np.mean(draws):.0f}", flush=True)


if __name__ == "__main__":
    main()
