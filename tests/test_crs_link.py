"""The ordinal CRS link: probabilities against a formula written out in numpy, and recovery of
known coefficients from individual grades."""

import jax.numpy as jnp
import numpy as np
import pytest

from cartkin._crs.link import OrdinalLink, fit_individual


def _numpy_categories(x, center, scale, beta, cuts):
    """P(G = k), k = 0..4, of a cumulative-logit model, written out independently."""
    eta = ((x - center) / scale) @ beta
    ge = 1.0 / (1.0 + np.exp(-(eta[:, None] - cuts[None, :])))  # P(G >= 1..4)
    p = np.empty((len(x), 5))
    p[:, 0] = 1.0 - ge[:, 0]
    for k in range(1, 4):
        p[:, k] = ge[:, k - 1] - ge[:, k]
    p[:, 4] = ge[:, 3]
    return p


def test_link_probabilities_match_numpy():
    rng = np.random.default_rng(0)
    center, scale = np.array([5.0, 2.0]), np.array([2.0, 0.5])
    beta, cuts = np.array([1.3, -0.4]), np.array([-1.0, 0.2, 1.7, 2.9])
    link = OrdinalLink(
        ("log_peak_il6", "log_burden"),
        jnp.asarray(center),
        jnp.asarray(scale),
        jnp.asarray(beta),
        jnp.asarray(cuts),
    )
    x = rng.normal([5.0, 2.0], [3.0, 1.0], size=(200, 2))
    ref = _numpy_categories(x, center, scale, beta, cuts)
    got = np.asarray(link.categories(x))
    # same formula, float64: agreement to rounding
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-15)
    assert np.all(got >= 0) and np.allclose(got.sum(1), 1.0)
    cum = np.asarray(link.cumulative(x))
    assert np.all(np.diff(cum, axis=1) <= 0)  # P(G >= k) decreases in k
    # the packed parameter vector round-trips
    np.testing.assert_allclose(np.asarray(link.with_phi(link.to_phi()).cuts), cuts, rtol=1e-12)


def test_link_rejects_bad_shapes():
    with pytest.raises(ValueError, match="cuts must have shape"):
        OrdinalLink(("a",), jnp.zeros(1), jnp.ones(1), jnp.ones(1), jnp.zeros(3))


def test_fit_individual_recovers_known_coefficients():
    rng = np.random.default_rng(1)
    n = 4000
    beta_true, cuts_true = 1.2, np.array([-0.5, 0.5, 2.0, 3.0])
    x = rng.normal(0.0, 1.0, size=(n, 1))
    truth = OrdinalLink(
        ("x",), jnp.zeros(1), jnp.ones(1), jnp.array([beta_true]), jnp.asarray(cuts_true)
    )
    u = rng.random(n)
    grades = (u[:, None] < np.asarray(truth.cumulative(x))).sum(1)
    link, cov = fit_individual(x, grades, ["x"])
    # the fit standardises x by its sample mean m and SD s: beta_z = beta s, c_z = c - beta m
    m, s = float(link.center[0]), float(link.scale[0])
    expect = np.r_[beta_true * s, cuts_true - beta_true * m]
    got = np.r_[float(link.beta[0]), np.asarray(link.cuts)]
    # delta method for the cut points' SEs from the covariance of phi = (beta, c1, log gaps)
    phi = np.asarray(link.to_phi())
    J = np.zeros((5, 5))
    J[0, 0] = 1.0
    J[1:, 1] = 1.0
    for k in range(2, 5):
        J[k:, k] = np.exp(phi[k])
    se = np.sqrt(np.diag(J @ cov @ J.T))
    # recovery within 4 standard errors (n = 4000)
    assert np.all(np.abs(got - expect) < 4 * se), (got, expect, se)
    assert np.all(se < 0.1)


def test_fit_individual_messages():
    with pytest.raises(ValueError, match="all patients have grade"):
        fit_individual(np.zeros((5, 1)) + np.arange(5)[:, None], np.zeros(5, int), ["x"])
    with pytest.raises(ValueError, match="shape"):
        fit_individual(np.zeros((5, 2)), np.zeros(5, int), ["x"])
