"""The cohort generator: the model's typical profile, the recorded truth, the BLQ fraction.

Cohorts are shared between tests (module fixtures): each draw compiles the population sampler.
"""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

import cartkin
from cartkin import data
from cartkin.data import STEIN_SCHEDULE, read_nonmem, read_sidecar, simulate_cohort

NOMINAL = np.array([v.day for v in STEIN_SCHEDULE])
MODEL = cartkin.Stein2019()


@pytest.fixture(scope="module")
def cohort():
    """The bundled cohort's recipe: 200 subjects, Stein 2019 with IIV (variance reading),
    residual SD 0.56 on the ln scale, LLOQ 50 copies/ug, values to 4 significant digits."""
    call = data.sidecar("stein2019_sim200").extra["simulation"]["call"]
    assert call == {"n": 200, "seed": 2019, "parameters": "stein2019_parameters",
                    "omega_reading": "variance", "omega": None, "residual_sd": 0.56,
                    "lloq": 50.0, "blq_fraction": None, "visit_windows": True, "digits": 4,
                    "name": "stein2019_sim200"}
    return simulate_cohort(**call)


def _predictions(c, obs):
    truth = c.truth.set_index("ID").loc[obs["ID"]]
    theta = {k: truth[k].to_numpy() for k in MODEL.parameters}
    return np.asarray(MODEL.solution(obs["TIME"].to_numpy(), theta)["C"])


def test_without_variability_every_subject_is_the_typical_profile():
    # eta = 0, no residual error, no rounding, no visit windows: DV must be the typical curve
    # of the closed form at the nominal days, to float64 round-off (rtol 1e-12)
    c = simulate_cohort(8, seed=1, omega={}, residual_sd=0.0, lloq=None, visit_windows=False,
                        digits=None)
    typical = np.asarray(MODEL.solution(NOMINAL[1:], MODEL.default_theta())["C"])
    obs = c.dataset.observations()
    assert obs["CENS"].eq(0).all()  # lloq=None: no censoring, hence no pre-dose sample
    for _, grp in obs.groupby("ID"):
        np.testing.assert_allclose(grp["DV"], typical, rtol=1e-12)
    # day 1 of the expansion phase: C = Cmax / foldx * foldx^(1 / Tmax)
    assert typical[0] == pytest.approx(24000 / 3900 * 3900 ** (1 / 9.3), rel=1e-12)


def test_recorded_truth_and_residuals_reproduce_every_value(cohort):
    # each value before censoring is the model at the subject's recorded parameters and actual
    # time, times exp(recorded residual), up to the rounding to 4 significant digits
    # (relative error <= 5e-4)
    obs = cohort.dataset.observations()
    post = obs["TIME"].to_numpy() > 0
    pred = _predictions(cohort, obs)
    np.testing.assert_allclose(cohort.uncensored[post],
                               pred[post] * np.exp(cohort.epsilon[post]), rtol=5e-4, atol=0)
    quantified = obs["CENS"].to_numpy() == 0
    np.testing.assert_array_equal(obs["DV"].to_numpy()[quantified],
                                  cohort.uncensored[quantified])
    # residuals: mean 0 and SD 0.56; with m = 2,400, 4 standard errors are 0.046 and 0.032
    eps = cohort.epsilon[post]
    m = eps.size
    assert abs(eps.mean()) < 4 * 0.56 / np.sqrt(m)
    assert abs(eps.std() - 0.56) < 4 * 0.56 / np.sqrt(2 * m)
    # the random effects were drawn with the variance reading of the printed omegas
    etas = cohort.truth[[f"ETA_{k}" for k in MODEL.parameters]].to_numpy()
    printed = np.array([2.4, 0.38, 0.65, 0.91, 0.8, 0.86])
    se = printed * np.sqrt(2 / len(etas))  # SE of a sample variance (normal data)
    assert np.all(np.abs(etas.var(axis=0) - printed) < 4 * se)


def test_visit_times_lie_in_their_windows(cohort):
    obs = cohort.dataset.observations()
    days = obs["TIME"].to_numpy().reshape(200, -1)
    win = np.array([v.window for v in STEIN_SCHEDULE])
    assert np.all(np.abs(days - NOMINAL) <= win) and np.any(days != NOMINAL)
    rec = cohort.dataset.records()
    first = rec[rec["ID"] == 1].iloc[:3]
    assert first["EVID"].tolist() == [0, 1, 0]  # pre-dose sample, dose, day 1
    assert first["TIME"].tolist()[:2] == [0, 0]


def test_blq_fraction_at_a_fixed_lloq_matches_its_expectation(cohort):
    # P(BLQ) of a sample is Phi((ln LLOQ - ln C_ij) / 0.56) given the true C_ij; the realised
    # fraction must be within 4 binomial standard errors of the mean probability
    obs = cohort.dataset.observations()
    post = obs[obs["TIME"] > 0]
    p = norm.cdf((np.log(50.0) - np.log(_predictions(cohort, post))) / 0.56)
    se = np.sqrt(np.sum(p * (1 - p))) / p.size
    assert abs(post["CENS"].eq(1).mean() - p.mean()) < 4 * se
    pre = obs[obs["TIME"] == 0]
    assert len(pre) == 200 and pre["CENS"].eq(1).all() and pre["DV"].eq(50.0).all()
    assert (post.loc[post["CENS"] == 0, "DV"] >= 50).all()


def test_requested_blq_fraction_and_independence_of_cohort_size(cohort):
    # the LLOQ is the quantile of the post-dose values: the fraction is met to 2/m
    c = simulate_cohort(24, seed=2019, blq_fraction=0.3)
    obs = c.dataset.observations()
    post = obs[obs["TIME"] > 0]
    frac = post["CENS"].eq(1).mean()
    assert abs(frac - 0.3) <= 2 / len(post)
    sim = c.dataset.meta.extra["simulation"]
    assert sim["blq_fraction_post_dose"] == pytest.approx(frac)
    lloq = c.dataset.endpoints[1].lloq
    assert sim["lloq"] == lloq and (post.loc[post["CENS"] == 1, "DV"] == lloq).all()
    assert (post.loc[post["CENS"] == 0, "DV"] >= lloq).all()
    # subject i depends on the seed and i only: the first 24 subjects of the 200 are these
    k = len(c.uncensored)
    assert c.truth.equals(cohort.truth.iloc[:24])
    np.testing.assert_array_equal(c.epsilon, cohort.epsilon[:k])
    np.testing.assert_array_equal(c.uncensored, cohort.uncensored[:k])
    assert c.dataset.frame["TIME"].equals(cohort.dataset.frame["TIME"].iloc[:len(c.dataset.frame)])


def test_written_cohort_reads_back_with_its_record(cohort, tmp_path):
    path = cohort.write(tmp_path / "c200.csv")
    ds = read_nonmem(path)
    assert ds.equals(cohort.dataset)
    sim = ds.meta.extra["simulation"]
    assert sim["seed"] == 2019 and sim["omega_reading"] == "variance"
    assert sim["model"].startswith("Stein2019") and ds.meta.status == "simulated"
    truth = pd.read_csv(tmp_path / "c200_truth.csv")
    assert truth.equals(cohort.truth)
    assert read_sidecar(tmp_path / "c200_truth.json").status == "simulated"


def test_bundled_cohort_is_what_its_sidecar_says(cohort):
    ds = data.load("stein2019_sim200")
    sim = ds.meta.extra["simulation"]
    assert sim["simulated"] and sim["seed"] == 2019 and sim["lloq"] == 50.0
    assert sim["residual"]["sd"] == 0.56 and sim["omega"]["foldx"] == 2.4
    # regenerated from the recorded call: the same numbers, up to last-digit differences
    # between platforms' exp and log
    np.testing.assert_allclose(cohort.dataset.frame.to_numpy(float), ds.frame.to_numpy(float),
                               rtol=1e-9)
    truth = data.load("stein2019_sim200_truth").frame
    np.testing.assert_allclose(cohort.truth.to_numpy(float), truth.to_numpy(float), rtol=1e-9)
    assert len(ds.ids) == 200 and 0.2 < ds.summary()["blq_fraction"].item() < 0.35
