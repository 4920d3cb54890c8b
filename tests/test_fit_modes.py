"""A subject with several conditional modes: the mode search gives its likelihood its full mass.

The subject (ID 1601 of the simulated 5,000-subject Stein cohort, seed 2019; its 13 records are
copied below) was sampled on days 0, 1, 5, 6, ...: the day-1 value is its highest, so one mode of
p(phi | y) has Tmax near 1 day, and others sit far later. A 5,000-subject ODE fit's SAEM chain
sat at Tmax 55 days, 35 log-likelihood units below the early mode, and its importance sampling,
built on that chain, reported the subject's likelihood short by those 35 units with an ESS of
1,600. Here the sampler starts from that chain position and must still reach the marginal
likelihood of an independent reference: a numpy/scipy importance sampler whose proposal sits on
every mode scipy's BFGS finds from 60 starts (within 15 units of the best).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize, stats

from cartkin._estimate.importance import ISOptions, make_importance_sampler
from cartkin._likelihood import (
    Endpoint,
    FitData,
    StatModel,
    data_arrays,
    kind_codes,
    make_draws_predictor,
)
from cartkin._models.registry import get_model

IIV = ("foldx", "Tmax", "Cmax", "alpha", "FB", "beta")
TIME = np.array([0.0, 1, 5, 6, 9, 13, 23, 28, 65, 84, 187, 281, 377])
DV = np.array([50.0, 19430, 1545, 1488, 617.5, 1648, 823.4, 2589, 1334, 923.8, 802.2, 537.8,
               926.8])
CENS = (TIME == 0).astype(int)  # the day-0 sample is below the LLOQ of 50
LLOQ = 50.0
# population parameters (a 5,000-subject fit of that cohort, rounded): phi = log / logit
BETA = np.array([8.317, 2.2157, 10.0944, -1.8517, -4.8621, -5.8004])
OMEGA = np.diag([1.351, 0.4227, 0.6341, 0.9122, 0.8381, 0.8126])
SIGMA = float(np.exp(-0.5448))
# where the ODE fit's chain sat (Tmax 55 days) and the spread of its draws there
CHAIN_MEAN = np.array([4.529, 3.953, 10.699, -0.77, -3.826, -6.562])
CHAIN_SD = np.array([0.576, 0.102, 0.489, 0.653, 0.543, 0.64])


@pytest.fixture(scope="module")
def subject():
    stat = StatModel(get_model("stein2019"), (Endpoint("C", 1, "log_additive"),), iiv=IIV)
    T = len(TIME)
    data = FitData(
        ids=np.array([1601]), time=TIME[None], dv=DV[None], cens=CENS[None],
        limit=np.where(CENS == 1, LLOQ, 1.0)[None], endpoint=np.zeros((1, T), int),
        mask=np.ones((1, T), bool), ev_time=np.zeros((1, 1)), ev_dose=np.array([[9.11e7]]),
        ev_log_effect=np.zeros((1, 1, 6)), covariates={},
    )
    return stat, data


def _reference_loglik(stat):
    """log p(y) by importance sampling in numpy/scipy: a t mixture on every BFGS mode."""
    model = stat.model

    @jax.jit
    def log_f(phi):  # (M, d) -> log C at TIME (M, T)
        theta = jax.vmap(stat.theta_from_phi)(phi)
        return jnp.log(jax.vmap(lambda th: model.solution(jnp.asarray(TIME), th)["C"])(theta))

    prior = stats.multivariate_normal(BETA, OMEGA)

    def log_joint(phi):
        m = np.asarray(log_f(np.atleast_2d(phi)))
        ll = np.where(CENS == 1, stats.norm.logcdf((np.log(LLOQ) - m) / SIGMA),
                      stats.norm.logpdf(np.log(DV), m, SIGMA)).sum(-1)
        return ll + prior.logpdf(np.atleast_2d(phi))

    rng = np.random.default_rng(7)
    starts = np.vstack([CHAIN_MEAN, BETA, prior.rvs(58, random_state=rng)])
    modes = []
    for x0 in starts:
        o = optimize.minimize(lambda x: -float(log_joint(x)[0]), x0, method="BFGS")
        if np.isfinite(o.fun) and not any(np.allclose(o.x, m, atol=1e-2) for m, _ in modes):
            modes.append((o.x, -o.fun))
    best = max(v for _, v in modes)
    comps = []
    for x, v in modes:
        if v < best - 15:
            continue
        h = optimize.approx_fprime(x, lambda z: optimize.approx_fprime(
            z, lambda u: -float(log_joint(u)[0]), 1e-6), 1e-4)
        cov = 1.5 * np.linalg.inv(0.5 * (h + h.T)) + 1e-4 * np.eye(len(x))
        comps.append(stats.multivariate_t(x, cov, df=4))
    n = 200_000
    p = np.array([0.95 / len(comps)] * len(comps) + [0.05])  # the last one the prior
    k = rng.choice(len(p), size=n, p=p)
    phi = np.empty((n, len(BETA)))
    for j, c in enumerate(comps):
        phi[k == j] = c.rvs((k == j).sum(), random_state=rng)
    phi[k == len(comps)] = prior.rvs((k == len(comps)).sum(), random_state=rng)
    lq = np.logaddexp.reduce(np.stack([c.logpdf(phi) for c in comps] + [prior.logpdf(phi)])
                             + np.log(p)[:, None], axis=0)
    lw = np.concatenate([log_joint(phi[i:i + 20000]) for i in range(0, n, 20000)]) - lq
    w = np.exp(lw - lw.max())
    se = np.sqrt(w.var() / n) / w.mean()
    top = max(modes, key=lambda m: m[1])[0]
    return float(np.log(w.mean()) + lw.max()), float(se), top


def _sample(stat, data, mode_iterations):
    sample = make_importance_sampler(
        stat, make_draws_predictor(stat), data_arrays(data), stat.design_matrix(data),
        kind_codes(stat.endpoints),
        ISOptions(target_se=0.02, max_draws=4000, mode_iterations=mode_iterations, seed=3),
    )
    params = {"beta": BETA[:, None], "omega": OMEGA, "log_sigma": np.array([np.log(SIGMA)])}
    return sample(params, CHAIN_MEAN[None], np.diag(CHAIN_SD**2)[None])


def test_mode_search_recovers_the_mass_a_stuck_chain_misses(subject, monkeypatch):
    stat, data = subject
    ref, ref_se, top = _reference_loglik(stat)
    assert np.exp(top[1]) < 2.0 and ref_se < 0.03  # the early mode (Tmax days), precisely
    res = _sample(stat, data, mode_iterations=10)
    assert bool(res["multimodal"][0])
    assert abs(res["loglik_i"][0] - ref) < 4 * np.hypot(ref_se, res["m2ll_se"] / 2) + 0.02
    # without the search the same sampler (4,000 draws, as a fit gives a subject) reaches the
    # early mode only through chance hits of its defensive component: with this seed it hits,
    # but late (ESS about 8), and stays 0.5 units short; the ODE fit's draws never hit (35 short).
    # (Those late hits make its weights heavy-tailed: the k-hat rule then redraws it from wider
    # components, which is left out here to show what the search alone does.)
    import cartkin._estimate.importance as imp

    monkeypatch.setattr(imp, "WIDEN_ROUNDS", 0)
    blind = _sample(stat, data, mode_iterations=0)
    assert blind["loglik_i"][0] < ref - 0.3
