"""Replicate recovery study of the population fit (closed-form Stein 2019).

R cohorts simulated with known truth (realistic schedule, BLQ at 50 copies/ug), each fitted by
SAEM + importance sampling twice: with the M3 likelihood for the BLQ records, and with the BLQ
records discarded (what M3 replaces). Per parameter and method: relative bias, relative RMSE and
the coverage of the 95% CI (target 90-98%). Results are printed and written to docs/recovery.md,
the per-replicate estimates to docs/recovery_replicates.csv.

    python benchmarks/recovery_study.py --replicates 50 --subjects 150
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

OMEGA = {"foldx": 0.3, "Tmax": 0.05, "Cmax": 0.3, "alpha": 0.2, "FB": 0.3, "beta": 0.2}
TRUTH = {"foldx": 3900.0, "Tmax": 9.3, "Cmax": 24000.0, "alpha": 0.16, "FB": 0.0079, "beta": 0.0032}


def one(rep, n, discard_blq=False):
    import cartkin.data as cdata
    from cartkin._estimate.config import fitdata_from_dataset
    from cartkin._estimate.fit import fit
    from cartkin._estimate.importance import ISOptions
    from cartkin._estimate.saem import SAEMOptions
    from cartkin._likelihood import Endpoint, StatModel
    from cartkin._models import Stein2019

    cohort = cdata.simulate_cohort(n, seed=10_000 + rep, omega=OMEGA)
    stat = StatModel(Stein2019(), (Endpoint("C"),), iiv=tuple(TRUTH))
    data = fitdata_from_dataset(cohort.dataset, stat)
    if discard_blq:
        import dataclasses

        data = dataclasses.replace(data, mask=data.mask & (data.cens != 1))
    init = {k: v * f for (k, v), f in zip(TRUTH.items(), (0.5, 0.85, 0.6, 1.3, 1.3, 1.5))}
    res = fit(stat, data, init=init, omega_init=0.5, sigma_init=0.8, saem=SAEMOptions(seed=rep),
              importance=ISOptions(seed=rep + 1, target_se=1.0, max_draws=4000), progress=False)
    rows = []
    t = res.parameters.set_index("parameter")
    truth = {**TRUTH, **{f"omega2({k})": v for k, v in OMEGA.items()},
             "sigma(C, log_additive)": 0.56}
    for name, true in truth.items():
        r = t.loc[name]
        rows.append({"replicate": rep, "method": "discard BLQ" if discard_blq else "M3",
                     "parameter": name, "true": true, "estimate": r["estimate"],
                     "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                     "converged": res.convergence["converged"]})
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicates", type=int, default=50)
    ap.add_argument("--subjects", type=int, default=150)
    ap.add_argument("--out", default="docs/recovery.md")
    args = ap.parse_args()
    import jax

    # the same programs for every replicate: compile once (persistent cache, keyed on the program)
    jax.config.update("jax_compilation_cache_dir", "/tmp/cartkin-recovery-cache")
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    t0 = time.perf_counter()
    rows = []
    for rep in range(args.replicates):
        rows += one(rep, args.subjects)
        rows += one(rep, args.subjects, discard_blq=True)
        print(f"replicate {rep + 1}/{args.replicates} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    df = pd.DataFrame(rows)
    df["rel_err"] = df["estimate"] / df["true"] - 1
    df["covered"] = (df["ci_low"] <= df["true"]) & (df["true"] <= df["ci_high"])
    df.to_csv(Path(args.out).with_name("recovery_replicates.csv"), index=False)
    summ = df.groupby(["parameter", "method"], sort=False).agg(
        bias_pct=("rel_err", lambda x: 100 * x.mean()),
        rmse_pct=("rel_err", lambda x: 100 * np.sqrt((x**2).mean())),
        coverage_pct=("covered", lambda x: 100 * x.mean()),
    )
    conv = 100 * df[df["method"] == "M3"].groupby("replicate")["converged"].first().mean()
    text = (f"# Recovery study\n\n{args.replicates} cohorts of {args.subjects} subjects simulated "
            f"from Stein 2019 (typical values as published; IIV variances {OMEGA}; residual SD "
            f"0.56 on ln scale; LLOQ 50 copies/ug, M3), fitted by `cartkin.fit` (SAEM + "
            f"importance sampling), once with M3 for the BLQ records and once with them "
            f"discarded. Wall time {time.perf_counter() - t0:.0f} s. Converged "
            f"(Newton decrement < 0.5): {conv:.0f}% of the M3 fits.\n\n"
            f"```\n{summ.round(1).to_string()}\n```\n\nProduced by `python benchmarks/recovery_study.py "
            f"--replicates {args.replicates} --subjects {args.subjects}`.\n")
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
