r"""Calibrating the CRS link to aggregated rates: per cohort, n patients and how many reached
each reported grade, marginalised over a simulated virtual population of the cohort.

A cohort reports cumulative counts :math:`e_k` (patients with grade :math:`\ge k`) at some cut
grades :math:`k_1 < \dots < k_r` (e.g. only :math:`k = 3`, or :math:`k = 1..4`). Its virtual
population (patients :math:`i` with weights :math:`w_i` summing to 1, e.g. a mixture of dose
levels) gives the marginal :math:`\bar p_k(\phi) = \sum_i w_i \sigma(\eta_i - c_k)`; the counts
between reported cuts are multinomial (binomial with one cut):

.. math::

    \log L(\phi) = \sum_{\text{cohorts}} \sum_{j=0}^{r} (e_{k_j} - e_{k_{j+1}})
        \log(\bar p_{k_j} - \bar p_{k_{j+1}}),
    \quad e_{k_0} = n, \; \bar p_{k_0} = 1, \; e_{k_{r+1}} = \bar p_{k_{r+1}} = 0.

The metrics of the virtual patients are simulated once and held fixed, so the objective is a
cheap function of the link parameters only: it is minimised with optax L-BFGS and its Hessian
(``jax.hessian``, no derivative through the ODE) gives the Laplace covariance. A normal prior on
each slope (from the scenario: the literature gives the direction, not the size) and a weak
normal prior (sd 10) on the cut parameters make the posterior proper when the cohorts do not
identify them; :func:`fit_table` shows how far the data moved them.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._compile import jit
from .link import N_CUTS, OrdinalLink, cuts_from_phi, minimise

CUT_PRIOR_SD = 10.0


@dataclasses.dataclass(frozen=True)
class AggregateCohort:
    """One trial or dose cohort: ``n`` patients and ``events[k]`` of them with grade >= k.

    ``doses`` is a tuple of ``(amount, share)``: dose levels (cells, or cells/kg when
    ``per_kg``) and the share of the cohort at each; the virtual population gives every level
    the same number of patients, weighted by its share.
    """

    name: str
    n: int
    events: Mapping[int, int]
    doses: tuple[tuple[float, float], ...]
    per_kg: bool = False
    grading: str = ""
    source: str = ""
    note: str = ""

    def __post_init__(self):
        ev = {int(k): int(v) for k, v in dict(self.events).items()}
        if not ev:
            raise ValueError(f"cohort {self.name!r}: no reported grade counts")
        for k, v in ev.items():
            if k not in range(1, N_CUTS + 1):
                raise ValueError(f"cohort {self.name!r}: cut grade {k} is not 1-4")
            if not 0 <= v <= self.n:
                raise ValueError(
                    f"cohort {self.name!r}: {v} events of grade >= {k} out of n = {self.n}"
                )
        ks = sorted(ev)
        if any(ev[a] < ev[b] for a, b in zip(ks, ks[1:], strict=False)):
            raise ValueError(f"cohort {self.name!r}: counts must not increase with the grade: {ev}")
        shares = np.array([s for _, s in self.doses], float)
        if len(self.doses) == 0 or np.any(shares <= 0) or not np.isclose(shares.sum(), 1.0):
            raise ValueError(f"cohort {self.name!r}: dose shares must be positive and sum to 1")
        object.__setattr__(self, "events", dict(sorted(ev.items())))
        object.__setattr__(self, "doses", tuple((float(a), float(s)) for a, s in self.doses))

    def intervals(self):
        """``(cut indices k_1..k_r, counts of the r + 1 intervals)``."""
        ks = list(self.events)
        e = [self.n] + [self.events[k] for k in ks] + [0]
        return ks, [e[j] - e[j + 1] for j in range(len(ks) + 1)]


@dataclasses.dataclass(frozen=True)
class Prior:
    """Normal prior on each slope (per metric) of the link."""

    mean: Mapping[str, float]
    sd: Mapping[str, float]

    def arrays(self, metrics: Sequence[str]):
        missing = [m for m in metrics if m not in self.mean or m not in self.sd]
        if missing:
            raise ValueError(f"the link prior gives no mean/sd for metric(s) {missing}")
        return (
            np.array([self.mean[m] for m in metrics], float),
            np.array([self.sd[m] for m in metrics], float),
        )


def _neg_log_post(phi, xs, ws, counts, structure, center, scale, prior_mean, prior_sd):
    m = prior_mean.shape[0]
    beta, cuts = phi[:m], cuts_from_phi(phi[m:])
    total = 0.0
    for x, w, cnt, ks in zip(xs, ws, counts, structure, strict=True):
        eta = ((x - center) / scale) @ beta
        pbar = w @ jax.nn.sigmoid(eta[:, None] - cuts)  # (4,)
        upper = jnp.concatenate([jnp.ones(1), pbar[jnp.asarray(ks) - 1]])
        lower = jnp.concatenate([pbar[jnp.asarray(ks) - 1], jnp.zeros(1)])
        # an empty interval contributes 0 * log(p) = 0 (xlogy)
        total = total - jnp.sum(jax.scipy.special.xlogy(cnt, jnp.clip(upper - lower, 1e-300)))
    total = total + 0.5 * jnp.sum(((beta - prior_mean) / prior_sd) ** 2)
    return total + 0.5 * jnp.sum((phi[m:] / CUT_PRIOR_SD) ** 2)


def _start(cohorts, m, prior_mean):
    c = np.array([-1.0, 0.5, 2.5, 3.5])
    for k in range(1, N_CUTS + 1):
        num = sum(co.events[k] for co in cohorts if k in co.events)
        den = sum(co.n for co in cohorts if k in co.events)
        if den:
            r = np.clip((num + 0.5) / (den + 1.0), 1e-3, 1 - 1e-3)
            c[k - 1] = np.log1p(-r) - np.log(r)
    c = np.maximum.accumulate(c)
    c = c + 1e-2 * np.arange(N_CUTS)
    return np.concatenate([prior_mean, [c[0]], np.log(np.diff(c))])


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A calibrated link: parameters, Laplace covariance and how well it fits each cohort."""

    link: OrdinalLink
    covariance: np.ndarray
    neg_log_post: float
    grad_norm: float
    cohorts: tuple[AggregateCohort, ...]

    @property
    def converged(self) -> bool:
        return bool(np.isfinite(self.grad_norm) and self.grad_norm < 1e-3)

    def parameters(self) -> pd.DataFrame:
        phi = np.asarray(self.link.to_phi())
        se = np.sqrt(np.clip(np.diag(self.covariance), 0, None))
        return pd.DataFrame({"parameter": self.link.param_names(), "estimate": phi, "se": se})


def calibrate(
    metrics: Sequence[str],
    cohorts: Sequence[AggregateCohort],
    xs: Sequence[np.ndarray],
    ws: Sequence[np.ndarray],
    prior: Prior,
    *,
    center=None,
    scale=None,
    steps: int = 60,
) -> Calibration:
    """Calibrate the link to ``cohorts`` given each cohort's virtual patients ``xs[c]`` (P_c, m)
    and weights ``ws[c]`` (P_c,) (zero for failed solves). ``center``/``scale`` default to the
    weighted mean and SD of the pooled metrics (each cohort counted equally)."""
    from .link import standardisation

    if center is None or scale is None:
        pooled = np.concatenate([np.asarray(x) for x in xs])
        wts = np.concatenate([np.asarray(w) / max(np.sum(w), 1e-300) for w in ws])
        center, scale = standardisation(pooled, wts)
    phi, cov, value, gnorm = calibrate_batch(
        metrics,
        cohorts,
        [np.asarray(x)[None] for x in xs],
        [np.asarray(w)[None] for w in ws],
        prior,
        center,
        scale,
        steps=steps,
    )
    link = OrdinalLink(
        tuple(metrics),
        jnp.asarray(center, float),
        jnp.asarray(scale, float),
        jnp.zeros(len(metrics)),
        jnp.zeros(N_CUTS),
    ).with_phi(jnp.asarray(phi[0]))
    return Calibration(link, cov[0], float(value[0]), float(gnorm[0]), tuple(cohorts))


def calibrate_batch(metrics, cohorts, xs, ws, prior: Prior, center, scale, *, steps: int = 60):
    """Calibrate S links at once (one per kinetic draw): ``xs[c]`` (S, P_c, m), ``ws[c]`` (S, P_c).

    Returns ``(phi (S, p), covariance (S, p, p), -log posterior (S,), gradient norm (S,))``.
    """
    prior_mean, prior_sd = prior.arrays(metrics)
    cohorts = tuple(cohorts)
    phi0 = jnp.asarray(_start(cohorts, len(metrics), prior_mean))
    wn = [np.asarray(w, float) / np.maximum(np.sum(w, axis=-1, keepdims=True), 1e-300) for w in ws]
    fn = _batch_solver(tuple(tuple(c.intervals()[0]) for c in cohorts), steps)
    counts = [jnp.asarray(c.intervals()[1], float) for c in cohorts]
    out = fn(
        [jnp.asarray(x, float) for x in xs],
        [jnp.asarray(w) for w in wn],
        counts,
        jnp.asarray(center, float),
        jnp.asarray(scale, float),
        jnp.asarray(prior_mean),
        jnp.asarray(prior_sd),
        phi0,
    )
    return tuple(np.asarray(o) for o in out)


@functools.lru_cache(maxsize=32)
def _batch_solver(structure, steps):
    """The compiled, vmapped calibration for cohorts of a given structure (cached)."""

    def one(xs1, ws1, counts, center, scale, pm, ps, phi0):
        def objective(phi):
            return _neg_log_post(phi, xs1, ws1, counts, structure, center, scale, pm, ps)

        phi, value, gnorm = minimise(objective, phi0, steps=steps)
        hess = jax.hessian(objective)(phi)
        return phi, jnp.linalg.inv(hess), value, gnorm

    return jit(jax.vmap(one, in_axes=(0, 0, None, None, None, None, None, None)),
               cpu_options=False)


def marginal_rates(link: OrdinalLink, x, w):
    """P(G >= k), k = 1..4, averaged over patients ``x`` (P, m) with weights ``w``."""
    w = np.asarray(w, float) / np.sum(w)
    return np.asarray(w @ np.asarray(link.cumulative(jnp.asarray(x))))


def clopper_pearson(k: int, n: int, level: float = 0.95):
    from scipy.stats import beta

    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def fit_table(cal: Calibration, xs, ws, *, n_draws: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Observed vs predicted rate per cohort and reported grade, with 95% intervals.

    Observed: the count over n with its exact (Clopper-Pearson) binomial 95% interval.
    Predicted: the calibrated link marginalised over the cohort's virtual population, with a 95%
    interval from the Laplace approximation of the link parameters. ``fit`` is ``ok`` when the
    predicted rate lies in the observed interval, ``misfit`` otherwise.
    """
    rng = np.random.default_rng(seed)
    phi = np.asarray(cal.link.to_phi())
    cov = 0.5 * (cal.covariance + cal.covariance.T)
    draws = rng.multivariate_normal(phi, cov, size=n_draws, method="eigh")
    m = len(cal.link.metrics)
    rows = []
    for c, x, w in zip(cal.cohorts, xs, ws, strict=True):
        x = jnp.asarray(x, float)
        wn = jnp.asarray(np.asarray(w, float) / np.sum(w))
        z = (x - cal.link.center) / cal.link.scale
        eta_d = z @ jnp.asarray(draws[:, :m]).T  # (P, n_draws)
        cuts_d = cuts_from_phi(jnp.asarray(draws[:, m:]))  # (n_draws, 4)
        pd_draws = np.asarray(
            jnp.einsum("p,pdk->dk", wn, jax.nn.sigmoid(eta_d[..., None] - cuts_d))
        )
        point = marginal_rates(cal.link, x, wn)
        for k, e in c.events.items():
            lo, hi = clopper_pearson(e, c.n)
            p = float(point[k - 1])
            plo, phi_ = np.quantile(pd_draws[:, k - 1], [0.025, 0.975])
            rows.append(
                {
                    "cohort": c.name,
                    "grading": c.grading,
                    "n": c.n,
                    "grade_at_least": k,
                    "observed_events": e,
                    "observed_rate": e / c.n,
                    "observed_lo95": lo,
                    "observed_hi95": hi,
                    "predicted_rate": p,
                    "predicted_lo95": float(plo),
                    "predicted_hi95": float(phi_),
                    "fit": "ok" if lo <= p <= hi else "misfit",
                }
            )
    return pd.DataFrame(rows)
