"""A grid of individual fits: observations, IPRED and PRED curves, the LLOQ.

Curves are predicted on a dense time grid through :func:`cartkin._likelihood.make_predictor`
(IPRED at the subject's estimated parameters: the EBE of an ML fit, the posterior mean of a
Bayesian one; PRED at the typical parameters with the subject's covariates), so peaks between
samples are drawn as the model has them. BLQ records are open red triangles at the LLOQ.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._likelihood import FitData, SolverSettings, StatModel, data_arrays, make_predictor

DEFAULT_SETTINGS = SolverSettings()


def pick_subjects(data: FitData, n: int) -> np.ndarray:
    """Indices of ``n`` subjects evenly spread over the cohort (in ID order)."""
    order = np.argsort(data.ids)
    if n >= len(order):
        return order
    return order[np.unique(np.linspace(0, len(order) - 1, n).round().astype(int))]


def curves(
    stat: StatModel,
    data: FitData,
    phi: np.ndarray,
    idx: np.ndarray,
    grid: np.ndarray,
    settings: SolverSettings = DEFAULT_SETTINGS,
    endpoint: int = 0,
) -> np.ndarray:
    """Predictions (len(idx), G) of endpoint ``endpoint`` on ``grid`` at parameters ``phi``."""
    predict_one = make_predictor(stat, settings)
    arrays = {k: v[jnp.asarray(idx)] for k, v in data_arrays(data).items()}
    G = len(grid)
    arrays["time"] = jnp.tile(jnp.asarray(grid, float), (len(idx), 1))
    arrays["endpoint"] = jnp.full((len(idx), G), endpoint, dtype=int)
    for k in ("dv", "cens", "limit", "mask"):
        arrays[k] = jnp.ones((len(idx), G), dtype=arrays[k].dtype)
    f = jax.jit(jax.vmap(lambda p, di: predict_one(p, di)[0]))(jnp.asarray(phi), arrays)
    return np.asarray(f)


def plot_individual(
    stat: StatModel,
    data: FitData,
    phi: np.ndarray,
    mu: np.ndarray,
    path,
    *,
    n: int = 20,
    lloq: np.ndarray | None = None,
    title: str = "Individual fits",
    settings: SolverSettings = DEFAULT_SETTINGS,
    unit: str = "",
    log: bool = True,
    idx: np.ndarray | None = None,
) -> None:
    """Grid of ``n`` subjects (evenly spread over the IDs); ``phi``/``mu`` (N, d)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = pick_subjects(data, n) if idx is None else np.asarray(idx)
    tmax = float(np.max(data.time[data.mask]))
    grid = np.unique(
        np.concatenate(
            [np.linspace(0, min(30.0, tmax), 241), np.linspace(0, tmax, 241), data.time[data.mask]]
        )
    )
    ncol = 5 if len(idx) > 12 else 4
    nrow = int(np.ceil(len(idx) / ncol))
    fig, axes = plt.subplots(
        nrow, ncol, figsize=(3.3 * ncol, 2.6 * nrow), squeeze=False, sharex=True, sharey=True
    )
    colors = ["tab:blue", "tab:purple", "tab:olive", "tab:cyan"]
    for e in range(len(stat.endpoints)):
        both = curves(
            stat,
            data,
            np.concatenate([phi[idx], mu[idx]]),
            np.concatenate([idx, idx]),
            grid,
            settings,
            e,
        )
        ip, pp = both[: len(idx)], both[len(idx) :]
        for a, i in enumerate(idx):
            ax = axes.flat[a]
            m = data.mask[i] & (data.endpoint[i] == e)
            obs = m & (data.cens[i] == 0)
            blq = m & (data.cens[i] == 1)
            c = colors[e % len(colors)]
            ax.plot(grid, ip[a], "-", color=c, lw=1.3, label="IPRED" if a == 0 and e == 0 else None)
            ax.plot(
                grid, pp[a], "--", color="0.45", lw=1, label="PRED" if a == 0 and e == 0 else None
            )
            ax.plot(
                data.time[i][obs],
                data.dv[i][obs],
                "o",
                color="k",
                ms=3.5,
                label="observed" if a == 0 and e == 0 else None,
            )
            if blq.any():
                ax.plot(
                    data.time[i][blq],
                    data.dv[i][blq],
                    "^",
                    mfc="none",
                    color="tab:red",
                    ms=4.5,
                    label="BLQ (at LLOQ)" if e == 0 else None,
                )
            if lloq is not None and np.isfinite(lloq[i][m]).any():
                ax.axhline(
                    np.nanmax(lloq[i][m]),
                    color="tab:green",
                    ls=":",
                    lw=1,
                    label="LLOQ" if e == 0 else None,
                )
            ax.set_title(f"ID {data.ids[i]}", fontsize=9)
    for a, ax in enumerate(axes.flat):
        if a >= len(idx):
            ax.axis("off")
            continue
        if log:
            ax.set_yscale("log")
        ax.set_xscale("symlog", linthresh=7, linscale=0.8)
        ticks = [t for t in (0, 7, 28, 90, 365, 730, 1460) if t <= tmax * 1.05]
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks], fontsize=7)
        ax.set_xlim(-0.3, tmax * 1.1)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.25, lw=0.5, which="major")
    vals = data.dv[data.mask]
    if log:
        axes.flat[0].set_ylim(max(vals[vals > 0].min() / 5, 1e-12), vals.max() * 5)
    handles, labels = [], []
    for ax in axes.flat[: len(idx)]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="upper right", ncol=len(labels), fontsize=8)
    fig.supxlabel("time (d; linear to 7 d, then log)", fontsize=9)
    fig.supylabel("DV" + (f" ({unit})" if unit else ""), fontsize=9)
    fig.suptitle(title, fontsize=11, x=0.02, ha="left")
    # fixed margins in inches: tight_layout measured every tick label of every panel (4 s of a
    # 20-panel grid with log axes, most of the report's time)
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=0.75 / w, right=1 - 0.1 / w, bottom=0.55 / h, top=1 - 0.6 / h,
                        wspace=0.06, hspace=0.27)
    fig.savefig(path, dpi=100)
    plt.close(fig)
