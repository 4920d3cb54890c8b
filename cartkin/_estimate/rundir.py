"""Writing a fit's run folder: tables, convergence report, run record, plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return str(x)
    return x


def write_fit(result, folder: Path, record: dict) -> None:
    """Write the result into ``folder`` (which exists and is empty)."""
    folder = Path(folder)
    result.parameters.to_csv(folder / "parameters.csv", index=False)
    result.ebe.to_csv(folder / "ebe.csv", index=False)
    result.sdtab.to_csv(folder / "sdtab.csv", index=False)
    result.trace.to_csv(folder / "saem_trace.csv", index=False)
    result.failures.to_csv(folder / "failures.csv", index=False)
    names = _psi_names(result)
    pd.DataFrame(result.covariance, index=names, columns=names).to_csv(folder / "covariance.csv")
    pd.DataFrame(result.correlation, index=names, columns=names).to_csv(folder / "correlation.csv")
    summary = {
        "m2ll": result.m2ll, "m2ll_mc_se": result.m2ll_se, "aic": result.aic, "bic": result.bic,
        "n_estimated": result.n_estimated, "n_subjects": int(result.data.n_subjects),
        "n_observations": int(result.data.n_obs),
        "n_censored": int(((result.data.cens != 0) & result.data.mask).sum()),
        "m2ll_note": "importance-sampling estimate; all constants included; on the scale where "
                     "the residual error is normal (log DV for log_additive endpoints)",
        "convergence": result.convergence, "timings_s": result.timings,
        "failed_solves": result.failures.to_dict("records"),
    }
    (folder / "summary.json").write_text(json.dumps(_jsonable(summary), indent=2))
    (folder / "run.json").write_text(json.dumps(_jsonable(record), indent=2))
    est = result.estimates
    estimates = {
        "iiv": list(result.stat.iiv), "domains": list(result.stat.domains),
        "beta": np.asarray(est["beta"]).tolist(), "omega": np.asarray(est["omega"]).tolist(),
        "log_sigma": np.asarray(est["log_sigma"]).tolist(),
        "fixed": dict(result.stat.fixed),
        "psi_covariance": np.asarray(result.covariance).tolist(),
        "note": "beta: (parameter, covariate column) on each parameter's natural scale (log, "
                "logit); omega: covariance of eta; psi = (beta free entries, omega lower "
                "triangle, log sigma), the order of parameters.csv",
    }
    (folder / "estimates.json").write_text(json.dumps(_jsonable(estimates), indent=2))
    _plots(result, folder)


def _psi_names(result):
    t = result.parameters
    return [f"{k}:{p}" for k, p in zip(t["kind"], t["parameter"])]


def _plots(result, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr = result.trace
    cols = [c for c in tr.columns if c.startswith(("mu_", "omega_", "sigma_"))]
    ncol = 4
    nrow = int(np.ceil(len(cols) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.4 * nrow), squeeze=False)
    for ax, c in zip(axes.flat, cols):
        ax.plot(tr["iteration"], tr[c], lw=1)
        ax.set_title(c, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(cols):]:
        ax.axis("off")
    fig.suptitle("SAEM trajectories (step 1, then 1/k)", fontsize=10)
    fig.tight_layout()
    fig.savefig(folder / "saem_trace.png", dpi=110)
    plt.close(fig)

    tab = result.sdtab
    obs = tab[tab["CENS"] == 0]
    blq = tab[tab["CENS"] != 0]
    fig, axes = plt.subplots(2, 2, figsize=(9, 7.5))
    for ax, col in zip(axes[0], ("PRED", "IPRED")):
        ax.loglog(obs[col], obs["DV"], ".", ms=3, alpha=0.5, label="observed")
        ax.loglog(blq[col], blq["DV"], "x", ms=3, color="tab:red", alpha=0.5, label="BLQ (at LLOQ)")
        lo = np.nanmin([obs[col].min(), obs["DV"].min()])
        hi = np.nanmax([obs[col].max(), obs["DV"].max()])
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        ax.set_xlabel(col)
        ax.set_ylabel("DV")
        ax.legend(fontsize=7)
    axes[1, 0].semilogx(obs["TIME"].clip(lower=0.5), obs["CWRES"], ".", ms=3, alpha=0.5)
    axes[1, 0].set_xlabel("TIME (d, log axis)")
    axes[1, 1].semilogx(obs["PRED"], obs["CWRES"], ".", ms=3, alpha=0.5)
    axes[1, 1].set_xlabel("PRED")
    for ax in axes[1]:
        ax.axhline(0, color="k", lw=0.8)
        for y in (-2, 2):
            ax.axhline(y, color="grey", lw=0.6, ls="--")
        ax.set_ylabel("CWRES")
    fig.suptitle("Goodness of fit", fontsize=10)
    fig.tight_layout()
    fig.savefig(folder / "gof.png", dpi=110)
    plt.close(fig)
