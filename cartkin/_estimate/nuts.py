r"""Bayesian population fit: NUTS on the log-density of :mod:`cartkin._likelihood`.

The population model is the one of the maximum-likelihood fit, with priors on its population
parameters:

.. math::

    \mu_j &\sim N(m_j, s_j)  \quad\text{typical value on the natural scale (log, logit)}\\
    b &\sim N(0, \text{covariate\_sd})  \quad\text{covariate coefficients}\\
    \omega_j &\sim \text{HalfNormal}(w_j)  \quad\text{IIV SDs}\\
    R_b &\sim \text{LKJCholesky}(\eta)  \quad\text{correlations of each [iiv] block}\\
    \sigma_k &\sim \text{HalfNormal}(r_k)  \quad\text{residual SDs}\\
    \phi_i &= X_i\beta + \eta_i,\quad \eta_i \sim N(0, \Omega),\quad
        \Omega = A A^\top,\ A = \operatorname{diag}(\omega)\operatorname{blockdiag}(R_b)\\
    y_i \mid \phi_i &\sim \texttt{subject\_loglik} \text{ (M3 for censored records)}

Random effects are non-centred, eta_i = A z_i with z_i ~ N(0, I), the parameterisation HMC
needs when the data say little about a subject (the funnel between Omega and eta). Where the data
pin the subjects' values down, non-centring is the slow one (the typical value and every z_i
must move together): :func:`choose_centring` samples those parameters centred (phi_i itself,
with prior :func:`~cartkin._likelihood.eta_logprior`). On the bundled Stein cohort that is Tmax
and alpha, whose bulk ESS rose from 32 to 1,800 (300 draws per chain).

The conditional log-likelihood is :func:`cartkin._likelihood.subject_loglik` through
:func:`~cartkin._likelihood.make_predictor`, and the prior of the random effects
:func:`~cartkin._likelihood.eta_logprior`: the ML fit, this sampler and the diagnostics share one
statistical model. The pointwise log-likelihood kept for LOO/WAIC is
:func:`~cartkin._likelihood.residual_loglik` per record (conditional on the subject's parameters).

Sampler: numpyro's NUTS (multinomial NUTS with Stan's windowed adaptation of the step size and
of a mass matrix: dense over the population parameters, diagonal over the random effects).
numpyro is maintained, runs chains in parallel over devices (``pmap``) or vectorised on one
device, shows progress, and its draws map directly onto arviz; blackjax has the same kernels but
leaves warm-up schedules, structured mass matrices and multi-chain bookkeeping to the caller.
On the CPU, chains in parallel over host devices were about 3x faster than vectorised chains in
the prototypes (vectorised chains move in lockstep, each step as long as the longest trajectory).
The warm start comes from the ML fit: its estimate, its EBEs and their SDs (which also set the
initial mass matrix, so the first adaptation window starts at a sensible step size).
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
    eta_logprior,
    kind_codes,
    make_predictor,
    record_loglik,
    sigma_per_endpoint,
    subject_loglik,
)
from .._population import from_unconstrained, to_unconstrained
from .bayes_config import NUTSOptions, Priors, default_priors, sigma_names

EXTRA_FIELDS = (
    "diverging",
    "num_steps",
    "energy",
    "accept_prob",
    "potential_energy",
    "adapt_state.step_size",
)


DEFAULT_SETTINGS = SolverSettings()
DEFAULT_OPTIONS = NUTSOptions()


@dataclasses.dataclass(frozen=True)
class Start:
    """Where the chains start (natural-scale phi, as in the ML fit's estimates)."""

    beta: np.ndarray  # (d, P)
    omega: np.ndarray  # (d, d)
    log_sigma: np.ndarray  # (k,)
    phi: np.ndarray | None = None  # (N, d) individual parameters (EBEs); None: phi = mu
    beta_se: np.ndarray | None = None  # (d,) SE of the intercepts
    phi_sd: np.ndarray | None = None  # (N, d) conditional SD of phi (from the EBEs)
    psi_cov: np.ndarray | None = None  # covariance of psi = (beta, Omega lower triangle, log sigma)
    source: str = ""


def design(stat: StatModel, data: FitData) -> np.ndarray:
    """X (N, d, P): per subject and parameter, the intercept and covariate columns."""
    return stat.design_matrix(data)


def _blocks(stat: StatModel) -> list[list[int]]:
    return [sorted(stat.iiv.index(k) for k in b) for b in stat.omega_blocks if len(b) > 1]


class PopulationModel:
    """The numpyro model of ``stat`` on ``data`` and the maps from its sites to phi."""

    def __init__(
        self,
        stat: StatModel,
        data: FitData,
        priors: Priors,
        settings: SolverSettings = DEFAULT_SETTINGS,
        centred: tuple[str, ...] = (),
    ):
        self.stat, self.data, self.priors = stat, data, priors
        self.centred = tuple(k for k in stat.iiv if k in centred)
        self.ic = np.array([stat.iiv.index(k) for k in self.centred], int)
        self.inc = np.array([j for j, k in enumerate(stat.iiv) if k not in centred], int)
        for b in stat.omega_blocks:
            if 0 < len(set(b) & set(self.centred)) < len(b):
                raise ValueError(
                    f"omega block {list(b)}: its parameters must all be centred or all "
                    f"non-centred (centred: {list(self.centred)})"
                )
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
        self.sigma_names = sigma_names(stat)
        self.wc = jnp.zeros((data.n_subjects, self.d))  # see set_offset
        self.ws = jnp.ones((data.n_subjects, self.d))
        if len(priors.typical_loc) != self.d or len(priors.sigma_scale) != len(self.sigma_names):
            raise ValueError(
                "priors do not match the fit: one typical-value prior per IIV "
                "parameter and one residual prior per residual parameter"
            )

    # --- from sites to the population quantities -------------------------------------------
    def beta(self, mu, bcov):
        b = jnp.zeros(self.colmask.shape).at[:, 0].set(mu)
        if self.n_cov:
            b = b.at[self.covmask].set(bcov)
        return b

    def scale_matrix(self, sd, chols):
        """A with A A' = Omega: diag(sd) times the block Cholesky factors of the correlations."""
        A = jnp.diag(sd)
        for idx, Lc in zip(self.blocks, chols, strict=True):
            ix = np.ix_(idx, idx)
            A = A.at[ix].set(sd[jnp.asarray(idx)][:, None] * Lc)
        return A

    def sigma_per_endpoint(self, sigma):
        return sigma_per_endpoint(self.stat.endpoints, sigma)

    def mu_i(self, site):
        """Typical individual parameters X_i beta (N, d) of one draw."""
        return jnp.einsum(
            "njp,jp->nj", jnp.asarray(self.X), self.beta(site["mu"], site.get("beta_cov"))
        )

    def A(self, site):
        return self.scale_matrix(
            site["omega_sd"], [site[f"omega_corr_chol_{k}"] for k in range(len(self.blocks))]
        )

    def v(self, site):
        """The random-effect coordinates v_i = (z_i of the non-centred parameters, phi_i of the
        centred ones) (N, d) from the sampled w_i: v_i = c_i + s_i * w_i."""
        return self.wc + self.ws * site["w"]

    def phi(self, site):
        """Individual parameters phi (N, d) from a dict of site values (one draw): mu_i + A z_i
        for the non-centred parameters, the sampled phi for the centred ones."""
        phi = self.mu_i(site)
        v = self.v(site)
        k = self.inc.size
        if k:
            A = self.A(site)[np.ix_(self.inc, self.inc)]
            phi = phi.at[:, self.inc].add(v[:, :k] @ A.T)
        if self.ic.size:
            phi = phi.at[:, self.ic].set(v[:, k:])
        return phi

    def re_logprior(self, site, v):
        """log prior density of the random-effect coordinates (N,): N(0, I) for the standardised
        z, N(mu_i, Omega) for the centred phi (both by eta_logprior)."""
        k = self.inc.size
        lp = jnp.zeros(v.shape[0])
        if k:
            lp = lp + eta_logprior(v[:, :k], jnp.eye(k))
        if self.ic.size:
            L = self.A(site)[np.ix_(self.ic, self.ic)]
            lp = lp + eta_logprior(v[:, k:] - self.mu_i(site)[:, self.ic], L)
        return lp

    def loglik_subjects(self, site):
        """log p(y_i | phi_i, sigma) per subject (N,)."""
        sa, sp = self.sigma_per_endpoint(site["sigma"])
        return jax.vmap(
            lambda p, di: subject_loglik(self.stat, self.predict_one, p, di, sa, sp, self.codes)
        )(self.phi(site), self.arrays)

    def loglik_records(self, site):
        """Per-record log-likelihood (N, T) (0 on padding) and the predictions f (N, T)."""
        sa, sp = self.sigma_per_endpoint(site["sigma"])

        def one(p, di):
            f, ok = self.predict_one(p, di)
            ll = record_loglik(self.codes, di, f, sa, sp)
            return jnp.where(ok, ll, -jnp.inf), f

        return jax.vmap(one)(self.phi(site), self.arrays)

    # --- the numpyro model -------------------------------------------------------------------
    def __call__(self):
        import numpyro
        import numpyro.distributions as dist

        pr = self.priors
        site = {
            "mu": numpyro.sample(
                "mu",
                dist.Normal(jnp.asarray(pr.typical_loc), jnp.asarray(pr.typical_scale)).to_event(1),
            )
        }
        if self.n_cov:
            site["beta_cov"] = numpyro.sample(
                "beta_cov", dist.Normal(0.0, pr.covariate_sd).expand([self.n_cov]).to_event(1)
            )
        site["omega_sd"] = numpyro.sample(
            "omega_sd", dist.HalfNormal(jnp.asarray(pr.omega_scale)).to_event(1)
        )
        for k, idx in enumerate(self.blocks):
            site[f"omega_corr_chol_{k}"] = numpyro.sample(
                f"omega_corr_chol_{k}", dist.LKJCholesky(len(idx), concentration=pr.lkj_eta)
            )
        site["sigma"] = numpyro.sample(
            "sigma", dist.HalfNormal(jnp.asarray(pr.sigma_scale)).to_event(1)
        )
        N = self.data.n_subjects
        # the random effects: w_i flat, v_i = c_i + s_i w_i (a fixed affine map: constant Jacobian)
        # with the prior of v_i (non-centred z_i ~ N(0, I); centred phi_i ~ N(mu_i, Omega))
        site["w"] = numpyro.sample(
            "w", dist.ImproperUniform(dist.constraints.real, (), (N, self.d))
        )
        numpyro.factor("random_effects_prior", jnp.sum(self.re_logprior(site, self.v(site))))
        numpyro.factor("loglik", jnp.sum(self.loglik_subjects(site)))

    def set_offset(self, c, scale):
        """v_i = c_i + scale_i * w_i: w is centred on the start and in units of the random
        effects' expected posterior SD, so one step size suits them all from the start."""
        self.wc, self.ws = jnp.asarray(c), jnp.asarray(scale)

    # --- starting values -----------------------------------------------------------------------
    def start_values(self, start: Start) -> tuple[dict, np.ndarray, np.ndarray]:
        """Chain 0's population sites, its random-effect coordinates v (N, d), and their expected
        posterior SD (the EBE SD; in units of the IIV SD for the standardised z)."""
        sd = np.sqrt(np.diag(start.omega))
        corr = start.omega / np.outer(sd, sd)
        mu_i = np.einsum("njp,jp->nj", self.X, start.beta)
        phi = mu_i if start.phi is None else np.asarray(start.phi)
        A = np.asarray(
            self.scale_matrix(
                jnp.asarray(sd), [np.linalg.cholesky(corr[np.ix_(i, i)]) for i in self.blocks]
            )
        )
        inc, ic = self.inc, self.ic
        z = np.linalg.solve(A[np.ix_(inc, inc)], (phi - mu_i)[:, inc].T).T
        v = np.concatenate([z, phi[:, ic]], 1)
        psd = start.phi_sd if start.phi_sd is not None else sd[None].repeat(len(phi), 0)
        scale = np.concatenate([psd[:, inc] / sd[inc], psd[:, ic]], 1)
        site = {"mu": start.beta[:, 0], "omega_sd": sd, "sigma": np.exp(start.log_sigma)}
        if self.n_cov:
            site["beta_cov"] = start.beta[self.covmask]
        for k, idx in enumerate(self.blocks):
            site[f"omega_corr_chol_{k}"] = np.linalg.cholesky(corr[np.ix_(idx, idx)])
        return site, v, scale

    def start_sites(self, start: Start, chains: int, seed: int) -> dict[str, np.ndarray]:
        """Constrained site values per chain: chain 0 at the start, the others dispersed around it
        (intercepts by about one SE, SDs by about 10%, random effects by 0.3 posterior SD)."""
        rng = np.random.default_rng(seed)
        base, _, _ = self.start_values(start)
        se = start.beta_se if start.beta_se is not None else 0.05 * np.ones(self.d)
        N = self.data.n_subjects
        out = {k: [] for k in base} | {"w": []}
        for c in range(chains):
            s = 0.0 if c == 0 else 1.0
            out["mu"].append(base["mu"] + s * se * rng.standard_normal(self.d))
            out["omega_sd"].append(base["omega_sd"] * np.exp(s * 0.1 * rng.standard_normal(self.d)))
            out["sigma"].append(
                base["sigma"] * np.exp(s * 0.05 * rng.standard_normal(len(base["sigma"])))
            )
            out["w"].append(s * 0.3 * rng.standard_normal((N, self.d)))
            for k in base:
                if k not in ("mu", "omega_sd", "sigma"):
                    out[k].append(base[k])
        return {k: np.stack(v) for k, v in out.items()}

    def initial_metric(self, start: Start) -> dict | None:
        """A diagonal inverse mass matrix for the start of warm-up, from the ML fit's standard
        errors and EBE SDs (posterior variances of the unconstrained sites, roughly): with it the
        first adaptation window starts at a sensible step size instead of exploring with the
        identity. None when the start carries no uncertainty."""
        if start.psi_cov is None or start.phi_sd is None:
            return None
        v = np.diag(start.psi_cov)
        nb = int(self.colmask.sum())
        omask = np.tril(self.stat.omega_mask())
        diag_pos = [i for i, (a, b) in enumerate(zip(*np.nonzero(omask), strict=True)) if a == b]
        om = np.diag(start.omega)
        pos = np.cumsum(self.colmask.reshape(-1)).reshape(self.colmask.shape) - 1
        out = {
            ("mu",): v[pos[:, 0]],
            ("omega_sd",): v[nb + np.asarray(diag_pos)] / (4 * om**2),
            ("sigma",): v[nb + int(omask.sum()) :],
        }
        out[("w",)] = np.ones(self.data.n_subjects * self.d)  # w is in posterior-SD units
        if self.n_cov:
            out[("beta_cov",)] = v[pos[self.covmask]]
        for k, idx in enumerate(self.blocks):
            m = len(idx) * (len(idx) - 1) // 2
            out[(f"omega_corr_chol_{k}",)] = np.full(m, 0.05)
        return {
            k: jnp.asarray(np.clip(np.nan_to_num(val, nan=1.0), 1e-6, 10.0))
            for k, val in out.items()
        }


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
            A = m.scale_matrix(
                site["omega_sd"], [site[f"omega_corr_chol_{k}"] for k in range(len(m.blocks))]
            )
            return {"beta": m.beta(site["mu"], site.get("beta_cov")), "omega": A @ A.T}

        keys = [k for k in flat if k != "w"]
        out = jax.vmap(one)({k: jnp.asarray(flat[k]) for k in keys})
        res = {k: np.asarray(v).reshape((C, S) + v.shape[1:]) for k, v in out.items()}
        res["typical"] = np.stack(
            [
                np.asarray(from_unconstrained(dom, self.samples["mu"][..., j]))
                for j, dom in enumerate(m.stat.domains)
            ],
            -1,
        )
        res["omega_sd"] = self.samples["omega_sd"]
        res["sigma"] = self.samples["sigma"]
        return res

    def posterior_mean_estimates(self) -> dict:
        """Posterior means in the ML fit's layout: beta, omega, log_sigma, and phi (N, d)."""
        pop = self.population()
        phi = np.asarray(
            jax.vmap(self.model.phi)({k: jnp.asarray(v) for k, v in self.flat().items()})
        )
        return {
            "beta": pop["beta"].mean((0, 1)),
            "omega": pop["omega"].mean((0, 1)),
            "log_sigma": np.log(self.samples["sigma"].mean((0, 1))),
            "phi": phi.mean(0),
            "phi_sd": phi.std(0),
        }


def start_from_run(run_dir: str | Path, stat: StatModel, data: FitData) -> Start:
    """Start at the estimate of a finished ML run folder (estimates.json and ebe.csv)."""
    run_dir = Path(run_dir)
    for f in ("estimates.json", "ebe.csv"):
        if not (run_dir / f).exists():
            raise FileNotFoundError(f"warm start: {run_dir} is not a fit run folder ({f} missing)")
    est = json.loads((run_dir / "estimates.json").read_text())
    if list(est["iiv"]) != list(stat.iiv):
        raise ValueError(
            f"warm start: {run_dir} fitted IIV on {est['iiv']}, this fit has {list(stat.iiv)}"
        )
    ebe = pd.read_csv(run_dir / "ebe.csv").set_index("ID")
    missing = set(data.ids.tolist()) - set(ebe.index.tolist())
    if missing:
        raise ValueError(f"warm start: {run_dir} has no EBE for subject(s) {sorted(missing)[:10]}")
    phi = np.stack(
        [
            np.asarray(to_unconstrained(dom, ebe.loc[data.ids, k].to_numpy(float)))
            for k, dom in zip(stat.iiv, stat.domains, strict=True)
        ],
        1,
    )
    sd_cols = [f"ETA{j + 1}_sd" for j in range(len(stat.iiv))]
    phi_sd = ebe.loc[data.ids, sd_cols].to_numpy(float) if set(sd_cols) <= set(ebe) else None
    beta = np.asarray(est["beta"], float)
    cov = np.asarray(est.get("psi_covariance", []), float)
    cov = cov if cov.ndim == 2 and cov.size and np.all(np.isfinite(np.diag(cov))) else None
    return Start(
        beta=beta,
        omega=np.asarray(est["omega"], float),
        log_sigma=np.asarray(est["log_sigma"], float),
        phi=phi,
        beta_se=_intercept_se(stat, data, cov),
        phi_sd=phi_sd,
        psi_cov=cov,
        source=f"ML run {run_dir}",
    )


def _intercept_se(stat, data, cov):
    if cov is None:
        return None
    colmask = np.any(design(stat, data) != 0, axis=0)
    pos = np.cumsum(colmask.reshape(-1)).reshape(colmask.shape) - 1
    return np.sqrt(np.abs(np.diag(cov)[pos[:, 0]]))


def start_from_fit(result) -> Start:
    """Start at a :class:`cartkin._estimate.fit.FitResult` (estimate and EBEs)."""
    stat = result.stat
    ebe = result.ebe
    phi = np.stack(
        [
            np.asarray(to_unconstrained(dom, ebe[k].to_numpy(float)))
            for k, dom in zip(stat.iiv, stat.domains, strict=True)
        ],
        1,
    )
    est = result.estimates
    cov = np.asarray(result.covariance, float)
    cov = cov if np.all(np.isfinite(np.diag(cov))) else None
    phi_sd = ebe[[f"ETA{j + 1}_sd" for j in range(len(stat.iiv))]].to_numpy(float)
    return Start(
        beta=np.asarray(est["beta"]),
        omega=np.asarray(est["omega"]),
        log_sigma=np.asarray(est["log_sigma"]),
        phi=phi,
        beta_se=_intercept_se(stat, result.data, cov),
        phi_sd=phi_sd,
        psi_cov=cov,
        source="ML fit (this run)",
    )


def start_from_config(stat: StatModel, data: FitData, init, omega_init, sigma_init) -> Start:
    """Start at the initial values of a fit configuration (random effects at zero)."""
    base = {k: p.default for k, p in stat.model.parameters.items()} | dict(init)
    X = design(stat, data)
    beta = np.zeros(X.shape[1:])
    beta[:, 0] = stat.phi_from_theta(base)
    om = np.diag([float(omega_init.get(k, 0.25)) for k in stat.iiv])
    ls = np.log(
        [
            float(sigma_init.get(n, 0.5 if not n.endswith("_prop") else 0.2))
            for n in sigma_names(stat)
        ]
    )
    return Start(beta=beta, omega=om, log_sigma=ls, phi=None, source="configuration initial values")


CENTRE_BELOW = 0.35


def choose_centring(stat: StatModel, start: Start, spec) -> tuple[tuple[str, ...], str]:
    """Which random effects are sampled centred.

    ``spec``: a list of parameter names, ``"none"`` (all non-centred), or ``"auto"``: centre a
    parameter when the data pin the subjects' values down, i.e. when the median over subjects of
    its conditional SD (the ML fit's EBE SD) is below ``CENTRE_BELOW`` times its IIV SD
    (Papaspiliopoulos, Roberts, Skold 2007: non-centred suits weakly informed random effects,
    centred strongly informed ones). Blocks of [iiv] are centred together. Without EBE SDs every
    effect is non-centred.
    """
    if isinstance(spec, str) and spec == "none":
        return (), "random effects: all non-centred"
    if not isinstance(spec, str):
        unknown = set(spec) - set(stat.iiv)
        if unknown:
            raise ValueError(
                f"[bayes] centred names {sorted(unknown)}, which have no IIV ({list(stat.iiv)})"
            )
        chosen = set(spec)
        how = "as configured"
    else:
        if spec != "auto":
            raise ValueError(
                f"[bayes] centred = {spec!r}: give a list of parameters, 'auto' or 'none'"
            )
        if start.phi_sd is None:
            return (), "random effects: all non-centred (no EBE SDs to choose from)"
        ratio = np.median(start.phi_sd, axis=0) / np.sqrt(np.diag(start.omega))
        chosen = {k for k, r in zip(stat.iiv, ratio, strict=True) if r < CENTRE_BELOW}
        how = (
            "automatic: median EBE SD / IIV SD = "
            + ", ".join(f"{k} {r:.2f}" for k, r in zip(stat.iiv, ratio, strict=True))
            + f"; centred below {CENTRE_BELOW}"
        )
    for b in stat.omega_blocks:
        if chosen & set(b):
            chosen |= set(b)
    names = tuple(k for k in stat.iiv if k in chosen)
    return names, (
        f"random effects: centred {list(names)}, the others non-centred ({how})"
        if names
        else f"random effects: all non-centred ({how})"
    )


def _chain_method(options: NUTSOptions) -> tuple[str, list[str]]:
    n_dev = jax.local_device_count()
    msgs = []
    method = options.chain_method
    if method == "auto":
        method = "parallel" if n_dev >= options.chains and options.chains > 1 else "vectorized"
        if method == "vectorized" and options.chains > 1:
            msgs.append(
                f"{n_dev} JAX device(s) for {options.chains} chains: the chains run "
                "vectorised on one device (slower on a CPU than chains in parallel; "
                f"set XLA_FLAGS=--xla_force_host_platform_device_count={options.chains} "
                "before JAX starts, as `cartkin bayes` does)"
            )
    elif method == "parallel" and n_dev < options.chains:
        msgs.append(
            f"chain_method parallel needs {options.chains} devices, found {n_dev}: "
            "running vectorised instead"
        )
        method = "vectorized"
    return method, msgs


def nuts(
    stat: StatModel,
    data: FitData,
    *,
    priors: Priors | None = None,
    options: NUTSOptions = DEFAULT_OPTIONS,
    start: Start | None = None,
    settings: SolverSettings = DEFAULT_SETTINGS,
    progress: bool = True,
) -> NUTSResult:
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
    if start is None:
        start = start_from_config(stat, data, {}, {}, {})
    centred, why = choose_centring(stat, start, options.centred)
    model = PopulationModel(stat, data, priors, settings, centred)
    method, msgs = _chain_method(options)
    msgs.append(why)
    _, v0, scale = model.start_values(start)
    model.set_offset(v0, scale)
    sites = model.start_sites(start, options.chains, options.seed)
    init = jax.vmap(lambda s: unconstrain_fn(model, (), {}, s))(
        {k: jnp.asarray(v) for k, v in sites.items()}
    )
    ll0 = np.asarray(
        jax.vmap(lambda s: model.loglik_subjects(s).sum())(
            {k: jnp.asarray(v) for k, v in sites.items()}
        )
    )
    if not np.all(np.isfinite(ll0)):
        raise ValueError(
            "the model cannot be evaluated at the chains' starting values (a solve "
            "failed or a likelihood is not finite): check the warm start"
        )
    # a block-diagonal metric: one block per site (diagonal), or with dense_mass one dense block
    # over the population parameters; its initial value from the ML fit when there is one
    globals_ = tuple(k for k in sites if k != "w")
    dense = [globals_] if options.dense_mass else []
    metric = model.initial_metric(start)
    if metric is not None and options.dense_mass:
        g = jnp.concatenate([jnp.atleast_1d(metric.pop((k,))) for k in globals_])
        metric[globals_] = jnp.diag(g)
    kernel = NUTS(
        model,
        target_accept_prob=options.target_accept,
        max_tree_depth=options.max_tree_depth,
        dense_mass=dense,
        inverse_mass_matrix=metric,
    )
    mcmc = MCMC(
        kernel,
        num_warmup=options.warmup,
        num_samples=options.draws,
        num_chains=options.chains,
        chain_method=method,
        progress_bar=progress,
    )
    if options.chains == 1:
        init = jax.tree.map(lambda x: x[0], init)
    mcmc.run(jax.random.PRNGKey(options.seed), init_params=init, extra_fields=EXTRA_FIELDS)
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    extra = mcmc.get_extra_fields(group_by_chain=True)
    stats = {
        ("step_size" if k == "adapt_state.step_size" else k): np.asarray(v)
        for k, v in extra.items()
    }
    t1 = time.perf_counter()
    log_lik = pointwise_loglik(model, samples)
    t2 = time.perf_counter()
    return NUTSResult(
        model=model,
        options=options,
        samples=samples,
        stats=stats,
        log_lik=log_lik,
        chain_method=method,
        n_devices=jax.local_device_count(),
        timings={"sampling_s": t1 - t0, "pointwise_loglik_s": t2 - t1},
        start=start,
        messages=tuple(msgs),
    )


def pointwise_loglik(model: PopulationModel, samples: dict, batch: int = 64) -> np.ndarray:
    """log p(y_ij | phi_i, sigma) per draw and used record: (C, S, n_obs)."""
    C, S = samples["mu"].shape[:2]
    flat = {k: jnp.asarray(v.reshape((-1,) + v.shape[2:])) for k, v in samples.items()}
    mask = np.asarray(model.data.mask)

    @jax.jit
    def run(fl):
        return jax.lax.map(lambda s: model.loglik_records(s)[0][mask], fl, batch_size=batch)

    return np.asarray(run(flat)).reshape(C, S, -1)


def subject_marginal_loglik(
    model: PopulationModel, samples: dict, n_is: int = 128, seed: int = 0, batch: int = 16
) -> np.ndarray:
    """log p(y_i | population parameters) per draw and subject, (C, S, N): the random effects
    integrated out, for leave-one-subject-out LOO.

    Record-wise LOO of a hierarchical model conditions on the subject's own random effects, which
    its records inform strongly (Pareto k above 0.7 for many records). Leaving a subject out
    needs its marginal likelihood, here by importance sampling (Merkle, Furr, Rabe-Hesketh 2019):
    per subject one proposal, a multivariate t (5 d.f.) with the posterior mean and 1.5 x the
    posterior covariance of phi_i, and ``n_is`` draws from it shared by all posterior draws (the
    predictions are computed once); per posterior draw the weights are
    p(y_i | phi_m, sigma) N(phi_m; X_i beta, Omega) / q(phi_m), with
    :func:`~cartkin._likelihood.residual_loglik` and :func:`~cartkin._likelihood.eta_logprior`.
    """
    C, S = samples["mu"].shape[:2]
    flat = {k: jnp.asarray(v.reshape((-1,) + v.shape[2:])) for k, v in samples.items()}
    phi = np.asarray(jax.jit(jax.vmap(model.phi))(flat))  # (CS, N, d)
    m = phi.mean(0)
    cov = np.einsum("sni,snj->nij", phi - m, phi - m) / phi.shape[0]
    d = model.d
    Lq = np.linalg.cholesky(1.5 * cov + 1e-9 * np.eye(d))
    rng = np.random.default_rng(seed)
    nu = 5.0
    zt = rng.standard_normal((model.data.n_subjects, n_is, d))
    g = rng.chisquare(nu, (model.data.n_subjects, n_is)) / nu
    draws = m[:, None] + np.einsum("nij,nmj->nmi", Lq, zt) / np.sqrt(g)[..., None]  # (N, M, d)
    q = np.einsum("nij,nmj->nmi", np.linalg.inv(Lq), draws - m[:, None])
    from scipy.special import gammaln

    logq = (
        gammaln((nu + d) / 2)
        - gammaln(nu / 2)
        - 0.5 * d * np.log(nu * np.pi)
        - np.log(np.diagonal(Lq, axis1=1, axis2=2)).sum(1)[:, None]
        - 0.5 * (nu + d) * np.log1p((q**2).sum(-1) / nu)
    )  # (N, M)
    pred = jax.jit(jax.vmap(lambda p, di: jax.vmap(lambda pp: model.predict_one(pp, di))(p)))
    f, ok = pred(jnp.asarray(draws), model.arrays)  # (N, M, T)
    codes = model.codes
    arrays = model.arrays

    def one(site):
        sa, sp = model.sigma_per_endpoint(site["sigma"])
        mu = model.mu_i(site)
        L = model.A(site)

        def subject(f_i, ok_i, draws_i, logq_i, mu_i, di):
            ll = jax.vmap(lambda ff: record_loglik(codes, di, ff, sa, sp).sum())(f_i)
            lw = ll + eta_logprior(draws_i - mu_i, L) - logq_i
            lw = jnp.where(ok_i & jnp.isfinite(lw), lw, -jnp.inf)
            return jax.scipy.special.logsumexp(lw) - jnp.log(lw.shape[0])

        return jax.vmap(subject)(f, ok, jnp.asarray(draws), jnp.asarray(logq), mu, arrays)

    out = jax.jit(lambda fl: jax.lax.map(one, fl, batch_size=batch))(flat)
    return np.asarray(out).reshape(C, S, -1)
