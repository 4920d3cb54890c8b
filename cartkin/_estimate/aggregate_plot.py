"""The figure of an aggregate fit: the fitted virtual population against the published summaries.

Levels over time: the population's median and IQR (and 5-95%) band on a log axis, with the
published medians as points and the published IQRs as bars. NCA metrics: the simulated
distribution over virtual patients (log axis) with the published mean +- SD and median against
the simulated ones.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from .aggregate import log_level, observed_vector

_PUB, _FIT = "#c0392b", "#1f5f8b"
_NAMES = {"cmax": "Cmax", "tmax": "Tmax", "auc_0_28d": "AUC 0-28 d", "auc_0_6m": "AUC 0-6 months"}


def plot_aggregate(cfg, result, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prob = result.problem
    time_groups = [g for g in prob.groups if g.day is not None]
    nca_groups = [g for g in prob.groups if g.day is None]
    panels = ([("time", time_groups)] if time_groups else []) + [("nca", g) for g in nca_groups]
    ncols = 1 if len(panels) == 1 else 2 if len(panels) in (2, 4) or time_groups else 3
    nrows = int(np.ceil(len(panels) / ncols))
    width = 8.0 if ncols == 1 else 5.6 * ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, 4.6 * nrows + 0.4), squeeze=False)
    z = _z_scores(result)
    for ax, (kind, what) in zip(axes.flat, panels, strict=False):
        if kind == "time":
            _time_panel(ax, cfg, result, what)
        else:
            _nca_panel(ax, cfg, result, what, z)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(textwrap.fill(cfg.title, 95), fontsize=10)
    fig.text(0.01, 0.005, f"{cfg.model.name} population, M = {prob.n_virtual} virtual patients; "
             f"bars/markers: published (n = {_ns(prob.groups)}); chi2 = {result.chi2:.2f} on "
             f"{result.df} df",
             fontsize=7, color="0.35")
    fig.tight_layout(rect=(0, 0.02, 1, 0.96))
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def _z_scores(result) -> dict:
    """{(quantity, label): z} of each published statistic under the fitted population."""
    out = {}
    for g, (mean, cov) in zip(result.problem.groups, result.statistics, strict=True):
        obs = np.asarray(observed_vector(g))
        zz = (obs - np.asarray(mean)) / np.sqrt(np.diag(np.asarray(cov)))
        out.update({(g.quantity, lab): float(v) for lab, v in zip(g.labels, zz, strict=True)})
    return out


def _ns(groups) -> str:
    ns = sorted({int(g.n) for g in groups})
    return ", ".join(map(str, ns))


def _time_panel(ax, cfg, result, groups):
    import jax.numpy as jnp

    prob = result.problem
    days = np.array([g.day for g in groups])
    grid = np.linspace(0.5, days.max() * 1.08, 240)
    th = prob.patients(jnp.asarray(result.psi))
    c = np.exp(np.asarray(log_level(prob.model, jnp.asarray(grid), th)))
    q05, q25, q50, q75, q95 = np.quantile(c, [0.05, 0.25, 0.5, 0.75, 0.95], axis=0)
    ax.fill_between(grid, q05, q95, color=_FIT, alpha=0.12, lw=0, label="fitted 5-95%")
    ax.fill_between(grid, q25, q75, color=_FIT, alpha=0.3, lw=0, label="fitted IQR")
    ax.plot(grid, q50, color=_FIT, lw=2, label="fitted median")
    for i, g in enumerate(groups):
        lab = dict(zip(g.labels, g.observed, strict=True))
        med = lab.get(0.5)
        lo, hi = lab.get(0.25), lab.get(0.75)
        if med is not None:
            yerr = None if lo is None else [[med - lo], [hi - med]]
            ax.errorbar([g.day], [med], yerr=yerr, fmt="o", color=_PUB, ms=6, capsize=4,
                        lw=1.6, label="published median, IQR" if i == 0 else None, zorder=5)
    ax.axvspan(0, days.min(), color="0.5", alpha=0.08, lw=0)
    ax.text(days.min() / 2, 0.03, "no data", transform=ax.get_xaxis_transform(), ha="center",
            fontsize=7, color="0.4")
    ax.set_yscale("log")
    ax.set_xlabel("days after infusion")
    ax.set_ylabel(f"level ({cfg.level_unit})")
    ax.set_xlim(0, grid[-1])
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right", frameon=False)


def _nca_panel(ax, cfg, result, g, z):
    import jax.numpy as jnp

    prob = result.problem
    x = np.asarray(prob.quantities(jnp.asarray(result.psi))[g.quantity])
    x = x[np.isfinite(x) & (x > 0)]
    lo, hi = np.quantile(x, [0.001, 0.999])
    bins = np.geomspace(min(lo, *g.observed) / 1.2, max(hi, *g.observed) * 1.2, 60)
    h, _, _ = ax.hist(x, bins=bins, color=_FIT, alpha=0.35, density=False,
                      weights=np.full(x.size, 1 / x.size), label="fitted population")
    ax.set_xscale("log")
    top = h.max()
    stats = dict(zip(g.labels, g.observed, strict=True))
    fit_mean, fit_sd, fit_med = x.mean(), x.std(), np.median(x)
    if "mean" in stats:
        sd = stats.get("sd")
        def bar(m, s):  # mean +- SD on a log axis: the lower end clipped at the axis
            return [[m - max(m - s, bins[0])], [s]]

        ax.errorbar([stats["mean"]], [top * 1.25],
                    xerr=None if sd is None else bar(stats["mean"], sd),
                    fmt="o", color=_PUB, capsize=4, lw=1.6,
                    label="published mean" + (" +- SD" if sd is not None else ""))
        ax.errorbar([fit_mean], [top * 1.1], xerr=bar(fit_mean, fit_sd), fmt="s", color=_FIT,
                    capsize=4, lw=1.6, label="fitted mean +- SD")
    if 0.5 in stats:
        ax.plot([stats[0.5]], [top * 1.25], "D", color=_PUB, ms=7, label="published median")
        ax.plot([fit_med], [top * 1.1], "D", color=_FIT, ms=7, mfc="white", mew=1.6,
                label="fitted median")
    ax.set_ylim(0, top * 1.45)
    ax.set_xlabel(f"{_NAMES.get(g.quantity, g.quantity)} ({g.unit})")
    ax.set_ylabel("fraction of virtual patients")
    zs = ", ".join(f"{'median' if lab == 0.5 else lab} {z[(g.quantity, lab)]:+.2f}"
                   for lab in g.labels)
    ax.set_title(_NAMES.get(g.quantity, g.quantity) + ("" if g.fitted else " (not fitted: check)")
                 + f"\nz = (published - fitted)/sampling SD: {zs}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", frameon=False)
