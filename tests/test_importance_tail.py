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
