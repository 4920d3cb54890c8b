"""Population-fit benchmarks (issues: population fit, ODE fits).

Side by side in one process: the Stein closed-form fit and the Stein ODE-form fit of the same
simulated 200 x 12 cohort, wall time with SAEM, importance sampling (-2LL, SEs) and sdtab shown
separately; then cost against the number of subjects. Compilation is included in the first
fit of each kind (cold); run twice with CARTKIN_CACHE and EQX_ON_ERROR=nan for a warm
persistent cache.

    python benchmarks/fit.py                 # 200 subjects, closed form and ODE
    python benchmarks/fit.py --scale 50,200,1000,5000

Results: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time

import numpy as np


def cohort(n, seed=2019):
    import cartkin.data as cdata

    return cdata.simulate_cohort(n, seed=seed, omega_reading="variance").dataset


def one_fit(model_name, ds, seed=1):
    from cartkin._estimate.config import fitdata_from_dataset
    from cartkin._estimate.fit import fit
    from cartkin._estimate.saem import SAEMOptions
    from cartkin._likelihood import Endpoint, StatModel
    from cartkin._models.registry import get_model

    model = get_model(model_name)
    iiv = ("foldx", "Tmax", "Cmax", "alpha", "FB", "beta")
    fixed = {"Fexp": 1.0} if "Fexp" in model.parameters else {}
    stat = StatModel(model, (Endpoint("C", 1, "log_additive"),), iiv=iiv, fixed=fixed)
    data = fitdata_from_dataset(ds, stat)
    init = {"foldx": 2000.0, "Tmax": 8.0, "Cmax": 15000.0, "alpha": 0.2, "FB": 0.01, "beta": 0.005}
    t0 = time.perf_counter()
    res = fit(stat, data, init=init, omega_init=0.5, sigma_init=0.8, saem=SAEMOptions(seed=seed),
              progress=False)
    return res, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", default="", help="comma-separated subject counts (closed form + ODE)")
    args = ap.parse_args()
    import jax

    load = os.getloadavg()[0]
    cpu = subprocess.run(["bash", "-c", "lscpu | grep 'Model name' | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip()
    print(f"machine: {platform.machine()} {cpu}, {os.cpu_count()} cores, load {load:.1f}; "
          f"jax {jax.__version__}, backend {jax.default_backend()}")
    ds = cohort(200)
    rows = []
    for name in ("stein2019", "stein2019ode"):
        res, wall = one_fit(name, ds)
        t = res.timings
        tv = res.typical()
        rows.append((name, wall, t["saem_s"], t["importance_s"], res.m2ll, res.m2ll_se,
                     res.convergence["newton_decrement"], tv, res.omega_sd()))
        print(f"{name:13s} total {wall:6.1f} s | SAEM {t['saem_s']:6.1f} s | -2LL+SE step "
              f"{t['importance_s']:6.1f} s | -2LL {res.m2ll:9.2f} (MC SE {res.m2ll_se:.2f}) | "
              f"decrement {res.convergence['newton_decrement']:.3f}", flush=True)
    (_, _, _, _, l1, _, _, tv1, om1), (_, _, _, _, l2, _, _, tv2, om2) = rows
    print("ODE vs closed form: typical values (ratio):",
          {k: round(tv2[k] / tv1[k], 4) for k in tv1})
    print("ODE vs closed form: IIV SDs (ratio):", {k: round(om2[k] / om1[k], 4) for k in om1})
    print(f"ODE vs closed form: -2LL difference {l2 - l1:+.2f}")
    if args.scale:
        for n in [int(x) for x in args.scale.split(",")]:
            ds_n = cohort(n)
            for name in ("stein2019", "stein2019ode"):
                res, wall = one_fit(name, ds_n)
                print(f"N={n:6d} {name:13s} total {wall:7.1f} s ({wall / n * 1000:.1f} ms/subject); "
                      f"SAEM {res.timings['saem_s']:.1f} s, -2LL step {res.timings['importance_s']:.1f} s",
                      flush=True)
    print(f"load at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
