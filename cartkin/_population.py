"""Virtual populations: typical values, log-normal variability, covariates, per-patient keys.

Individual parameters follow the pharmacometric convention

    theta_i = transform^{-1}( transform(theta_typ) + covariate effects + eta_i ),
    eta_i ~ N(0, Omega),

with ``transform`` the parameter's natural scale: log for positive parameters (log-normal
variability: theta_typ * exp(eta)), logit for fractions, identity for real parameters. Omega is a
covariance matrix (variances on the diagonal, as in NONMEM's $OMEGA).

Patient i's random numbers come from ``jax.random.fold_in(key, i)``: the same seed gives the same
patient whatever the batch size, chunking or device count.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

from ._models.base import Model


def interval_domain(lower: float, upper: float) -> str:
    """The domain of a parameter bounded to (lower, upper): logit-normal on that interval."""
    return f"interval({float(lower)!r},{float(upper)!r})"


def domain_bounds(domain: str) -> tuple[float, float] | None:
    """(lower, upper) of an :func:`interval_domain`, else None."""
    if not domain.startswith("interval("):
        return None
    lo, hi = domain[len("interval("):-1].split(",")
    return float(lo), float(hi)


def to_unconstrained(domain: str, x):
    """Natural-scale transform of a parameter value (log, logit, logit on (lower, upper), or
    identity); numpy for a Python or numpy number (host-side set-up: no device program)."""
    xp = np if _on_host(x) else jnp
    if domain == "positive":
        return xp.log(x)
    if domain == "unit":
        return xp.log(x) - xp.log1p(-x)
    if (ab := domain_bounds(domain)) is not None:
        return xp.log(x - ab[0]) - xp.log(ab[1] - x)
    return x


def _on_host(x) -> bool:
    """A Python or numpy number: transformed with numpy (no device program)."""
    return isinstance(x, (float, int, np.ndarray, np.generic))


def from_unconstrained(domain: str, u):
    """Inverse of :func:`to_unconstrained` (numpy for a Python or numpy number)."""
    exp, sigmoid = (np.exp, scipy.special.expit) if _on_host(u) else (jnp.exp, jax.nn.sigmoid)
    if domain == "positive":
        return exp(u)
    if domain == "unit":
        return sigmoid(u)
    if (ab := domain_bounds(domain)) is not None:
        return ab[0] + (ab[1] - ab[0]) * sigmoid(u)
    return u


def natural_per_unconstrained(domain: str, x):
    """d x / d u at the natural-scale value x (the delta method's factor for an SE)."""
    if domain == "positive":
        return x
    if domain == "unit":
        return x * (1 - x)
    if (ab := domain_bounds(domain)) is not None:
        return (x - ab[0]) * (ab[1] - x) / (ab[1] - ab[0])
    return 1.0 + 0.0 * x


def scale_name(domain: str) -> str:
    """The scale a parameter is estimated on, for tables."""
    if (ab := domain_bounds(domain)) is not None:
        return f"logit on ({ab[0]:g}, {ab[1]:g})"
    return {"positive": "log", "unit": "logit", "real": "linear"}[domain]


@dataclasses.dataclass(frozen=True)
class PowerEffect:
    """theta * (cov / ref) ** exponent (continuous covariate, e.g. weight)."""

    parameter: str
    covariate: str
    ref: float
    exponent: float

    def shift(self, cov, exponent=None):
        e = self.exponent if exponent is None else exponent
        return e * jnp.log(cov / self.ref)


@dataclasses.dataclass(frozen=True)
class ExpEffect:
    """theta * exp(coef * (cov - ref)) (continuous covariate, e.g. log tumour burden)."""

    parameter: str
    covariate: str
    ref: float
    coef: float

    def shift(self, cov, coef=None):
        c = self.coef if coef is None else coef
        return c * (cov - self.ref)


@dataclasses.dataclass(frozen=True)
class CategoricalEffect:
    """theta * exp(coef[level]) for an integer-coded category (level 0 is the reference)."""

    parameter: str
    covariate: str
    coefs: tuple[float, ...]

    def shift(self, cov, coefs=None):
        c = jnp.concatenate([jnp.zeros(1), jnp.asarray(self.coefs if coefs is None else coefs)])
        return c[jnp.asarray(cov, int)]


Effect = PowerEffect | ExpEffect | CategoricalEffect


@dataclasses.dataclass(frozen=True)
class LogNormalCovariate:
    """A positive covariate with the given median and coefficient of variation."""

    median: float
    cv: float

    def sample(self, key):
        sd = np.sqrt(np.log1p(self.cv**2))
        return self.median * jnp.exp(sd * jax.random.normal(key))


@dataclasses.dataclass(frozen=True)
class CategoricalCovariate:
    """An integer-coded covariate drawn with the given probabilities."""

    probs: tuple[float, ...]

    def sample(self, key):
        return jax.random.choice(key, len(self.probs), p=jnp.asarray(self.probs)).astype(float)


def individual_parameters(
    model: Model,
    theta: Mapping[str, jnp.ndarray],
    eta: jnp.ndarray,
    eta_names: Sequence[str],
    covariates: Mapping[str, jnp.ndarray] | None = None,
    effects: Sequence[Effect] = (),
) -> dict[str, jnp.ndarray]:
    """One patient's parameters from typical values, random effects and covariates (pure)."""
    out = {}
    for name, p in model.parameters.items():
        u = to_unconstrained(p.domain, theta[name])
        for e in effects:
            if e.parameter == name:
                u = u + e.shift(covariates[e.covariate])
        if name in eta_names:
            u = u + eta[list(eta_names).index(name)]
        out[name] = from_unconstrained(p.domain, u)
    return out


def _as_covariance(omega, model: Model):
    if omega is None:
        return (), np.zeros((0, 0))
    if isinstance(omega, Mapping):
        names = tuple(omega)
        cov = np.diag([float(omega[k]) for k in names])
    else:
        names, cov = omega
        names, cov = tuple(names), np.asarray(cov, float)
    unknown = [k for k in names if k not in model.parameters]
    if unknown:
        raise ValueError(
            f"omega names unknown parameter(s) {unknown} of {model.name}; "
            f"parameters are {list(model.parameters)}"
        )
    if cov.shape != (len(names), len(names)) or not np.allclose(cov, cov.T):
        raise ValueError(f"omega must be a symmetric {len(names)}x{len(names)} matrix")
    if np.any(np.linalg.eigvalsh(cov) < -1e-12):
        raise ValueError("omega must be positive semi-definite (variances on the diagonal)")
    return names, cov


@dataclasses.dataclass(frozen=True)
class Population:
    """A virtual population of one model.

    Args:
        model: a cartkin model.
        theta: typical values (default: the model's published values).
        omega: between-patient covariance on the natural scale, either ``{name: variance}``
            (diagonal) or ``(names, matrix)`` (full or block covariance).
        covariates: ``{name: distribution}`` with distributions such as
            :class:`LogNormalCovariate`; sampled per patient.
        effects: covariate effects on parameters (:class:`PowerEffect`, ...).
    """

    model: Model
    theta: Mapping[str, float] | None = None
    omega: object = None
    covariates: Mapping[str, object] = dataclasses.field(default_factory=dict)
    effects: Sequence[Effect] = ()

    def __post_init__(self):
        theta = self.model.default_theta(**dict(self.theta or {}))
        object.__setattr__(self, "theta", theta)
        names, cov = _as_covariance(self.omega, self.model)
        object.__setattr__(self, "_eta_names", names)
        object.__setattr__(self, "_omega", cov)
        for e in self.effects:
            if e.parameter not in self.model.parameters:
                raise ValueError(f"covariate effect on unknown parameter {e.parameter!r}")
            if e.covariate not in self.covariates:
                raise ValueError(
                    f"covariate effect uses {e.covariate!r}, which is not among the "
                    f"population's covariates {list(self.covariates)}"
                )

    @property
    def eta_names(self) -> tuple[str, ...]:
        return self._eta_names

    @property
    def omega_matrix(self) -> np.ndarray:
        return self._omega

    def sample(self, n: int, seed: int | jax.Array = 0, *, start: int = 0):
        """Patients ``start .. start+n-1``: ``(theta dict of (n,), covariates dict, eta (n, k))``.

        Patient i depends only on the seed and i, never on n or ``start``.
        """
        key = jax.random.PRNGKey(seed) if isinstance(seed, int) else seed
        chol = jnp.asarray(np.linalg.cholesky(self._omega + 1e-300 * np.eye(len(self._eta_names))))
        cov_items = list(self.covariates.items())

        def one(i):
            k = jax.random.fold_in(key, i)
            k_eta, k_cov = jax.random.split(k)
            eta = chol @ jax.random.normal(k_eta, (len(self._eta_names),))
            covs = {
                name: dist.sample(jax.random.fold_in(k_cov, j))
                for j, (name, dist) in enumerate(cov_items)
            }
            th = individual_parameters(
                self.model, self.theta, eta, self._eta_names, covs, self.effects
            )
            return th, covs, eta

        idx = jnp.arange(start, start + n)
        th, covs, eta = jax.jit(jax.vmap(one))(idx)
        return (
            {k: np.asarray(v) for k, v in th.items()},
            {k: np.asarray(v) for k, v in covs.items()},
            np.asarray(eta),
        )
