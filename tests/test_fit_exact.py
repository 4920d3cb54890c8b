"""The population fit against an exact answer.

A mono-exponential with log-additive error is linear on the log scale:
log y_ij = phi_i1 - phi_i2 t_ij + eps_ij, so the marginal likelihood is Gaussian and exact:
y_i ~ N(A_i mu, A_i Omega A_i' + sigma^2 I). scipy maximises it independently; the fit (SAEM +
importance sampling + Newton polishing) must land on the same maximum, its -2LL must match the
exact one, and its Louis standard errors the exact observed information.
"""

from typing import ClassVar

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize

from cartkin._estimate.fit import fit
from cartkin._estimate.importance import ISOptions
from cartkin._estimate.saem import SAEMOptions
from cartkin._likelihood import Endpoint, FitData, StatModel
from cartkin._models.base import ClosedFormModel, Output, Param

TIMES = np.array([0.5, 1.0, 2.0, 4.0, 7.0, 10.0])


class MonoExp(ClosedFormModel):
    parameters: ClassVar = {"C0": Param(100.0, "cells/uL"), "k": Param(0.3, "1/d", domain="real")}
    outputs: ClassVar = {"C": Output("cells/uL")}

    def solution(self, t, theta):
        return {"C": theta["C0"] * jnp.exp(-theta["k"] * t)}


def _cohort(n=120, seed=0):
    rng = np.random.default_rng(seed)
    mu = np.array([np.log(100.0), 0.3])
    om = np.diag([0.2, 0.01])
    phi = mu + rng.multivariate_normal(np.zeros(2), om, size=n)
    logy = phi[:, :1] - phi[:, 1:] * TIMES + 0.2 * rng.standard_normal((n, len(TIMES)))
    T = len(TIMES)
    data = FitData(
        ids=np.arange(1, n + 1), time=np.tile(TIMES, (n, 1)), dv=np.exp(logy),
        cens=np.zeros((n, T), int), limit=np.ones((n, T)), endpoint=np.zeros((n, T), int),
        mask=np.ones((n, T), bool), ev_time=np.full((n, 1), 1e30), ev_dose=np.zeros((n, 1)),
        ev_log_effect=np.zeros((n, 1, 2)), covariates={},
    )
    return data, logy


def _exact_m2ll(psi, logy):
    """-2LL of the Gaussian marginal; psi = (mu1, mu2, w11, w22, log sigma)."""
    mu = psi[:2]
    om = np.diag(psi[2:4])
    s2 = np.exp(2 * psi[4])
    A = np.stack([np.ones_like(TIMES), -TIMES], 1)
    V = A @ om @ A.T + s2 * np.eye(len(TIMES))
    sign, logdet = np.linalg.slogdet(V)
    if sign <= 0:
        return np.inf
    r = logy - A @ mu
    quad = np.einsum("ni,ij,nj->", r, np.linalg.inv(V), r)
    n, T = logy.shape
    return n * (T * np.log(2 * np.pi) + logdet) + quad


def _num_hessian(f, x, h=1e-4):
    k = len(x)
    H = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            e_i, e_j = np.eye(k)[i] * h, np.eye(k)[j] * h
            H[i, j] = (f(x + e_i + e_j) - f(x + e_i - e_j) - f(x - e_i + e_j) + f(x - e_i - e_j)) / (4 * h * h)
    return H


@pytest.fixture(scope="module")
def fitted():
    data, logy = _cohort()
    stat = StatModel(MonoExp(), (Endpoint("C"),), iiv=("C0", "k"))
    res = fit(stat, data, init={"C0": 50.0, "k": 0.5}, omega_init=0.3, sigma_init=0.5,
              saem=SAEMOptions(seed=3), importance=ISOptions(seed=4, target_se=0.2), progress=False)
    x0 = np.array([np.log(100), 0.3, 0.2, 0.01, np.log(0.2)])
    opt = minimize(lambda p: _exact_m2ll(p, logy), x0, method="Nelder-Mead",
                   options={"xatol": 1e-9, "fatol": 1e-9, "maxiter": 20000, "maxfev": 20000})
    return res, opt, logy


def test_estimate_is_the_exact_maximum(fitted):
    res, opt, logy = fitted
    psi_fit = np.r_[res.estimates["beta"][:, 0], np.diag(res.estimates["omega"]), res.estimates["log_sigma"]]
    se_exact = np.sqrt(np.diag(np.linalg.inv(_num_hessian(lambda p: _exact_m2ll(p, logy), opt.x) / 2)))
    # Monte Carlo error of SAEM + polishing: a quarter of a standard error at most (polishing
    # stops once the Newton decrement is below 0.05, i.e. about 0.3 SE in the information norm)
    np.testing.assert_array_less(np.abs(psi_fit - opt.x) / se_exact, 0.25)
    # the exact -2LL at our estimate is within 0.1 units of the exact minimum
    assert _exact_m2ll(psi_fit, logy) - opt.fun < 0.1


def test_importance_sampled_m2ll_matches_exact(fitted):
    res, opt, logy = fitted
    psi_fit = np.r_[res.estimates["beta"][:, 0], np.diag(res.estimates["omega"]), res.estimates["log_sigma"]]
    exact = _exact_m2ll(psi_fit, logy)
    assert res.m2ll_se < 0.3
    assert abs(res.m2ll - exact) < 4 * res.m2ll_se + 0.05


def test_louis_standard_errors_match_exact_information(fitted):
    res, opt, logy = fitted
    H = _num_hessian(lambda p: _exact_m2ll(p, logy), opt.x) / 2
    se_exact = np.sqrt(np.diag(np.linalg.inv(H)))
    # psi order in the fit: beta (C0, k), omega (C0, k), log sigma -- same as the exact one
    se_fit = np.sqrt(np.diag(res.covariance))
    np.testing.assert_allclose(se_fit, se_exact, rtol=0.1)
    assert res.convergence["converged"]


def test_multiple_starts_reach_the_exact_maximum_and_are_reported(fitted):
    """Three SAEM starts (one at init, two drawn around it): each is reported with its first-pass
    -2LL, the chosen one has the lowest, and the estimate is still the exact maximum."""
    res1, opt, logy = fitted
    data, _ = _cohort()
    stat = StatModel(MonoExp(), (Endpoint("C"),), iiv=("C0", "k"))
    res = fit(stat, data, init={"C0": 50.0, "k": 0.5}, omega_init=0.3, sigma_init=0.5,
              saem=SAEMOptions(seed=3), importance=ISOptions(seed=4, target_se=0.2), starts=3,
              progress=False)
    starts = res.convergence["starts"]
    assert [s["start"] for s in starts] == [1, 2, 3]
    assert len({round(s["initial_phi"]["C0"], 6) for s in starts}) == 3  # really different starts
    chosen = [s for s in starts if s["chosen"]]
    assert len(chosen) == 1
    assert chosen[0]["m2ll_first_pass"] == min(s["m2ll_first_pass"] for s in starts)
    psi_fit = np.r_[res.estimates["beta"][:, 0], np.diag(res.estimates["omega"]), res.estimates["log_sigma"]]
    assert _exact_m2ll(psi_fit, logy) - opt.fun < 0.1


def test_covariate_effect_and_omega_block_reach_the_exact_maximum():
    """A power effect of weight on C0 and a correlated (C0, k) block: the log-scale model is still
    linear-Gaussian, so the exact maximum and information are known. The fit lands within 0.25 SE
    of scipy's maximum for every element (exponent and covariance included) and its SEs within
    10% of the exact ones."""
    from cartkin._population import PowerEffect

    rng = np.random.default_rng(5)
    n, T = 150, len(TIMES)
    wt = np.exp(rng.normal(np.log(70.0), 0.25, n))
    om = np.array([[0.2, 0.02], [0.02, 0.01]])
    phi = np.array([np.log(100.0), 0.3]) + rng.multivariate_normal(np.zeros(2), om, size=n)
    phi[:, 0] += 0.75 * np.log(wt / 70.0)
    logy = phi[:, :1] - phi[:, 1:] * TIMES + 0.2 * rng.standard_normal((n, T))
    data = FitData(
        ids=np.arange(1, n + 1), time=np.tile(TIMES, (n, 1)), dv=np.exp(logy),
        cens=np.zeros((n, T), int), limit=np.ones((n, T)), endpoint=np.zeros((n, T), int),
        mask=np.ones((n, T), bool), ev_time=np.full((n, 1), 1e30), ev_dose=np.zeros((n, 1)),
        ev_log_effect=np.zeros((n, 1, 2)), covariates={"WT": wt},
    )
    stat = StatModel(MonoExp(), (Endpoint("C"),), iiv=("C0", "k"), omega_blocks=(("C0", "k"),),
                     covariates=(PowerEffect("C0", "WT", 70.0, 0.0),))
    res = fit(stat, data, init={"C0": 50.0, "k": 0.5}, omega_init=0.3, sigma_init=0.5,
              saem=SAEMOptions(seed=8), importance=ISOptions(seed=9, target_se=0.2),
              progress=False)
    A = np.stack([np.ones_like(TIMES), -TIMES], 1)
    lw = np.log(wt / 70.0)

    def m2ll(x):  # x = (mu_C0, exponent, mu_k, w11, w21, w22, log sigma): the fit's psi order
        O = np.array([[x[3], x[4]], [x[4], x[5]]])
        V = A @ O @ A.T + np.exp(2 * x[6]) * np.eye(T)
        sign, logdet = np.linalg.slogdet(V)
        if sign <= 0 or np.linalg.eigvalsh(O).min() <= 0:
            return np.inf
        mean = (x[0] + x[1] * lw)[:, None] - x[2] * TIMES[None, :]
        r = logy - mean
        return n * (T * np.log(2 * np.pi) + logdet) + np.einsum("ni,ij,nj->", r, np.linalg.inv(V), r)

    x0 = np.array([np.log(100), 0.75, 0.3, 0.2, 0.02, 0.01, np.log(0.2)])
    opt = minimize(m2ll, x0, method="Nelder-Mead",
                   options={"xatol": 1e-10, "fatol": 1e-10, "maxiter": 40000, "maxfev": 40000})
    H = _num_hessian(m2ll, opt.x) / 2
    se_exact = np.sqrt(np.diag(np.linalg.inv(H)))
    b, o = res.estimates["beta"], res.estimates["omega"]
    psi_fit = np.array([b[0, 0], b[0, 1], b[1, 0], o[0, 0], o[1, 0], o[1, 1],
                        res.estimates["log_sigma"][0]])
    np.testing.assert_array_less(np.abs(psi_fit - opt.x) / se_exact, 0.25)
    assert m2ll(psi_fit) - opt.fun < 0.1
    np.testing.assert_allclose(np.sqrt(np.diag(res.covariance)), se_exact, rtol=0.1)
    assert abs(res.m2ll - m2ll(psi_fit)) < 4 * res.m2ll_se + 0.05
    t = res.parameters.set_index("parameter")
    assert "C0~WT" in t.index and "omega(k,C0)" in t.index


def _sampler(res, options):
    """The importance sampler of the exact problem, the fit's parameters as its psi -> params,
    and a proposal at the fit's conditional means and SDs of phi = (log C0, k)."""
    from cartkin._estimate.importance import make_importance_sampler
    from cartkin._likelihood import data_arrays, kind_codes, make_draws_predictor

    data, _ = _cohort()
    stat = StatModel(MonoExp(), (Endpoint("C"),), iiv=("C0", "k"))
    X = stat.design_matrix(data)
    sample = make_importance_sampler(stat, make_draws_predictor(stat), data_arrays(data), X,
                                     kind_codes(stat.endpoints), options)

    def params(psi):
        beta = np.zeros((2, X.shape[2]))
        beta[:, 0] = psi[:2]
        return {"beta": beta, "omega": np.diag(psi[2:4]), "log_sigma": psi[4:]}

    post_mean = np.stack([np.log(res.ebe["C0"]), res.ebe["k"]], 1)
    post_cov = np.stack([np.diag(v) for v in res.ebe[["ETA1_sd", "ETA2_sd"]].to_numpy() ** 2])
    return sample, params, post_mean, post_cov


def test_a_pass_that_gives_the_information_draws_as_many_as_the_information_pass(fitted):
    """With a loose -2LL target the -2LL pass stops at its minimum of draws; where that pass also
    gives the information and score (after reweighted polishing steps) every subject gets at
    least the information pass's draws. Both -2LLs match the exact one."""
    res, opt, logy = fitted
    options = ISOptions(seed=8, target_se=5.0)
    sample, params, post_mean, post_cov = _sampler(res, options)
    exact = _exact_m2ll(opt.x, logy)
    for fresh, least in ((False, options.min_draws), (True, options.louis_draws)):
        r = sample(params(opt.x), post_mean, post_cov, fresh_information=fresh)
        assert r["draws_i"].min() == least
        assert abs(r["m2ll"] - exact) < 4 * r["m2ll_se"] + 0.05


def test_the_m2ll_pass_gives_every_subject_the_same_draws_until_its_target(fitted):
    """The -2LL pass's rounds give every subject one more row of draws until the SE target is
    met: equal counts to within a row (the greedy allocation: rows where the variance is
    largest, so unequal counts); both meet the target and match the exact -2LL."""
    res, opt, logy = fitted
    assert res.convergence["m2ll_allocation"] == "equal"  # the fit's, in its record
    exact = _exact_m2ll(opt.x, logy)
    for allocation in ("equal", "greedy"):
        options = ISOptions(seed=9, target_se=0.03, mode_iterations=0, allocation=allocation)
        sample, params, post_mean, post_cov = _sampler(res, options)
        r = sample(params(opt.x), post_mean, post_cov)
        assert r["m2ll_se"] <= 0.03 and r["pareto_k"].max() <= 0.7
        assert abs(r["m2ll"] - exact) < 4 * r["m2ll_se"] + 0.01
        n = r["draws_i"]
        if allocation == "equal":
            # within a row (a chunk's rows beyond those needed go to the next subjects in turn),
            # but for a subject whose variance alone held a tenth of the target's, which draws
            # on its own
            M, mid = options.draws_per_chunk, np.median(n)
            assert np.all(n >= mid - M) and np.mean(n <= mid + M) >= 0.95 and mid > options.min_draws
        else:
            assert n.max() > n.min()


def test_reweighted_draws_give_the_exact_score_at_a_polishing_step(fitted):
    """A polishing step weighs the first pass's draws (and solves) again at the new parameters:
    the score it gets there equals the exact gradient of the log-likelihood, as a fresh pass's
    does, to its Monte Carlo error (a few hundredths of the score's scale sqrt(I_jj))."""
    res, opt, logy = fitted
    sample, params, post_mean, post_cov = _sampler(res, ISOptions(seed=8))
    H = _num_hessian(lambda p: _exact_m2ll(p, logy), opt.x) / 2
    first = sample(params(opt.x), post_mean, post_cov, m2ll=False)
    assert first["drawn"] is not None  # small problem: the draws are kept
    # a Newton-sized step: half a standard error in every parameter
    psi1 = opt.x + 0.5 * np.sqrt(np.diag(np.linalg.inv(H)))
    exact = np.array([-(_exact_m2ll(psi1 + e, logy) - _exact_m2ll(psi1 - e, logy)) / 4e-6
                      for e in np.eye(5) * 1e-6])
    scale = np.sqrt(np.diag(H))
    for r in (sample(params(psi1), first["ebe"], first["ebe_cov"], m2ll=False, reuse=first),
              sample(params(psi1), first["ebe"], first["ebe_cov"], m2ll=False)):
        assert np.all(np.abs(r["score"] - exact) / scale < 0.05), (r["score"], exact)
        assert abs(exact @ np.linalg.solve(H, exact)) > 0.5  # the step really moved the score


def test_failed_independent_check_gets_one_more_step_to_the_exact_maximum(monkeypatch):
    """When the final pass's independent draws find the fit unconverged after reweighted
    polishing steps (forced here by adding 1 to that decrement), one more step with fresh draws
    is taken and reported, and the estimate is still the exact maximum."""
    import cartkin._estimate.fit as fit_module

    data, logy = _cohort()
    stat = StatModel(MonoExp(), (Endpoint("C"),), iiv=("C0", "k"))
    make = fit_module.make_importance_sampler

    def marking_sampler(*args, **kwargs):
        sample = make(*args, **kwargs)

        def marked(*a, m2ll=True, **kw):
            res = sample(*a, m2ll=m2ll, **kw)
            return {**res, "_m2ll_pass": m2ll}

        marked.compile_ahead = sample.compile_ahead
        return marked

    newton = fit_module._newton
    forced = []

    def failing_first_check(res):
        cov, cond, dec, step = newton(res)
        if res.get("_m2ll_pass") and not forced:
            forced.append(dec)
            dec = dec + 1.0
        return cov, cond, dec, step

    monkeypatch.setattr(fit_module, "make_importance_sampler", marking_sampler)
    monkeypatch.setattr(fit_module, "_newton", failing_first_check)
    # a short SAEM run leaves a decrement for the polishing steps to remove
    res = fit(stat, data, init={"C0": 50.0, "k": 0.5}, omega_init=0.3, sigma_init=0.5,
              saem=SAEMOptions(seed=3, k1=30, k2=10, anneal=20, block=10),
              importance=ISOptions(seed=4, target_se=0.2), progress=False)
    steps = [h["step"] for h in res.convergence["polishing"]]
    assert forced and "after check" in steps, res.convergence["polishing"]
    assert res.convergence["converged"]
    psi_fit = np.r_[res.estimates["beta"][:, 0], np.diag(res.estimates["omega"]),
                    res.estimates["log_sigma"]]
    opt = minimize(lambda p: _exact_m2ll(p, logy), psi_fit, method="Nelder-Mead",
                   options={"xatol": 1e-9, "fatol": 1e-9, "maxiter": 20000, "maxfev": 20000})
    assert _exact_m2ll(psi_fit, logy) - opt.fun < 0.1
