r"""The CRS link: an ordinal (cumulative-logit) model of the CRS grade on exposure metrics.

The CRS grade :math:`G \in \{0, 1, 2, 3, 4\}` (ASTCT 2019; grade 5, death, is counted as 4) of a
patient with exposure metrics :math:`x` (see :mod:`cartkin._crs.metrics`) follows

.. math::

    P(G \ge k \mid x) = \sigma(\eta - c_k), \qquad
    \eta = \sum_j \beta_j \, (x_j - m_j) / s_j, \qquad k = 1, \dots, 4,

with :math:`\sigma` the logistic function, increasing cut points :math:`c_1 < c_2 < c_3 < c_4`
and each metric standardised by a fixed centre :math:`m_j` and scale :math:`s_j` (set once, from
the calibration population, so that :math:`\beta_j` is the log odds ratio of a higher grade per
standard deviation of the metric). Equivalently, :math:`G` counts the cut points below
:math:`\eta + \varepsilon` with :math:`\varepsilon` standard logistic: the latent form used by
treatment rules that act when a patient reaches a grade (:mod:`cartkin._crs.rules`).

No published coefficients exist (see the literature notes): the link is estimated, from
individual grades (:func:`fit_individual`) or from aggregated rates
(:mod:`cartkin._crs.calibrate`). For estimation the parameters are packed into one unconstrained
vector ``phi = (beta, c_1, log(c_2 - c_1), log(c_3 - c_2), log(c_4 - c_3))``.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

#: number of cut points: grades 0-4, so P(G >= 1), ..., P(G >= 4)
N_CUTS = 4


def cuts_from_phi(phi_cuts):
    """Increasing cut points from ``(c_1, log gaps...)`` (last axis)."""
    first = phi_cuts[..., :1]
    gaps = jnp.exp(phi_cuts[..., 1:])
    return jnp.concatenate([first, first + jnp.cumsum(gaps, axis=-1)], axis=-1)


def phi_from_cuts(cuts):
    cuts = jnp.asarray(cuts, float)
    return jnp.concatenate([cuts[..., :1], jnp.log(jnp.diff(cuts, axis=-1))], axis=-1)


def cumulative_from_eta(eta, cuts):
    """P(G >= k), k = 1..4: shape ``eta.shape + (4,)``; ``cuts`` broadcasts to eta[..., None]."""
    return jax.nn.sigmoid(eta[..., None] - cuts)


def categories_from_cumulative(cum):
    """P(G = k), k = 0..4, from P(G >= k), k = 1..4 (last axis)."""
    ones = jnp.ones_like(cum[..., :1])
    zeros = jnp.zeros_like(cum[..., :1])
    upper = jnp.concatenate([ones, cum], axis=-1)
    lower = jnp.concatenate([cum, zeros], axis=-1)
    return upper - lower


class OrdinalLink(eqx.Module):
    """A cumulative-logit link of the CRS grade on standardised exposure metrics.

    Attributes:
        metrics: names of the metrics (columns of ``x``), e.g. ``("log_peak_il6",)``.
        center, scale: standardisation of each metric, shape ``(m,)``.
        beta: log odds ratio per standard deviation of each metric, shape ``(m,)``.
        cuts: increasing cut points :math:`c_1..c_4`, shape ``(4,)``.
    """

    metrics: tuple[str, ...] = eqx.field(static=True)
    center: jax.Array
    scale: jax.Array
    beta: jax.Array
    cuts: jax.Array

    def __check_init__(self):
        m = len(self.metrics)
        for name in ("center", "scale", "beta"):
            if jnp.shape(getattr(self, name)) != (m,):
                raise ValueError(
                    f"OrdinalLink.{name} must have shape ({m},) for metrics {self.metrics}, "
                    f"got {jnp.shape(getattr(self, name))}"
                )
        if jnp.shape(self.cuts) != (N_CUTS,):
            raise ValueError(
                f"OrdinalLink.cuts must have shape ({N_CUTS},), got {jnp.shape(self.cuts)}"
            )

    @property
    def n_params(self) -> int:
        return len(self.metrics) + N_CUTS

    def standardise(self, x):
        """(x - center) / scale over the last axis (the metrics)."""
        return (jnp.asarray(x) - self.center) / self.scale

    def eta(self, x):
        """Linear predictor of metrics ``x`` (..., m)."""
        return self.standardise(x) @ self.beta

    def cumulative(self, x):
        """P(G >= k | x), k = 1..4: shape ``x.shape[:-1] + (4,)``."""
        return cumulative_from_eta(self.eta(x), self.cuts)

    def categories(self, x):
        """P(G = k | x), k = 0..4."""
        return categories_from_cumulative(self.cumulative(x))

    def to_phi(self):
        """The unconstrained parameter vector ``(beta, c_1, log gaps)``."""
        return jnp.concatenate([jnp.asarray(self.beta, float), phi_from_cuts(self.cuts)])

    def with_phi(self, phi) -> OrdinalLink:
        """The same link (metrics, standardisation) with parameters ``phi``."""
        m = len(self.metrics)
        return OrdinalLink(self.metrics, self.center, self.scale, phi[:m], cuts_from_phi(phi[m:]))

    def param_names(self) -> list[str]:
        return (
            [f"beta[{k}]" for k in self.metrics]
            + ["c1"]
            + [f"log(c{k + 1}-c{k})" for k in range(1, N_CUTS)]
        )

    def describe(self) -> dict:
        return {
            "metrics": list(self.metrics),
            "center": np.asarray(self.center).tolist(),
            "scale": np.asarray(self.scale).tolist(),
            "beta": np.asarray(self.beta).tolist(),
            "cuts": np.asarray(self.cuts).tolist(),
            "form": "P(G >= k | x) = sigmoid(sum_j beta_j (x_j - center_j) / scale_j - cuts_k), "
            "k = 1..4 (ASTCT grades; grade 5 counted as 4)",
        }


def standardisation(x, weights=None):
    """Weighted mean and standard deviation of each metric (columns of ``x``)."""
    x = np.asarray(x, float)
    w = np.ones(len(x)) if weights is None else np.asarray(weights, float)
    ok = np.all(np.isfinite(x), axis=1) & (w > 0)
    x, w = x[ok], w[ok] / w[ok].sum()
    center = w @ x
    scale = np.sqrt(w @ (x - center) ** 2)
    if np.any(scale <= 0):
        bad = [i for i in range(x.shape[1]) if scale[i] <= 0]
        raise ValueError(f"metric column(s) {bad} do not vary in the calibration population")
    return center, scale


def minimise(objective, phi0, *, steps: int = 300):
    """Minimise ``objective(phi)`` with optax L-BFGS for a fixed number of steps (vmappable;
    the link problems here, 5-8 parameters, converge to a gradient norm below 1e-12 in 30).

    Returns ``(phi, value, gradient norm)``; the caller judges convergence by the gradient norm.
    """
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    def step(carry, _):
        phi, state = carry
        value, grad = value_and_grad(phi, state=state)
        updates, state = opt.update(grad, state, phi, value=value, grad=grad, value_fn=objective)
        return (optax.apply_updates(phi, updates), state), None

    (phi, _), _ = jax.lax.scan(step, (phi0, opt.init(phi0)), None, length=steps)
    value, grad = jax.value_and_grad(objective)(phi)
    return phi, value, jnp.sqrt(jnp.sum(grad**2))


def individual_neg_log_lik(link: OrdinalLink, phi, x, grades, weights=None):
    """-log L of observed grades (0-4) given metrics ``x`` (n, m) under parameters ``phi``."""
    probs = link.with_phi(phi).categories(x)
    p = jnp.take_along_axis(probs, jnp.asarray(grades, int)[:, None], axis=1)[:, 0]
    w = jnp.ones_like(p) if weights is None else jnp.asarray(weights, float)
    return -jnp.sum(w * jnp.log(jnp.clip(p, 1e-300)))


def fit_individual(
    x,
    grades,
    metrics: Sequence[str],
    *,
    steps: int = 300,
):
    """Maximum-likelihood link from individual data: metrics ``x`` (n, m) and grades 0-4 (n,).

    Grades above 4 (grade 5, death) are counted as 4. Returns ``(link, covariance of phi)``, the
    covariance from the inverse Hessian of -log L (with a weak normal prior, sd 10, on the cut
    parameters, so that a grade nobody reached does not send its cut point to infinity).
    """
    x = np.asarray(x, float)
    grades = np.minimum(np.asarray(grades, int), N_CUTS)
    if x.ndim != 2 or x.shape[1] != len(metrics):
        raise ValueError(f"x must have shape (n, {len(metrics)}) for metrics {list(metrics)}")
    if x.shape[0] != grades.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but grades has {grades.shape[0]}")
    if np.any(grades < 0):
        raise ValueError("grades must be integers 0-4 (ASTCT)")
    present = np.unique(grades)
    if present.size < 2:
        raise ValueError(f"all patients have grade {present[0]}: the link cannot be estimated")
    center, scale = standardisation(x)
    # start: cut points at the empirical logits, no slope
    frac = np.array([(grades >= k).mean() for k in range(1, N_CUTS + 1)])
    frac = np.clip(frac, 0.5 / len(grades), 1 - 0.5 / len(grades))
    c0 = np.log1p(-frac) - np.log(frac)
    c0 = np.maximum.accumulate(c0 + 1e-3 * np.arange(N_CUTS))
    link = OrdinalLink(
        tuple(metrics),
        jnp.asarray(center),
        jnp.asarray(scale),
        jnp.zeros(len(metrics)),
        jnp.asarray(c0),
    )
    xj, gj = jnp.asarray(x), jnp.asarray(grades)
    m = len(metrics)

    def objective(phi):
        # a weak normal prior (sd 10) on the cut parameters keeps the cut point of a grade that
        # nobody reached finite; it moves the estimates of observed grades negligibly
        return individual_neg_log_lik(link, phi, xj, gj) + 0.5 * jnp.sum((phi[m:] / 10.0) ** 2)

    phi, _, gnorm = jax.jit(lambda p: minimise(objective, p, steps=steps))(link.to_phi())
    cov = jnp.linalg.inv(jax.hessian(objective)(phi))
    if not np.isfinite(float(gnorm)) or float(gnorm) > 1e-3 * max(1.0, len(grades) ** 0.5):
        raise ValueError(f"the link fit did not converge (gradient norm {float(gnorm):.3g})")
    return link.with_phi(phi), np.asarray(cov)
