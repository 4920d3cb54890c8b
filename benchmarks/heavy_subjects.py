"""Subjects whose importance weights stay heavy-tailed (Pareto k-hat above 0.7 after the wider
redraws): their log-likelihoods with and without the proposal refit, against a brute-force
reference.

The Stein closed-form fit of the simulated cohort (``--n`` subjects, the -2LL SE target of
``fit_ode.py --scale-se per-subject``) runs once with the refit off; its sampler then evaluates the
-2LL again at the same estimates with the refit on. For each subject left above 0.7 without the
refit, the reference is log E p(y_i | phi) over ``--reference`` draws of phi from the population
distribution at the estimates (bounded weights: no tail to miss, only variance, reported as its
SE).

    python benchmarks/heavy_subjects.py [--n 5000] [--reference 5e7]

Results: docs/estimation.md (importance sampling).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import stein_sampler  # host devices and float64, before JAX starts its backend

import cartkin._estimate.importance as imp
from cartkin._likelihood import (
    SolverSettings,
    data_arrays,
    kind_codes,
    make_predictor,
    record_loglik,
    sigma_per_endpoint,
)

CHUNK = 1_000_000  # population draws per reference program call


def reference(stat, data_i, params, total: int, seed: int = 1000):
    """log E p(y_i | phi), phi ~ N(mu, Omega) at ``params`` (no covariates), with its SE and ESS."""
    beta, omega, ls = (np.asarray(params[k]) for k in ("beta", "omega", "log_sigma"))
    sa, sp = (jnp.asarray(a) for a in sigma_per_endpoint(stat.endpoints, np.exp(ls)))
    codes = jnp.asarray(kind_codes(stat.endpoints))
    predict = jax.vmap(make_predictor(stat, SolverSettings(), status=True), in_axes=(0, None))
    L, mu = np.linalg.cholesky(omega), beta[:, 0]

    @jax.jit
    def chunk(key):
        phi = mu + jax.random.normal(key, (CHUNK, len(mu))) @ L.T
        f, status = predict(phi, data_i)
        ll = jax.vmap(lambda fi: record_loglik(codes, data_i, fi, sa, sp).sum())(f)
        ll = jnp.where(status == 0, ll, -jnp.inf)
        m = ll.max()
        return m, jnp.sum(jnp.exp(ll - m)), jnp.sum(jnp.exp(2 * (ll - m)))

    out = [tuple(map(float, chunk(jax.random.PRNGKey(seed + c)))) for c in range(total // CHUNK)]
    top = max(o[0] for o in out)
    s1 = sum(o[1] * np.exp(o[0] - top) for o in out)
    s2 = sum(o[2] * np.exp(2 * (o[0] - top)) for o in out)
    n = len(out) * CHUNK
    mean = s1 / n
    return np.log(mean) + top, np.sqrt((s2 / n - mean**2) / n) / mean, s1**2 / s2


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--reference", type=float, default=5e7, help="population draws per subject")
    args = ap.parse_args()
    imp.REFIT_ROUNDS = 0
    t0 = time.perf_counter()
    stat, data, res, sample, again = stein_sampler.fit_keeping_sampler(
        args.n, importance=imp.ISOptions(target_se=0.5 * np.sqrt(args.n / 200)))
    print(f"fit of {args.n} subjects without the refit: {time.perf_counter() - t0:.0f} s")
    before = again(sample)
    imp.REFIT_ROUNDS = 1
    after = again(sample)
    print(f"-2LL at the estimates: without the refit {before['m2ll']:.2f} (SE "
          f"{before['m2ll_se']:.2f}), with it {after['m2ll']:.2f} (SE {after['m2ll_se']:.2f})")
    arrays = data_arrays(data)
    for i in np.flatnonzero(before["pareto_k"] > 0.7):
        t0 = time.perf_counter()
        ref, se, ess = reference(stat, jax.tree.map(lambda x: x[i], arrays), res.estimates,
                                 int(args.reference))
        print(f"subject {data.ids[i]}: reference {ref:.4f} (SE {se:.4f}, ESS {ess:.0f}, "
              f"{time.perf_counter() - t0:.0f} s)")
        for name, r in (("without the refit", before), ("with the refit", after)):
            print(f"  {name}: {r['loglik_i'][i]:.4f} ({r['loglik_i'][i] - ref:+.4f}), k-hat "
                  f"{r['pareto_k'][i]:.2f}, ESS {r['ess'][i]:.0f}, {r['draws_i'][i]:.0f} draws")


if __name__ == "__main__":
    main()
