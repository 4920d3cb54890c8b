"""pcVPC and NPDE on a cohort simulated with known truth, with the true model (correctly
specified) and with a wrong one (the checks must see it); GOF and individual-fit plots.

The cohort comes from ``cartkin.data.simulate_cohort`` (Stein 2019 closed form, the published
typical values and variances, ln-scale residual SD 0.56, LLOQ 50, visit windows), an independent
code path from the diagnostics' own simulator. The pre-dose visit is left out: the generator marks
every pre-dose sample BLQ (no transgene before the infusion), which the Stein model, with
C(0) = Cmax/foldx > 0, does not describe.
"""

import numpy as np
import pytest

import cartkin.data as cdata
from cartkin._data.cohort import STEIN_SCHEDULE
from cartkin._diagnostics.gof import plot_gof
from cartkin._diagnostics.individual import plot_individual
from cartkin._diagnostics.npde import npde, npde_tests, plot_npde
from cartkin._diagnostics.simulate import Simulator, lloq_per_record, residual_sd
from cartkin._diagnostics.vpc import nominal_times, plot_vpc, vpc
from cartkin._estimate.config import fitdata_from_dataset
from cartkin._likelihood import Endpoint, StatModel, residual_loglik
from cartkin._models import Stein2019

TRUE = {"foldx": 3900.0, "Tmax": 9.3, "Cmax": 24000.0, "alpha": 0.16, "FB": 0.0079, "beta": 0.0032}
OMEGA = {"foldx": 2.4, "Tmax": 0.38, "Cmax": 0.65, "alpha": 0.91, "FB": 0.8, "beta": 0.86}
SIGMA = 0.56


@pytest.fixture(scope="module")
def cohort():
    co = cdata.simulate_cohort(100, seed=7, omega_reading="variance", schedule=STEIN_SCHEDULE[1:])
    stat = StatModel(Stein2019(), (Endpoint("C"),), iiv=tuple(TRUE))
    data = fitdata_from_dataset(co.dataset, stat)
    truth = co.truth.set_index("ID").loc[data.ids]
    phi = np.column_stack(
        [np.asarray(stat.phi_from_theta(dict(r))) for _, r in truth[list(TRUE)].iterrows()]
    ).T
    return co, stat, data, phi, Simulator(stat, data)


def params(scale_cmax=1.0, sigma=SIGMA):
    theta = dict(TRUE, Cmax=TRUE["Cmax"] * scale_cmax)
    beta = np.log(np.array([theta[k] for k in TRUE]))[:, None]
    beta[4, 0] = np.log(theta["FB"] / (1 - theta["FB"]))  # FB is on the logit scale
    return {"beta": beta, "omega": np.diag([OMEGA[k] for k in TRUE]), "log_sigma": np.log([sigma])}


def test_residual_sd_read_off_the_likelihood():
    codes = np.array([0, 1, 2, 3])
    f = np.array([5.0, 5.0, 5.0, 5.0])
    sd = np.asarray(residual_sd(codes, f, np.full(4, 0.3), np.full(4, 0.2)))
    np.testing.assert_allclose(sd, [0.3, 0.3, 1.0, np.sqrt(0.09 + 1.0)], rtol=1e-12)
    # and it is the SD residual_loglik uses: the density one SD away is exp(-1/2) lower
    y = np.array([5.0 * np.exp(0.3), 5.3, 6.0, 5.0 + sd[3]])
    ll = residual_loglik(
        codes,
        y,
        f,
        np.zeros(4, int),
        np.ones(4),
        np.full(4, 0.3),
        np.full(4, 0.2),
        np.ones(4, bool),
    )
    ll0 = residual_loglik(
        codes,
        f,
        f,
        np.zeros(4, int),
        np.ones(4),
        np.full(4, 0.3),
        np.full(4, 0.2),
        np.ones(4, bool),
    )
    np.testing.assert_allclose(np.asarray(ll0 - ll), 0.5, rtol=1e-10)


def test_vpc_correct_model_inside_bands_wrong_model_outside(cohort, tmp_path):
    co, stat, data, _, sim = cohort
    nominal, how = nominal_times(data, co.dataset)
    assert "schedule" in how
    assert set(np.unique(nominal[data.mask])) <= {v.day for v in STEIN_SCHEDULE}
    reps = sim(params(), 200, seed=3)
    res = vpc(data, reps, nominal, binning=how)
    inside = res.table[[c for c in res.table.columns if c.startswith("inside_")]].to_numpy()
    # 12 bins x 3 percentiles; under the true model each lies inside its 95% band with
    # probability ~0.95: at most 6 misses of 36 (binomial tail ~0.4%, more with correlation)
    assert (~inside).sum() <= 6, res.table
    # the %BLQ observed lies inside the simulated band in most bins
    blq_in = (res.table["blq_obs_pct"] >= res.table["blq_sim_lo"] - 1e-9) & (
        res.table["blq_obs_pct"] <= res.table["blq_sim_hi"] + 1e-9
    )
    assert blq_in.mean() >= 10 / 12
    plot_vpc(res, tmp_path / "vpc.png", title="pcVPC, true model")
    assert (tmp_path / "vpc.png").stat().st_size > 20_000
    # Cmax 3x too high: the observed medians fall below the bands in most bins
    wrong = vpc(data, sim(params(scale_cmax=3.0), 200, seed=3), nominal)
    assert (~wrong.table["inside_q50"]).sum() >= 6


def test_npde_standard_normal_under_the_true_model(cohort, tmp_path):
    co, stat, data, _, sim = cohort
    reps = sim.many(params(), 1000, 200, seed=11)
    table = npde(data, reps, seed=1)
    t = npde_tests(table["NPDE"])
    n = t["n"]
    assert n == data.n_obs
    # iid N(0,1) under the model: mean SE 1/sqrt(n), variance SE sqrt(2/n); 4 SE each
    assert abs(t["mean"]) < 4 / np.sqrt(n)
    assert abs(t["variance"] - 1) < 4 * np.sqrt(2 / n)
    plot_npde(table, tmp_path / "npde.png")
    assert (tmp_path / "npde.png").stat().st_size > 20_000
    # a residual SD 30% too small: NPDE variance well above 1
    wrong = npde(data, sim.many(params(sigma=0.7 * SIGMA), 1000, 200, seed=11), seed=1)
    assert npde_tests(wrong["NPDE"])["variance"] > 1 + 5 * np.sqrt(2 / n)


def test_gof_and_individual_plots(cohort, tmp_path):
    from cartkin._estimate.nuts import design
    from cartkin._estimate.residuals import sdtab
    from cartkin._likelihood import data_arrays, make_predictor

    co, stat, data, phi, _ = cohort
    X = design(stat, data)
    tab = sdtab(stat, make_predictor(stat), data_arrays(data), data, X, params(), phi)
    assert (tab["CENS"] == 1).any()
    plot_gof(tab, tmp_path / "gof.png", unit="copies/ug")
    assert (tmp_path / "gof.png").stat().st_size > 30_000
    mu = np.einsum("njp,jp->nj", X, params()["beta"])
    plot_individual(stat, data, phi, mu, tmp_path / "ind.png", n=12, lloq=lloq_per_record(data))
    assert (tmp_path / "ind.png").stat().st_size > 30_000
