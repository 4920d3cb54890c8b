"""The -2LL's bias at its Monte Carlo SE target: importance sampling at one estimate, repeated over
IS seeds, against a reference with 400,000 draws per subject.

The Stein closed-form fit of the bundled-size cohort (200 subjects) runs once; at its estimate
the final -2LL pass runs again with ``--seeds`` IS seeds, as the fit runs it (draws allocated
where the estimated variance is largest, until SE <= 0.5) and with a fixed count (every subject
``--fixed`` draws, no adaptive allocation), and once with 400,000 draws per subject. The mean over
the seeds minus the reference is the bias (its SE from the seeds' spread).

    python benchmarks/m2ll_bias.py [--seeds 10] [--fixed 3500]

Results: docs/estimation.md (importance sampling, step 2).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("EQX_ON_ERROR", "nan")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={os.cpu_count()}")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from fit_ode import FORMS, IIV, INIT  # noqa: E402

import cartkin._estimate.fit as fit_module  # noqa: E402
import cartkin.data as cdata  # noqa: E402
from cartkin._estimate.config import fitdata_from_dataset  # noqa: E402
from cartkin._estimate.importance import ISOptions  # noqa: E402
from cartkin._estimate.saem import SAEMOptions  # noqa: E402
from cartkin._likelihood import Endpoint, StatModel  # noqa: E402
from cartkin._models.registry import get_model  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--fixed", type=int, default=3500, help="draws per subject, fixed count")
    args = ap.parse_args()
    stat = StatModel(get_model(FORMS["closed"]), (Endpoint("C", 1, "log_additive"),), iiv=IIV)
    ds = cdata.simulate_cohort(200, seed=2019, omega_reading="variance").dataset
    data = fitdata_from_dataset(ds, stat)
    # the fit's sampler arguments and the arguments of its last (-2LL) call
    calls = {}
    make = fit_module.make_importance_sampler

    def keep(*a, **k):
        sample = make(*a, **k)

        def recorded(*aa, **kk):
            calls["make"], calls["call"] = a[:5], (aa, kk)
            return sample(*aa, **kk)

        recorded.compile_ahead = sample.compile_ahead
        return recorded

    fit_module.make_importance_sampler = keep
    res = fit_module.fit(stat, data, init=INIT, omega_init=0.5, sigma_init=0.8,
                         saem=SAEMOptions(seed=1), progress=False)
    print(f"fit: -2LL {res.m2ll:.2f} (SE {res.m2ll_se:.2f})", flush=True)
    built, (a, k) = calls["make"], calls["call"]

    def run(options):
        t0 = time.perf_counter()
        r = make(*built, options)(*a, **k)
        return r, time.perf_counter() - t0

    ref, seconds = run(ISOptions(target_se=0.04, min_draws=400_000, max_draws=400_000))
    print(f"reference: {ref['m2ll']:.3f} (SE {ref['m2ll_se']:.3f}, {ref['draws']} draws per "
          f"subject, {seconds:.0f} s)", flush=True)
    for name, options in (("adaptive (the fit's)", lambda s: ISOptions(seed=s)),
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
