"""Derivatives through the solver against central finite differences.

The ML fit never differentiates through an ODE solve (SAEM and importance sampling need forward
solves only; the Louis information holds predictions fixed), but NUTS and the aggregate fits
take gradients of the log-likelihood with respect to individual parameters through diffrax.
Checked here, including Tmax, which moves the switch time of the Stein model's ODE form.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cartkin._likelihood import Endpoint, SolverSettings, StatModel, make_predictor, residual_loglik
from cartkin._models import Stein2019, Stein2019ODE

TIMES = jnp.array([1.0, 4.0, 7.0, 10.0, 14.0, 21.0, 28.0, 60.0, 180.0, 365.0])


def _subject(model):
    stat = StatModel(model, (Endpoint("C"),), iiv=("foldx", "Tmax", "Cmax", "alpha", "FB", "beta"))
    predict = make_predictor(stat, SolverSettings(rtol=1e-10, atol=1e-12, max_steps=16384))
    T = TIMES.shape[0]
    rng = np.random.default_rng(0)
    data_i = {
        "time": TIMES, "dv": jnp.asarray(2000.0 * np.exp(rng.normal(size=T))),
        "cens": jnp.zeros(T, int).at[-1].set(1), "limit": jnp.full(T, 50.0),
        "endpoint": jnp.zeros(T, int), "mask": jnp.ones(T, bool),
        "ev_time": jnp.full(1, 1e30), "ev_dose": jnp.zeros(1),
        "ev_log_effect": jnp.zeros((1, len(model.parameters))),
    }

    def loglik(phi):
        f, _ = predict(phi, data_i)
        return residual_loglik(jnp.zeros(T, int), data_i["dv"], f, data_i["cens"],
                               data_i["limit"], 0.5, 1.0, data_i["mask"]).sum()

    # a patient whose Tmax (10.3 d) falls between samples, away from the kink's sample points
    phi = stat.phi_from_theta({"foldx": 3000.0, "Tmax": 10.3, "Cmax": 20000.0, "alpha": 0.15,
                               "FB": 0.01, "beta": 0.003})
    return loglik, jnp.asarray(phi)


@pytest.mark.parametrize("model", [Stein2019(), Stein2019(switch="softmin"), Stein2019ODE()],
                         ids=["closed-exact", "closed-softmin", "ode-exact-switch"])
def test_gradient_matches_central_differences(model):
    loglik, phi = _subject(model)
    g = np.asarray(jax.grad(loglik)(phi))
    h = 1e-5
    fd = np.array([(loglik(phi.at[j].add(h)) - loglik(phi.at[j].add(-h))) / (2 * h)
                   for j in range(phi.shape[0])])
    # central differences are accurate to O(h^2) ~ 1e-10 relative here; the solver at rtol
    # 1e-10 adds noise of about rtol / h ~ 1e-5 absolute on a log-likelihood of O(10)
    np.testing.assert_allclose(g, fd, rtol=1e-4, atol=1e-3)
    assert abs(g[1]) > 1.0  # Tmax really moves the likelihood


def test_log_ndtr_matches_scipy_with_its_derivatives():
    """The M3 log-CDF (one erfc, an asymptotic series below -20) against scipy's log_ndtr, and its
    first and second derivatives (the Louis information uses both) against the exact
    lambda = phi / Phi and -lambda (z + lambda), across and beyond the switch."""
    from scipy import special

    from cartkin._likelihood import log_ndtr

    z = np.concatenate([np.linspace(-200.0, 40.0, 24001), [-20.0, -20.0 + 1e-9, -19.99]])
    ref = special.log_ndtr(z)
    np.testing.assert_allclose(np.asarray(log_ndtr(jnp.asarray(z))), ref, rtol=1e-12, atol=1e-11)
    lam = np.exp(-0.5 * z**2 - 0.5 * np.log(2 * np.pi) - ref)
    d1 = np.asarray(jax.vmap(jax.grad(log_ndtr))(jnp.asarray(z)))
    np.testing.assert_allclose(d1, lam, rtol=1e-8, atol=1e-12)
    d2 = np.asarray(jax.vmap(jax.grad(jax.grad(log_ndtr)))(jnp.asarray(z)))
    np.testing.assert_allclose(d2, -lam * (z + lam), rtol=1e-6, atol=1e-10)
