"""Calibration of the CRS link to aggregated rates: recovery of known coefficients, the fit table
(observed rate within its binomial 95% interval, or a reported misfit), and input checks."""

import jax.numpy as jnp
import numpy as np
import pytest

from cartkin._crs.calibrate import AggregateCohort, Prior, calibrate, clopper_pearson, fit_table
from cartkin._crs.link import OrdinalLink

TRUTH = OrdinalLink(
    ("x",), jnp.zeros(1), jnp.ones(1), jnp.array([1.2]), jnp.array([-0.5, 0.5, 2.0, 3.0])
)
FLAT = Prior({"x": 0.0}, {"x": 100.0})


def _cohorts(rng, means, n, cuts, *, sample=True, patients=1000):
    """Cohorts whose virtual patients have exposure N(mean, 1); counts from the truth."""
    cohorts, xs, ws = [], [], []
    for j, mu in enumerate(means):
        x = rng.normal(mu, 1.0, size=(patients, 1))
        w = np.full(patients, 1.0 / patients)
        p = np.asarray(TRUTH.cumulative(x)).mean(0)
        if sample:
            # one multinomial draw of n patients' grades
            cats = np.r_[1 - p[0], -np.diff(p), p[-1]]
            counts = rng.multinomial(n, cats)
            ge = counts[::-1].cumsum()[::-1][1:]
        else:
            ge = np.round(p * n).astype(int)
        cohorts.append(
            AggregateCohort(f"c{j}", n, {k: int(ge[k - 1]) for k in cuts}, ((1e8, 1.0),))
        )
        xs.append(x)
        ws.append(w)
    return cohorts, xs, ws


def test_calibration_recovers_known_link_from_aggregated_rates():
    rng = np.random.default_rng(2)
    cohorts, xs, ws = _cohorts(rng, [-1.5, -0.5, 0.5, 1.5, 2.5], 2000, (1, 2, 3, 4))
    cal = calibrate(["x"], cohorts, xs, ws, FLAT, center=np.zeros(1), scale=np.ones(1))
    assert cal.converged
    truth_phi = np.asarray(TRUTH.to_phi())
    est = np.asarray(cal.link.to_phi())
    se = np.sqrt(np.diag(cal.covariance))
    # counts sampled once: the estimate lies within 4 Laplace SEs of the truth
    assert np.all(np.abs(est - truth_phi) < 4 * se), (est, truth_phi, se)
    assert se[0] < 0.1
    table = fit_table(cal, xs, ws)
    assert (table["fit"] == "ok").all()


def test_cohorts_with_only_grade3_counts_and_a_prior():
    # rates of grade >= 3 only: slope and thresholds are still identified across cohorts
    rng = np.random.default_rng(3)
    cohorts, xs, ws = _cohorts(rng, [-1.0, 0.5, 2.0], 5000, (1, 3), sample=False)
    cal = calibrate(["x"], cohorts, xs, ws, FLAT, center=np.zeros(1), scale=np.ones(1))
    np.testing.assert_allclose(float(cal.link.beta[0]), 1.2, atol=0.1)
    np.testing.assert_allclose(np.asarray(cal.link.cuts)[[0, 2]], [-0.5, 2.0], atol=0.1)


def test_misfit_is_reported():
    # two cohorts with the same exposure but very different rates cannot both be reproduced
    rng = np.random.default_rng(4)
    x = rng.normal(0.0, 1.0, size=(2000, 1))
    w = np.full(2000, 1 / 2000)
    cohorts = [
        AggregateCohort("low", 300, {3: 3}, ((1e8, 1.0),)),
        AggregateCohort("high", 300, {3: 90}, ((1e8, 1.0),)),
    ]
    cal = calibrate(["x"], cohorts, [x, x], [w, w], Prior({"x": 1.0}, {"x": 0.5}))
    table = fit_table(cal, [x, x], [w, w])
    assert list(table["fit"]) == ["misfit", "misfit"]
    row = table.iloc[0]
    assert not row["observed_lo95"] <= row["predicted_rate"] <= row["observed_hi95"]


def test_clopper_pearson_matches_scipy():
    from scipy.stats import binomtest

    for k, n in [(0, 20), (3, 59), (16, 133), (59, 59)]:
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
        np.testing.assert_allclose(clopper_pearson(k, n), (ci.low, ci.high), rtol=1e-10, atol=1e-14)


def test_cohort_checks():
    with pytest.raises(ValueError, match="must not increase"):
        AggregateCohort("x", 100, {1: 10, 3: 20}, ((1e8, 1.0),))
    with pytest.raises(ValueError, match="shares must be positive and sum to 1"):
        AggregateCohort("x", 100, {3: 5}, ((1e8, 0.5),))
    with pytest.raises(ValueError, match="cut grade 5"):
        AggregateCohort("x", 100, {5: 5}, ((1e8, 1.0),))
