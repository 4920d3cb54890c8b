"""Trial 2: armored (cytokine-secreting) vs conventional CAR across suppression levels.

Model: :class:`~cartkin._models.armored.ArmoredCAR` (a construction on the published León-Triana
2021 solid-tumour model; every armoring value ASSUMED). The same virtual patients receive each
arm (common random numbers) at each suppression level ``a1`` (the parent's immunosuppression
rate, which the paper sweeps over 0-0.1 /d).

Response (ASSUMED, RECIST-like): best tumour volume by ``days`` at most ``response_fraction`` of
the volume at infusion (0.343 = a 30% decrease of the diameter). CRS: the assumed link, with the
IL-6 of 50% risk taken from trial 1's calibration (a B-ALL anchor: in a solid tumour read the
risk on a relative scale).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._models.armored import ArmoredCAR
from .._regimen import Regimen
from . import common

MODEL = ArmoredCAR()
OPTIONS = {
    "days": 90.0,
    "step": 1.0,
    "dose": 2.5e8,
    "response_fraction": 0.343,
    "suppression": (0.0, 0.05, 0.1, 0.2, 0.3, 0.5),
    "arms": ("conventional", "armored", "armored, inducible"),
    "pX": (0.0, 2e-7, 2e-7),
    "inducible": (0.0, 0.0, 1.0),
}


def run(cfg, *, progress=False) -> common.ScenarioResult:
    opt = cfg.options
    if not len(opt["arms"]) == len(opt["pX"]) == len(opt["inducible"]):
        raise ValueError(f"{cfg.source}: options.arms, pX and inducible must have equal length")
    times = np.arange(0.0, opt["days"] + 0.5 * opt["step"], opt["step"])
    theta = common.sample(MODEL, cfg.typical, cfg.omega, cfg.patients, cfg.seed)
    link = common.CRSLink(float(cfg.crs.get("slope", 1.0)), float(cfg.crs.get("il6_50", 1000.0)))
    reg = Regimen.single(opt["dose"])
    rng = np.random.default_rng(cfg.seed)
    rows = []
    for arm, px, ind in zip(opt["arms"], opt["pX"], opt["inducible"], strict=True):
        for a1 in opt["suppression"]:
            th = common.with_values(theta, pX=px, inducible=ind, a1=a1)
            res = common.run_sim(MODEL, th, times, reg, progress=progress)
            tum = common.extinct_after(res.outputs["tumour"])
            best = tum.min(axis=1) / np.asarray(th["T0"])
            resp = best <= opt["response_fraction"]
            peak = res.outputs["IL6"].max(axis=1)
            row = {"arm": arm, "a1": a1, "patients": cfg.patients}
            for name, x in (
                ("response", resp.astype(float)),
                ("crs3", link.risk(peak)),
                ("cure", (tum[:, -1] <= 0).astype(float)),
            ):
                p, lo, hi = common.interval(x, rng)
                row.update({f"p_{name}": p, f"p_{name}_lo90": lo, f"p_{name}_hi90": hi})
            row["peak_il6_median"] = float(np.median(peak))
            row["peak_cart_median"] = float(np.median(res.outputs["CART"].max(axis=1)))
            rows.append(row)
    table = pd.DataFrame(rows)

    def plot(path):
        plt = common.plt()
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4.2))
        for arm, g in table.groupby("arm", sort=False):
            line = ax.plot(100 * g["p_crs3"], 100 * g["p_response"], "o-", label=arm)[0]
            for _, r in g.iterrows():
                ax.annotate(
                    f"{r['a1']:g}",
                    (100 * r["p_crs3"], 100 * r["p_response"]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
            bx.errorbar(
                g["a1"],
                100 * g["p_response"],
                yerr=[
                    100 * (g["p_response"] - g["p_response_lo90"]),
                    100 * (g["p_response_hi90"] - g["p_response"]),
                ],
                color=line.get_color(),
                marker="o",
                capsize=2,
                label=arm,
            )
        ax.set_xlabel("P(CRS >= 3), % (assumed link; relative scale)")
        ax.set_ylabel("P(response), %")
        ax.set_title("trade-off: points labelled by suppression a1 (/d)", fontsize=9)
        ax.legend(fontsize=8)
        bx.set_xlabel("suppression a1 (/d)")
        bx.set_ylabel("P(response), % (90% MC interval)")
        fig.suptitle(
            f"{cfg.title} (N={cfg.patients} per arm and level, seed {cfg.seed}); "
            "armoring is a construction with assumed values",
            fontsize=8,
        )
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    summary = [
        f"{r['arm']}, a1={r['a1']:g}: P(response) "
        f"{common.fmt_p(r['p_response'], r['p_response_lo90'], r['p_response_hi90'])}, "
        f"P(CRS>=3) {common.fmt_p(r['p_crs3'], r['p_crs3_lo90'], r['p_crs3_hi90'])}, "
        f"median peak IL-6 {r['peak_il6_median']:.0f} pg/mL"
        for _, r in table.iterrows()
    ]
    notice = (
        "CONSTRUCTED MODEL: the armored CAR (cytokine secretion, boost, relief, IL-6) is our "
        "construction with assumed values; only the León-Triana parent is published."
    )
    return common.ScenarioResult(
        table, plot, tuple(summary), {"crs_link": vars(link)}, notice=notice
    )
