"""The Stein closed form and its ODE form fitted to one cohort with the same seeds: how far apart.

The cohort and schedule of ``tests/test_fit_ode.py`` (60 simulated subjects, BLQ with M3, SAEM
100 + 60 iterations, importance sampling to SE 1.0, one polishing step), for each pair of seeds
given, at the ODE tolerances given. Both fits draw the same random numbers, so they take the same
path until a decision (a Metropolis-Hastings acceptance, a proposal's component) goes the other
way on the small differences between the two forms' predictions; from there they differ by
their Monte Carlo error. Reported per pair: the largest relative difference of the typical values
and of the IIV SDs, the -2LL difference, the largest relative difference of the IPREDs above 1
copy/ug, and the fits' seconds.

    python benchmarks/ode_agreement.py --seeds 5:6,7:8 --rtol 1e-6 --saem-rtol 1e-4
    python benchmarks/ode_agreement.py --seeds 5:6,7:8,9:10 --rtol 1e-8 --saem-rtol 0

Results: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="5:6,7:8", help="SAEM:importance seed pairs")
    ap.add_argument("--rtol", type=float, default=1e-6, help="the fit's ODE relative tolerance")
    ap.add_argument("--atol", type=float, default=1e-9)
    ap.add_argument("--saem-rtol", type=float, default=1e-4,
                    help="SAEM's relative tolerance (0: the fit's)")
    args = ap.parse_args()

    import jax

    jax.config.update("jax_enable_x64", True)
    import cartkin.data as cdata
    from cartkin._estimate.config import fitdata_from_dataset
    from cartkin._estimate.fit import fit
    from cartkin._estimate.importance import ISOptions
    from cartkin._estimate.saem import SAEMOptions
    from cartkin._likelihood import Endpoint, SolverSettings, StatModel
    from cartkin._models import Stein2019, Stein2019ODE

    iiv = ("foldx", "Tmax", "Cmax", "alpha", "FB", "beta")
    init = {"foldx": 2000.0, "Tmax": 8.0, "Cmax": 15000.0, "alpha": 0.2, "FB": 0.01,
            "beta": 0.005}
    ds = cdata.simulate_cohort(60, seed=11, omega_reading="variance").dataset
    print(f"ODE rtol {args.rtol:g}, atol {args.atol:g}, SAEM rtol {args.saem_rtol:g}")
    for pair in args.seeds.split(","):
        s_saem, s_is = (int(x) for x in pair.split(":"))
        out, seconds = {}, {}
        for name, model, fixed in (("closed", Stein2019(), {}),
                                   ("ode", Stein2019ODE(), {"Fexp": 1.0})):
            stat = StatModel(model, (Endpoint("C", 1, "log_additive"),), iiv=iiv, fixed=fixed)
            t0 = time.perf_counter()
            out[name] = fit(stat, fitdata_from_dataset(ds, stat), init=init, omega_init=0.5,
                            sigma_init=0.8,
                            saem=SAEMOptions(k1=100, k2=60, anneal=60, block=40, seed=s_saem,
                                             rtol=args.saem_rtol),
                            importance=ISOptions(seed=s_is, target_se=1.0, max_draws=4000),
                            settings=SolverSettings(rtol=args.rtol, atol=args.atol), polish=1,
                            progress=False)
            seconds[name] = time.perf_counter() - t0
        c, o = out["closed"], out["ode"]
        typical = max(abs(o.typical()[k] / v - 1) for k, v in c.typical().items())
        sd = max(abs(o.omega_sd()[k] / v - 1) for k, v in c.omega_sd().items())
        ipc, ipo = c.sdtab["IPRED"].to_numpy(), o.sdtab["IPRED"].to_numpy()
        big = ipc > 1.0
        print(f"seeds {s_saem}:{s_is}: typical values {100 * typical:.3f}%, IIV SDs "
              f"{100 * sd:.3f}%, -2LL {o.m2ll - c.m2ll:+.3f}, IPRED "
              f"{np.max(np.abs(ipo[big] / ipc[big] - 1)):.1e} | closed {seconds['closed']:.1f} s, "
              f"ODE {seconds['ode']:.1f} s")


if __name__ == "__main__":
    main()
