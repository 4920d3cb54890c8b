"""Goodness-of-fit panel from a run folder's sdtab (ML and Bayesian runs alike).

Six panels: DV against PRED and against IPRED (log axes, identity line), CWRES against TIME and
against PRED, IWRES against IPRED, and a normal QQ plot of CWRES. BLQ records (CENS = 1, DV = the
LLOQ) have no residual: they are drawn as red crosses at the LLOQ in the DV panels and as red
ticks along the bottom of the residual panels. Black lines are binned medians (a smoother).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats


def _smooth(ax, x, y, log=False, nbins=10):
    ok = np.isfinite(x) & np.isfinite(y) & ((x > 0) if log else True)
    x, y = x[ok], y[ok]
    if x.size < 20:
        return
    xx = np.log(x) if log else x
    edges = np.unique(np.quantile(xx, np.linspace(0, 1, nbins + 1)))
    k = np.clip(np.searchsorted(edges, xx, side="right") - 1, 0, len(edges) - 2)
    pts = [
        (np.median(x[k == b]), np.median(y[k == b]))
        for b in range(len(edges) - 1)
        if (k == b).sum() >= 5
    ]
    if pts:
        px, py = zip(*pts, strict=True)
        ax.plot(px, py, "k-", lw=1.5, label="binned median")


TIME_TICKS = (0, 1, 4, 7, 14, 28, 60, 90, 180, 365, 730, 1460)


def time_axis(ax, tmax: float, label: str = "TIME (d; linear to 7 d, then log)") -> None:
    """Days on a symmetric-log axis (linear up to 7 d, log beyond), ticks at visit-like days."""
    ax.set_xscale("symlog", linthresh=7, linscale=0.8)
    ticks = [t for t in TIME_TICKS if t <= max(tmax, 1) * 1.05]
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.set_xlim(-0.3, max(tmax, 1) * 1.1)
    if label:
        ax.set_xlabel(label)


def plot_gof(sdtab: pd.DataFrame, path, *, title: str = "Goodness of fit", unit: str = "") -> None:
    """Write the GOF panel of ``sdtab`` (columns ID, TIME, DV, CENS, PRED, IPRED, IWRES, CWRES)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    obs = sdtab[sdtab["CENS"] == 0]
    blq = sdtab[sdtab["CENS"] != 0]
    fig, axes = plt.subplots(2, 3, figsize=(14, 8.6))
    u = f" ({unit})" if unit else ""
    for ax, col in zip(axes[0, :2], ("PRED", "IPRED"), strict=True):
        ax.loglog(obs[col], obs["DV"], ".", ms=3, alpha=0.35, color="tab:blue", label="observed")
        if len(blq):
            ax.loglog(
                blq[col],
                blq["DV"],
                "x",
                ms=4,
                alpha=0.6,
                color="tab:red",
                label=f"BLQ, at the LLOQ ({len(blq)})",
            )
        vals = np.concatenate([obs[col], obs["DV"]])
        vals = vals[np.isfinite(vals) & (vals > 0)]
        lo, hi = vals.min() / 1.5, vals.max() * 1.5
        ax.plot([lo, hi], [lo, hi], color="0.3", lw=0.8, ls="--", label="identity")
        _smooth(ax, obs[col].to_numpy(), obs["DV"].to_numpy(), log=True)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel(col + u)
        ax.set_ylabel("DV" + u)
        ax.set_title(f"DV vs {col}", fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
    panels = (
        (axes[0, 2], "IPRED", "IWRES", True),
        (axes[1, 0], "TIME", "CWRES", False),
        (axes[1, 1], "PRED", "CWRES", True),
    )
    for ax, xc, yc, log in panels:
        x, y = obs[xc].to_numpy(), obs[yc].to_numpy()
        ax.plot(x, y, ".", ms=3, alpha=0.35, color="tab:blue")
        _smooth(ax, x, y, log=log)
        ax.axhline(0, color="0.3", lw=0.8)
        for v in (-2, 2):
            ax.axhline(v, color="0.5", lw=0.7, ls="--")
        lim = max(4.0, float(np.nanquantile(np.abs(y), 0.999)) if np.isfinite(y).any() else 4.0)
        ax.set_ylim(-lim, lim)
        if len(blq):
            ax.plot(
                blq[xc],
                np.full(len(blq), -lim * 0.97),
                "|",
                ms=6,
                color="tab:red",
                alpha=0.5,
                label=f"BLQ records (no residual; {len(blq)})",
            )
            ax.legend(fontsize=7, loc="upper right")
        if log:
            ax.set_xscale("log")
            ax.set_xlabel(xc + u + " (log axis)")
        else:
            time_axis(ax, float(np.nanmax(sdtab["TIME"])))
        ax.set_ylabel(yc)
        ax.set_title(f"{yc} vs {xc}", fontsize=10)
    ax = axes[1, 2]
    cw = obs["CWRES"].to_numpy()
    cw = cw[np.isfinite(cw)]
    if cw.size:
        osm, osr = stats.probplot(cw, dist="norm", fit=False)
        ax.plot(osm, osr, ".", ms=3, alpha=0.5)
        lim = [min(osm.min(), osr.min()), max(osm.max(), osr.max())]
        ax.plot(lim, lim, color="0.3", lw=0.8, ls="--")
        ax.set_title(f"CWRES QQ plot (mean {cw.mean():.2f}, SD {cw.std(ddof=1):.2f})", fontsize=10)
    ax.set_xlabel("N(0,1) quantiles")
    ax.set_ylabel("CWRES quantiles")
    for a in axes.flat:
        a.grid(alpha=0.25, lw=0.5, which="major")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
