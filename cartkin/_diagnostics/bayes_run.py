"""A Bayesian fit from a configuration file, and its run folder (the function behind
``cartkin bayes``).

The run folder holds, like an ML run folder:

* ``posterior.nc``: the arviz InferenceData (see :mod:`.arviz_bridge`);
* ``parameters.csv``: posterior mean, SD, median, 90% interval, MCSE, ESS and R-hat per
  population parameter; ``priors.csv``: the priors;
* ``ebe.csv``: per subject the posterior mean (and SD) of phi, the individual parameters and ETAs;
* ``sdtab.csv``: ID, TIME, DV, DVID, CENS, PRED, IPRED, RES, IWRES, CWRES, ETAn as the ML fit
  writes it, at the posterior means (population parameters and individual phi);
* ``estimates.json``: posterior means in the ML layout (beta, omega, log_sigma), so the
  diagnostics read both kinds of run alike;
* ``summary.json``: convergence (divergences, R-hat, ESS, verdict), LOO, timings, devices;
* ``run.json``: the configuration, the data and its hash, seeds, versions, ``"kind": "nuts"``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._population import from_unconstrained
from .arviz_bridge import convergence, loo, posterior_table, to_inference_data


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return str(x)
    return x


def warm_start(cfg, bayes, data, *, init_run=None, progress=True):
    """The chains' start: an ML run folder, a quick ML fit, or the configuration's values."""
    from .._estimate.nuts import start_from_config, start_from_fit, start_from_run

    source = str(init_run) if init_run else bayes.warm_start
    if source == "config":
        return start_from_config(cfg.stat, data, cfg.init, cfg.omega_init, cfg.sigma_init)
    if source != "ml":
        return start_from_run(source, cfg.stat, data)
    from .._estimate.fit import fit
    from .._estimate.importance import ISOptions

    # a quick ML fit: the sampler only needs a point in the bulk of the posterior and rough
    # scales, not the polished estimate
    k1, k2 = min(cfg.saem.k1, 150), min(cfg.saem.k2, 50)
    # SAEM runs in blocks of iterations: keep k1 + k2 a multiple of the block
    saem = dataclasses.replace(cfg.saem, k1=k1, k2=k2, block=math.gcd(k1 + k2, cfg.saem.block))
    imp = ISOptions(seed=cfg.importance.seed, target_se=5.0, max_draws=2000, louis_draws=500)
    res = fit(
        cfg.stat,
        data,
        init=cfg.init,
        omega_init=cfg.omega_init,
        sigma_init=cfg.sigma_init,
        saem=saem,
        importance=imp,
        settings=cfg.settings,
        polish=0,
        progress=progress,
    )
    st = start_from_fit(res)
    return dataclasses.replace(st, source=f"quick ML fit (SAEM {saem.k1}+{saem.k2}, no polishing)")


def run_bayes(
    config,
    out=None,
    *,
    warmup=None,
    draws=None,
    chains=None,
    seed=None,
    init_run=None,
    allow_divergences=None,
    progress=True,
):
    """Parse ``config`` (its ``[bayes]`` section), sample, and (if ``out``) write the run folder.

    Returns ``(result, idata, verdict)``; ``verdict["ok"]`` is False when there are divergences
    (unless allowed) or an R-hat above ``rhat_max``.
    """
    from .._estimate.bayes_config import parse_bayes
    from .._estimate.config import load_config
    from .._estimate.nuts import nuts
    from .._output import atomic_directory
    from .._record import file_hash, versions
    from ..api_fit import load_fit_data

    cfg = load_config(config)
    bayes = parse_bayes(cfg)
    over = {
        k: v
        for k, v in {
            "warmup": warmup,
            "draws": draws,
            "chains": chains,
            "seed": seed,
            "allow_divergences": allow_divergences,
        }.items()
        if v is not None
    }
    options = dataclasses.replace(bayes.options, **over)
    ds, data = load_fit_data(cfg)
    t0 = time.perf_counter()
    start = warm_start(cfg, bayes, data, init_run=init_run, progress=progress)
    t_start = time.perf_counter() - t0
    result = nuts(
        cfg.stat,
        data,
        priors=bayes.priors,
        options=options,
        start=start,
        settings=cfg.settings,
        progress=progress,
    )
    t1 = time.perf_counter()
    idata = to_inference_data(result, seed=options.seed)
    verdict = convergence(
        idata,
        rhat_max=options.rhat_max,
        allow_divergences=options.allow_divergences,
        max_tree_depth=options.max_tree_depth,
        rhat_scope=options.rhat_scope,
    )
    verdict["messages"] = list(result.messages) + verdict["messages"]
    timings = {
        "warm_start_s": t_start,
        **result.timings,
        "inference_data_s": time.perf_counter() - t1,
        "total_s": time.perf_counter() - t0,
    }
    if out is not None:
        record = {
            "kind": "nuts",
            "config_file": str(config),
            "config": cfg.raw,
            "seed": options.seed,
            "data": cfg.data_name or cfg.data_path,
            "data_sha256": file_hash(ds.source) if ds.source else None,
            "model": cfg.stat.model.name,
            "citation": cfg.stat.model.citation,
            "sampler": {
                **dataclasses.asdict(options),
                "library": "numpyro NUTS",
                "chain_method": result.chain_method,
                "devices": result.n_devices,
            },
            "warm_start": start.source,
            "solver": {
                "solver": type(cfg.settings.solver).__name__ if cfg.settings.solver else "default",
                "rtol": cfg.settings.rtol,
                "atol": cfg.settings.atol,
            },
            "wall_seconds": timings["total_s"],
            "versions": versions(),
        }
        with atomic_directory(out) as tmp:
            write_nuts_run(result, idata, verdict, tmp, record, bayes.priors, timings)
    return result, idata, verdict


def write_nuts_run(result, idata, verdict, folder, record, priors, timings) -> None:
    """Write a Bayesian run folder (see the module docstring)."""
    from .._estimate.residuals import sdtab

    folder = Path(folder)
    stat, data, m = result.stat, result.data, result.model
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idata.to_netcdf(str(folder / "posterior.nc"))
    table = posterior_table(idata, stat)
    table.to_csv(folder / "parameters.csv", index=False)
    pd.DataFrame(priors.table(stat)).to_csv(folder / "priors.csv", index=False)
    est = result.posterior_mean_estimates()
    mu = np.einsum("njp,jp->nj", m.X, est["beta"])
    ebe = pd.DataFrame({"ID": data.ids})
    for j, (k, dom) in enumerate(zip(stat.iiv, stat.domains, strict=True)):
        ebe[k] = np.asarray(from_unconstrained(dom, jnp.asarray(est["phi"][:, j])))
        ebe[f"ETA{j + 1}"] = est["phi"][:, j] - mu[:, j]
        ebe[f"ETA{j + 1}_sd"] = est["phi_sd"][:, j]
    ebe.to_csv(folder / "ebe.csv", index=False)
    params = {"beta": est["beta"], "omega": est["omega"], "log_sigma": est["log_sigma"]}
    tab = sdtab(stat, m.predict_one, m.arrays, data, m.X, params, est["phi"])
    tab.to_csv(folder / "sdtab.csv", index=False)
    estimates = {
        "kind": "nuts",
        "iiv": list(stat.iiv),
        "domains": list(stat.domains),
        "beta": est["beta"],
        "omega": est["omega"],
        "log_sigma": est["log_sigma"],
        "fixed": dict(stat.fixed),
        "note": "posterior means: beta (parameter, covariate column) on each parameter's natural "
        "scale (log, logit); omega: covariance of eta; log_sigma: log of the posterior "
        "mean residual SDs. Draws are in posterior.nc.",
    }
    (folder / "estimates.json").write_text(json.dumps(_jsonable(estimates), indent=2))
    summary = {
        "kind": "nuts",
        "convergence": verdict,
        "loo": loo(idata),
        "n_subjects": int(data.n_subjects),
        "n_observations": int(data.n_obs),
        "n_censored": int(((data.cens != 0) & data.mask).sum()),
        "chains": result.options.chains,
        "warmup": result.options.warmup,
        "draws": result.options.draws,
        "chain_method": result.chain_method,
        "devices": result.n_devices,
        "timings_s": timings,
        "sdtab_note": "PRED/IPRED/CWRES at the posterior means (CWRES: first-order conditional "
        "residuals as for the ML fit)",
    }
    (folder / "summary.json").write_text(json.dumps(_jsonable(summary), indent=2))
    (folder / "run.json").write_text(json.dumps(_jsonable(record), indent=2))
