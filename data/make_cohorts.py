"""Regenerate the simulated cohorts bundled in data/ (run from anywhere: ``python
data/make_cohorts.py``). Each cohort's sidecar records the exact call under
``simulation.call``; the test suite checks that the bundled files match it."""

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cartkin.data import simulate_cohort

HERE = Path(__file__).resolve().parent

COHORTS = {
    # 200 subjects from Stein 2019 (random effects read as variances), the realistic schedule
    # with visit windows, residual SD 0.56 on the ln scale, qPCR LLOQ 50 copies/ug (assumed)
    "stein2019_sim200": dict(n=200, seed=2019),
}


# A stiff ODE model's cohort for the fit of issue "ODE fits": Hardiansyah 2019 with UPN1's
# published parameters as typical values and between-patient variability (ASSUMED: variances on
# the log scale) on effector expansion, B-cell killing, IL-6 production and the baseline burden;
# the published 10/30/60% split infusion of 1.1e9 cells; CAR-T (cells/uL, blood volume 5 L as in
# the model), IL-6 (pg/mL) and CLL B cells in blood (1e9 cells) sampled like a trial; ln-scale
# residual SD 0.3 (ASSUMED); LLOQs 0.5 cells/uL, 2 pg/mL and 0.05e9 cells (ASSUMED). Without the
# B-cell counts the baseline burden B0 is not identified apart from rE and P_IL6 (measured: the
# fit slid along rE x B0 and P_IL6 x B0).
HARDIANSYAH = dict(
    name="hardiansyah2019_sim40", n=40, seed=2019,
    omega={"rE": 0.04, "KBC": 0.09, "P_IL6": 0.25, "B0": 0.5},
    days=(1, 2, 3, 5, 7, 10, 14, 21, 28, 60, 90), residual_sd=0.3,
    lloq={"CART_pb_conc": 0.5, "IL6": 2.0, "B": 0.05},
)


def hardiansyah_cohort(name, n, seed, omega, days, residual_sd, lloq):
    """Simulate the cohort (batched Rosenbrock solver at rtol 1e-10) and write CSV + sidecar."""
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    from cartkin._batched import solve_batch
    from cartkin._models import Hardiansyah2019

    model = Hardiansyah2019()
    theta0 = model.patient("UPN1")
    rng = np.random.default_rng(seed)
    eta = {k: rng.normal(0.0, np.sqrt(v), n) for k, v in omega.items()}
    theta = {k: jnp.full(n, float(v)) for k, v in theta0.items()}
    for k, e in eta.items():
        theta[k] = theta[k] * jnp.exp(e)
    total, fractions, dose_days = 1.1e9, (0.1, 0.3, 0.6), (0.0, 1.0, 2.0)
    ev_time = jnp.tile(jnp.asarray(dose_days), (n, 1))
    ev_dose = jnp.tile(total * jnp.asarray(fractions), (n, 1))
    ev_eff = jnp.zeros((n, 3, len(model.parameters)))
    times = jnp.asarray(days, float)
    _, out, status = solve_batch(model, theta, times, ev_time, ev_dose, ev_eff, rtol=1e-10,
                                 atol=1e-12, max_steps=100_000)
    assert bool(jnp.all(status == 0)), "every virtual patient must solve"
    rows = []
    for i in range(n):
        for t, amt in zip(dose_days, total * np.asarray(fractions)):
            rows.append(dict(ID=i + 1, TIME=t, DV=".", AMT=f"{amt:.6g}", EVID=1, MDV=1, CMT=1,
                             CENS=0, DVID="."))
        for dvid, output in ((1, "CART_pb_conc"), (2, "IL6"), (3, "B")):
            f = np.asarray(out[output][i])
            y = f * np.exp(rng.normal(0.0, residual_sd, f.shape))
            for t, v in zip(days, y):
                cens = int(v < lloq[output])
                rows.append(dict(ID=i + 1, TIME=t, DV=f"{(lloq[output] if cens else v):.4g}",
                                 AMT=".", EVID=0, MDV=0, CMT=1, CENS=cens, DVID=dvid))
    df = pd.DataFrame(rows).sort_values(["ID", "TIME", "EVID"], ascending=[True, True, False],
                                        kind="stable")
    df.to_csv(HERE / f"{name}.csv", index=False, lineterminator="\n")
    obs = df[df.EVID == 0]
    truth = pd.DataFrame({"ID": np.arange(1, n + 1),
                          **{k: np.asarray(theta[k]) for k in omega}})
    truth.to_csv(HERE / f"{name}_truth.csv", index=False, lineterminator="\n")
    citation = ("simulated from Hardiansyah D, Ng CM. Quantitative systems pharmacology model of "
                "chimeric antigen receptor T-cell therapy. Clin Transl Sci 2019;12(4):343-349")
    meta = {
        "name": name, "kind": "nonmem",
        "title": f"Simulated cohort of {n} CLL patients from Hardiansyah 2019 (UPN1 typical "
                 "values): CAR-T cells/uL, IL-6 and CLL B cells with LLOQ censoring",
        "description": "SIMULATED data with known truth, for fitting a stiff ODE model (the "
                       "between-patient variances, residual SD and LLOQs are assumptions); the "
                       f"subjects' true parameters are in {name}_truth.",
        "status": "simulated",
        "source": {"citation": citation, "doi": "10.1111/cts.12636",
                   "how_obtained": "python data/make_cohorts.py (hardiansyah_cohort)"},
        "columns": {
            "ID": {"description": "subject"},
            "TIME": {"unit": "d", "description": "time after the first infusion"},
            "DV": {"description": "observation (unit per DVID); on CENS=1 records the LLOQ"},
            "AMT": {"unit": "cells", "description": "CAR-T cells infused (10/30/60% on days 0-2)"},
            "EVID": {}, "MDV": {}, "CMT": {},
            "CENS": {"description": "1: below the LLOQ (DV = LLOQ)"},
            "DVID": {},
        },
        "endpoints": {
            "1": {"name": "CART_pb_conc", "unit": "cells/uL", "lloq": lloq["CART_pb_conc"],
                  "log_scale": True, "description": "total CAR-T cells in blood"},
            "2": {"name": "IL6", "unit": "pg/mL", "lloq": lloq["IL6"], "log_scale": True,
                  "description": "serum IL-6"},
            "3": {"name": "B", "unit": "1e9 cells", "lloq": lloq["B"], "log_scale": True,
                  "description": "CLL B cells in blood"},
        },
        "simulation": {
            "simulated": True, "generator": "data/make_cohorts.py:hardiansyah_cohort",
            "call": {"n": n, "seed": seed, "omega": omega, "days": list(days),
                     "residual_sd": residual_sd, "lloq": lloq},
            "model": "Hardiansyah2019 (UPN1 parameters, Table S1-S2)",
            "blq_fraction": {str(k): float(g.CENS.mean()) for k, g in obs.groupby("DVID")},
        },
    }
    (HERE / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    tmeta = {
        "name": f"{name}_truth", "kind": "table",
        "title": f"True individual parameters of {name}",
        "description": "the parameters each simulated subject was drawn with",
        "status": "simulated",
        "source": {"citation": citation, "doi": "10.1111/cts.12636",
                   "how_obtained": "python data/make_cohorts.py (hardiansyah_cohort)"},
        "columns": {"ID": {"description": "subject"},
                    **{k: {"description": f"true {k} of the subject"} for k in omega}},
    }
    (HERE / f"{name}_truth.json").write_text(json.dumps(tmeta, indent=2) + "\n")
    return HERE / f"{name}.csv"


def main() -> None:
    for name, kwargs in COHORTS.items():
        path = simulate_cohort(name=name, **kwargs).write(HERE / f"{name}.csv")
        print(f"wrote {path}")
    print(f"wrote {hardiansyah_cohort(**HARDIANSYAH)}")


if __name__ == "__main__":
    main()
