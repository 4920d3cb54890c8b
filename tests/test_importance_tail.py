"""PSIS's Pareto k-hat of a subject's weights from the largest ones kept across chunks.

Importance sampling keeps only each subject's largest log weights (chunk by chunk); k-hat from
them must equal arviz's ``psislw`` on all the weights, and must tell a heavy tail from a light one.
"""

import arviz as az
import numpy as np

from cartkin._estimate.importance import largest, pareto_k


def test_pareto_k_from_kept_tail_equals_arviz_on_all_weights():
    rng = np.random.default_rng(5)
    S, M = 3000, 250
    # rows: weights with a Pareto tail of shape 0.9 (infinite variance), 0.3, and log-normal
    # weights (light tail); a row with failed draws (-inf) among them
    lw = np.stack([
        -0.9 * np.log(rng.uniform(size=S)),
        -0.3 * np.log(rng.uniform(size=S)),
        rng.normal(0.0, 0.3, S),
        np.where(rng.uniform(size=S) < 0.1, -np.inf, rng.normal(0.0, 1.0, S)),
    ])
    tail = None
    for c in range(0, S, M):  # as the sampler's chunks arrive
        chunk = lw[:, c : c + M]
        tail = largest(chunk if tail is None else np.concatenate([tail, chunk], 1), 200)
    k = pareto_k(tail, np.full(len(lw), S))
    k_all = np.asarray(az.psislw(lw.copy(), normalize=False)[1])
    np.testing.assert_allclose(k, k_all, rtol=1e-10, atol=1e-12)
    assert k[0] > 0.7 and k[2] < 0.5  # the heavy tail flagged, the light one not


def test_heavy_tailed_subjects_draw_again_from_a_wider_proposal(monkeypatch):
    """The linear-Gaussian cohort of ``test_fit_exact`` (exact conditional distributions and
    marginal likelihood), sampled from proposals 3 conditional SDs off and with 2% of the
    conditional covariance: many subjects' weights have k-hat above 0.7. Each such subject must
    draw again from widened components until none is above 0.7, and the -2LL must then match
    the exact one within its Monte Carlo error."""
    import jax
    from scipy.optimize import minimize

    import cartkin._estimate.importance as imp
    from cartkin._estimate.importance import ISOptions, importance_sample
    from cartkin._likelihood import (
        Endpoint, SolverSettings, StatModel, data_arrays, kind_codes, make_draws_predictor,
    )
    from test_fit_exact import TIMES, MonoExp, _cohort, _exact_m2ll

    jax.config.update("jax_enable_x64", True)
    data, logy = _cohort()
    stat = StatModel(MonoExp(), (Endpoint("C"),), iiv=("C0", "k"))
    opt = minimize(lambda p: _exact_m2ll(p, logy), np.array([np.log(100), 0.3, 0.2, 0.01, np.log(0.2)]),
                   method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-9, "maxiter": 20000})
    mu, om, s2 = opt.x[:2], np.diag(opt.x[2:4]), np.exp(2 * opt.x[4])
    A = np.stack([np.ones_like(TIMES), -TIMES], 1)
    P = np.linalg.inv(A.T @ A / s2 + np.linalg.inv(om))  # conditional covariance
    means = np.array([P @ (A.T @ y / s2 + np.linalg.solve(om, mu)) for y in logy])
    start = means + 3.0 * (np.linalg.cholesky(P) @ np.ones(2))[None]
    narrow = np.repeat((0.02 * P)[None], len(logy), 0)
    params = {"beta": mu[:, None], "omega": om, "log_sigma": opt.x[4:]}
    args = (stat, make_draws_predictor(stat, SolverSettings()), data_arrays(data),
            stat.design_matrix(data), params, start, narrow, kind_codes(stat.endpoints),
            ISOptions(seed=5, louis_draws=250, mode_iterations=0, target_se=0.3))
    monkeypatch.setattr(imp, "WIDEN_ROUNDS", 0)
    before = importance_sample(*args)
    monkeypatch.undo()
    after = importance_sample(*args)
    assert (before["pareto_k"] > 0.7).sum() >= 10
    assert np.nanmax(after["pareto_k"]) <= 0.7
    assert set(np.flatnonzero(after["widened"] > 0)) >= set(np.flatnonzero(before["pareto_k"] > 0.7))
    assert abs(after["m2ll"] - opt.fun) < 3 * after["m2ll_se"] + 0.05
