"""The Newton step of the polishing: the decrement where the information is positive definite,
and the saddle-free step where it is not, against independent constructions."""

import numpy as np
import scipy.linalg

from cartkin._estimate.fit import _newton


def _random_info(rng, evals):
    q, _ = np.linalg.qr(rng.normal(size=(len(evals), len(evals))))
    return (q * evals) @ q.T


def test_positive_definite_information_gives_inverse_and_decrement():
    rng = np.random.default_rng(0)
    info = _random_info(rng, np.array([0.5, 3.0, 40.0, 900.0]))
    g = rng.normal(size=4)
    cov, cond, dec, step = _newton({"info": info, "score": g})
    x = scipy.linalg.solve(info, g, assume_a="pos")
    np.testing.assert_allclose(cov @ info, np.eye(4), atol=1e-10)
    np.testing.assert_allclose(step, cov)
    np.testing.assert_allclose(dec, g @ x / 2, rtol=1e-12)
    np.testing.assert_allclose(cond, 1800.0, rtol=1e-10)


def test_indefinite_information_gives_saddle_free_ascent_step():
    rng = np.random.default_rng(1)
    info = _random_info(rng, np.array([-50.0, 108.0, 145.0, 16000.0]))
    g = rng.normal(size=4)
    cov, cond, dec, step = _newton({"info": info, "score": g})
    assert not np.isfinite(dec) and not np.isfinite(cond)
    # |I| = (I^2)^(1/2), the matrix absolute value, computed without an eigendecomposition of I
    absolute = np.real(scipy.linalg.sqrtm(info @ info))
    np.testing.assert_allclose(step @ absolute, np.eye(4), atol=1e-9)
    # an ascent direction for the score, whatever the sign of the curvature
    assert g @ step @ g > 0
    # while the plain Newton direction is not one for this score along the negative eigenvector
    w, v = np.linalg.eigh(info)
    g_neg = v[:, 0]
    assert g_neg @ np.linalg.solve(info, g_neg) < 0 < g_neg @ step @ g_neg
