"""Chunk bookkeeping of importance sampling: PSIS's Pareto k-hat from the largest log weights
kept across chunks, the allocation of a chunk's rows to subjects and the merging of a subject's
rows.

Importance sampling keeps only each subject's largest log weights (chunk by chunk); k-hat from
them must equal arviz's ``psislw`` on all the weights, and must tell a heavy tail from a light one.
"""

import arviz as az
import numpy as np
import pytest

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
    """What the weighing returns for one row of draws: sums scaled by the row's largest weight
    (the control variate v, here exp(g[:, 0]), unscaled)."""
    fin = np.isfinite(lw)
    lmax = lw.max() if fin.any() else 0.0
    w = np.exp(lw - lmax)
    v = np.exp(g[:, 0])
    return {"lmax": lmax, "W": w.sum(), "W2": (w**2).sum(),
            "n_fail": np.array([(~fin).sum(), 0, 0]), "best_lw": lw.max(), "best": g[np.argmax(lw), :2], "lw": lw, "G": w @ g,
            "GG": np.einsum("m,mi,mj->ij", w, g, g), "V": v.sum(), "V2": (v**2).sum(), "WV": w @ v}


def test_chunk_rows_merge_into_the_sums_of_all_their_draws():
    """A chunk's rows go to subjects in any order and number: merged, each subject's weight
    sums, its Louis sums, best draw and largest log weights equal those of all its draws weighed
    together, whatever the rows' scales (log weights 900 apart underflow if not rescaled), with a
    row whose draws all failed and rows to drop."""
    rng = np.random.default_rng(3)
    n, M, k = 3, 50, 120
    col = np.array([2, 0, 1, -1, 0, 1, 0, 2, 1, -1])  # subject 0: 3 rows, 1: 3, 2: 2; 2 dropped
    rows = len(col)
    lw = rng.normal(0.0, 2.0, (rows, M)) + np.array([0.0, -900.0, 5.0, 0.0])[col, None]
    lw[5] = -np.inf  # every draw of one of subject 1's rows failed
    g = rng.normal(size=(rows, M, 4))
    out = [_row_sums(lw[j], g[j]) for j in range(rows)]
    merged = merge_rows({key: np.stack([o[key] for o in out]) for key in out[0]}, col, n, k)
    for i in range(n):
        lw_i, g_i = lw[col == i].ravel(), g[col == i].reshape(-1, 4)
        ref = _row_sums(lw_i, g_i)
        scale = np.exp(merged["lmax"][i] - ref["lmax"])
        for key in ("W", "G", "GG", "WV"):
            np.testing.assert_allclose(merged[key][i] * scale, ref[key], rtol=1e-12)
        np.testing.assert_allclose(merged["W2"][i] * scale**2, ref["W2"], rtol=1e-12)
        for key in ("V", "V2"):
            np.testing.assert_allclose(merged[key][i], ref[key], rtol=1e-12)
        assert merged["best_lw"][i] == ref["best_lw"]
        np.testing.assert_array_equal(merged["best"][i], ref["best"])
        assert merged["n_fail"][i][0] == ref["n_fail"][0]
        np.testing.assert_array_equal(-np.sort(-merged["lw"][i]), largest(lw_i[None], k)[0])


def test_rows_go_where_they_remove_the_most_variance():
    """The allocation of a chunk's rows equals the best one found by brute force over every
    allocation (variance after m draws v m / m'), needed rows first, caps kept."""
    import itertools

    from cartkin._estimate.importance import allocate_rows

    M, n = 100, 6
    v = np.array([4.0, 1.0, 0.5, 0.0, 2.0])
    m = np.array([500.0, 200.0, 1000.0, 300.0, 100.0])
    cap = np.array([5, 5, 5, 5, 1])
    need = np.array([0, 1, 0, 0, 0])

    def left(counts):
        return np.sum(v * m / (m + M * np.asarray(counts)))

    best = min((c for c in itertools.product(*(range(k + 1) for k in cap))
                if sum(c) <= n and c[1] >= 1), key=left)
    counts = allocate_rows(v, m, M, cap, need, n)
    np.testing.assert_array_equal(counts, best)
    assert counts[3] == 0 and counts.sum() == n  # no rows to a subject without variance
    # rows beyond every cap are left unallocated
    capped = allocate_rows(v, m, M, np.array([1, 0, 0, 0, 1]), need * 0, n)
    assert capped.tolist() == [1, 0, 0, 0, 1]
    # more rows needed than the chunk has: every subject that needs rows gets its first one
    short = allocate_rows(v, m, M, cap, np.array([2, 2, 2, 0, 0]), 4)
    assert short.sum() == 4 and short[:3].min() >= 1 and short[3:].sum() == 0


def test_equal_counts_grow_by_a_row_unless_one_subject_holds_the_variance():
    """The -2LL pass's next counts with equal allocation: one more row for every subject up to
    the budget; while a subject's variance alone exceeds OUTLIER x the target variance, only
    such subjects draw (twice their draws, up to the budget); once they are at the budget,
    everyone draws again."""
    from cartkin._estimate.importance import OUTLIER, next_counts

    M, hi, tv = 250, 4000, 0.0625
    counts = np.array([1000, 1000, 1250, 3750, 4000])
    v = np.full(5, 0.001)
    np.testing.assert_array_equal(next_counts(v, counts, tv, M, hi), [1250, 1250, 1500, 4000, 4000])
    v[1] = 1.01 * OUTLIER * tv
    np.testing.assert_array_equal(next_counts(v, counts, tv, M, hi), [1000, 2000, 1250, 3750, 4000])
    v[1], v[3] = 0.001, np.inf  # a subject without a finite variance: to the budget
    np.testing.assert_array_equal(next_counts(v, counts, tv, M, hi), [1000, 1000, 1250, 4000, 4000])
    counts[3] = hi
    np.testing.assert_array_equal(next_counts(v, counts, tv, M, hi), [1250, 1250, 1500, 4000, 4000])


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
    monkeypatch.setattr(imp, "REFIT_ROUNDS", 0)
    before = importance_sample(*args)
    # without widening, the subjects above 0.7 refit their proposals to their weighted draws
    monkeypatch.setattr(imp, "REFIT_ROUNDS", 1)
    refitted = importance_sample(*args)
    monkeypatch.undo()
    after = importance_sample(*args)
    assert (before["pareto_k"] > 0.7).sum() >= 10
    heavy = set(np.flatnonzero(before["pareto_k"] > 0.7))
    assert set(np.flatnonzero(refitted["refit"] > 0)) >= heavy
    assert np.nanmax(refitted["pareto_k"]) <= 0.7
    assert abs(refitted["m2ll"] - opt.fun) < 3 * refitted["m2ll_se"] + 0.05
    assert np.nanmax(after["pareto_k"]) <= 0.7
    assert set(np.flatnonzero(after["widened"] > 0)) >= set(np.flatnonzero(before["pareto_k"] > 0.7))
    assert abs(after["m2ll"] - opt.fun) < 3 * after["m2ll_se"] + 0.05
    # with chunks of N/4 rows beside those of N (as for cohorts of 1,000 or more), some used
    sizes, merge = [], imp.merge_rows
    monkeypatch.setattr(imp, "SMALL_CHUNK_FROM", 1)
    monkeypatch.setattr(imp, "merge_rows", lambda out, col, *a: sizes.append(len(col))
                        or merge(out, col, *a))
    small = importance_sample(*args)
    assert len(logy) // 4 in sizes
    assert np.nanmax(small["pareto_k"]) <= 0.7
    assert abs(small["m2ll"] - opt.fun) < 3 * small["m2ll_se"] + 0.05


def test_refit_mixture_finds_both_components_of_a_weighted_sample():
    """A proposal refitted to weighted draws: draws from a broad normal weighed to a known
    two-component normal mixture (one component holding 10%, 6 SDs from the other) give its
    means, weights and covariances (plus the floor: a tenth of the weighted draws'
    covariance)."""
    from scipy.stats import multivariate_normal as mvn

    from cartkin._estimate.importance import INFLATE, refit_mixture

    rng = np.random.default_rng(11)
    d, n = 3, 200_000
    cov0 = np.eye(d) * 4.0
    x = rng.multivariate_normal(np.zeros(d), cov0, n)
    m1, m2 = np.zeros(d), np.array([2.4, -1.0, 1.0])
    S1, S2 = np.eye(d) * 0.3**2, np.eye(d) * 0.5**2
    target = np.logaddexp(np.log(0.9) + mvn(m1, S1).logpdf(x), np.log(0.1) + mvn(m2, S2).logpdf(x))
    lw = target - mvn(np.zeros(d), cov0).logpdf(x)
    means, chols, logw = refit_mixture(x, lw, 2, np.eye(d) * 0.25)
    w = np.exp(lw - lw.max())
    w /= w.sum()
    dx = x - w @ x
    floor = 0.1 * (w[:, None] * dx).T @ dx  # a tenth of the weighted draws' covariance
    order = np.argsort(-logw)
    big, small = order[0], order[1]
    np.testing.assert_allclose(means[big], m1, atol=0.02)
    np.testing.assert_allclose(means[small], m2, atol=0.05)
    np.testing.assert_allclose(np.exp(logw[[big, small]]).round(2), [0.9, 0.1], atol=0.02)
    cov_big = chols[big] @ chols[big].T / INFLATE
    np.testing.assert_allclose(cov_big, S1 + floor, rtol=0.05, atol=0.005)
    # with a third slot the small component's mass may split, not move
    means, _, logw = refit_mixture(x, lw, 3, np.eye(d) * 0.25)
    near = np.linalg.norm(means - m2, axis=1) < 1.0
    assert np.exp(logw[near]).sum() == pytest.approx(0.1, abs=0.03)
    assert np.exp(logw[~near]).sum() == pytest.approx(0.9, abs=0.03)
    # no finite weight: nothing to refit
    assert refit_mixture(x[:5], np.full(5, -np.inf), 3, cov0) is None
