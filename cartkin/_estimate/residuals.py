"""Residuals for the sdtab: PRED, IPRED, RES, IWRES, CWRES.

On the scale where the residual error is normal (log for ``log_additive``):

* PRED: prediction at the typical individual parameters (eta = 0, covariates included);
* IPRED: prediction at the empirical Bayes estimate (conditional mean of phi_i);
* RES = h(DV) - h(PRED); IWRES = (h(DV) - h(IPRED)) / SD;
* CWRES: first-order conditional residuals at the EBE (as FOCE's CWRES): with J the Jacobian of
  h(f) with respect to phi at the EBE (central finite differences, so any model works),
  E[h(y)] = h(f(phi_hat)) + J (mu_i - phi_hat), Cov = J Omega J' + diag(SD^2), and
  CWRES = chol(Cov)^-1 (h(DV) - E[h(y)]), over the uncensored records of the subject.

Censored records get NaN residuals (their DV is a limit, not a value).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._compile import jit
from .._likelihood import kind_codes, residual_sd, sigma_per_endpoint

FD_STEP = 1e-3


def sdtab(stat, predict_one, arrays, data, X, params, ebe, *, predict_draws=None) -> pd.DataFrame:
    """The sdtab frame. The 2 + 2d parameter vectors of a subject (EBE, typical, finite
    differences) are predicted together by ``predict_draws`` (see
    :func:`cartkin._likelihood.make_draws_predictor`: one batched solve for ODE models), or by
    ``predict_one`` vmapped over them."""
    from .._likelihood import map_subjects

    codes = kind_codes(stat.endpoints)
    sa, sp = (np.asarray(x) for x in sigma_per_endpoint(stat.endpoints, np.exp(params["log_sigma"])))
    mu = np.einsum("njp,jp->nj", X, params["beta"])
    d = mu.shape[1]
    omega = jnp.asarray(params["omega"])

    @jit
    def per_subject(phi_hat, mu_i, data_i, f_all):
        ep = data_i["endpoint"]
        is_log = jnp.asarray(codes)[ep] == 0

        def h(f):
            return jnp.where(is_log, jnp.log(jnp.maximum(f, 1e-300)), f)

        ipred, pred, fp, fm = f_all[0], f_all[1], h(f_all[2 : 2 + d]), h(f_all[2 + d :])
        J = ((fp - fm) / (2 * FD_STEP)).T  # (T, d)
        c = jnp.asarray(codes)[ep]
        s_add, s_prop = jnp.asarray(sa)[ep], jnp.asarray(sp)[ep]
        sd = residual_sd(c, ipred, s_add, s_prop)
        y = h(jnp.where(data_i["mask"], data_i["dv"], 1.0))
        use = data_i["mask"] & (data_i["cens"] == 0)
        mean = h(ipred) + J @ (mu_i - phi_hat)
        cov = J @ omega @ J.T + jnp.diag(sd**2)
        # decorrelate over the used records only: unit variance, no coupling, on the others
        u = use.astype(float)
        cov = cov * u[:, None] * u[None, :] + jnp.diag(1.0 - u)
        L = jnp.linalg.cholesky(cov)
        cw = jax.scipy.linalg.solve_triangular(L, jnp.where(use, y - mean, 0.0), lower=True)
        return {
            "PRED": pred, "IPRED": ipred,
            "RES": jnp.where(use, y - h(pred), jnp.nan),
            "IWRES": jnp.where(use, (y - h(ipred)) / sd, jnp.nan),
            "CWRES": jnp.where(use, cw, jnp.nan),
        }

    if predict_draws is None:
        predict_draws = jax.vmap(predict_one, in_axes=(0, None))
    # per subject: EBE, typical, EBE +/- FD steps, solved together
    steps = FD_STEP * np.eye(d)
    e = np.asarray(ebe)
    phis = np.concatenate([e[:, None], np.asarray(mu)[:, None], e[:, None] + steps[None],
                           e[:, None] - steps[None]], axis=1)
    f_all, _ = jit(lambda p, a: map_subjects(predict_draws, p, a))(jnp.asarray(phis), arrays)
    out = jax.vmap(per_subject)(jnp.asarray(ebe), jnp.asarray(mu), arrays, f_all)
    out = {k: np.asarray(v) for k, v in out.items()}
    m = data.mask
    df = pd.DataFrame({
        "ID": np.repeat(data.ids, m.shape[1])[m.reshape(-1)],
        "TIME": data.time[m],
        "DV": data.dv[m],
        "DVID": np.asarray([e.dvid for e in stat.endpoints])[data.endpoint[m]],
        "CENS": data.cens[m],
        **{k: v[m] for k, v in out.items()},
    })
    eta = ebe - mu
    idx = np.repeat(np.arange(data.n_subjects), m.shape[1])[m.reshape(-1)]
    for j in range(d):
        df[f"ETA{j + 1}"] = eta[idx, j]
    return df
