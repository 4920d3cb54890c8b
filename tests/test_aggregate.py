"""Aggregate fits: NCA metrics, derivatives, the sampling variances of published statistics,
parameter recovery from summaries of a population with known truth, the shipped configurations
and configuration errors."""

import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import cartkin
from cartkin._estimate.aggregate import (
    _derivatives,
    Group,
    fit_aggregate,
    make_problem,
    moment_stats,
    monte_carlo_se,
    nca_metric,
    quantile_stats,
)
from cartkin._estimate.aggregate_run import load_aggregate_config, run_aggregate_fit

ROOT = Path(__file__).resolve().parents[1]
MODEL = cartkin.Stein2019(switch="softmin")
TRUTH = {"foldx": 3900.0, "Tmax": 5.0, "Cmax": 40.0, "alpha": 0.15, "FB": 0.002, "beta": 0.0032}
OMEGA = {"foldx": 1.0, "Tmax": 0.4, "Cmax": 0.9, "alpha": 0.4, "FB": 1.5, "beta": 0.5}
DAYS = (7.0, 14.0, 28.0, 90.0)


def _groups(observed, n, kinds=("time",)):
    gs = []
    if "time" in kinds:
        gs += [
            Group(f"C@{d:g}", "quantiles", (0.25, 0.5, 0.75), tuple(observed[f"C@{d:g}"]), n)
            for d in DAYS
        ]
    if "nca" in kinds:
        gs += [
            Group("cmax", "moments", ("mean", "sd"), tuple(observed["cmax"]), n),
            Group("tmax", "quantiles", (0.5,), tuple(observed["tmax"]), n),
            Group("auc_0_28d", "moments", ("mean", "sd"), tuple(observed["auc_0_28d"]), n),
        ]
    return gs


def _problem(
    groups,
    m,
    seed=1,
    estimate=("Cmax", "Tmax", "alpha", "FB"),
    estimate_iiv=("Cmax", "alpha", "FB"),
):
    return make_problem(
        MODEL,
        groups,
        estimate=estimate,
        estimate_iiv=estimate_iiv,
        theta_fixed=TRUTH,
        omega_fixed=OMEGA,
        n_virtual=m,
        seed=seed,
    )


def _reference_summaries(m=200_000, seed=12345):
    """The truth's summaries from a large independent population, with numpy quantiles."""
    prob = _problem(_groups({f"C@{d:g}": (1.0, 1.0, 1.0) for d in DAYS}, 10), m, seed=seed)
    q, th = eqx.filter_jit(lambda p, x: (p.quantities(x), p.patients(x)))(
        prob, prob.psi_from(TRUTH, OMEGA)
    )
    q, th = ({k: np.asarray(v) for k, v in d.items()} for d in (q, th))
    out = {k: np.quantile(v, [0.25, 0.5, 0.75]) for k, v in q.items()}
    for name in ("cmax", "auc_0_28d"):
        v = np.asarray(nca_metric(name, th))
        out[name] = (v.mean(), v.std(ddof=1))
    out["tmax"] = (np.median(th["Tmax"]),)
    return out


def test_auc_matches_trapezoid_of_the_exact_curve():
    # analytic AUC(0, 28) and AUC(0, 6 months) against the trapezoid rule on the exact Stein
    # curve (grid 1e-3 d with Tmax a grid point: relative error ~ (rho h)^2 / 12 < 1e-7);
    # includes a patient whose peak comes after day 28. Tolerance 1e-6 relative.
    exact = cartkin.Stein2019()
    for tmax in (3.0, 9.3, 40.0):
        th = {**{k: jnp.asarray(v) for k, v in TRUTH.items()}, "Tmax": jnp.asarray(tmax)}
        for name, horizon in (("auc_0_28d", 28.0), ("auc_0_6m", 365.25 / 2)):
            t = np.unique(np.r_[np.arange(0, horizon, 1e-3), horizon, min(tmax, horizon)])
            c = np.asarray(exact.solution(jnp.asarray(t), th)["C"])
            ref = np.trapezoid(c, t)
            assert float(nca_metric(name, th)) == pytest.approx(ref, rel=1e-6)


def _shipped_problem(name, n_virtual=1000):
    cfg = load_aggregate_config(ROOT / "fits" / f"{name}.toml", n_virtual=n_virtual)
    prob = make_problem(cfg.model, cfg.groups, estimate=tuple(cfg.init),
                        estimate_iiv=tuple(cfg.iiv_init), theta_fixed=cfg.theta_fixed,
                        omega_fixed=cfg.omega_fixed, n_virtual=cfg.n_virtual, seed=cfg.seed)
    psi0 = prob.psi_from({**cfg.theta_fixed, **cfg.init}, {**cfg.omega_fixed, **cfg.iiv_init})
    return cfg, prob, psi0


@pytest.mark.parametrize("name", ["axicel_zuma1_aggregate", "ciltacel_nca_aggregate"])
def test_gradient_and_hessian_match_finite_differences(name):
    # the shipped objectives (between them every kind of statistic: quartiles over time, a
    # median, means and SDs) away from their optimum; central differences with step 1e-5 in
    # float64: truncation ~1e-10, rounding ~1e-11 relative to the largest entry
    _, prob, psi0 = _shipped_problem(name)
    psi = psi0 + 0.1 * jnp.cos(jnp.arange(psi0.size))
    covs = prob.covariances(psi)
    f = jax.jit(lambda x: prob.objective(x, covs))
    _, grad, hess = (np.asarray(a) for a in _derivatives(prob, covs, psi))
    eps = 1e-5
    e = np.eye(len(psi)) * eps
    fd_g = np.array([(f(psi + e[i]) - f(psi - e[i])) / (2 * eps) for i in range(len(psi))])
    fd_h = np.array([(_derivatives(prob, covs, psi + e[i])[1]
                      - _derivatives(prob, covs, psi - e[i])[1]) / (2 * eps)
                     for i in range(len(psi))])
    np.testing.assert_allclose(grad, fd_g, atol=1e-6 * np.abs(grad).max())
    np.testing.assert_allclose(hess, fd_h, atol=1e-5 * np.abs(hess).max())


def test_quantile_and_moment_covariances_match_simulated_samples():
    # independent reference: draw R = 4000 samples of n patients from a simulated population
    # and compute their sample quartiles (log scale) and sample mean and variance with numpy.
    # Quartiles: the asymptotic formula is an O(1/n) approximation at n = 21; tolerances 12% on
    # the SDs, 0.1 on the correlations. Mean and variance: the formulas are exact for sampling
    # from the simulated population, so only the Monte Carlo error of R samples remains (about
    # 1.1% for the SD of the mean, 3% for the SD of the skewed s^2): tolerances 6% and 0.05.
    prob = _problem(_groups({f"C@{d:g}": (1.0, 1.0, 1.0) for d in DAYS}, 10), 20_000)
    psi = prob.psi_from(TRUTH, OMEGA)
    q, th = eqx.filter_jit(lambda p, x: (p.quantities(x), p.patients(x)))(prob, psi)
    rng = np.random.default_rng(0)
    R = 4000
    x = np.log(np.asarray(q["C@14"]))
    n = 21
    _, cov = quantile_stats(jnp.asarray(x), jnp.asarray([0.25, 0.5, 0.75]), n)
    draws = np.quantile(rng.choice(x, (R, n)), [0.25, 0.5, 0.75], axis=1).T
    _compare(np.asarray(cov), np.cov(draws.T), sd_rtol=0.12, corr_atol=0.1)
    auc = np.asarray(nca_metric("auc_0_28d", th))  # skewed, with a long lower tail
    n = 97
    mean, cov = moment_stats(jnp.asarray(auc), ("mean", "sd"), n)
    s = rng.choice(auc, (R, n))
    draws = np.c_[s.mean(axis=1), s.var(axis=1, ddof=1)]
    np.testing.assert_allclose(np.asarray(mean), draws.mean(axis=0), rtol=0.02)
    _compare(np.asarray(cov), np.cov(draws.T), sd_rtol=0.06, corr_atol=0.05)


def _compare(cov, ref, sd_rtol, corr_atol):
    sd, sd_ref = np.sqrt(np.diag(cov)), np.sqrt(np.diag(ref))
    np.testing.assert_allclose(sd, sd_ref, rtol=sd_rtol)
    np.testing.assert_allclose(
        cov / np.outer(sd, sd), ref / np.outer(sd_ref, sd_ref), atol=corr_atol
    )


def test_recovers_truth_from_summaries_of_a_large_population():
    # the published statistics are the truth's quartiles at days 7-90 from 200,000 virtual
    # patients (independent draws, numpy quantiles), stated as coming from n = 50 patients.
    # The fit uses 4,000 other virtual patients (common random numbers), so the estimate
    # differs from the truth only by Monte Carlo error, the kernel-smoothing bias (about
    # 0.05 SE) and the 200,000-patient reference's own error (about 0.02 SE). Tolerance: within
    # 3 Monte Carlo SEs + 0.15 SE of the truth, and the Monte Carlo SE below 0.5 SE.
    obs = _reference_summaries()
    prob = _problem(_groups(obs, 50), 4000, estimate=("Cmax", "alpha", "FB"))
    start = prob.psi_from(
        {**TRUTH, "Cmax": 20.0, "alpha": 0.25, "FB": 0.01},
        {**OMEGA, "Cmax": 0.5, "alpha": 0.8, "FB": 1.0},
    )
    res = fit_aggregate(prob, start)
    assert res.converged and res.grad_norm < 1e-6
    assert res.chi2 < 0.5  # the published statistics are the population's own
    truth = np.asarray(prob.psi_from(TRUTH, OMEGA))
    mc = monte_carlo_se(prob, res.psi, res.covariance, res.covs)
    assert np.all(mc < 0.5 * res.se), (mc, res.se)
    err = res.psi - truth
    assert np.all(np.abs(err) < 3 * mc + 0.15 * res.se), dict(zip(prob.names, zip(err, res.se, mc)))


@pytest.mark.parametrize("name", ["axicel_zuma1_aggregate", "ciltacel_nca_aggregate"])
def test_shipped_configurations_run(tmp_path, name):
    # reduced population and iteration budget: this checks that the files parse, run and write
    # a complete run folder; the shipped fits use n_virtual from the file
    cfg = load_aggregate_config(ROOT / "fits" / f"{name}.toml")
    assert cfg.n_virtual >= 20_000 and cfg.assumptions
    out = tmp_path / "run"
    cfg, res = run_aggregate_fit(
        ROOT / "fits" / f"{name}.toml", out, n_virtual=1000, max_iter=15, progress=False
    )
    for f in ("parameters.csv", "summaries.csv", "covariance.csv", "run.json", "aggregate_fit.png"):
        assert (out / f).is_file(), f
    par = pd.read_csv(out / "parameters.csv")
    est = par[par.status == "estimated"]
    assert len(est) == len(cfg.init) + len(cfg.iiv_init)
    assert np.isfinite(est[["estimate", "se", "ci_low", "ci_high"]].to_numpy()).all()
    summ = pd.read_csv(out / "summaries.csv")
    assert np.isfinite(summ[["observed", "fitted", "pi_low", "pi_high", "z"]].to_numpy()).all()
    rec = json.loads((out / "run.json").read_text())
    assert rec["n_virtual"] == 1000 and rec["seed"] == cfg.seed and "jax" in rec["versions"]
    assert set(rec["sample_sizes"].values()) == ({19.0} if "zuma" in name else {97.0})


def _write(tmp_path, text):
    p = tmp_path / "bad_aggregate.toml"
    p.write_text(text)
    return p


_GOOD = """
[aggregate]
data = "axicel_zuma1_medians"
quantiles = { median_cells_per_uL = 0.5 }
n = 19
[model]
name = "stein2019"
[parameters]
estimate = { Cmax = 30.0 }
fixed_from = "stein2019_parameters"
[iiv]
estimate = { Cmax = 1.0 }
"""


@pytest.mark.parametrize(
    "change, match",
    [
        (("n = 19", "nn = 19"), r"unknown key\(s\) \['nn'\] in \[aggregate\]"),
        (("n = 19\n", ""), r"\[aggregate\] needs n"),
        (("Cmax = 30.0", "Cmax = 30.0, gamma = 1.0"), r"\[parameters\] estimate names 'gamma'"),
        (("Cmax = 30.0", "alpha = 0.1"), r"\[parameters\] estimate must include Cmax"),
        (("median_cells_per_uL = 0.5", "median = 0.5"), r"column 'median' is not in"),
        (
            ("median_cells_per_uL = 0.5", "median_cells_per_uL = 50"),
            r"quantiles median_cells_per_uL",
        ),
        (('fixed_from = "stein2019_parameters"', ""), r"\[parameters\] foldx is neither"),
        (('name = "stein2019"', 'name = "stein2020"'), r"\[model\]: unknown model"),
    ],
)
def test_bad_configuration_names_file_and_key(tmp_path, change, match):
    p = _write(tmp_path, _GOOD.replace(*change))
    with pytest.raises(ValueError, match=match) as err:
        load_aggregate_config(p)
    assert str(p) in str(err.value)


def test_cli_dispatches_aggregate_configurations(tmp_path, capsys):
    # a configuration error in an [aggregate] file reaches the user as one line, exit status 2
    from cartkin.cli import main

    p = _write(tmp_path, _GOOD.replace("n = 19", "n = 1"))
    assert main(["fit", str(p), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "bad_aggregate.toml" in err and "[aggregate] n" in err and "Traceback" not in err
