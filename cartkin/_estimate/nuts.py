r"""Bayesian population fit: NUTS on the log-density of :mod:`cartkin._likelihood`.

The population model is the one of the maximum-likelihood fit, with priors on its population
parameters and the random effects non-centred (standardised):

.. math::

    \mu_j \sim N(m_j, s_j)          &\quad \text{typical value on the natural scale (log, logit)}\\
    b \sim N(0, \text{covariate\_sd}) &\quad \text{covariate coefficients}\\
    \omega_j \sim \text{HalfNormal}(w_j) &\quad \text{IIV SDs}\\
    R_b \sim \text{LKJCholesky}(\eta) &\quad \text{correlations of each } \texttt{[iiv] blocks} \text{ block}\\
    \sigma_k \sim \text{HalfNormal}(r_k) &\quad \text{residual SDs}\\
    z_i \sim N(0, I_d),\quad \phi_i &= X_i\beta + A z_i,\quad A = \operatorname{diag}(\omega)\,
        \operatorname{blockdiag}(R_b),\ A A^\top = \Omega\\
    y_i \mid \phi_i &\sim \texttt{subject\_loglik} \text{ (M3 for censored records)}

Non-centring makes the geometry of the funnel between Omega and the random effects easy for
HMC when the data say little about a subject. The conditional log-likelihood is
:func:`cartkin._likelihood.subject_loglik` through :func:`~cartkin._likelihood.make_predictor`:
the ML fit, this sampler and the diagnostics share one statistical model. The pointwise
log-likelihood kept for LOO/WAIC is :func:`~cartkin._likelihood.residual_loglik` per record
(conditional on the subject's parameters).

Sampler: numpyro's NUTS (multinomial NUTS with Stan's windowed adaptation of step size and a
diagonal or dense mass matrix). numpyro is maintained, runs chains in parallel over devices
(``pmap``) or vectorised on one device, shows progress, and its draws map directly onto arviz;
blackjax would give the same kernel but leave warm-up schedules and multi-chain bookkeeping to us.
On the CPU, chains in parallel over host devices are about 3x faster than vectorised chains
(vectorised chains move in lockstep, each step as long as the longest trajectory).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._likelihood import (
    FitData,
    SolverSettings,
    StatModel,
    data_arrays,
    kind_codes,
    make_predictor,
    residual_loglik,
    subject_loglik,
)
from .._population import from_unconstrained, to_unconstrained
from .bayes_config import NUTSOptions, Priors, default_priors, sigma_names

EXTRA_FIELDS = ("diverging", "num_steps", "energy", "accept_prob", "potential_energy",
                "adapt_state.step_size")


@dataclasses.dataclass(frozen=True)
class Start:
    """Where the chains start (natural-scale phi, as in the ML fit's estimates)."""

    beta: np.ndarray  # (d, P)
    omega: np.ndarray  # (d, d)
    log_sigma: np.ndarray  # (k,)
    phi: np.ndarray | None = None  # (N, d) individual parameters (EBEs); None: phi = mu
    beta_se: np.ndarray | None = None  # (d,) SE of the intercepts, for dispersing chain starts
    source: str = ""


def design(stat: StatModel, data: FitData) -> np.ndarray:
    """X (N, d, P): per subject and parameter, the intercept and covariate columns."""
    cols = stat.design(data.covariates, data.n_subjects)
    P = max(c.shape[1] for c in cols)
    X = np.zeros((data.n_subjects, len(cols), P))
    for j, c in enumerate(cols):
        X[:, j, : c.shape[1]] = c
    return X


def _blocks(stat: StatModel) -> list[list[int]]:
    return [sorted(stat.iiv.index(k) for k in b) for b in stat.omega_blocks if len(b) > 1]


class PopulationModel:
    """The numpyro model of ``stat`` on ``data`` and the maps from its sites to phi."""

    def __init__(self, stat: StatModel, data: FitData, priors: Priors,
                 settings: SolverSettings = SolverSettings()):
        self.stat, self.data, self.priors = stat, data, priors
        self.X = design(stat, data)
        self.colmask = np.any(self.X != 0, axis=0)  # (d, P)
        self.covmask = self.colmask.copy()
        self.covmask[:, 0] = False
        self.n_cov = int(self.covmask.sum())
        self.blocks = _blocks(stat)
        self.d = len(stat.iiv)
        self.predict_one = make_predictor(stat, settings)
        self.arrays = data_arrays(data)
        self.codes = jnp.asarray(kind_codes(stat.endpoints))
        self.add = np.array([e.error in ("log_additive", "additive", "combined") for e in stat.endpoints])
        self.prop = np.array([e.error in ("proportional", "combined") for e in stat.endpoints])
        self.sigma_names = sigma_names(stat)
        if len(priors.typical_loc) != self.d or len(priors.sigma_scale) != len(self.sigma_names):
            raise ValueError("priors do not match the fit: one typical-value prior per IIV "
                             "parameter and one residual prior per residual parameter")

    # --- from sites to the population quantities -------------------------------------------
    def beta(self, mu, bcov):
        b = jnp.zeros(self.colmask.shape).at[:, 0].set(mu)
        if self.n_cov:
            b = b.at[self.covmask].set(bcov)
        return b

    def scale_matrix(self, sd, chols):
        """A with A A' = Omega: diag(sd) times the block Cholesky factors of the correlations."""
        A = jnp.diag(sd)
        for idx, Lc in zip(self.blocks, chols):
            ix = np.ix_(idx, idx)
            A = A.at[ix].set(sd[jnp.asarray(idx)][:, None] * Lc)
        return A

    def sigma_per_endpoint(self, sigma):
        n = len(self.add)
        ia, ip = np.flatnonzero(self.add), np.flatnonzero(self.prop)
        sa = jnp.ones(n).at[ia].set(sigma[: len(ia)])
        sp = jnp.ones(n).at[ip].set(sigma[len(ia):])
        return sa, sp

    def phi(self, site):
        """Individual parameters phi (N, d) from a dict of site values (one draw)."""
        b = self.beta(site["mu"], site.get("beta_cov"))
        A = self.scale_matrix(site["omega_sd"], [site[f"omega_corr_chol_{k}"] for k in range(len(self.blocks))])
        return jnp.einsum("njp,jp->nj", jnp.asarray(self.X), b) + site["z"] @ A.T

    def loglik_subjects(self, site):
        """log p(y_i | phi_i, sigma) per subject (N,)."""
        sa, sp = self.sigma_per_endpoint(site["sigma"])
        return jax.vmap(lambda p, di: subject_loglik(self.stat, self.predict_one, p, di, sa, sp, self.codes))(
            self.phi(site), self.arrays)

    def loglik_records(self, site):
        """Per-record log-likelihood (N, T) (0 on padding) and the predictions f (N, T)."""
        sa, sp = self.sigma_per_endpoint(site["sigma"])

        def one(p, di):
            f, ok = self.predict_one(p, di)
            ll = residual_loglik(self.codes[di["endpoint"]], di["dv"], f, di["cens"], di["limit"],
                                 sa[di["endpoint"]], sp[di["endpoint"]], di["mask"])
            return jnp.where(ok, ll, -jnp.inf), f

        return jax.vmap(one)(self.phi(site), self.arrays)

    # --- the numpyro model -------------------------------------------------------------------
    def __call__(self):
        import numpyro
        import numpyro.distributions as dist

        pr = self.priors
        site = {"mu": numpyro.sample("mu", dist.Normal(jnp.asarray(pr.typical_loc),
                                                       jnp.asarray(pr.typical_scale)).to_event(1))}
        if self.n_cov:
            site["beta_cov"] = numpyro.sample(
                "beta_cov", dist.Normal(0.0, pr.covariate_sd).expand([self.n_cov]).to_event(1))
        site["omega_sd"] = numpyro.sample("omega_sd", dist.HalfNormal(jnp.asarray(pr.omega_scale)).to_event(1))
        for k, idx in enumerate(self.blocks):
            site[f"omega_corr_chol_{k}"] = numpyro.sample(
                f"omega_corr_chol_{k}", dist.LKJCholesky(len(idx), concentration=pr.lkj_eta))
        site["sigma"] = numpyro.sample("sigma", dist.HalfNormal(jnp.asarray(pr.sigma_scale)).to_event(1))
        site["z"] = numpyro.sample(
            "z", dist.Normal(0.0, 1.0).expand([self.data.n_subjects, self.d]).to_event(2))
        numpyro.factor("loglik", jnp.sum(self.loglik_subjects(site)))

    # --- starting values -----------------------------------------------------------------------
    def start_sites(self, start: Start, chains: int, seed: int) -> dict[str, np.ndarray]:
        """Constrained site values per chain: chain 0 at the start, the others dispersed around it
        (intercepts by about one SE, SDs by about 10%, random effects by 0.1)."""
        rng = np.random.default_rng(seed)
        sd = np.sqrt(np.diag(start.omega))
        corr = start.omega / np.outer(sd, sd)
        X = self.X
        mu_i = np.einsum("njp,jp->nj", X, start.beta)
        phi = mu_i if start.phi is None else np.asarray(start.phi)
        A = np.asarray(self.scale_matrix(jnp.asarray(sd), [np.linalg.cholesky(corr[np.ix_(i, i)])
                                                           for i in self.blocks]))
        z = np.linalg.solve(A, (phi - mu_i).T).T
        se = start.beta_se if start.beta_se is not None else 0.05 * np.ones(self.d)
        out = {k: [] for k in ("mu", "beta_cov", "omega_sd", "sigma", "z")}
        out.update({f"omega_corr_chol_{k}": [] for k in range(len(self.blocks))})
        for c in range(chains):
            s = 0.0 if c == 0 else 1.0
            out["mu"].append(start.beta[:, 0] + s * se * rng.standard_normal(self.d))
            out["beta_cov"].append(start.beta[self.covmask])
            out["omega_sd"].append(sd * np.exp(s * 0.1 * rng.standard_normal(self.d)))
            out["sigma"].append(np.exp(start.log_sigma + s * 0.05 * rng.standard_normal(len(start.log_sigma))))
            out["z"].append(z + s * 0.1 * rng.standard_normal(z.shape))
            for k, idx in enumerate(self.blocks):
                out[f"omega_corr_chol_{k}"].append(np.linalg.cholesky(corr[np.ix_(idx, idx)]))
        if not self.n_cov:
            del out["beta_cov"]
        return {k: np.stack(v) for k, v in out.items()}


@dataclasses.dataclass(frozen=True)
class NUTSResult:
    """Draws of a NUTS run (numpy, leading axes (chain, draw)) and how they were made."""

    model: PopulationModel
    options: NUTSOptions
    samples: dict  # site -> (C, S, ...)
    stats: dict  # diverging, num_steps, energy, accept_prob, potential_energy, step_size
    log_lik: np.ndarray  # (C, S, n_obs) per used record (data.mask order)
    chain_method: str
    n_devices: int
    timings: dict
    start: Start
    messages: tuple[str, ...] = ()

    @property
    def stat(self) -> StatModel:
        return self.model.stat

    @property
    def data(self) -> FitData:
        return self.model.data

    def draws(self, site: str) -> np.ndarray:
        return self.samples[site]

    def flat(self) -> dict[str, np.ndarray]:
        """Sites with chain and draw merged into one leading axis."""
        return {k: v.reshape((-1,) + v.shape[2:]) for k, v in self.samples.items()}

    def population(self) -> dict[str, np.ndarray]:
        """Natural-scale population quantities per draw (C, S, ...): typical values, beta,
        Omega, IIV SDs, residual SDs."""
        m = self.model
        C, S = self.samples["mu"].shape[:2]
        flat = self.flat()

        def one(site):
            A = m.scale_matrix(site["omega_sd"], [site[f"omega_corr_chol_{k}"] for k in range(len(m.blocks))])
            return {"beta": m.beta(site["mu"], site.get("beta_cov")), "omega": A @ A.T}

        keys = [k for k in flat if k != "z"]
        out = jax.vmap(one)({k: jnp.asarray(flat[k]) for k in keys})
        res = {k: np.asarray(v).reshape((C, S) + v.shape[1:]) for k, v in out.items()}
        res["typical"] = np.stack([np.asarray(from_unconstrained(dom, self.samples["mu"][..., j]))
                                   for j, dom in enumerate(m.stat.domains)], -1)
        res["omega_sd"] = self.samples["omega_sd"]
        res["sigma"] = self.samples["sigma"]
        return res

    def posterior_mean_estimates(self) -> dict:
        """Posterior means in the ML fit's layout: beta, omega, log_sigma, and phi (N, d)."""
        pop = self.population()
        phi = np.asarray(jax.vmap(self.model.phi)({k: jnp.asarray(v) for k, v in self.flat().items()}))
        return {"beta": pop["beta"].mean((0, 1)), "omega": pop["omega"].mean((0, 1)),
                "log_sigma": np.log(self.samples["sigma"].mean((0, 1))), "phi": phi.mean(0),
                "phi_sd": phi.std(0)}


def start_from_run(run_dir: str | Path, stat: StatModel, data: FitData) -> Start:
    """Start at the estimate of a finished ML run folder (estimates.json and ebe.csv)."""
    run_dir = Path(run_dir)
    for f in ("estimates.json", "ebe.csv"):
        if not (run_dir / f).exists():
            raise FileNotFoundError(f"warm start: {run_dir} is not a fit run folder ({f} missing)")
    est = json.loads((run_dir / "estimates.json").read_text())
    if list(est["iiv"]) != list(stat.iiv):
        raise ValueError(f"warm start: {run_dir} fitted IIV on {est['iiv']}, this fit has {list(stat.iiv)}")
    ebe = pd.read_csv(run_dir / "ebe.csv").set_index("ID")
    missing = set(data.ids.tolist()) - set(ebe.index.tolist())
    if missing:
        raise ValueError(f"warm start: {run_dir} has no EBE for subject(s) {sorted(missing)[:10]}")
    phi = np.stack([np.asarray(to_unconstrained(dom, ebe.loc[data.ids, k].to_numpy(float)))
                    for k, dom in zip(stat.iiv, stat.domains)], 1)
    beta = np.asarray(est["beta"], float)
    cov = np.asarray(est.get("psi_covariance", []), float)
    se = None
    if cov.size:
        colmask = np.any(design(stat, data) != 0, axis=0)
        pos = np.cumsum(colmask.reshape(-1)).reshape(colmask.shape) - 1
        se = np.sqrt(np.abs(np.diag(cov)[pos[:, 0]]))
    return Start(beta=beta, omega=np.asarray(est["omega"], float),
                 log_sigma=np.asarray(est["log_sigma"], float), phi=phi, beta_se=se,
                 source=f"ML run {run_dir}")


def start_from_fit(result) -> Start:
    """Start at a :class:`cartkin._estimate.fit.FitResult` (estimate and EBEs)."""
    stat = result.stat
    ebe = result.ebe
    phi = np.stack([np.asarray(to_unconstrained(dom, ebe[k].to_numpy(float)))
                    for k, dom in zip(stat.iiv, stat.domains)], 1)
    est = result.estimates
    d = len(stat.iiv)
    se = np.sqrt(np.abs(np.diag(result.covariance)))
    colmask = np.any(design(stat, result.data) != 0, axis=0)
    pos = np.cumsum(colmask.reshape(-1)).reshape(colmask.shape) - 1
    return Start(beta=np.asarray(est["beta"]), omega=np.asarray(est["omega"]),
                 log_sigma=np.asarray(est["log_sigma"]), phi=phi,
                 beta_se=se[pos[:, 0]] if se.size >= d else None, source="ML fit (this run)")


def start_from_config(stat: StatModel, data: FitData, init, omega_init, sigma_init) -> Start:
    """Start at the initial values of a fit configuration (random effects at zero)."""
    base = {k: p.default for k, p in stat.model.parameters.items()} | dict(init)
    X = design(stat, data)
    beta = np.zeros(X.shape[1:])
    beta[:, 0] = stat.phi_from_theta(base)
    om = np.diag([float(omega_init.get(k, 0.25)) for k in stat.iiv])
    ls = np.log([float(sigma_init.get(n, 0.5 if not n.endswith("_prop") else 0.2))
                 for n in sigma_names(stat)])
    return Start(beta=beta, omega=om, log_sigma=ls, phi=None, source="configuration initial values")


def _chain_method(options: NUTSOptions) -> tuple[str, list[str]]:
    n_dev = jax.local_device_count()
    msgs = []
    method = options.chain_method
    if method == "auto":
        method = "parallel" if n_dev >= options.chains and options.chains > 1 else "vectorized"
        if method == "vectorized" and options.chains > 1:
            msgs.append(f"{n_dev} JAX device(s) for {options.chains} chains: the chains run "
                        "vectorised on one device (slower on a CPU than chains in parallel; "
                        f"set XLA_FLAGS=--xla_force_host_platform_device_count={options.chains} "
                        "before JAX starts, as `cartkin bayes` does)")
    elif method == "parallel" and n_dev < options.chains:
        msgs.append(f"chain_method parallel needs {options.chains} devices, found {n_dev}: "
                    "running vectorised instead")
        method = "vectorized"
    return method, msgs


def nuts(stat: StatModel, data: FitData, *, priors: Priors | None = None,
         options: NUTSOptions = NUTSOptions(), start: Start | None = None,
         settings: SolverSettings = SolverSettings(), progress: bool = True) -> NUTSResult:
    """Sample the posterior of ``stat`` given ``data`` with NUTS.

    Args:
        priors: priors of the population parameters (default: weakly informative, centred on the
            model's default values; see :func:`~.bayes_config.default_priors`).
        options: chains, warm-up, draws, adaptation, how chains are mapped onto devices.
        start: where chain 0 starts (:func:`start_from_run`, :func:`start_from_fit`,
            :func:`start_from_config`); the other chains start dispersed around it.
    """
    from numpyro.infer import MCMC, NUTS
    from numpyro.infer.util import unconstrain_fn

    t0 = time.perf_counter()
    priors = priors or default_priors(stat)
    model = PopulationModel(stat, data, priors, settings)
    if start is None:
        start = start_from_config(stat, data, {}, {}, {})
    method, msgs = _chain_method(options)
    sites = model.start_sites(start, options.chains, options.seed)
    init = jax.vmap(lambda s: unconstrain_fn(model, (), {}, s))({k: jnp.asarray(v) for k, v in sites.items()})
    ll0 = np.asarray(jax.vmap(lambda s: model.loglik_subjects(s).sum())({k: jnp.asarray(v) for k, v in sites.items()}))
    if not np.all(np.isfinite(ll0)):
        raise ValueError("the model cannot be evaluated at the chains' starting values (a solve "
                         "failed or a likelihood is not finite): check the warm start")
    dense = False
    if options.dense_mass:
        dense = [tuple(k for k in sites if k != "z")]
    kernel = NUTS(model, target_accept_prob=options.target_accept,
                  max_tree_depth=options.max_tree_depth, dense_mass=dense)
    mcmc = MCMC(kernel, num_warmup=options.warmup, num_samples=options.draws,
                num_chains=options.chains, chain_method=method, progress_bar=progress)
    if options.chains == 1:
        init = jax.tree.map(lambda x: x[0], init)
    mcmc.run(jax.random.PRNGKey(options.seed), init_params=init, extra_fields=EXTRA_FIELDS)
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    extra = mcmc.get_extra_fields(group_by_chain=True)
    stats = {("step_size" if k == "adapt_state.step_size" else k): np.asarray(v) for k, v in extra.items()}
    t1 = time.perf_counter()
    log_lik = pointwise_loglik(model, samples)
    t2 = time.perf_counter()
    return NUTSResult(model=model, options=options, samples=samples, stats=stats, log_lik=log_lik,
                      chain_method=method, n_devices=jax.local_device_count(),
                      timings={"sampling_s": t1 - t0, "pointwise_loglik_s": t2 - t1},
                      start=start, messages=tuple(msgs))


def pointwise_loglik(model: PopulationModel, samples: dict, batch: int = 64) -> np.ndarray:
    """log p(y_ij | phi_i, sigma) per draw and used record: (C, S, n_obs)."""
    C, S = samples["mu"].shape[:2]
    flat = {k: jnp.asarray(v.reshape((-1,) + v.shape[2:])) for k, v in samples.items()}
    mask = np.asarray(model.data.mask)

    @jax.jit
    def run(fl):
        return jax.lax.map(lambda s: model.loglik_records(s)[0][mask], fl, batch_size=batch)

    return np.asarray(run(flat)).reshape(C, S, -1)
