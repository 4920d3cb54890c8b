"""Random numbers in the estimation programs: compile time and cost per draw.

Side by side in one run, on one chunk of importance-sampling proposal draws (200 subjects x 250
draws, 6 random effects, a 3-component t mixture plus the defensive population component, as
``cartkin._estimate.importance`` draws them; no model solve):

* ``four calls``: the sampler before the eleventh session: a categorical draw of the component
  (Gumbel), d normals, a chi-square as the sum of 4 squared normals, a uniform for the defensive
  pick (four generator calls per subject);
* ``two calls``: the sampler now (``cartkin._estimate.importance.proposal_draws``): one call
  for 4 uniforms (the component by inverting the mixture's CDF, the defensive pick, the
  chi-square as -2 log of a product of two uniforms) and one for the d normals;

each traced with JAX's partitionable threefry scheme (JAX's default since 0.5) and with its
original one (``cartkin._compile.sequential_threefry``), compiled with cartkin's CPU options.
Reported: XLA compile seconds and nanoseconds per draw (mean of 100 calls), and a
Kolmogorov-Smirnov check of the chi-square draw against scipy's chi2(4).

    python benchmarks/random_draws.py

Results: benchmarks/README.md.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

D, M, N, K, NU, W_PRIOR = 6, 250, 200, 3, 4.0, 0.05


def four_calls(key, mix_i, mu_i, L_pop):
    k0, k1, k2, k3 = jax.random.split(key, 4)
    mix_m, mix_L, mix_logw = mix_i
    comp = jax.random.categorical(k0, mix_logw, shape=(M,))
    z = jax.random.normal(k1, (M, D))
    g = jnp.sum(jax.random.normal(k2, (M, int(NU))) ** 2, -1) / NU
    from_t = mix_m[comp] + jnp.einsum("mij,mj->mi", mix_L[comp], z) / jnp.sqrt(g)[:, None]
    from_p = mu_i + z @ L_pop.T
    return jnp.where((jax.random.uniform(k3, (M,)) < W_PRIOR)[:, None], from_p, from_t)


def two_calls(key, mix_i, mu_i, L_pop):
    from cartkin._estimate.importance import proposal_draws

    return proposal_draws(key, mix_i, mu_i, L_pop, M)


def main():
    from scipy import stats

    from cartkin._compile import compile_options

    rng = np.random.default_rng(0)
    mix = (rng.normal(size=(N, K, D)), np.tile(np.eye(D), (N, K, 1, 1)),
           np.log(np.tile([0.6, 0.3, 0.1], (N, 1))))
    mu, L = rng.normal(size=(N, D)), np.eye(D)
    print(f"jax {jax.__version__}, {jax.default_backend()}, {N} subjects x {M} draws, d = {D}")
    for partitionable in (True, False):
        for sampler in (four_calls, two_calls):
            def chunk(key, sampler=sampler, partitionable=partitionable):
                with jax.threefry_partitionable(partitionable):
                    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(N))
                    return jax.vmap(lambda k, m, Lm, w, mu_i: sampler(k, (m, Lm, w), mu_i, L))(
                        keys, *mix, mu)

            fn = jax.jit(chunk, compiler_options=compile_options())
            lowered = fn.lower(jax.random.PRNGKey(0))
            t = time.perf_counter()
            lowered.compile()
            t_compile = time.perf_counter() - t
            fn(jax.random.PRNGKey(0)).block_until_ready()
            t = time.perf_counter()
            for i in range(100):
                fn(jax.random.PRNGKey(i)).block_until_ready()
            per_draw = (time.perf_counter() - t) / 100 / (N * M)
            print(f"{'partitionable' if partitionable else 'original':13s} {sampler.__name__:10s}"
                  f" compile {t_compile:5.2f} s | {per_draw * 1e9:5.0f} ns per draw")
    u = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (10**6, 2)))
    chi2 = -2 * np.log(np.prod(1 - u, 1))
    print(f"chi-square(4) as -2 log(U1 U2), 10^6 draws: KS p = "
          f"{stats.kstest(chi2, 'chi2', args=(4,)).pvalue:.2f}")


if __name__ == "__main__":
    main()
