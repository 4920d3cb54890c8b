"""Trial 4: B-cell aplasia after a CD19 CAR, against the published recovery figures.

Model: :class:`~cartkin._models.bcell_aplasia.BCellAplasia` (published Stein 2019 kinetics with
their random effects, read as variances -- the project's default reading; a healthy B-cell pool
killed by CAR-T: our construction; stiff when the killing is fast). Its one free parameter,
the killing per CAR-T cell ``kH``, is calibrated so that the share of patients with detectable
B cells at one year matches the pooled published figure; the day-30 figure is then a check the
calibration did not use.

Published anchors (literature notes, status [abstract]): after axi-cel, B cells undetectable in
30/34 (88%) at day 30 and detectable in 11/19 (58%) at one year (Haematologica, PMC8017820); 40%
of 41 with detectable CD19+ B cells by one year (Blood Adv 2021;5(1):143). Pooled one-year figure:
(11 + 16) / (19 + 41) = 45%. Caveats: the anchors are axi-cel in lymphoma, the kinetics are
tisagenlecleucel in paediatric B-ALL; "detectable" is ``detect`` cells/uL here (ASSUMED), the
papers' assays differ.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from .._models.bcell_aplasia import BCellAplasia
from . import common

MODEL = BCellAplasia()
OPTIONS = {
    "days": 730.0,
    "step": 5.0,
    "detect": 10.0,
    "calibration_day": 365.0,
    "calibration_target": 0.45,
    "kH_grid": (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0),
}

#: (day, event, k, n, source): published B-cell recovery figures
ANCHORS = (
    (30.0, "undetectable", 30, 34, "Haematologica (axi-cel), PMC8017820"),
    (365.0, "detectable", 11, 19, "Haematologica (axi-cel), PMC8017820"),
    (365.0, "detectable", 16, 41, "Blood Adv 2021;5(1):143 (40% of 41)"),
)


def _exact_ci(k, n):
    lo = stats.beta.ppf(0.025, k, n - k + 1) if k > 0 else 0.0
    hi = stats.beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
    return float(lo), float(hi)


def run(cfg, *, progress=False) -> common.ScenarioResult:
    opt = cfg.options
    times = np.arange(0.0, opt["days"] + 0.5 * opt["step"], opt["step"])
    for day in [a[0] for a in ANCHORS] + [opt["calibration_day"]]:
        if not np.any(np.isclose(times, day)):
            raise ValueError(f"{cfg.source}: day {day:g} is not on the time grid (options.step)")
    theta = common.sample(MODEL, cfg.typical, cfg.omega, cfg.patients, cfg.seed)
    i_cal = int(np.argmin(np.abs(times - opt["calibration_day"])))

    def detectable(kh):
        res = common.run_sim(
            MODEL, common.with_values(theta, kH=kh), times, None, progress=progress
        )
        return res.outputs["H"] >= opt["detect"]

    grid = np.asarray(opt["kH_grid"], float)
    p = np.array([detectable(k)[:, i_cal].mean() for k in grid])
    target = opt["calibration_target"]
    if not (p.min() <= target <= p.max()):
        raise ValueError(
            f"{cfg.source}: P(detectable) spans {p.min():.2f}-{p.max():.2f} on "
            f"options.kH_grid; widen it to bracket {target}"
        )
    for _ in range(2):
        order = np.lexsort((grid, p))  # P falls as kH grows
        log_k = float(np.interp(target, p[order], np.log(grid[order])))
        grid = np.append(grid, np.exp(log_k))
        p = np.append(p, detectable(grid[-1])[:, i_cal].mean())
    kh = float(grid[-1])
    det = detectable(kh)
    rng = np.random.default_rng(cfg.seed)
    rows = []
    for day, event, k, n, src in ANCHORS:
        i = int(np.argmin(np.abs(times - day)))
        x = det[:, i] if event == "detectable" else ~det[:, i]
        m, lo, hi = common.interval(x.astype(float), rng)
        plo, phi = _exact_ci(k, n)
        rows.append(
            {
                "day": day,
                "event": f"B cells {event}",
                "model": m,
                "model_lo90": lo,
                "model_hi90": hi,
                "published": k / n,
                "published_lo95": plo,
                "published_hi95": phi,
                "published_k": k,
                "published_n": n,
                "source": src,
                "used_for_calibration": bool(day == opt["calibration_day"]),
            }
        )
    table = pd.DataFrame(rows)
    table["kH_calibrated"] = kh
    # aplasia duration: first detectable time after the first undetectable one
    undet = ~det
    t_loss = common.first_time(undet, times)
    after = times[None, :] > t_loss[:, None]
    t_rec = common.first_time(det & after, times)
    dur = np.where(np.isfinite(t_loss), t_rec - t_loss, 0.0)
    curve = pd.DataFrame({"day": times, "p_detectable": det.mean(axis=0)})
    q = np.quantile(dur, [0.25, 0.5, 0.75], method="inverted_cdf")  # inf: not recovered

    def plot(path):
        plt = common.plt()
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        ax.plot(times, 100 * curve["p_detectable"], label=f"model (kH = {kh:.3g})")
        for _, r in table.iterrows():
            val = r["published"] if "undetectable" not in r["event"] else 1 - r["published"]
            lo = (
                r["published_lo95"] if "undetectable" not in r["event"] else 1 - r["published_hi95"]
            )
            hi = (
                r["published_hi95"] if "undetectable" not in r["event"] else 1 - r["published_lo95"]
            )
            ax.errorbar(
                r["day"] + (8 if r["published_n"] == 41 else 0),
                100 * val,
                yerr=[[100 * (val - lo)], [100 * (hi - val)]],
                fmt="s",
                capsize=3,
                label=f"{r['source']} (n={r['published_n']})",
            )
        ax.set_xlabel("days after infusion")
        ax.set_ylabel(f"% with detectable B cells (>= {opt['detect']:g}/uL)")
        ax.set_title(f"{cfg.title} (N={cfg.patients}, seed {cfg.seed})", fontsize=8)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    summary = [
        f"calibrated kH = {kh:.3g} per CAR-T cell/uL per day (P(detectable at day "
        f"{opt['calibration_day']:g}) = {100 * p[-1]:.1f}%, target {100 * target:.0f}%)"
    ]
    for _, r in table.iterrows():
        summary.append(
            f"day {r['day']:g}, {r['event']}: model "
            f"{common.fmt_p(r['model'], r['model_lo90'], r['model_hi90'])} vs published "
            f"{100 * r['published']:.0f}% ({r['published_k']}/{r['published_n']}; 95% CI "
            f"{100 * r['published_lo95']:.0f}-{100 * r['published_hi95']:.0f}%)"
            + (" [calibration target]" if r["used_for_calibration"] else " [check]")
        )
    summary.append(
        f"aplasia duration: median {q[1]:.0f} d (IQR {q[0]:.0f}-{q[2]:.0f}; inf = not "
        f"recovered by day {opt['days']:g})"
    )
    record = {"kH": kh, "aplasia_duration_quartiles_days": q.tolist()}
    return common.ScenarioResult(
        table, plot, tuple(summary), record, extra_tables={"recovery_curve": curve}
    )
