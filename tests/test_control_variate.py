"""The importance-sampling likelihood estimate with its normal control variate (cv_mean) against
a normalizing constant known in closed form, on a skewed (not normal) target."""

import numpy as np
from scipy import special, stats

from cartkin._estimate.importance import cv_mean


def test_control_variate_estimate_is_unbiased_and_its_variance_is_right():
    """Target p(x) = exp(-x1^2 / 2) exp(k x2 - e^x2) (x2: the log of a Gamma(k) variable, skewed),
    Z = sqrt(2 pi) Gamma(k). Proposal: a t with 4 degrees of freedom at p's moments, covariance
    1.2 x p's (as the fit's); control variate: the normal of p's moments. Over 400 replicates of
    1,000 draws: the mean log estimate is log Z within its standard error, the variance that
    cv_mean reports matches the replicates' spread, and it is well below the plain estimate's."""
    k = 2.0
    mean = np.array([0.0, special.digamma(k)])
    cov = np.diag([1.0, special.polygamma(1, k)])
    log_z = 0.5 * np.log(2 * np.pi) + special.gammaln(k)
    q = stats.multivariate_t(mean, 1.2 * cov, df=4)
    g = stats.multivariate_normal(mean, cov)
    rng = np.random.default_rng(11)
    R, m = 400, 1000
    x = q.rvs(size=R * m, random_state=rng).reshape(R, m, 2)
    lq = q.logpdf(x)
    lw = -0.5 * x[..., 0] ** 2 + k * x[..., 1] - np.exp(x[..., 1]) - lq
    v = np.exp(g.logpdf(x) - lq)
    lmax = lw.max(axis=1, keepdims=True)  # weights scaled by each replicate's largest, as the fit's
    w = np.exp(lw - lmax)
    est, var_log = cv_mean(w.sum(1), (w**2).sum(1), v.sum(1), (v**2).sum(1), (w * v).sum(1),
                           np.full(R, float(m)))
    log_est = np.log(est) + lmax[:, 0]
    err = log_est - log_z
    assert abs(err.mean()) < 3 * err.std() / np.sqrt(R)
    np.testing.assert_allclose(var_log.mean(), err.var(), rtol=0.25)  # (its own SE: ~7%)
    plain = np.log(w.mean(1)) + lmax[:, 0]
    assert err.var() < 0.5 * plain.var()


def test_control_variate_falls_back_to_the_plain_mean():
    """Without spread in the control variate (v constant) or without draws, the estimate is the
    plain mean of the weights with the plain delta-method variance (infinite without draws)."""
    w = np.array([0.2, 1.0, 0.5, 0.1])
    m = float(len(w))
    est, var = cv_mean(np.array([w.sum(), 0.0]), np.array([(w**2).sum(), 0.0]),
                       np.array([m, 0.0]), np.array([m, 0.0]), np.array([w.sum(), 0.0]),
                       np.array([m, 0.0]))
    assert est[0] == w.mean()
    np.testing.assert_allclose(var[0], w.var() / m / w.mean() ** 2, rtol=1e-12)
    assert np.isinf(var[1])
