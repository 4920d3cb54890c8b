"""The residual log-likelihood of M draws of one subject, as importance sampling weighs them:
the general form (any error model per record) against the form for log-additive records only
(``log_only=True``: the residual SD does not depend on the prediction), side by side in one
process, with the values compared. Then the value with its derivatives in log sigma (Louis's
terms, :func:`residual_loglik_sigma_derivatives`) for ``--subjects`` subjects of 250 draws, a
device's share of an importance-sampling chunk: a vmap over the draws (the draws first, the
records on the last axis) against one call on the predictions with the records first (the draws
on the last axis, where XLA vectorises on the CPU).

    python benchmarks/residual_loglik.py [--draws 2000] [--records 13] [--censored 0.27]
                                         [--subjects 100]
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from cartkin._likelihood import (  # noqa: E402
    Endpoint,
    residual_loglik,
    residual_loglik_sigma_derivatives,
)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=2000)
    ap.add_argument("--records", type=int, default=13)  # the bundled cohort's
    ap.add_argument("--censored", type=float, default=0.27)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--subjects", type=int, default=100)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    T, M = args.records, args.draws
    cens = jnp.asarray((rng.random(T) < args.censored).astype(int))
    y = jnp.asarray(np.exp(rng.normal(5.0, 1.0, T)))
    f = jnp.asarray(np.exp(rng.normal(5.0, 1.0, (M, T))))
    kinds = jnp.zeros(T, int)
    sa, sp = jnp.full(T, 0.56), jnp.zeros(T)
    lim, mask = jnp.full(T, 50.0), jnp.ones(T, bool)

    # the subject's data are arguments, as in a fit (not constants XLA could fold)
    data = (kinds, y, cens, lim, sa, sp, mask)

    def program(log_only):
        def ll(f, kinds, y, cens, lim, sa, sp, mask):
            return jax.vmap(lambda fi: residual_loglik(
                kinds, y, fi, cens, lim, sa, sp, mask, log_only).sum())(f)
        return jax.jit(ll)

    progs = {"general": program(False), "log-additive only": program(True)}
    vals = {k: np.asarray(p(f, *data)) for k, p in progs.items()}
    best = {k: np.inf for k in progs}
    for _ in range(args.repeats):  # interleaved, so both see the same machine
        for k, p in progs.items():
            t0 = time.perf_counter()
            p(f, *data).block_until_ready()
            best[k] = min(best[k], time.perf_counter() - t0)
    diff = np.max(np.abs(vals["general"] - vals["log-additive only"]) / np.abs(vals["general"]))
    print(f"{M} draws x {T} records ({int(cens.sum())} censored); best of {args.repeats}")
    for k, t in best.items():
        print(f"  {k}: {1e9 * t / M:.0f} ns per draw")
    print(f"  ratio {best['general'] / best['log-additive only']:.2f}; largest relative "
          f"difference of the values {diff:.1e}")
    derivatives(args, rng)


def derivatives(args, rng):
    """Louis's per-draw terms of ``--subjects`` subjects x 250 draws: draws first or last."""
    n, M, T = args.subjects, 250, args.records
    eps = (Endpoint("C", 1, "log_additive"),)
    data = {"endpoint": jnp.zeros((n, T), int), "mask": jnp.ones((n, T), bool),
            "cens": jnp.asarray((rng.random((n, T)) < args.censored).astype(int)),
            "dv": jnp.asarray(np.exp(rng.normal(5.0, 1.0, (n, T)))),
            "limit": jnp.full((n, T), 50.0)}
    f = jnp.asarray(np.exp(rng.normal(5.0, 1.0, (n, M, T))))
    ls = jnp.log(jnp.asarray([0.56]))

    def first(data, f, ls):
        return jax.vmap(lambda d, fi: jax.vmap(
            lambda fr: residual_loglik_sigma_derivatives(eps, d, fr, ls))(fi))(data, f)

    def last(data, f, ls):
        return jax.vmap(lambda d, fi: residual_loglik_sigma_derivatives(eps, d, fi.T, ls))(
            data, f)

    progs = {"draws first (vmap)": jax.jit(first), "draws last (records first)": jax.jit(last)}
    vals = {k: jax.tree.map(np.asarray, p(data, f, ls)) for k, p in progs.items()}
    best = {k: np.inf for k in progs}
    for _ in range(args.repeats):
        for k, p in progs.items():
            t0 = time.perf_counter()
            jax.block_until_ready(p(data, f, ls))
            best[k] = min(best[k], time.perf_counter() - t0)
    a, b = vals.values()
    diff = max(float(np.max(np.abs(x - y) / np.maximum(np.abs(x), 1e-300))) for x, y in zip(a, b))
    print(f"{n} subjects x {M} draws x {T} records: value, score and Hessian in log sigma; best "
          f"of {args.repeats}")
    for k, t in best.items():
        print(f"  {k}: {1e3 * t:.2f} ms ({1e9 * t / (n * M):.0f} ns per draw)")
    first_s, last_s = best.values()
    print(f"  ratio {first_s / last_s:.2f}; largest relative difference {diff:.1e}")


if __name__ == "__main__":
    main()
