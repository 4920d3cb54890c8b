"""Chunk bookkeeping of importance sampling: PSIS's Pareto k-hat from the largest log weights
kept across chunks, and the per-subject sums of a top-up chunk whose rows share subjects.

Importance sampling keeps only each subject's largest log weights (chunk by chunk); k-hat from
them must equal arviz's ``psislw`` on all the weights, and must tell a heavy tail from a light one.
"""

import arviz as az
import numpy as np

from cartkin._estimate.importance import largest, merge_rows, pareto_k


def test_pareto_k_from_kept_tail_equals_arviz_on_all_weights():
    """k-hat from the kept tails (computed by cartkin) equals ``arviz.psislw`` on all the
    weights, at the draw counts of a fit (500 to 16,000 per subject)."""
    rng = np.random.default_rng(5)
    M = 250
    for S in (500, 3000, 16000):
        # rows: weights with a Pareto tail of shape 0.9 (infinite variance), 0.3, and log-normal
        # weights (light tail); a row with failed draws (-inf) among them; a row with only three
        # finite weights (too few to fit: infinite k-hat); a row of tiny weights (below the
        # smallest normal float relative to its largest)
        lw = np.stack([
            -0.9 * np.log(rng.uniform(size=S)),
            -0.3 * np.log(rng.uniform(size=S)),
            rng.normal(0.0, 0.3, S),
            np.where(rng.uniform(size=S) < 0.1, -np.inf, rng.normal(0.0, 1.0, S)),
            np.where(np.arange(S) < 3, 0.0, -np.inf),
            np.where(np.arange(S) < 20, rng.normal(0.0, 1.0, S), -800.0),
        ])
        tail = None
        for c in range(0, S, M):  # as the sampler's chunks arrive
            chunk = lw[:, c : c + M]
            tail = largest(chunk if tail is None else np.concatenate([tail, chunk], 1), 400)
        k = pareto_k(tail, np.full(len(lw), S))
        k_all = np.asarray(az.psislw(lw.copy(), normalize=False)[1])
        np.testing.assert_allclose(k, k_all, rtol=1e-10, atol=1e-12)
        assert k[0] > 0.7 and k[2] < 0.5  # the heavy tail flagged, the light one not
        assert np.isinf(k[4])


def _row_sums(lw, g):
    """What the weighing returns for one row of draws: sums scaled by the row's largest weight."""
    fin = np.isfinite(lw)
    lmax = lw.max() if fin.any() else 0.0
    w = np.exp(lw - lmax)
    return {"lmax": lmax, "W": w.sum(), "W2": (w**2).sum(),
            "n_fail": np.array([(~fin).sum(), 0, 0]), "best_lw": lw.max(), "best": g[np.argmax(lw), :2], "lw": lw, "G": w @ g,
            "GG": np.einsum("m,mi,mj->ij", w, g, g)}


def test_top_up_rows_merge_into_the_sums_of_all_their_draws():
    """Rows j of a top-up chunk draw for subject j % n: merged, each subject's weight sums, its
    Louis sums, best draw and log weights equal those of all its draws weighed together, whatever
    the rows' scales (log weights 900 apart underflow if not rescaled), with a row whose draws
    all failed and subjects with fewer rows than others."""
    rng = np.random.default_rng(3)
    n, rows, M = 3, 8, 50  # subjects 0 and 1 get 3 rows, subject 2 gets 2
    lw = rng.normal(0.0, 2.0, (rows, M)) + np.array([0.0, -900.0, 5.0])[np.arange(rows) % n, None]
    lw[4] = -np.inf  # every draw of subject 1's second row failed
    g = rng.normal(size=(rows, M, 4))
    out = [_row_sums(lw[j], g[j]) for j in range(rows)]
    merged = merge_rows({k: np.stack([o[k] for o in out]) for k in out[0]}, n)
    for i in range(n):
        lw_i, g_i = lw[i::n].ravel(), g[i::n].reshape(-1, 4)
        ref = _row_sums(lw_i, g_i)
        scale = np.exp(merged["lmax"][i] - ref["lmax"])
        for k in ("W", "G", "GG"):
            np.testing.assert_allclose(merged[k][i] * scale, ref[k], rtol=1e-12)
        np.testing.assert_allclose(merged["W2"][i] * scale**2, ref["W2"], rtol=1e-12)
        assert merged["best_lw"][i] == ref["best_lw"]
        np.testing.assert_array_equal(merged["best"][i], ref["best"])
        assert merged["n_fail"][i][0] == ref["n_fail"][0]
        kept = merged["lw"][i]
        np.testing.assert_array_equal(np.sort(kept[np.isfinite(kept)]),
                                      np.sort(lw_i[np.isfinite(lw_i)]))
    # rows left out (a subject at its draw cap): the sums of the rows kept
    use = np.arange(rows) != 3  # subject 0's second row
    part = merge_rows({k: np.stack([o[k] for o in out]) for k in out[0]}, n, use=use)
    ref = _row_sums(np.concatenate([lw[0], lw[6]]), np.concatenate([g[0], g[6]]))
    np.testing.assert_allclose(part["W"][0] * np.exp(part["lmax"][0] - ref["lmax"]), ref["W"],
                               rtol=1e-12)
    assert np.isfinite(part["lw"][0]).sum() == 2 * M


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
