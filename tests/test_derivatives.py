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
    g = np.asarray(jax.jit(jax.grad(loglik))(phi))
    h = 1e-5
    # every shifted point in one compiled, vmapped call (each lane is its own adaptive solve)
    step = h * jnp.eye(phi.shape[0])
    ll = np.asarray(jax.jit(jax.vmap(loglik))(jnp.concatenate([phi + step, phi - step])))
    fd = (ll[: phi.shape[0]] - ll[phi.shape[0]:]) / (2 * h)
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


def test_residual_sigma_derivatives_match_autodiff_and_differences():
    """Louis's formula takes each draw's residual score and Hessian in log sigma from the
    closed-form derivatives of :func:`residual_loglik_sigma_derivatives`: against autodiff of the
    likelihood itself and against central differences, over the four error models, censoring
    below and above (M3, including limits 30 SDs away, past log_ndtr's switch at -20) and
    masked records."""
    from cartkin._likelihood import (
        kind_codes,
        record_loglik,
        residual_loglik_sigma_derivatives,
        sigma_per_endpoint,
    )

    eps = (Endpoint("C", 1, "log_additive"), Endpoint("A", 2, "combined"),
           Endpoint("B", 3, "proportional"), Endpoint("D", 4, "additive"))
    rng = np.random.default_rng(3)
    T = 64
    f = rng.lognormal(0.0, 1.0, T)
    y = f * np.exp(rng.normal(0.0, 0.4, T))
    cens = rng.choice([0, 0, 1, -1], T)
    factor = np.where(cens == 1, rng.uniform(0.3, 30.0, T), rng.uniform(0.05, 3.0, T))
    factor[:4] = [1e-13, 1e13, 1e-13, 1e13]  # limits far out on the log scale
    cens[:4] = [1, 1, -1, -1]
    data_i = {"endpoint": jnp.asarray(np.r_[0, 0, 0, 0, rng.integers(0, 4, T - 4)]),
              "mask": jnp.asarray(rng.uniform(size=T) < 0.9).at[:4].set(True),
              "cens": jnp.asarray(cens), "dv": jnp.asarray(y), "limit": jnp.asarray(y * factor)}
    codes = kind_codes(eps)
    f = jnp.asarray(f)

    def loglik(ls):
        sa, sp = sigma_per_endpoint(eps, jnp.exp(ls))
        return record_loglik(codes, data_i, f, sa, sp).sum()

    ls = jnp.asarray([-0.7, -1.2, -0.4, -1.6, -0.9])
    # compiled once per shape (op by op, the checks below compiled some 340 small programs)
    derivs = jax.jit(residual_loglik_sigma_derivatives, static_argnums=0)
    v, g, H = (np.asarray(a) for a in derivs(eps, data_i, f, ls))
    assert v == pytest.approx(float(loglik(ls)), rel=1e-13)
    np.testing.assert_allclose(g, jax.jit(jax.grad(loglik))(ls), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(H, jax.jit(jax.hessian(loglik))(ls), rtol=1e-8, atol=1e-8)
    h = 1e-4
    e = np.eye(5) * h
    ll = jax.jit(loglik)  # one compile for the 110 shifted points
    fd_g = np.array([(ll(ls + e[j]) - ll(ls - e[j])) / (2 * h) for j in range(5)])
    fd_H = np.array([[(ll(ls + e[i] + e[j]) - ll(ls + e[i] - e[j])
                       - ll(ls - e[i] + e[j]) + ll(ls - e[i] - e[j])) / (4 * h * h)
                      for j in range(5)] for i in range(5)])
    np.testing.assert_allclose(g, fd_g, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(H, fd_H, rtol=1e-4, atol=1e-2)
    # log SDs: additive of C, A, D, then proportional of A, B; the combined error (A) couples
    assert np.abs(H[1, 3]) > 1.0 and H[1, 2] == 0.0
    # a batch of predictions with the records first (T, B), as importance sampling passes its
    # draws: each column's results are those of the single prediction
    fb = f[:, None] * jnp.asarray(np.exp(rng.normal(0.0, 0.3, (T, 7))))
    vb, gb, Hb = derivs(eps, data_i, fb, ls)
    assert vb.shape == (7,) and gb.shape == (7, 5) and Hb.shape == (7, 5, 5)
    for j in range(7):
        v1, g1, H1 = derivs(eps, data_i, fb[:, j], ls)
        np.testing.assert_allclose(vb[j], v1, rtol=1e-13)
        np.testing.assert_allclose(gb[j], g1, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(Hb[j], H1, rtol=1e-12, atol=1e-12)
    # every endpoint log-additive (a program of its own: the SD does not depend on f)
    data_log = dict(data_i, endpoint=jnp.zeros(T, int))
    vb, gb, Hb = derivs(eps[:1], data_log, fb, ls[:1])
    for j in range(7):
        v1, g1, H1 = derivs(eps[:1], data_log, fb[:, j], ls[:1])
        np.testing.assert_allclose(vb[j], v1, rtol=1e-13)
        np.testing.assert_allclose(gb[j], g1, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(Hb[j], H1, rtol=1e-12, atol=1e-12)
