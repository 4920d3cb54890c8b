"""Prediction-corrected visual predictive check (pcVPC), binned on nominal time, with %BLQ.

Bergstrand M, Hooker AC, Wallin JE, Karlsson MO. Prediction-corrected visual predictive checks
for diagnosing nonlinear mixed-effects models. AAPS J 2011;13(2):143-151.

Per endpoint and nominal-time bin, on the scale where the residual error is normal (log DV for
log-additive endpoints):

* prediction correction: h_pc = h(y) + h(PRED_bin) - h(PRED_ij) for log endpoints (additive on the
  log scale), y * PRED_bin / PRED_ij otherwise, with PRED_bin the median PRED of the bin; the same
  correction is applied to the observed and to every simulated replicate;
* observed percentiles (default 5, 50, 95%) against the distribution of the same percentiles over
  the simulated replicates (their 2.5-97.5% band: ``ci`` = 0.95);
* BLQ records (CENS = 1) rank below every quantified value, in the data and in the simulations
  alike; a percentile that falls among them is censored (not drawn); the %BLQ panel compares the
  observed fraction below the LLOQ with the simulated fractions.

Nominal times come from an NTIME column of the dataset, else from the visit schedule its sidecar
records, else from bins of equal counts of the actual times (:func:`nominal_times`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from .._likelihood import FitData
from .simulate import Replicates, normal_scale


@dataclasses.dataclass(frozen=True)
class VPCResult:
    """``table``: one row per endpoint and bin; ``points``: the prediction-corrected
    observations."""

    table: pd.DataFrame
    points: pd.DataFrame
    quantiles: tuple[float, ...]
    ci: float
    log_scale: dict  # endpoint -> bool
    lloq: dict  # endpoint -> LLOQ (natural units) or NaN
    n_rep: int
    binning: str


def nominal_times(data: FitData, dataset=None, max_bins: int = 12) -> tuple[np.ndarray, str]:
    """Nominal time of each record (N, T) and how it was found."""
    time = np.asarray(data.time, float)
    if dataset is not None:
        frame = dataset.observations() if hasattr(dataset, "observations") else None
        if frame is not None and "NTIME" in frame.columns:
            nt = np.full(time.shape, np.nan)
            for i, sid in enumerate(data.ids):
                v = frame.loc[frame["ID"] == sid, "NTIME"].to_numpy(float)
                n = int(data.mask[i].sum())
                if len(v) == n:
                    nt[i, :n] = v
            if np.all(np.isfinite(nt[data.mask])):
                return nt, "NTIME column of the dataset"
        extra = getattr(getattr(dataset, "meta", None), "extra", {}) or {}
        sched = (extra.get("simulation") or {}).get("schedule")
        if sched:
            days = np.array(sorted(float(v["day"]) for v in sched))
            idx = np.abs(time[..., None] - days).argmin(-1)
            return days[idx], "visit schedule of the dataset's sidecar (nearest scheduled day)"
    t = time[data.mask]
    uniq = np.unique(t)
    if len(uniq) <= max_bins:
        return time, "actual times (few distinct times)"
    edges = np.unique(np.quantile(t, np.linspace(0, 1, max_bins + 1)))
    b = np.clip(np.searchsorted(edges, time, side="right") - 1, 0, len(edges) - 2)
    mids = np.array(
        [np.median(t[(t >= edges[k]) & (t <= edges[k + 1])]) for k in range(len(edges) - 1)]
    )
    return mids[b], f"bins of equal counts of the actual times ({len(mids)} bins; no nominal times)"


def censored_quantile(values: np.ndarray, q: float) -> np.ndarray:
    """Linear-interpolation quantile over the last axis; NaN where it involves an infinite
    (censored) value. ``values`` (..., n)."""
    v = np.sort(values, axis=-1)
    n = v.shape[-1]
    pos = q * (n - 1)
    lo, hi = int(np.floor(pos)), int(np.ceil(pos))
    a, b = v[..., lo], v[..., hi]
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = np.where(ok, a, 0.0), np.where(ok, b, 0.0)
    out = a + (pos - lo) * (b - a)
    return np.where(ok, out, np.nan)


def vpc(
    data: FitData,
    reps: Replicates,
    nominal: np.ndarray,
    *,
    quantiles=(0.05, 0.5, 0.95),
    ci: float = 0.95,
    prediction_corrected: bool = True,
    binning: str = "",
    endpoint_names: list[str] | None = None,
) -> VPCResult:
    """The pcVPC statistics of ``data`` against simulated replicates ``reps``."""
    mask = data.mask
    codes = reps.codes
    h_obs = np.asarray(normal_scale(np.where(mask & (data.dv > 0), data.dv, 1.0), codes))
    blq_obs = mask & (data.cens == 1)
    h_obs = np.where(blq_obs, -np.inf, np.where(mask & (data.cens == -1), np.inf, h_obs))
    h_sim = np.where(reps.blq, -np.inf, reps.h)
    h_pred = np.asarray(normal_scale(np.where(reps.pred > 0, reps.pred, np.nan), codes))
    rows, pts = [], []
    lo_q, hi_q = (1 - ci) / 2, 1 - (1 - ci) / 2
    eps = np.unique(data.endpoint[mask])
    log_scale, lloq_by = {}, {}
    for e in eps:
        is_log = bool(np.all(codes[mask & (data.endpoint == e)] == 0))
        log_scale[int(e)] = is_log
        ll = reps.lloq[mask & (data.endpoint == e)]
        lloq_by[int(e)] = float(np.nanmax(ll)) if np.any(np.isfinite(ll)) else np.nan
        for t in np.unique(nominal[mask & (data.endpoint == e)]):
            sel = mask & (data.endpoint == e) & (nominal == t)
            ho, hs = h_obs[sel], h_sim[:, sel]
            if prediction_corrected:
                hp = h_pred[sel] if is_log else reps.pred[sel]
                ref = np.nanmedian(hp)
                if is_log:
                    ho, hs = ho + (ref - hp), hs + (ref - hp)[None]
                else:
                    ho, hs = ho * ref / hp, hs * (ref / hp)[None]
            row = {
                "endpoint": int(e),
                "ntime": float(t),
                "n": int(sel.sum()),
                "time_median": float(np.median(data.time[sel])),
                "blq_obs_pct": 100 * float(np.mean(blq_obs[sel])),
            }
            blq_sim = 100 * np.mean(reps.blq[:, sel], axis=1)
            row.update(
                blq_sim_lo=float(np.quantile(blq_sim, lo_q)),
                blq_sim_med=float(np.median(blq_sim)),
                blq_sim_hi=float(np.quantile(blq_sim, hi_q)),
            )
            for q in quantiles:
                tag = f"q{round(100 * q):02d}"
                row[f"obs_{tag}"] = float(censored_quantile(ho, q))
                sq = censored_quantile(hs, q)  # (R,)
                sq = np.where(np.isnan(sq), -np.inf, sq)  # censored: below every quantified value
                for name, p in (("lo", lo_q), ("med", 0.5), ("hi", hi_q)):
                    v = float(np.quantile(sq, p, method="nearest"))
                    row[f"sim_{tag}_{name}"] = v if np.isfinite(v) else np.nan
                row[f"inside_{tag}"] = bool(
                    np.isnan(row[f"obs_{tag}"])
                    or (
                        np.nan_to_num(row[f"sim_{tag}_lo"], nan=-np.inf)
                        <= row[f"obs_{tag}"]
                        <= np.nan_to_num(row[f"sim_{tag}_hi"], nan=-np.inf)
                    )
                )
            rows.append(row)
            pts.append(
                pd.DataFrame(
                    {
                        "endpoint": int(e),
                        "ntime": float(t),
                        "time": data.time[sel],
                        "h_pc": ho,
                        "blq": blq_obs[sel],
                    }
                )
            )
    table = pd.DataFrame(rows)
    return VPCResult(
        table=table,
        points=pd.concat(pts, ignore_index=True),
        quantiles=tuple(quantiles),
        ci=ci,
        log_scale=log_scale,
        lloq=lloq_by,
        n_rep=reps.h.shape[0],
        binning=binning,
    )


def plot_vpc(
    res: VPCResult, path, *, title: str = "", names: dict | None = None, units: dict | None = None
) -> None:
    """One column per endpoint: pcVPC (top) and %BLQ (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = sorted(res.log_scale)
    fig, axes = plt.subplots(
        2,
        len(eps),
        figsize=(11 * len(eps), 8.2),
        squeeze=False,
        gridspec_kw={"height_ratios": [3, 1.2]},
        sharex="col",
    )
    for c, e in enumerate(eps):
        tab = res.table[res.table["endpoint"] == e].sort_values("ntime")
        pts = res.points[(res.points["endpoint"] == e) & ~res.points["blq"]]
        back = np.exp if res.log_scale[e] else (lambda x: x)
        ax, axb = axes[0, c], axes[1, c]
        x = tab["ntime"].to_numpy()
        ax.scatter(
            pts["ntime"],
            back(pts["h_pc"]),
            s=5,
            color="0.55",
            alpha=0.35,
            lw=0,
            label="observed (pred.-corrected)",
        )
        qs = res.quantiles
        for q in qs:
            tag = f"q{round(100 * q):02d}"
            mid = abs(q - 0.5) < 1e-9
            color = "tab:red" if mid else "tab:blue"
            lo, hi = back(tab[f"sim_{tag}_lo"].to_numpy()), back(tab[f"sim_{tag}_hi"].to_numpy())
            if res.log_scale[e]:
                # a band whose lower end is censored reaches down to the bottom of the plot
                floor = np.nanmin(back(pts["h_pc"])) / 3 if len(pts) else 1e-3
                lo = np.where(np.isnan(lo) & np.isfinite(hi), floor, lo)
            ax.fill_between(
                x,
                lo,
                hi,
                color=color,
                alpha=0.22 if mid else 0.16,
                lw=0,
                label=f"simulated {round(100 * q)}th pct, {round(100 * res.ci)}% CI",
            )
            ax.plot(
                x,
                back(tab[f"obs_{tag}"]),
                color="k" if mid else "0.15",
                lw=1.8 if mid else 1.2,
                ls="-" if mid else "--",
                marker="o",
                ms=3,
                label=f"observed {round(100 * q)}th pct",
            )
        if np.isfinite(res.lloq.get(e, np.nan)):
            ax.axhline(res.lloq[e], color="tab:green", ls=":", lw=1.2, label="LLOQ (uncorrected)")
        if res.log_scale[e]:
            ax.set_yscale("log")
        name = (names or {}).get(e, f"endpoint {e}")
        unit = (units or {}).get(e, "")
        ax.set_ylabel(f"prediction-corrected {name}" + (f" ({unit})" if unit else ""))
        ax.set_title(f"pcVPC: {name} ({res.n_rep} replicates)", fontsize=10)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        ax.grid(alpha=0.25, which="both", lw=0.5)
        axb.fill_between(
            x,
            tab["blq_sim_lo"],
            tab["blq_sim_hi"],
            color="tab:blue",
            alpha=0.2,
            lw=0,
            label=f"simulated, {round(100 * res.ci)}% CI",
        )
        axb.plot(x, tab["blq_sim_med"], color="tab:blue", lw=1, label="simulated median")
        axb.plot(x, tab["blq_obs_pct"], "ko-", ms=3, lw=1.2, label="observed")
        axb.set_ylabel("% BLQ")
        axb.set_ylim(
            -2, max(10, float(np.nanmax(tab[["blq_obs_pct", "blq_sim_hi"]].to_numpy())) * 1.15)
        )
        axb.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        axb.grid(alpha=0.25, lw=0.5)
        from .gof import time_axis

        time_axis(axb, float(x.max()), label="")
        axb.set_xlabel(
            f"nominal time (d; linear to 7 d, then log)\nbinning: {res.binning}", fontsize=9
        )
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
