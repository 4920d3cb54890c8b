"""Trial 3: a combination drug against MDSC in a suppressive solid tumour (the Huangqin what-if).

HYPOTHETICAL. A seed document claims that adding Huangqin (Scutellaria baicalensis; MDSC-
inhibiting) raised tumour regression from 40% to 65% in lung-cancer models with CAR-T; no source
was found for it (literature notes: [unverified]). We do not model Huangqin: we ask what an
MDSC-inhibiting drug would have to do for the claim to hold in a virtual population.

Model: :class:`~cartkin._models.mdsc.MDSCSuppression` (a construction on the published León-
Triana 2021 solid-tumour model, MDSC form of Anderson et al.). Steps:

1. calibrate: scale the MDSC suppression ``r`` of every patient by one factor so that, under CAR-T
   alone, P(regression) = ``baseline`` (40%);
2. for each mechanism (the drug lowers MDSC recruitment, or suppression, or both; or lowers
   suppression while also harming CAR-T proliferation; or also damps IL-6), sweep the drug's
   effect size ``e`` (fraction at the reference exposure) and find the ``e`` at which
   P(regression) reaches ``target`` (65%), with a 90% interval from a bootstrap over virtual
   patients (Monte Carlo uncertainty only: the structural assumptions dominate and are not in it);
3. read P(CRS >= 3) (the assumed link) and the peak IL-6 at that ``e``.

Regression (ASSUMED): tumour volume at ``regression_day`` at most ``regression_fraction`` of the
volume at infusion.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._models.mdsc import MDSCSuppression
from .._regimen import Regimen
from . import common

MODEL = MDSCSuppression()
OPTIONS = {
    "days": 56.0,
    "step": 1.0,
    "dose": 2.5e8,
    "regression_day": 56.0,
    "regression_fraction": 0.5,
    "baseline": 0.40,
    "target": 0.65,
    "sensitivity_targets": (0.60, 0.70),
    "calibration_scales": (1.0, 4.0, 16.0, 32.0, 48.0, 64.0, 96.0, 128.0, 256.0),
    "effects": (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
    "mechanisms": (
        "recruitment",
        "suppression",
        "both",
        "suppression, CAR-T harmed",
        "suppression, IL-6 damped",
    ),
    "car_harm": -0.2,
    "il6_damping": 0.3,
    "bootstrap": 400.0,
}


def _mechanism(name: str, e: float, opt) -> dict:
    table = {
        "recruitment": {"e_rec": e},
        "suppression": {"e_sup": e},
        "both": {"e_rec": e, "e_sup": e},
        "suppression, CAR-T harmed": {"e_sup": e, "e_car": opt["car_harm"]},
        "suppression, IL-6 damped": {"e_sup": e, "e_il6": opt["il6_damping"]},
    }
    if name not in table:
        raise ValueError(f"unknown mechanism {name!r}; choose from {list(table)}")
    return table[name]


def run(cfg, *, progress=False) -> common.ScenarioResult:
    opt = cfg.options
    for name in opt["mechanisms"]:
        _mechanism(name, 0.0, opt)
    times = np.arange(0.0, opt["days"] + 0.5 * opt["step"], opt["step"])
    i_reg = int(np.searchsorted(times, opt["regression_day"]))
    theta = common.sample(MODEL, cfg.typical, cfg.omega, cfg.patients, cfg.seed)
    link = common.CRSLink(float(cfg.crs.get("slope", 1.0)), float(cfg.crs.get("il6_50", 1000.0)))
    reg = Regimen.single(opt["dose"])

    def outcome(th):
        res = common.run_sim(MODEL, th, times, reg, progress=progress)
        tum = common.extinct_after(res.outputs["tumour"])
        regress = tum[:, i_reg] <= opt["regression_fraction"] * np.asarray(th["T0"])
        return regress.astype(float), res.outputs["IL6"].max(axis=1)

    # 1. calibration of the suppression scale to the baseline regression rate
    scales = np.asarray(opt["calibration_scales"], float)
    p_cal = np.array(
        [outcome(common.with_values(theta, r_x=s, drug=0.0))[0].mean() for s in scales]
    )
    order = np.argsort(-p_cal, kind="stable")  # P(regression) falls as suppression grows
    if not (p_cal.min() <= opt["baseline"] <= p_cal.max()):
        raise ValueError(
            f"{cfg.source}: P(regression) ranges over {p_cal.min():.2f}-{p_cal.max():.2f} on the "
            f"calibration scales; widen options.calibration_scales to bracket {opt['baseline']}"
        )
    log_s = float(np.interp(-opt["baseline"], -p_cal[order], np.log(scales[order])))
    for _ in range(2):  # refine: add the interpolated scale to the grid and interpolate again
        scales = np.append(scales, np.exp(log_s))
        p_cal = np.append(p_cal, outcome(common.with_values(theta, r_x=scales[-1]))[0].mean())
        order = np.lexsort((scales, -p_cal))
        log_s = float(np.interp(-opt["baseline"], -p_cal[order], np.log(scales[order])))
    scale = float(np.exp(log_s))
    base = common.with_values(theta, r_x=scale)
    calib = pd.DataFrame({"r_scale": scales, "p_regression": p_cal}).sort_values("r_scale")

    # 2. effect sweeps
    effects = np.asarray(opt["effects"], float)
    rng = np.random.default_rng(cfg.seed)
    nb = int(opt["bootstrap"])
    boot_idx = rng.integers(0, cfg.patients, size=(nb, cfg.patients))
    curves, rows = [], []
    reg0, il60 = outcome(common.with_values(base, drug=0.0))
    p0 = reg0.mean()
    for mech in opt["mechanisms"]:
        R, IL = [], []
        for e in effects:
            r, il6 = outcome(common.with_values(base, drug=1.0, **_mechanism(mech, e, opt)))
            R.append(r)
            IL.append(il6)
        R, IL = np.array(R), np.array(IL)  # (E, N)
        p = R.mean(axis=1)
        crs = link.risk(IL).mean(axis=1)
        for k, e in enumerate(effects):
            curves.append(
                {
                    "mechanism": mech,
                    "effect": e,
                    "p_regression": p[k],
                    "p_crs3": crs[k],
                    "peak_il6_median": float(np.median(IL[k])),
                }
            )
        e_star = common.interp_crossing(effects, p, opt["target"])
        boots = np.array(
            [common.interp_crossing(effects, R[:, b].mean(axis=1), opt["target"]) for b in boot_idx]
        )
        reached = np.isfinite(boots)
        lo, hi = np.quantile(boots[reached], [0.05, 0.95]) if reached.any() else (np.nan, np.nan)
        row = {
            "mechanism": mech,
            "target": opt["target"],
            "effect_needed": e_star,
            "effect_needed_lo90": float(lo),
            "effect_needed_hi90": float(hi),
            "bootstrap_share_reaching_target": float(reached.mean()),
        }
        for t in opt["sensitivity_targets"]:
            row[f"effect_needed_for_{round(100 * t)}pct"] = common.interp_crossing(effects, p, t)
        row["p_regression_at_max_effect"] = float(p[-1])
        row["p_crs3_cart_alone"] = float(link.risk(il60).mean())
        row["p_crs3_at_effect_needed"] = (
            float(np.interp(e_star, effects, crs)) if np.isfinite(e_star) else np.nan
        )
        row["peak_il6_median_cart_alone"] = float(np.median(il60))
        row["peak_il6_median_at_effect_needed"] = (
            float(np.interp(e_star, effects, np.median(IL, axis=1)))
            if np.isfinite(e_star)
            else np.nan
        )
        row["status"] = "HYPOTHETICAL what-if, not a validated effect"
        rows.append(row)
    table = pd.DataFrame(rows)
    curves = pd.DataFrame(curves)

    def plot(path):
        plt = common.plt()
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4.4))
        for mech, g in curves.groupby("mechanism", sort=False):
            ax.plot(g["effect"], 100 * g["p_regression"], "o-", ms=3, label=mech)
            bx.plot(g["effect"], 100 * g["p_crs3"], "o-", ms=3, label=mech)
        ax.axhline(100 * opt["baseline"], color="grey", ls=":", lw=1)
        ax.axhline(100 * opt["target"], color="k", ls="--", lw=1, label="claimed 65%")
        ax.set_xlabel("drug effect size e (fraction at reference exposure)")
        ax.set_ylabel("P(regression), %")
        ax.legend(fontsize=7)
        bx.set_xlabel("drug effect size e")
        bx.set_ylabel("P(CRS >= 3), % (assumed link)")
        fig.suptitle(
            "HYPOTHETICAL WHAT-IF (not a validated effect): "
            + cfg.title
            + f" (N={cfg.patients}, seed {cfg.seed})",
            fontsize=8,
            color="darkred",
        )
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    summary = [
        f"calibration: MDSC suppression r x {scale:.3g} gives P(regression) under CAR-T alone "
        f"= {100 * p0:.1f}% (target {100 * opt['baseline']:.0f}%)",
    ]
    for _, r in table.iterrows():
        if np.isfinite(r["effect_needed"]):
            summary.append(
                f"{r['mechanism']}: effect needed for {100 * opt['target']:.0f}% regression "
                f"e = {r['effect_needed']:.2f} [90%: {r['effect_needed_lo90']:.2f}, "
                f"{r['effect_needed_hi90']:.2f}]; P(CRS>=3) {100 * r['p_crs3_cart_alone']:.1f}% -> "
                f"{100 * r['p_crs3_at_effect_needed']:.1f}%"
            )
        else:
            summary.append(
                f"{r['mechanism']}: {100 * opt['target']:.0f}% regression not reached even at "
                f"e = {effects[-1]:g} (P = {100 * r['p_regression_at_max_effect']:.1f}%)"
            )
    record = {
        "crs_link": vars(link),
        "r_scale": scale,
        "p_regression_cart_alone": p0,
        "hypothetical": True,
    }
    return common.ScenarioResult(
        table,
        plot,
        tuple(summary),
        record,
        extra_tables={"curves": curves, "calibration": calib},
        notice=common.HYPOTHETICAL,
    )
