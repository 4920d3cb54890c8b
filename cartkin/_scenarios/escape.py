"""Trial 1: single- vs dual-target CAR in B-ALL with pre-existing and acquired antigen loss.

Model: :class:`~cartkin._models.antigen_escape.AntigenEscapeBALL` (a construction on the
published León-Triana 2021 B-ALL model). The same virtual patients receive either CAR (``dual`` =
0 or 1: common random numbers, so the difference is the CAR's alone).

Endpoints (thresholds ASSUMED, relative to the patient's leukaemia at infusion ``L0``, taken as
~100% marrow blasts): complete remission (CR) = total leukaemia below ``cr_fraction`` x L0 (5%
blasts) at day ``cr_day``; MRD-negative = below ``mrd_fraction`` x L0 (1e-4); relapse = after CR,
total leukaemia back above ``cr_fraction`` x L0 by ``days``; antigen-negative relapse = a relapse
in which the cells lacking the CAR's first antigen outnumber the antigen-positive ones. A
compartment falling below one cell is extinct (:func:`~cartkin._scenarios.common.extinct_after`).
CRS: the assumed link on the peak IL-6, its ``il6_50`` calibrated so that the single-target arm
has P(CRS >= 3) = 26% (Park et al. 2018 *N Engl J Med*, 19-28z CAR in adult B-ALL, MSKCC
grading, 95% CI 15-40%; ``crs_rates.csv``, verified).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._models.antigen_escape import AntigenEscapeBALL
from .._regimen import Regimen
from . import common

MODEL = AntigenEscapeBALL()
OPTIONS = {
    "days": 365.0,
    "step": 1.0,
    "dose": 1e7,
    "cr_day": 28.0,
    "cr_fraction": 0.05,
    "mrd_fraction": 1e-4,
    "arms": ("single-target", "dual-target"),
    "dual": (0.0, 1.0),
}


def endpoints(res, theta, times, opt) -> pd.DataFrame:
    """Per-patient endpoints of one arm."""
    o = res.outputs
    lp = common.extinct_after(o["Lpos"])
    ln = common.extinct_after(o["Lneg"], feeders=[lp])
    lnn = common.extinct_after(o["Lnegneg"], feeders=[ln])
    total = lp + ln + lnn
    L0 = np.asarray(theta["L0"])[:, None]
    i_cr = int(np.searchsorted(times, opt["cr_day"]))
    cr = total[:, i_cr] < opt["cr_fraction"] * L0[:, 0]
    mrd = total[:, i_cr] < opt["mrd_fraction"] * L0[:, 0]
    after = times[None, :] > opt["cr_day"]
    relapse_mask = after & (total > opt["cr_fraction"] * L0)
    t_rel = common.first_time(relapse_mask, times)
    relapse = cr & np.isfinite(t_rel)
    idx = np.clip(
        np.searchsorted(times, np.where(np.isfinite(t_rel), t_rel, times[-1])), 0, len(times) - 1
    )
    rows = np.arange(len(total))
    neg = (ln + lnn)[rows, idx] > lp[rows, idx]
    peak_il6 = o["IL6"].max(axis=1)
    return pd.DataFrame(
        {
            "cr": cr,
            "mrd_negative": mrd,
            "relapse": relapse,
            "relapse_day": np.where(relapse, t_rel, np.nan),
            "antigen_negative_relapse": relapse & neg,
            "antigen_positive_relapse": relapse & ~neg,
            "event_free_12m": cr & ~relapse,
            "peak_il6": peak_il6,
            "peak_cart": o["CART"].max(axis=1),
        }
    )


def run(cfg, *, progress=False) -> common.ScenarioResult:
    opt = cfg.options
    if len(opt["arms"]) != len(opt["dual"]):
        raise ValueError(f"{cfg.source}: options.arms and options.dual must have equal length")
    times = np.arange(0.0, opt["days"] + 0.5 * opt["step"], opt["step"])
    theta = common.sample(MODEL, cfg.typical, cfg.omega, cfg.patients, cfg.seed)
    reg = Regimen.single(opt["dose"])
    per_arm = {}
    for arm, d in zip(opt["arms"], opt["dual"], strict=True):
        th = common.with_values(theta, dual=d)
        res = common.run_sim(MODEL, th, times, reg, progress=progress)
        per_arm[arm] = endpoints(res, th, times, opt)
    slope = float(cfg.crs.get("slope", 1.0))
    ref = opt["arms"][0]
    if "calibrate" in cfg.crs:
        il6_50 = common.calibrate_il6_50(
            per_arm[ref]["peak_il6"].to_numpy(), float(cfg.crs["calibrate"]), slope
        )
    else:
        il6_50 = float(cfg.crs.get("il6_50", 1000.0))
    link = common.CRSLink(slope, il6_50)
    rng = np.random.default_rng(cfg.seed)
    rows = []
    for arm, ep in per_arm.items():
        row = {"arm": arm, "patients": len(ep)}
        for col in (
            "cr",
            "mrd_negative",
            "relapse",
            "antigen_negative_relapse",
            "antigen_positive_relapse",
            "event_free_12m",
        ):
            p, lo, hi = common.interval(ep[col].to_numpy(float), rng)
            row.update({f"p_{col}": p, f"p_{col}_lo90": lo, f"p_{col}_hi90": hi})
        risk = link.risk(ep["peak_il6"].to_numpy())
        p, lo, hi = common.interval(risk, rng)
        row.update({"p_crs3": p, "p_crs3_lo90": lo, "p_crs3_hi90": hi})
        q = np.quantile(ep["peak_il6"], [0.05, 0.5, 0.95])
        row.update({"peak_il6_p05": q[0], "peak_il6_median": q[1], "peak_il6_p95": q[2]})
        row["peak_cart_median"] = float(np.median(ep["peak_cart"]))
        rows.append(row)
    table = pd.DataFrame(rows)
    table["crs_il6_50"] = il6_50
    table["crs_slope"] = slope

    def plot(path):
        plt = common.plt()
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.2))
        cols = ["cr", "mrd_negative", "relapse", "antigen_negative_relapse", "crs3"]
        labels = ["CR d28", "MRD-neg d28", "relapse\nby 12 mo", "antigen-neg\nrelapse", "CRS >= 3"]
        w = 0.8 / len(table)
        x = np.arange(len(cols))
        for j, r in table.iterrows():
            p = np.array([r[f"p_{c}"] for c in cols])
            err = np.array(
                [[p[i] - r[f"p_{c}_lo90"], r[f"p_{c}_hi90"] - p[i]] for i, c in enumerate(cols)]
            ).T
            a1.bar(x + j * w, 100 * p, w, yerr=100 * err, label=r["arm"], capsize=2)
        a1.set_xticks(x + 0.4 - w / 2, labels, fontsize=8)
        a1.set_ylabel("% of virtual patients (90% MC interval)")
        a1.legend(fontsize=8)
        a1.set_title("outcomes by 12 months")
        for arm, ep in per_arm.items():
            a2.hist(np.log10(ep["peak_il6"]), bins=40, alpha=0.5, label=arm)
        a2.axvline(np.log10(il6_50), color="k", ls="--", lw=1, label="IL-6 of 50% CRS>=3 risk")
        a2.set_xlabel("log10 peak IL-6 (pg/mL, assumed IL-6 layer)")
        a2.set_ylabel("patients")
        a2.legend(fontsize=8)
        fig.suptitle(f"{cfg.title} (N={cfg.patients} per arm, seed {cfg.seed})", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    def pc(r, c):
        return common.fmt_p(r[f"p_{c}"], r[f"p_{c}_lo90"], r[f"p_{c}_hi90"])

    summary = []
    for _, r in table.iterrows():
        summary.append(
            f"{r['arm']}: CR {pc(r, 'cr')}; relapse by 12 mo {pc(r, 'relapse')}; "
            f"antigen-negative relapse {pc(r, 'antigen_negative_relapse')}; "
            f"median peak IL-6 {r['peak_il6_median']:.0f} pg/mL; P(CRS>=3) {pc(r, 'crs3')}"
        )
    record = {
        "crs_link": {
            "slope": slope,
            "il6_50": il6_50,
            "calibrated_in": ref if "calibrate" in cfg.crs else None,
        }
    }
    return common.ScenarioResult(table, plot, tuple(summary), record)
