"""Replicates of a dataset's design simulated from a fitted population model.

For the VPC, the NPDE and posterior predictive checks. Each replicate keeps the design (subjects,
sampling times, doses, covariates, endpoints) and draws new random effects
eta_i ~ N(0, Omega) (or takes given individual parameters), predicts with
:func:`cartkin._likelihood.make_predictor`, and adds residual error on the scale where it is
normal. The residual SD of each record is :func:`cartkin._likelihood.residual_sd`, the function
:func:`cartkin._likelihood.residual_loglik` itself uses, so the simulation and the likelihood
cannot disagree about the error model.

Censoring: a simulated value below the record's LLOQ is below the limit of quantification, as in
the data (M3 records, CENS = 1). Random numbers: replicate r, subject i use
``fold_in(fold_in(key, r), i)``; the same seed gives the same replicates whatever the batching.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from .._likelihood import sigma_per_endpoint as _sigma_per_endpoint
from .._likelihood import (
    FitData,
    SolverSettings,
    StatModel,
    data_arrays,
    kind_codes,
    make_predictor,
    residual_sd,
)

DEFAULT_SETTINGS = SolverSettings()


def normal_scale(values, codes):
    """h(y): log for log-additive records, identity otherwise (the scale of the residual)."""
    v = jnp.asarray(values)
    return jnp.where(codes == 0, jnp.log(jnp.where(v > 0, v, jnp.nan)), v)


def from_normal_scale(h, codes):
    return jnp.where(codes == 0, jnp.exp(h), h)


def sigma_per_endpoint(stat: StatModel, log_sigma):
    """(sigma_add (E,), sigma_prop (E,)) from the free residual parameters on the log scale."""
    return _sigma_per_endpoint(stat.endpoints, jnp.exp(jnp.asarray(log_sigma)))


def lloq_per_record(data: FitData, lloq: dict[int, float] | None = None) -> np.ndarray:
    """LLOQ of each record (N, T), NaN where none: ``lloq`` per endpoint index, else the largest
    limit among the endpoint's censored records."""
    out = np.full(data.time.shape, np.nan)
    for e in np.unique(data.endpoint[data.mask]):
        value = None if lloq is None else lloq.get(int(e))
        if value is None:
            sel = data.mask & (data.endpoint == e) & (data.cens == 1)
            value = float(data.limit[sel].max()) if sel.any() else np.nan
        out[data.endpoint == e] = value
    return out


def design_matrix(stat: StatModel, data: FitData) -> np.ndarray:
    """X (N, d, P): per subject and parameter, the intercept and covariate columns."""
    return stat.design_matrix(data)


@dataclasses.dataclass(frozen=True)
class Replicates:
    """Simulated replicates: ``h`` (R, N, T) uncensored values on the normal scale, ``blq``
    (R, N, T) below the LLOQ, ``pred`` (N, T) the population prediction f at eta = 0,
    ``codes`` (N, T) the error-model code of each record, ``lloq`` (N, T)."""

    h: np.ndarray
    blq: np.ndarray
    pred: np.ndarray
    codes: np.ndarray
    lloq: np.ndarray

    @staticmethod
    def concat(parts: list[Replicates]) -> Replicates:
        p0 = parts[0]
        return dataclasses.replace(
            p0, h=np.concatenate([p.h for p in parts]), blq=np.concatenate([p.blq for p in parts])
        )


class Simulator:
    """Simulates replicates of ``data``'s design from ``stat``; compiled once, reusable for other
    parameter values of the same shapes (see :func:`simulate_replicates`)."""

    def __init__(
        self,
        stat: StatModel,
        data: FitData,
        settings: SolverSettings = DEFAULT_SETTINGS,
        lloq: np.ndarray | None = None,
    ):
        self.stat, self.data = stat, data
        self.predict_one = make_predictor(stat, settings)
        self.arrays = data_arrays(data)
        self.X = jnp.asarray(design_matrix(stat, data))
        self.codes = jnp.asarray(kind_codes(stat.endpoints))[jnp.asarray(data.endpoint)]
        self.lloq = lloq_per_record(data) if lloq is None else np.asarray(lloq)
        ok = np.isfinite(self.lloq)
        self.h_lloq = np.where(
            ok,
            np.asarray(normal_scale(np.where(ok, self.lloq, 1.0), np.asarray(self.codes))),
            -np.inf,
        )
        self._run = jax.jit(self._replicates, static_argnums=(4, 5))
        self._pred = jax.jit(jax.vmap(lambda p, di: self.predict_one(p, di)[0]))

    def _replicates(self, beta, omega, log_sigma, phi_given, n_rep, per_rep, key):
        stat, d = self.stat, len(self.stat.iiv)
        ids = jnp.arange(self.data.n_subjects)

        def one(r):
            b = beta[r] if per_rep else beta
            om = omega[r] if per_rep else omega
            ls = log_sigma[r] if per_rep else log_sigma
            sa, sp = sigma_per_endpoint(stat, ls)
            L = jnp.linalg.cholesky(om + 1e-12 * jnp.eye(d))
            kr = jax.random.fold_in(key, r)
            mu = jnp.einsum("njp,jp->nj", self.X, b)

            def subject(i, mu_i, data_i, code_i):
                k1, k2 = jax.random.split(jax.random.fold_in(kr, i))
                if phi_given is None:
                    p = mu_i + L @ jax.random.normal(k1, (d,))
                else:
                    p = phi_given[r, i] if phi_given.ndim == 3 else phi_given[i]
                f, _ = self.predict_one(p, data_i)
                sd = residual_sd(code_i, f, sa[data_i["endpoint"]], sp[data_i["endpoint"]])
                return normal_scale(f, code_i) + sd * jax.random.normal(k2, f.shape)

            return jax.vmap(subject)(ids, mu, self.arrays, self.codes)

        return jax.lax.map(one, jnp.arange(n_rep), batch_size=8)

    def many(self, params: dict, total: int, chunk: int, *, seed: int = 0) -> Replicates:
        """``total`` replicates in calls of ``chunk`` (one compilation for any total); per-replicate
        ``params`` need a leading axis of at least ``total``."""
        per_rep = np.ndim(params["beta"]) == 3
        parts = []
        for k, start in enumerate(range(0, total, chunk)):
            sl = slice(start, start + chunk)
            p = {key: np.asarray(v)[sl] for key, v in params.items()} if per_rep else params
            if per_rep and len(p["beta"]) < chunk:  # pad the last chunk, then trim
                p = {key: np.concatenate([v, v[: chunk - len(v)]]) for key, v in p.items()}
            parts.append(self(p, chunk, seed=seed + k))
        r = Replicates.concat(parts)
        return dataclasses.replace(r, h=r.h[:total], blq=r.blq[:total])

    def __call__(self, params: dict, n_rep: int, *, seed: int = 0, phi=None) -> Replicates:
        per_rep = np.ndim(params["beta"]) == 3
        beta = jnp.asarray(params["beta"])
        h = np.asarray(
            self._run(
                beta,
                jnp.asarray(params["omega"]),
                jnp.asarray(params["log_sigma"]),
                None if phi is None else jnp.asarray(phi),
                int(n_rep),
                per_rep,
                jax.random.PRNGKey(seed),
            )
        )
        mask = self.data.mask
        h = np.where(mask[None], h, np.nan)
        b0 = np.asarray(beta.mean(0) if per_rep else beta)
        mu0 = np.einsum("njp,jp->nj", np.asarray(self.X), b0)
        pred = np.asarray(self._pred(jnp.asarray(mu0), self.arrays))
        blq = (h < self.h_lloq[None]) & mask[None]
        return Replicates(h=h, blq=blq, pred=pred, codes=np.asarray(self.codes), lloq=self.lloq)


def simulate_replicates(
    stat: StatModel,
    data: FitData,
    params: dict,
    n_rep: int,
    *,
    seed: int = 0,
    settings: SolverSettings = DEFAULT_SETTINGS,
    lloq: np.ndarray | None = None,
    phi: np.ndarray | None = None,
) -> Replicates:
    """Simulate ``n_rep`` replicates of ``data``'s design.

    Args:
        params: ``beta`` (d, P), ``omega`` (d, d), ``log_sigma`` (k,) -- one parameter set; or
            with a leading replicate axis (R, ...) to use one set per replicate (posterior draws).
        phi: individual parameters (N, d), or (R, N, d): then no random effects are drawn (a
            posterior predictive given the subjects' parameters).
        lloq: per record (N, T); default :func:`lloq_per_record`.
    """
    return Simulator(stat, data, settings, lloq)(params, n_rep, seed=seed, phi=phi)
