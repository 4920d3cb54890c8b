"""NUTS draws as arviz InferenceData; convergence verdict; trace, rank, pair, energy, PPC plots.

Groups of the InferenceData (``posterior.nc`` in a Bayesian run folder):

* ``posterior``: ``typical`` (parameter) typical values in natural units; ``omega_sd``
  (parameter) IIV SDs on each parameter's natural (log/logit) scale; ``omega_corr``
  (parameter, parameter_b) when [iiv] has blocks; ``sigma`` (residual); ``beta_cov`` (covariate)
  when there are covariate effects; ``eta`` (subject, parameter) the random effects
  phi_i - X_i beta (the sampler moves standardised z_i, or phi_i itself for centred ones);
* ``sample_stats``: ``diverging``, ``tree_depth``, ``n_steps``, ``energy``, ``acceptance_rate``,
  ``lp`` (log joint density up to a constant), ``step_size``;
* ``log_likelihood``: ``y`` (obs) per record, conditional on the subject's parameters (M3
  records contribute log P(censoring)): LOO and WAIC leave out one record;
* ``posterior_predictive``: ``y`` (obs) on the scale where the residual is normal (log DV for
  log-additive endpoints), given each draw's individual parameters, censored like the data
  (a BLQ value is set to the LLOQ); a thinned subset of the draws;
* ``observed_data``: ``y`` (obs), the same scale (censored records at the LLOQ);
* ``constant_data``: ``ID``, ``TIME``, ``DVID``, ``CENS``, ``LLOQ`` per record.

So ``az.summary(idata)``, ``az.plot_trace(idata)``, ``az.loo(idata)``, ``az.plot_ppc(idata)``
and ``az.compare({...})`` work on it directly.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .simulate import normal_scale, simulate_replicates

POPULATION_VARS = ("typical", "omega_sd", "omega_corr", "sigma", "beta_cov")


def _az():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az
    return az


def population_vars(idata) -> list[str]:
    return [v for v in POPULATION_VARS if v in idata.posterior]


def to_inference_data(
    result, *, ppc_draws: int | None = None, seed: int = 0, loo_draws: int = 1000, n_is: int = 128
):
    """Convert a :class:`cartkin._estimate.nuts.NUTSResult` into arviz InferenceData.

    ``loo_draws``: posterior draws (thinned evenly) for the subject-level marginal
    log-likelihood (group ``log_likelihood_subject``; 0 leaves it out), ``n_is`` importance
    draws per subject for it (:func:`cartkin._estimate.nuts.subject_marginal_loglik`).
    """
    az = _az()
    m = result.model
    stat, data = m.stat, m.data
    s = result.samples
    C, S = s["mu"].shape[:2]
    pop = result.population()
    names = list(stat.iiv)
    flat_all = {k: jnp.asarray(v.reshape((-1,) + v.shape[2:])) for k, v in s.items()}
    eta = np.asarray(jax.vmap(lambda st: m.phi(st) - m.mu_i(st))(flat_all)).reshape(
        C, S, data.n_subjects, -1
    )
    post = {
        "typical": pop["typical"],
        "omega_sd": pop["omega_sd"],
        "sigma": pop["sigma"],
        "eta": eta,
    }
    coords = {"parameter": names, "residual": m.sigma_names, "subject": data.ids.tolist()}
    dims = {
        "typical": ["parameter"],
        "omega_sd": ["parameter"],
        "sigma": ["residual"],
        "eta": ["subject", "parameter"],
        "y": ["obs"],
    }
    if m.blocks:
        sd = np.sqrt(np.diagonal(pop["omega"], axis1=-2, axis2=-1))
        post["omega_corr"] = pop["omega"] / (sd[..., :, None] * sd[..., None, :])
        coords["parameter_b"] = names
        dims["omega_corr"] = ["parameter", "parameter_b"]
    if m.n_cov:
        from .._estimate.fit import _covariate_column_names

        cn = _covariate_column_names(stat)
        labels = [
            f"{k}~{cn[j][p - 1]}"
            for j, k in enumerate(names)
            for p in range(1, m.colmask.shape[1])
            if m.covmask[j, p]
        ]
        post["beta_cov"] = s["beta_cov"]
        coords["covariate"] = labels
        dims["beta_cov"] = ["covariate"]
    st = result.stats
    n_steps = st["num_steps"].astype(int)
    stats = {
        "diverging": st["diverging"].astype(bool),
        "n_steps": n_steps,
        "tree_depth": np.ceil(np.log2(n_steps + 1)).astype(int),
        "energy": st["energy"],
        "acceptance_rate": st["accept_prob"],
        "lp": -st["potential_energy"],
        "step_size": st["step_size"],
    }
    mask = data.mask
    codes = np.asarray(m.codes)[data.endpoint]
    reps_lloq = _lloq(data)
    h_obs = np.asarray(normal_scale(np.where(mask & (data.dv > 0), data.dv, 1.0), codes))[mask]
    ids = np.repeat(data.ids, mask.shape[1]).reshape(mask.shape)[mask]
    coords["obs"] = np.arange(int(mask.sum()))
    const = {
        "ID": ids,
        "TIME": data.time[mask],
        "DVID": np.asarray([e.dvid for e in stat.endpoints])[data.endpoint[mask]],
        "CENS": data.cens[mask],
        "LLOQ": reps_lloq[mask],
    }
    n_pp = int(ppc_draws or result.options.ppc_draws)
    stride = max(1, int(np.ceil(C * S / n_pp)))
    sel = np.arange(0, S, stride)
    flat = {k: jnp.asarray(v[:, sel].reshape((-1,) + v.shape[2:])) for k, v in s.items()}
    phi = np.asarray(jax.vmap(m.phi)(flat))
    R = phi.shape[0]
    params = {
        "beta": np.zeros((R,) + m.colmask.shape),
        "omega": np.tile(np.eye(len(names)), (R, 1, 1)),
        "log_sigma": np.log(np.asarray(flat["sigma"])),
    }
    reps = simulate_replicates(stat, data, params, R, seed=seed, phi=phi, lloq=reps_lloq)
    h_lloq = np.asarray(normal_scale(np.where(np.isfinite(reps_lloq), reps_lloq, 1.0), codes))
    y_rep = np.where(reps.blq, h_lloq[None], reps.h)[:, mask].reshape(C, len(sel), -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        idata = az.from_dict(
            posterior=post,
            sample_stats=stats,
            log_likelihood={"y": result.log_lik},
            observed_data={"y": h_obs},
            constant_data=const,
            coords=coords,
            dims={**dims, **{k: ["obs"] for k in const}},
            posterior_attrs={
                "inference_library": "numpyro (NUTS)",
                "model": stat.model.name,
                "chain_method": result.chain_method,
                "n_devices": result.n_devices,
                "sampling_seconds": float(result.timings.get("sampling_s", np.nan)),
            },
        )
        pp = az.from_dict(
            posterior_predictive={"y": y_rep}, coords={"obs": coords["obs"]}, dims={"y": ["obs"]}
        )
    idata.extend(pp)
    if loo_draws:
        from .._estimate.nuts import subject_marginal_loglik

        keep = np.arange(0, S, max(1, int(np.ceil(C * S / loo_draws))))
        sub = {k: v[:, keep] for k, v in s.items()}
        ll = subject_marginal_loglik(m, sub, n_is=n_is, seed=seed)
        import xarray as xr

        ds = xr.Dataset(
            {"y": (("chain", "draw", "subject"), ll)},
            coords={"chain": np.arange(C), "draw": keep, "subject": data.ids},
            attrs={
                "description": "log p(y_i | population parameters), random effects integrated "
                "out by importance sampling; thinned draws"
            },
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            idata.add_groups({"log_likelihood_subject": ds})
    return idata


def subject_level(idata):
    """InferenceData for leave-one-subject-out LOO: the thinned posterior draws and the marginal
    per-subject log-likelihood as its ``log_likelihood`` group (``az.loo`` on it)."""
    az = _az()
    if "log_likelihood_subject" not in idata.groups():
        raise ValueError("this InferenceData has no log_likelihood_subject group (loo_draws=0?)")
    ll = idata["log_likelihood_subject"]
    post = idata.posterior[population_vars(idata)].sel(draw=ll["draw"].values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return az.InferenceData(posterior=post, log_likelihood=ll)


def _lloq(data):
    from .simulate import lloq_per_record

    return lloq_per_record(data)


def convergence(
    idata,
    *,
    rhat_max: float = 1.01,
    allow_divergences: bool = False,
    max_tree_depth: int = 10,
    rhat_scope: str = "population",
) -> dict:
    """Divergences, R-hat, ESS, tree-depth saturation, E-BFMI, and a plain verdict.

    R-hat is arviz's rank-normalised split R-hat. ``rhat_scope``: "population" judges the
    population parameters (typical values, IIV SDs and correlations, residual SDs, covariate
    effects); "all" also every subject's random effects. Either way the random effects above
    ``rhat_max`` are counted and reported.
    """
    if rhat_scope not in ("population", "all"):
        raise ValueError(f"rhat_scope {rhat_scope!r}: 'population' or 'all'")
    az = _az()
    vars_ = population_vars(idata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summ = az.summary(idata, var_names=vars_, kind="diagnostics", round_to="none")
        if "omega_corr" in vars_:
            summ = summ[~summ["r_hat"].isna()]
        z_rhat = az.rhat(idata, var_names=["eta"])["eta"].values
        bfmi = np.atleast_1d(az.bfmi(idata))
    st = idata.sample_stats
    n_div = int(st["diverging"].values.sum())
    n_draws = int(st["diverging"].size)
    sat = int((st["tree_depth"].values >= max_tree_depth).sum())
    max_rhat = float(summ["r_hat"].max())
    worst = str(summ["r_hat"].idxmax())
    msgs = []
    ok = True
    if n_div and not allow_divergences:
        ok = False
        msgs.append(
            f"{n_div} divergent transitions after warm-up ({100 * n_div / n_draws:.2f}% of "
            "draws): the posterior has regions the sampler could not explore; the draws "
            "may be biased (raise target_accept, or reparameterise)"
        )
    elif n_div:
        msgs.append(f"{n_div} divergent transitions after warm-up (allowed by configuration)")
    eta_bad = int(np.sum(z_rhat > rhat_max))
    if rhat_scope == "all" and eta_bad:
        ok = False
        msgs.append(
            f"{eta_bad} of {z_rhat.size} random effects have R-hat above {rhat_max} (max "
            f"{np.nanmax(z_rhat):.4f}): the chains have not mixed for those subjects"
        )
    elif eta_bad:
        msgs.append(
            f"{eta_bad} of {z_rhat.size} random effects (subject x parameter) have R-hat above "
            f"{rhat_max} "
            f"(max {np.nanmax(z_rhat):.4f}); the population parameters are not affected by this "
            "verdict (rhat_scope = 'population'), but those subjects' individual estimates "
            "are less certain than their intervals say"
        )
    if max_rhat > rhat_max:
        ok = False
        msgs.append(
            f"R-hat {max_rhat:.4f} for {worst} is above {rhat_max}: the chains have not "
            "mixed; run longer (more warm-up and draws) before using these results"
        )
    if sat:
        msgs.append(
            f"{sat} draws hit the maximum tree depth {max_tree_depth} (efficiency, not validity)"
        )
    if np.any(bfmi < 0.3):
        msgs.append(
            f"E-BFMI below 0.3 in chain(s) {np.flatnonzero(bfmi < 0.3).tolist()}: the "
            "momentum resampling explores the energy poorly"
        )
    if ok:
        msgs.insert(
            0,
            f"converged: no {'unallowed ' if allow_divergences else ''}divergences, "
            f"max R-hat {max_rhat:.4f} <= {rhat_max}",
        )
    return {
        "ok": ok,
        "messages": msgs,
        "divergences": n_div,
        "draws": n_draws,
        "max_rhat": max_rhat,
        "max_rhat_parameter": worst,
        "rhat_max_allowed": rhat_max,
        "min_ess_bulk": float(summ["ess_bulk"].min()),
        "min_ess_bulk_parameter": str(summ["ess_bulk"].idxmin()),
        "min_ess_tail": float(summ["ess_tail"].min()),
        "max_rhat_random_effects": float(np.nanmax(z_rhat)),
        "random_effects_rhat_above": eta_bad,
        "rhat_scope": rhat_scope,
        "tree_depth_saturated": sat,
        "max_tree_depth": max_tree_depth,
        "e_bfmi": bfmi.tolist(),
        "allow_divergences": allow_divergences,
    }


def posterior_table(idata, stat) -> pd.DataFrame:
    """Posterior summary per population parameter: mean, SD, median, 90% interval, MCSE, ESS,
    R-hat (rank-normalised split R-hat, as arviz)."""
    az = _az()
    vars_ = population_vars(idata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summ = az.summary(idata, var_names=vars_, hdi_prob=0.9, round_to="none")
        med = az.summary(idata, var_names=vars_, stat_focus="median", kind="stats", round_to="none")
    post = idata.posterior
    rows = []
    units = {k: p.unit for k, p in stat.model.parameters.items()}
    for key, r in summ.iterrows():
        var, _, inner = key.partition("[")
        inner = inner.rstrip("]")
        kind = {
            "typical": "theta",
            "omega_sd": "omega_sd",
            "omega_corr": "omega_corr",
            "sigma": "sigma",
            "beta_cov": "covariate",
        }[var]
        if var == "omega_corr":
            a, b = [x.strip() for x in inner.split(",")]
            if list(stat.iiv).index(a) <= list(stat.iiv).index(b) or np.isnan(r["r_hat"]):
                continue
        label = {
            "theta": inner,
            "omega_sd": f"omega_sd({inner})",
            "omega_corr": f"corr({inner})",
            "sigma": f"sigma({inner})",
            "covariate": inner,
        }[kind]
        row = {
            "kind": kind,
            "parameter": label,
            "unit": units.get(inner, "") if kind == "theta" else "",
            "mean": r["mean"],
            "sd": r["sd"],
            "median": med.loc[key, "median"],
        }
        vals = post[var].sel(**_sel(var, inner)).values.reshape(-1)
        row["q05"], row["q95"] = np.quantile(vals, [0.05, 0.95])
        row.update(
            mcse_mean=r["mcse_mean"],
            ess_bulk=r["ess_bulk"],
            ess_tail=r["ess_tail"],
            r_hat=r["r_hat"],
        )
        if kind == "omega_sd":
            dom = stat.model.parameters[inner].domain
            row["iiv_cv_pct"] = (
                float(np.mean(np.sqrt(np.expm1(vals**2))) * 100) if dom == "positive" else np.nan
            )
        rows.append(row)
    return pd.DataFrame(rows)


def _sel(var, inner):
    dim = {
        "typical": "parameter",
        "omega_sd": "parameter",
        "sigma": "residual",
        "beta_cov": "covariate",
    }.get(var)
    if var == "omega_corr":
        a, b = [x.strip() for x in inner.split(",")]
        return {"parameter": a, "parameter_b": b}
    return {dim: inner}


def _save(fig_or_axes, path):
    import matplotlib.pyplot as plt

    ax = np.ravel(fig_or_axes)[0] if not hasattr(fig_or_axes, "savefig") else None
    fig = fig_or_axes if ax is None else ax.get_figure()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _setup():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_trace(idata, path) -> None:
    """One row per population parameter: marginal density per chain and the trace."""
    az, _plt = _az(), _setup()
    vars_ = population_vars(idata)
    n = sum(int(np.prod(idata.posterior[v].shape[2:]) or 1) for v in vars_)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = az.plot_trace(
            idata,
            var_names=vars_,
            compact=False,
            divergences="bottom",
            figsize=(12, 1.7 * n),
            backend_kwargs={"layout": "constrained"},
        )
    for ax in np.ravel(axes):
        ax.title.set_fontsize(9)
        ax.tick_params(labelsize=7)
    _save(axes, path)


def plot_rank(idata, path) -> None:
    """Rank histograms per chain (uniform when the chains mix)."""
    az, _plt = _az(), _setup()
    vars_ = population_vars(idata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = az.plot_rank(
            idata,
            var_names=vars_,
            kind="bars",
            figsize=(14, 10),
            backend_kwargs={"layout": "constrained"},
        )
    for ax in np.ravel(axes):
        ax.title.set_fontsize(9)
        ax.tick_params(labelsize=7)
    _save(axes, path)


def plot_pair(idata, path) -> None:
    """Pairs of typical values (and residual SDs), divergent draws in red."""
    az, _plt = _az(), _setup()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = az.plot_pair(
            idata,
            var_names=["typical", "sigma"],
            kind="scatter",
            divergences=True,
            marginals=True,
            scatter_kwargs={"alpha": 0.25, "s": 3},
            figsize=(12, 12),
            textsize=9,
        )
    fig = np.ravel(axes)[0].get_figure()
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.07, top=0.96, wspace=0.08, hspace=0.08)
    fig.suptitle("Posterior pairs: typical values and residual SD (divergent draws in red)")
    _save(axes, path)


def plot_energy(idata, path) -> None:
    az, _plt = _az(), _setup()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ax = az.plot_energy(idata, figsize=(6.5, 4.2))
    _save(ax, path)


def plot_ppc(idata, path) -> None:
    """Posterior predictive check: density of h(DV) (log DV for log-additive endpoints)
    observed against replicated data sets (BLQ records at the LLOQ in both)."""
    az, plt = _az(), _setup()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
        az.plot_ppc(idata, num_pp_samples=100, ax=axes[0], textsize=9)
        axes[0].set_xlabel("y = log DV (BLQ at log LLOQ)")
        axes[0].set_title("posterior predictive density", fontsize=10)
        az.plot_ppc(idata, kind="cumulative", num_pp_samples=100, ax=axes[1], textsize=9)
        axes[1].set_xlabel("y = log DV (BLQ at log LLOQ)")
        axes[1].set_title("posterior predictive CDF", fontsize=10)
        fig.tight_layout()
    _save(fig, path)


def loo(idata) -> dict:
    """PSIS-LOO leaving out one record at a time (given the subject's random effects) and, when
    the InferenceData has it, one subject at a time (marginal likelihood), with Pareto k counts."""
    az = _az()
    out = {}
    levels = [("record", idata)]
    if "log_likelihood_subject" in idata.groups():
        levels.append(("subject", subject_level(idata)))
    from scipy.special import logsumexp

    for level, data in levels:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = az.loo(data, pointwise=True)
        ll = data.log_likelihood["y"].values
        ll = ll.reshape(-1, ll.shape[-1])
        loo_i = np.asarray(res.loo_i, float).copy()
        k = np.asarray(res.pareto_k, float).copy()
        # a unit whose log-likelihood hardly varies over the draws (a censored record the model
        # puts below the LLOQ with probability ~1) has nearly constant weights, which PSIS cannot
        # smooth (arviz returns NaN): plain importance sampling is exact enough there
        bad = ~np.isfinite(loo_i)
        loo_i[bad] = -logsumexp(-ll[:, bad], axis=0) + np.log(ll.shape[0])
        k[bad] = 0.0
        lpd = logsumexp(ll, axis=0) - np.log(ll.shape[0])
        out[level] = {
            "elpd_loo": float(loo_i.sum()),
            "se": float(np.sqrt(loo_i.size * np.var(loo_i))),
            "p_loo": float((lpd - loo_i).sum()),
            "n": int(loo_i.size),
            "n_unsmoothed": int(bad.sum()),
            "pareto_k_above_0.7": int((k > 0.7).sum()),
            "pareto_k_above_1": int((k > 1.0).sum()),
        }
    return out


def compare(runs: dict, level: str = "subject") -> pd.DataFrame:
    """``az.compare`` (LOO) of InferenceData objects (or paths of posterior.nc / run folders)
    fitted to the same records; ``level`` "subject" leaves out one subject at a time (marginal
    likelihood: the fair comparison of structural models), "record" one record at a time."""
    from pathlib import Path

    az = _az()
    loaded = {}
    for name, v in runs.items():
        if isinstance(v, str | Path):
            p = Path(v)
            loaded[name] = az.from_netcdf(p / "posterior.nc" if p.is_dir() else p)
        else:
            loaded[name] = v
    n = {k: v.log_likelihood["y"].shape[-1] for k, v in loaded.items()}
    if len(set(n.values())) > 1:
        raise ValueError(
            f"the runs have different numbers of records {n}: compare models fitted to "
            "the same data only"
        )
    if level == "subject":
        loaded = {k: subject_level(v) for k, v in loaded.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return az.compare(loaded, ic="loo")
