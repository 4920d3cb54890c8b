"""Importance sampling at a parameter estimate: -2LL, EBEs and the Louis information.

Per subject the proposal is a mixture: a multivariate t (4 degrees of freedom) at the
conditional mean and 1.2 x the conditional covariance of phi_i (from the SAEM chain), and the
population distribution N(mu_i, Omega) as a defensive component with weight 0.05. Draws are
batched over subjects and drawn in chunks until the Monte Carlo SE of -2LL is at most the
requested target (or the draw budget is spent), each round one more row of draws for every
subject (equal counts: an allocation by estimated variance biased the -2LL, see ISOptions).
When one draw far from a subject's proposal comes to hold a large share of its weights (a
second region of its conditional distribution that the defensive component found), the subject
gets a t component there and its estimate starts again. Before any draw, a per-subject mode
search (:mod:`.modes`) looks for conditional modes the chain did not visit; each one that holds
a noticeable share of the subject's mass gets a t component at its Laplace approximation.

Measured on a simulated 200-subject Stein cohort: with 8 degrees of freedom the -2LL at the
target SE 0.5 (2,700 draws per subject) was 1.3 units above the value at 8,000 draws (heavy
weight tails in many subjects: the SE did not cover it); with 4 degrees of freedom the two agreed
within 0.12 (3,700 and 8,600 draws). One subject's second region took its ESS from 10 to 1,100.

From the same weighted draws:

* -2LL = -2 sum_i log L_i (all constants included; on the scale where the residual error is
  normal), L_i the mean of subject i's weights w_im corrected by a normal control variate
  (:func:`cv_mean`), its Monte Carlo SE (delta method per subject) and each subject's ESS;
* the conditional mean and SD of each phi_i (the empirical Bayes estimates);
* the observed Fisher information by Louis's formula,
  I = sum_i ( -E_i[H] - E_i[g g^T] + E_i[g] E_i[g]^T ),
  with g, H the gradient and Hessian of the complete-data log-likelihood with respect to the
  population parameters psi = (beta, Omega elements, log sigma). The predictions are fixed given
  phi, so no derivative goes through the model solver. The score sum_i E_i[g] is the convergence
  check (its Newton decrement g^T I^-1 g / 2 is the log-likelihood still to gain).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from .._compile import Ahead, compile_ahead, jit
from .._devices import over_subjects, pad_subjects, subject_devices
from .._likelihood import (
    eta_logprior,
    forward_substitution,
    map_subjects,
    residual_loglik_sigma_derivatives,
    sigma_layout,
    sigma_per_endpoint,
)
from .._progress import progress_bar
from .modes import make_mode_search, mixture_from_modes

NU = 4.0  # degrees of freedom of the t components (even: see N_EXP)
N_EXP = int(NU) // 2  # a chi-square with NU degrees of freedom is a sum of NU / 2 exponentials
W_PRIOR = 0.05
INFLATE = 1.2
# the first pass's draws, predictions and proposal densities are kept (for weighing again at a
# polishing step's parameters) while they hold at most this many predicted values (1.3 GB: 5,000
# subjects x 2,000 draws x 16 samples)
KEEP_VALUES = 160_000_000
LOUIS_SUMS = ("G", "GG", "HR", "P", "PP")  # per-subject weighted sums for the information
CV_PLAIN = ("V", "V2")  # the control variate's sums (not scaled with the weights)
K_MIX = 3  # t components per subject: the first at the conditional mean, the others added
# where a draw far from the existing ones took over a subject's weights (a second region)
DOMINATED = 0.2  # a single draw holding this share of a subject's weight sum
# a subject whose weights have PSIS k-hat above 0.7 draws again from its components with their
# covariance times WIDEN, at most WIDEN_ROUNDS times
WIDEN = 2.0
WIDEN_ROUNDS = 2
# a subject still above 0.7 after those rounds draws one chunk's rows (the smaller chunk's, of
# M draws each, over the subjects concerned) and refits its mixture to the weighted draws
# (:func:`refit_mixture`), then starts again: a region the t components missed, found only by
# the draws of the defensive population component, holds weights far above the others (measured
# on the 5,000-subject Stein cohort: two subjects at k-hat 1.0 and 1.9 after widening, their
# log-likelihoods 0.31 and 0.34 below a 5 x 10^7-draw reference)
REFIT_ROUNDS = 1
# with equal counts, a subject whose variance alone is this share of the -2LL's target variance
# draws on its own (:func:`next_counts`)
OUTLIER = 0.1
# from this many subjects on, the -2LL pass also draws chunks of N/4 rows (see `sizes`)
SMALL_CHUNK_FROM = 1000


@dataclasses.dataclass(frozen=True)
class ISOptions:
    """Draw budget: -2LL until its MC SE <= ``target_se``; the information from ``louis_draws``."""

    draws_per_chunk: int = 250
    min_draws: int = 500
    max_draws: int = 16000
    target_se: float = 0.5
    # the information passes: with 1,000 draws the score of a Newton polishing step on the bundled
    # cohort was too noisy to show its improvement (decrement 1.030 -> 1.035, step rejected, fit
    # not converged at -2LL 6197.6); with 2,000 the step took it to 0.06 and -2LL 6195.4
    louis_draws: int = 2000
    # Levenberg-Marquardt iterations of the per-subject mode search (0: no search); on five
    # multimodal subjects of the 5,000-subject Stein cohort 10 found the same modes as 25; over
    # the whole cohort 86% of the starts ended converged (Newton decrement < 0.01)
    mode_iterations: int = 10
    # "equal": the -2LL's rounds give every subject the same number of draws, to within a row
    # (:func:`next_counts`); "greedy": each round's rows go where that round's estimated
    # variances are largest. Measured on the bundled cohort at SE 0.5 (forty seeds against
    # 400,000 draws per subject, docs/estimation.md): greedy +0.53 above the reference, SD 0.53
    # over the seeds (reported SE 0.47), 3,417 draws per subject; equal counts +0.36, SD 0.47
    # (reported 0.48), 3,839 draws, as a fixed count (+0.31). Greedy gives a subject whose draws
    # missed its large weights (low, and precise-looking) no more draws
    allocation: str = "equal"
    seed: int = 1

    def __post_init__(self):
        if self.allocation not in ("equal", "greedy"):
            raise ValueError(f"importance allocation {self.allocation!r}: use 'equal' or "
                             "'greedy'")


class PsiLayout:
    """Packing of the population parameters into one vector psi (for SEs)."""

    def __init__(self, colmask, omask, n_log_sigma):
        self.colmask = np.asarray(colmask)
        self.omask_lower = np.tril(np.asarray(omask))
        self.n_beta = int(self.colmask.sum())
        self.n_omega = int(self.omask_lower.sum())
        self.n_sigma = n_log_sigma
        self.size = self.n_beta + self.n_omega + self.n_sigma

    def pack(self, beta, omega, log_sigma):
        """psi (numpy for numpy parameters: host-side set-up makes no device program)."""
        xp = np if all(isinstance(a, np.ndarray) for a in (beta, omega, log_sigma)) else jnp
        return xp.concatenate(
            [beta[self.colmask], omega[self.omask_lower], xp.asarray(log_sigma)]
        )

    def unpack(self, psi):
        """(beta, omega, log sigma) from psi (numpy for a numpy psi)."""
        if isinstance(psi, np.ndarray):
            b = np.zeros(self.colmask.shape)
            b[self.colmask] = psi[: self.n_beta]
            o = np.zeros(self.omask_lower.shape)
            o[self.omask_lower] = psi[self.n_beta : self.n_beta + self.n_omega]
            return b, o + np.tril(o, -1).T, psi[self.n_beta + self.n_omega :]
        b = jnp.zeros(self.colmask.shape).at[self.colmask].set(psi[: self.n_beta])
        o = jnp.zeros(self.omask_lower.shape).at[self.omask_lower].set(
            psi[self.n_beta : self.n_beta + self.n_omega]
        )
        o = o + jnp.tril(o, -1).T
        return b, o, psi[self.n_beta + self.n_omega :]


def proposal_draws(key, mix_i, mu_i, L_pop, M: int):
    """M draws (M, d) from one subject's proposal: its t mixture ``mix_i`` = (means (K, d),
    Cholesky factors (K, d, d), log weights (K,)) with weight 1 - W_PRIOR, the population
    distribution N(mu_i, L_pop L_pop') with W_PRIOR. ``key``: the subject's own (the same draws
    whatever the devices).

    Per draw: its component by the inverse of the mixture's CDF at a uniform, the t draw
    normal / sqrt(chi2_nu / nu) with the chi-square as -2 log of a product of nu / 2 uniforms (a
    sum of exponentials: one log instead of nu normals), and the defensive component's pick; a
    draw from the defensive component uses the same normals. Two generator calls: on the CPU each
    call is a loop of its own and each normal an erfinv (``benchmarks/random_draws.py``)."""
    k0, k1 = jax.random.split(key)
    mix_m, mix_L, mix_logw = mix_i
    u = jax.random.uniform(k0, (M, 2 + N_EXP))
    z = jax.random.normal(k1, (M, mu_i.shape[-1]))
    cdf = jnp.cumsum(jax.nn.softmax(mix_logw))
    comp = jnp.sum(u[:, :1] >= cdf[None, :-1], axis=1)
    g = -2.0 * jnp.log(jnp.prod(1.0 - u[:, 2:], axis=1)) / NU
    from_t = mix_m[comp] + jnp.einsum("mij,mj->mi", mix_L[comp], z) / jnp.sqrt(g)[:, None]
    from_p = mu_i + z @ L_pop.T
    return jnp.where((u[:, 1] < W_PRIOR)[:, None], from_p, from_t)


def _mvt_logpdf(x, m, chol, nu):
    d = x.shape[-1]
    z = forward_substitution(chol, x - m)
    q = jnp.sum(z**2, -1)
    return (
        jax.scipy.special.gammaln((nu + d) / 2) - jax.scipy.special.gammaln(nu / 2)
        - 0.5 * d * jnp.log(nu * jnp.pi) - jnp.sum(jnp.log(jnp.diag(chol)))
        - 0.5 * (nu + d) * jnp.log1p(q / nu)
    )


def make_importance_sampler(stat, predict_draws, data, X, codes, options: ISOptions = ISOptions(),
                            info_rtol: float | None = None):
    """Build the sampler once (its programs compile once per fit); returns
    ``sample(params, post_mean, post_cov, progress=False, m2ll=True) -> dict`` (see
    :func:`importance_sample`). ``info_rtol``: the relative tolerance of the information
    passes' solves (``m2ll=False``: the first pass, polishing, the information with more
    draws; None: the predictor's own, which the -2LL pass always uses; only the batched
    solver's predictor takes another tolerance). Why and what it saves: docs/estimation.md,
    step 1."""
    X = jax.device_put(np.asarray(X))  # (jnp.asarray would be a small program)
    N, d = X.shape[0], X.shape[1]
    T = data["time"].shape[1]
    colmask = np.any(np.asarray(X) != 0, axis=0)
    add, prop = sigma_layout(stat.endpoints)
    layout = PsiLayout(colmask, stat.omega_mask(), int(add.sum() + prop.sum()))
    n_s = layout.n_sigma
    codes = jax.device_put(np.asarray(codes))
    M = options.draws_per_chunk
    # the solves' relative tolerances, as arguments of one draw program (0-d arrays; unused by
    # closed forms)
    fit_rtol = getattr(predict_draws, "rtol", None) or 0.0
    tol_fit = np.asarray(fit_rtol, float)
    tol_info = np.asarray(fit_rtol if info_rtol is None else info_rtol, float)

    def prior_moments(psi, m1, m2, x_i):
        """E log N(phi; mu_i, Omega) for E phi = m1, E phi phi' = m2: linear in (m1, m2), so its
        derivatives in psi at the weighted moments are the weighted means of the per-draw ones."""
        b, o, _ = layout.unpack(psi)
        mu_i = jnp.einsum("jp,jp->j", x_i, b)
        L = jnp.linalg.cholesky(o)
        S = m2 - jnp.outer(m1, mu_i) - jnp.outer(mu_i, m1) + jnp.outer(mu_i, mu_i)
        oinv = jax.scipy.linalg.cho_solve((L, True), jnp.eye(d))
        return (-0.5 * jnp.sum(oinv * S) - jnp.sum(jnp.log(jnp.diag(L)))
                - 0.5 * d * jnp.log(2 * jnp.pi))

    grad_prior = jax.grad(prior_moments)
    # the per-draw prior score is affine in (phi, phi phi'): its coefficients once per subject
    prior_coef = jax.jacfwd(grad_prior, argnums=(1, 2))
    # a draw's complete-data score is g = C h, h = (1, phi, phi_i phi_j for i <= j, the residual
    # score in log sigma): the Louis sums of a subject are C (sum w h) and C (sum w h h') C'
    iu = np.triu_indices(d)

    def features(phi, gr):
        """h (M, n_h) of draws phi (M, d) with residual scores gr (M, n_s)."""
        one = jnp.ones(phi.shape[:1] + (1,))
        return jnp.concatenate([one, phi, phi[:, iu[0]] * phi[:, iu[1]], gr], axis=1)

    @jit
    def prior_terms(psi):
        """Per subject: the Cholesky factor of Omega and C (:func:`features`), the coefficients
        of a draw's score (one device: the sharded programs make no LAPACK call)."""
        zeros = (jnp.zeros(d), jnp.zeros((d, d)))
        a0 = jax.vmap(lambda x_i: grad_prior(psi, *zeros, x_i))(X)
        A1, A2 = jax.vmap(lambda x_i: prior_coef(psi, *zeros, x_i))(X)
        # phi' A phi = sum_i A_ii phi_i^2 + sum_{i<j} (A_ij + A_ji) phi_i phi_j
        A2u = (A2 + jnp.swapaxes(A2, 2, 3) - A2 * jnp.eye(d))[:, :, iu[0], iu[1]]
        resid = jnp.zeros((layout.size, n_s)).at[layout.size - n_s:].set(jnp.eye(n_s))
        C = jnp.concatenate([a0[:, :, None], A1, A2u, jnp.broadcast_to(resid, (N,) + resid.shape)],
                            axis=2)
        return jnp.linalg.cholesky(layout.unpack(psi)[1]), (C,)

    hess_prior = jax.hessian(prior_moments)

    def make_draw(M):
        def local(idx, mix_m, mix_L, mix_logw, data, X, key, psi, L_pop, rtol):
            b, _, _ = layout.unpack(psi)
            mu = jnp.einsum("njp,jp->nj", X, b)
            keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(idx)
            phi = jax.vmap(lambda k, m, L, w, mu_i: proposal_draws(k, (m, L, w), mu_i, L_pop, M))(
                keys, mix_m, mix_L, mix_logw, mu)
            f, code = map_subjects(predict_draws, phi, data, draws_last=True,
                                   rtol=rtol)  # (n, T, M)
            lq = jax.vmap(lambda phi_i, m, L, w, mu_i: jnp.logaddexp(
                jnp.log1p(-W_PRIOR) + _mix_logpdf(phi_i, (m, L, w)),
                jnp.log(W_PRIOR) + eta_logprior(phi_i - mu_i, L_pop)))(
                phi, mix_m, mix_L, mix_logw, mu)
            return phi, f, code, lq

        @jit
        def draw(key, psi, L_pop, rtol, idx, mix, data, X):
            """M proposal draws per subject (``idx``: their subject numbers), their predictions
            (ODE solves at relative tolerance ``rtol``) and solver codes, and the proposal's log
            density (the only part of a chunk that solves the model); subjects split over the
            devices."""
            return over_subjects(local, (idx, *mix, data, X), (key, psi, L_pop, rtol), devices)

        return draw

    def make_weigh(louis):
        def per_subject(phi_i, f, code, lq, mu_i, data_i, C, g_m, g_L, ls, L_pop):
            ok = code == 0
            lprior = eta_logprior(phi_i - mu_i, L_pop)
            # the control variate v = g / q of every draw (failed solves included: E_q v = 1)
            lv = eta_logprior(phi_i - g_m, g_L) - lq
            v = jnp.where(jnp.isfinite(lv), jnp.exp(lv), 0.0)
            # the residual log-likelihood of each draw, and for Louis's formula its score and
            # Hessian in log sigma from the same pass (unused without: XLA drops them); f (T, M):
            # the draws on the last axis, where the CPU vectorises
            lr, gr, hr = residual_loglik_sigma_derivatives(stat.endpoints, data_i, f, ls)
            lc = lr + lprior
            lw = jnp.where(ok & jnp.isfinite(lc), lc - lq, -jnp.inf)
            fin = jnp.isfinite(lw)
            lmax = jnp.max(lw)
            lmax = jnp.where(jnp.isfinite(lmax), lmax, 0.0)
            w = jnp.exp(lw - lmax)
            # failed solves per cause (Status codes 1, 2, 3)
            n_fail = jnp.stack([jnp.sum(code == c) for c in (1, 2, 3)])
            out = {"lmax": lmax, "W": w.sum(), "W2": jnp.sum(w**2), "n_fail": n_fail,
                   "best": phi_i[jnp.argmax(lw)], "best_lw": jnp.max(lw), "lw": lw,
                   "V": v.sum(), "V2": jnp.sum(v**2), "WV": w @ v}
            if louis:
                # the weighted moments of the score's features: no per-draw score (one core, 200
                # subjects x 250 draws of the Stein closed form weighed in 52 instead of 68 ms;
                # the same sums to rounding)
                h = jnp.where(fin[:, None], features(phi_i, gr), 0.0)
                Hm = (w[:, None] * h).T @ h
                hr = jnp.where(fin[:, None, None], hr, 0.0)
                out.update(
                    G=C @ Hm[:, 0], GG=C @ Hm @ C.T, HR=jnp.einsum("m,mij->ij", w, hr),
                    P=Hm[1:1 + d, 0], PP=Hm[1:1 + d, 1:1 + d],
                )
            return out

        def local(phi, f, code, lq, data, X, C, g_m, g_L, psi, L_pop):
            b, _, ls = layout.unpack(psi)
            mu = jnp.einsum("njp,jp->nj", X, b)
            per = jax.vmap(per_subject, in_axes=(0,) * 9 + (None,) * 2)
            return per(phi, f, code, lq, mu, data, C, g_m, g_L, ls, L_pop)

        @jit
        def weigh(psi, L_pop, prior, g, drawn, data, X):
            """Per-subject weight sums (and the Louis terms) of drawn parameters at ``psi``: no
            solve, so draws made at one estimate can be weighed again at a nearby one.
            ``prior``: :func:`prior_terms` of the subjects; ``g``: the mean and Cholesky factor
            of each subject's control variate (:func:`cv_mean`)."""
            return over_subjects(local, (*drawn, data, X, *prior, *g), (psi, L_pop), devices)

        return weigh

    # the subjects are split over the local devices (one core each with host devices); the
    # per-subject inputs of a chunk are taken from host copies
    devices = subject_devices(getattr(predict_draws, "split", False))
    n_dev = len(devices)
    draw = make_draw(M)
    weigh = {True: make_weigh(True), False: make_weigh(False)}
    weigh_louis = weigh[True]
    host = ({k: np.asarray(v) for k, v in data.items()}, np.asarray(X))

    def rows_of(sub, rank):
        """A chunk of len(sub) rows (M draws each), row j for subject ``sub[j]`` from its
        stream ``rank[j]`` of that subject, padded to a multiple of the device count: (its row
        count, padded subject numbers, their random streams, data, X). Streams are numbered
        before the padding, so the draws do not depend on the device count."""
        n = len(sub)
        sub, streams = pad_subjects((sub, sub + N * rank), n_dev)
        return (n, sub, streams, *jax.tree.map(lambda a: a[sub], host))

    everyone = rows_of(np.arange(N), np.zeros(N, int))

    def rows_for(counts):
        """:func:`rows_of`'s subjects and streams for ``counts`` rows of each subject (its rows'
        streams numbered from 0)."""
        sub = np.repeat(np.arange(N), counts)
        return sub, np.arange(len(sub)) - np.repeat(np.cumsum(counts) - counts, counts)

    # chunk sizes (rows): N, and from SMALL_CHUNK_FROM subjects on also N / 4 (a program of its
    # own: worth its compile once a chunk takes seconds)
    sizes = (N, N // 4) if N >= SMALL_CHUNK_FROM else (N,)

    search = (make_mode_search(predict_draws, d, codes, options.mode_iterations, devices)
              if options.mode_iterations > 0 else None)

    # the first pass's programs, compiled in the background while SAEM runs
    # (``sample.compile_ahead``), each for the arguments of its first call
    prior_terms = Ahead(prior_terms)
    draw = Ahead(draw)
    weigh = {k: Ahead(w) for k, w in weigh.items()}
    weigh_louis = weigh[True]
    if search is not None:
        search = Ahead(search)

    def ahead_jobs():
        _, pidx, streams, data_c, X_c = everyone
        n_pad = len(pidx)
        psi = np.zeros(layout.size)

        def like(info):  # an example array of an output's type
            return np.zeros(info.shape, info.dtype)

        def prior_outputs():
            L_info, prior_info = prior_terms.compiled.out_info
            return like(L_info), tuple(np.zeros((n_pad,) + i.shape[1:], i.dtype)
                                       for i in prior_info)

        def search_args():
            L_pop = prior_outputs()[0]
            sa, sp = sigma_per_endpoint(stat.endpoints, np.ones(n_s))
            return (np.zeros((n_pad, d)), np.zeros(host[1].shape[1:]), L_pop, L_pop, sa, sp,
                    data_c, X_c)

        def draw_args():
            mix = (np.zeros((n_pad, K_MIX, d)), np.zeros((n_pad, K_MIX, d, d)),
                   np.zeros((n_pad, K_MIX)))
            return (jax.random.PRNGKey(0), psi, prior_outputs()[0], tol_fit, streams, mix,
                    data_c, X_c)

        def weigh_args():
            L_pop, prior = prior_outputs()
            # the draws as the first pass passes them on: the draw program's outputs, their
            # layout included
            g = (np.zeros((n_pad, d)), np.zeros((n_pad, d, d)))
            return psi, L_pop, prior, g, draw.compiled.out_info, data_c, X_c

        jobs = [(prior_terms, lambda: (psi,))]
        if search is not None:
            jobs.append((search, search_args))
        return jobs + [(draw, draw_args), (weigh[True], weigh_args), (weigh[False], weigh_args)]

    def find_modes(beta, omega, log_sigma, at, m_q, L_q):
        """Proposal components at each subject's conditional modes (:mod:`.modes`); ``at``:
        :func:`at_psi` of the parameters (its Cholesky factor of Omega)."""
        _, pidx, _, data_c, X_c = everyone
        sa, sp = sigma_per_endpoint(stat.endpoints, np.exp(np.asarray(log_sigma)))
        om = np.asarray(omega)
        found = search(np.asarray(m_q)[pidx], beta, at[1], np.linalg.inv(om), sa, sp, data_c,
                       X_c)
        phi, lj, H, dec = (np.asarray(a)[:N] for a in found)
        return mixture_from_modes(phi, lj, H, dec, np.asarray(m_q), np.asarray(L_q), om, K_MIX,
                                  INFLATE)

    def at_psi(psi):
        L_pop, prior = prior_terms(psi)
        return psi, np.asarray(L_pop), jax.tree.map(np.asarray, prior)

    def run_draw(fn, key, at, mix, sub, rtol):
        """``fn``'s draws for the rows of ``sub`` (:func:`rows_of`), solved at ``rtol``."""
        _, pidx, streams, data_c, X_c = sub
        return fn(key, at[0], at[1], rtol, streams, tuple(np.asarray(a)[pidx] for a in mix),
                  data_c, X_c)

    def run_weigh(fn, at, drawn, sub, g):
        """Per-row sums of ``drawn`` (the rows of ``sub``) at ``at`` (:func:`at_psi`), with the
        control variates ``g`` (per subject: mean, Cholesky factor)."""
        n, pidx, _, data_c, X_c = sub
        prior = jax.tree.map(lambda a: a[pidx], at[2])
        g = tuple(np.asarray(a)[pidx] for a in g)
        return jax.tree.map(lambda a: np.asarray(a)[:n],
                            fn(at[0], at[1], prior, g, drawn, data_c, X_c))

    @jit
    def expected_hessian(psi, m1, m2, HR):
        hp = jax.vmap(lambda a, b_, x: hess_prior(psi, a, b_, x))(m1, m2, X).sum(0)
        return hp.at[layout.size - n_s:, layout.size - n_s:].add(HR.sum(0))

    # the largest log weights kept per subject: PSIS's tail at the most draws a subject can get
    k_tail = int(np.ceil(3 * np.sqrt(options.max_draws))) + 1

    def combine(acc, new):
        new = jax.tree.map(np.array, new)  # writable copies (a subject's sums may be reset)
        lw = new.pop("lw")
        if acc is None:
            return dict(new, tail=largest(lw, k_tail))
        # a subject without a finite weight in a chunk has lmax 0 there (and W 0): not a maximum
        lmax = np.maximum(np.where(acc["W"] > 0, acc["lmax"], -np.inf),
                          np.where(new["W"] > 0, new["lmax"], -np.inf))
        lmax = np.where(np.isfinite(lmax), lmax, 0.0)
        out = {"lmax": lmax, "n_fail": acc["n_fail"] + new["n_fail"],
               "tail": largest(np.concatenate([acc["tail"], lw], axis=1), k_tail)}
        take = new["best_lw"] > acc["best_lw"]
        out["best_lw"] = np.where(take, new["best_lw"], acc["best_lw"])
        out["best"] = np.where(take[:, None], new["best"], acc["best"])
        sa, sn = np.exp(acc["lmax"] - lmax), np.exp(new["lmax"] - lmax)
        for k in [k for k in ("W", "WV") + LOUIS_SUMS if k in acc]:
            shape = (-1,) + (1,) * (acc[k].ndim - 1)
            out[k] = acc[k] * sa.reshape(shape) + new[k] * sn.reshape(shape)
        out["W2"] = acc["W2"] * sa**2 + new["W2"] * sn**2
        for k in CV_PLAIN:
            out[k] = acc[k] + new[k]
        return out

    def weighted_moments(acc):
        """Per subject: the weighted mean of phi, of phi phi', and the covariance."""
        ebe = acc["P"] / acc["W"][:, None]
        epp = acc["PP"] / acc["W"][:, None, None]
        return ebe, epp, epp - ebe[:, :, None] * ebe[:, None, :]

    def estimate(acc, m):
        """Per subject after m draws: its likelihood's estimate (scaled by exp(-lmax)) and the
        variance of its log (:func:`cv_mean`)."""
        return cv_mean(*(acc[k] for k in ("W", "W2", "V", "V2", "WV")), m)

    def var_log(acc, m):
        return estimate(acc, m)[1]

    def mc_se(acc, m):
        return 2 * np.sqrt(var_log(acc, m).sum())

    def scatter(acc, new, idx):
        """``new`` (a chunk of the subjects ``idx``) as a full-size chunk that leaves the others
        unchanged under :func:`combine`."""
        new = jax.tree.map(np.asarray, new)
        full = {"lmax": acc["lmax"].copy(), "W": np.zeros(N), "W2": np.zeros(N),
                **{k: np.zeros(N) for k in ("WV",) + CV_PLAIN},
                "n_fail": np.zeros_like(acc["n_fail"]), "best": acc["best"].copy(),
                "best_lw": np.full(N, -np.inf), "lw": np.full((N, new["lw"].shape[1]), -np.inf)}
        full.update({k: np.zeros_like(acc[k]) for k in LOUIS_SUMS if k in acc})
        for k in full:
            full[k][idx] = new[k]
        return full


    def sample(params, post_mean, post_cov, progress: bool = False, m2ll: bool = True,
               first_pass=None, reuse=None, fresh_information: bool = False, modes=None,
               louis_factor: int = 1):
        """``first_pass``: the result of an earlier ``m2ll=False`` call at the same ``params``,
        whose draws are reused for the information and the EBEs. ``reuse``: the result of an
        earlier call at nearby parameters (a Newton step away) whose first-pass draws and
        solves are weighed again at ``params`` instead of drawing anew (when they were kept).
        ``fresh_information``: the -2LL pass's own draws give the information, score and EBEs
        (needed after a polishing step computed from reweighted draws: those draws' own score
        at the step's end is zero by construction, so it checks nothing). ``modes``: the
        ``"modes"`` of an earlier call (the mode search's components; searched anew if None).
        ``louis_factor``: the information pass draws this many times ``louis_draws``."""
        # on the host: eager device operations would each be a small program
        beta, omega, log_sigma = (np.asarray(params[k], float)
                                  for k in ("beta", "omega", "log_sigma"))
        psi_hat = layout.pack(beta, omega, log_sigma)
        at = at_psi(psi_hat)
        cov = INFLATE * (np.asarray(post_cov) + 1e-8 * np.eye(d))
        # floor the proposal at 1% of the population variance so no subject's proposal collapses
        cov = cov + 0.01 * np.diag(np.diag(omega))[None]
        L_q = np.linalg.cholesky(cov)
        m_q = np.asarray(post_mean, float)
        key = jax.random.PRNGKey(options.seed)

        def single(m, L):  # one component, as K equal copies
            return [np.repeat(np.asarray(m)[:, None], K_MIX, 1),
                    np.repeat(np.asarray(L)[:, None], K_MIX, 1),
                    np.full((N, K_MIX), -np.log(K_MIX))]

        # components at conditional modes away from the chain's (a multimodal subject): slot 0
        # is this call's chain component, the others come from the search
        if modes is None and search is not None:
            with progress_bar(1, "conditional-mode search", progress) as adv:
                modes = find_modes(beta, omega, log_sigma, at, m_q, L_q)
                adv(1, f"{int((modes[3] > 1).sum())} subjects with more than one mode")
        if modes is None:
            modes = (*single(m_q, L_q), np.ones(N, int))
        n_comp = modes[3].copy()
        multi = n_comp > 1

        def with_modes(m, L):
            mix = single(m, L)
            for a, b in zip(mix, modes[:3], strict=True):
                a[multi] = b[multi]
            mix[0][multi, 0], mix[1][multi, 0] = np.asarray(m)[multi], np.asarray(L)[multi]
            return mix

        def control(m, L):
            """Each subject's control variate: the normal of its chain component's moments
            (the component's covariance without INFLATE). It must not depend on the draws it
            is used with (E_q g / q = 1 holds only for a density fixed before them)."""
            return np.asarray(m, float), np.asarray(L) / np.sqrt(INFLATE)

        # pass 1: the information and the EBEs from a fixed number of draws (draws weighed
        # again keep the control variate they were drawn with: this call's moments come from
        # them)
        n_louis = max(1, louis_factor * options.louis_draws // M)
        g = control(m_q, L_q)
        kept = None
        if first_pass is not None:
            lacc, kept, g = first_pass["pass1"], first_pass["drawn"], first_pass["control"]
        elif reuse is not None and reuse["drawn"] is not None:
            # the draws (and solves) of an earlier pass, weighed at these parameters
            lacc, g = None, reuse["control"]
            for drawn in reuse["drawn"]:
                lacc = combine(lacc, run_weigh(weigh_louis, at, drawn, everyone, g))
            kept = reuse["drawn"]
        else:
            lacc, kept = None, [] if N * n_louis * M * T <= KEEP_VALUES else None
            for c in range(n_louis):
                drawn = run_draw(draw, jax.random.fold_in(key, 10**6 + c), at,
                                 with_modes(m_q, L_q), everyone, tol_info)
                lacc = combine(lacc, run_weigh(weigh_louis, at, drawn, everyone, g))
                if kept is not None:
                    kept.append(drawn)
        ebe, epp, ebe_cov = weighted_moments(lacc)
        control1 = g
        # adapt the chain's component to the weighted moments of pass 1 (a subject with several
        # modes keeps its mixture: its moments would straddle them)
        ess1 = lacc["W"] ** 2 / lacc["W2"]
        good = ((ess1 > 50) & ~multi)[:, None, None]
        cov2 = np.where(good, INFLATE * ebe_cov + 1e-8 * np.eye(d), np.asarray(cov))
        m_q = np.where(good[:, :, 0], ebe, np.asarray(m_q))
        L_q = np.linalg.cholesky(cov2)
        mix = with_modes(m_q, L_q)
        g = control(m_q, L_q)
        # pass 2: -2LL until its Monte Carlo SE reaches the target. Every subject gets at least
        # min_draws; then each round's chunk (one shape: N rows of M draws) puts its rows where
        # they remove the most Monte Carlo variance (:func:`allocate_rows`). A subject whose
        # weights come to be dominated by one draw far from its proposal gets a component there
        # and starts again.
        if m2ll:
            acc, m_total, c = None, np.zeros(N), 0
            w_fn = weigh[fresh_information]
            # a pass that gives the information draws at least as many per subject as the
            # information pass: with the control variate a -2LL target of SE 1 was met at the
            # 500-draw minimum, whose information and score left 6 of 100 recovery fits
            # unconverged that had converged
            min_draws = max(options.min_draws, n_louis * M if fresh_information else 0)
            floor = np.full(N, min_draws)  # the draws every subject gets before the SE counts
            equal, turn = options.allocation == "equal", 0
            tv = (options.target_se / 2) ** 2  # the log-likelihood's target variance

            def chunk(fn, key, sub):
                return run_weigh(w_fn, at, run_draw(fn, key, at, mix, sub, tol_fit), sub, g)

            widened, refit = np.zeros(N, int), np.zeros(N, int)

            def refit_subjects(idx, kc):
                """One chunk of draws shared by the subjects ``idx``, whose mixtures are refitted
                to their weighted draws (:func:`refit_mixture`); their sums start again."""
                counts = np.zeros(N, int)  # (the smaller chunk: N / 4 rows from 1,000 subjects)
                n_rows = min(sizes)
                counts[idx] = n_rows // len(idx)
                counts[idx[: n_rows % len(idx)]] += 1
                sub, rank = rows_for(counts)
                rows = rows_of(sub, rank)
                drawn = run_draw(draw, kc, at, mix, rows, tol_fit)
                lw = run_weigh(weigh[False], at, drawn, rows, g)["lw"]  # the weights alone
                phi = np.asarray(drawn[0])[: len(sub)]
                for i in idx:
                    own = sub == i
                    d_phi, d_lw = phi[own].reshape(-1, d), lw[own].reshape(-1)
                    new = refit_mixture(d_phi, d_lw, K_MIX, mix[1][i, 0] @ mix[1][i, 0].T)
                    if new is None:
                        continue
                    for a, b in zip(mix, new, strict=True):
                        a[i] = b
                    n_comp[i] = int(np.sum(new[2] > -40.0))
                    refit[i] += 1
                    restart(i)

            def restart(i):
                """Subject i's sums and draws discarded (its proposal changed)."""
                for k in ("W", "W2", "WV") + CV_PLAIN:
                    acc[k][i] = 0.0
                for k in LOUIS_SUMS:
                    if k in acc:
                        acc[k][i] = 0.0
                acc["best_lw"][i] = -np.inf
                acc["tail"][i] = -np.inf
                m_total[i] = 0

            with progress_bar(None, "importance sampling (-2LL SE)", progress) as adv:
                while True:
                    kc = jax.random.fold_in(key, c)
                    c += 1
                    spent = False
                    # rows each subject still needs to reach its floor
                    need = -(-np.maximum(floor - m_total, 0) // M).astype(int)
                    if acc is None:
                        acc = combine(acc, chunk(draw, kc, everyone))
                        m_total = m_total + M
                    else:
                        cap = np.maximum((options.max_draws - m_total) // M, 0).astype(int)
                        # the chunk sizes that hold the needed rows (N always)
                        fits = [n for n in sizes if need.sum() <= n or n == N]
                        if equal:
                            # the smallest, its rows the needed ones, the others one each for
                            # the next subjects in turn (an order fixed before any draw, so the
                            # counts stay within a row of each other and do not depend on the
                            # draws)
                            n_rows = min(fits)
                            counts = allocate_rows(np.zeros(N), m_total, M, cap, need, n_rows)
                            order = (turn + np.arange(N)) % N
                            order = order[cap[order] > counts[order]][: n_rows - counts.sum()]
                            if len(order):
                                counts[order] += 1
                                floor[order] = m_total[order] + M * counts[order]
                                turn = (order[-1] + 1) % N
                        else:
                            # the chunk's rows where they remove the most Monte Carlo variance,
                            # in the size that removes the most per solve (plus a call's fixed
                            # cost, ~4,000 solves)
                            v = np.where(m_total > 0, np.minimum(var_log(acc, m_total), 1e6), 0.0)
                            best = None
                            for n_rows in fits:
                                cnt = allocate_rows(v, m_total, M, cap, need, n_rows)
                                removed = v * M * cnt / np.maximum(m_total + M * cnt, 1)
                                rate = removed.sum() / (n_rows * M + 4000)
                                if best is None or rate > best[0]:
                                    best = (rate, n_rows, cnt)
                            _, n_rows, counts = best
                        # the draw budget of every subject that matters is spent
                        spent = counts.sum() == 0
                        if not spent:
                            sub, rank = rows_for(counts)
                            spare = n_rows - len(sub)  # rows no subject gains from: dropped
                            sub = np.concatenate([sub, np.zeros(spare, int)])
                            rank = np.concatenate([rank, counts[0] + np.arange(spare)])
                            sel = np.flatnonzero(counts)
                            # each row's place among the subjects drawn for (-1: dropped)
                            col = np.concatenate([np.repeat(np.arange(len(sel)), counts[sel]),
                                                  np.full(spare, -1)])
                            new = merge_rows(chunk(draw, kc, rows_of(sub, rank)), col,
                                             len(sel), k_tail)
                            acc = combine(acc, scatter(acc, new, sel))
                            m_total = m_total + M * counts
                    # a second region: one draw holds a large share of a subject's weights and
                    # lies more than 2 proposal SDs from every component
                    share = (np.zeros(N) if spent else
                             np.exp(acc["best_lw"] - acc["lmax"]) / np.maximum(acc["W"], 1e-300))
                    for i in np.flatnonzero((share > DOMINATED) & (m_total >= min_draws)
                                            & (n_comp < K_MIX)):
                        z = [np.linalg.solve(mix[1][i, k], acc["best"][i] - mix[0][i, k])
                             for k in range(n_comp[i])]
                        if min(float(zk @ zk) for zk in z) <= 4.0:
                            continue
                        k = n_comp[i]
                        mix[0][i, k], mix[1][i, k] = acc["best"][i], mix[1][i, 0]
                        lw = np.full(K_MIX, -np.inf)
                        lw[:k] = mix[2][i, :k] + np.log(0.7) - np.logaddexp.reduce(mix[2][i, :k])
                        lw[k] = np.log(0.3)
                        lw[k + 1:] = -40.0  # unused slots (finite; weight e^-40: never drawn)
                        mix[2][i] = lw
                        n_comp[i] += 1
                        restart(i)
                    if np.any(m_total < floor):
                        continue
                    v_now = var_log(acc, m_total)
                    se = 2 * np.sqrt(v_now.sum())  # (mc_se)
                    adv(0, f"{se:.2f}, {m_total.mean():.0f} draws/subject")
                    more = se > options.target_se and not spent
                    if more and not equal:
                        continue
                    if more:  # equal counts: the next round's, unless the budget is spent
                        grown = next_counts(v_now, floor, tv, M, options.max_draws)
                        more = bool(np.any(grown > m_total))
                    # PSIS's k-hat of each subject's weights: above 0.7 its estimate is
                    # unreliable whatever its SE says (a proposal lighter-tailed than the
                    # subject's conditional distribution). Such a subject's components are
                    # widened and it draws again (with a new budget), at most WIDEN_ROUNDS times.
                    # Every subject is checked once the SE is met; with equal counts, before
                    # that, every round, the subjects whose variance alone would set everyone's
                    # count (:func:`next_counts`): more draws do little for a heavy tail
                    check = (v_now > OUTLIER * tv) if more else np.ones(N, bool)
                    # (only the checked subjects' k-hats: 14 ms per 200 subjects, every round)
                    khat = np.full(N, np.nan)
                    khat[check] = pareto_k(acc["tail"][check], m_total[check])
                    heavy = np.flatnonzero(check & (khat > 0.7) & (widened < WIDEN_ROUNDS))
                    stuck = np.flatnonzero(check & (khat > 0.7) & (widened >= WIDEN_ROUNDS)
                                           & (refit < REFIT_ROUNDS))
                    for i in heavy:
                        mix[1][i] = mix[1][i] * np.sqrt(WIDEN)
                        widened[i] += 1
                        restart(i)
                    if len(stuck):
                        kc = jax.random.fold_in(key, c)
                        c += 1
                        refit_subjects(stuck, kc)
                    if len(heavy) or len(stuck):
                        continue
                    if not more:
                        break
                    floor = grown
        else:
            acc, m_total = lacc, np.full(N, n_louis * M)
            khat, widened, refit = np.full(N, np.nan), np.zeros(N, int), np.zeros(N, int)
        se = mc_se(acc, m_total)
        W = acc["W"]
        loglik_i = np.log(estimate(acc, m_total)[0]) + acc["lmax"]
        # information, score and EBEs: from the -2LL pass's own draws, or from pass 1
        acc_i = lacc if m2ll and not fresh_information else acc
        if acc_i is not lacc:
            ebe, epp, ebe_cov = weighted_moments(acc_i)
        Wi = acc_i["W"]
        Eg = acc_i["G"] / Wi[:, None]
        Egg = acc_i["GG"] / Wi[:, None, None]
        EH = np.asarray(expected_hessian(psi_hat, np.asarray(ebe), np.asarray(epp),
                                         np.asarray(acc_i["HR"] / Wi[:, None, None])))
        info = -EH - np.sum(Egg - Eg[:, :, None] * Eg[:, None, :], axis=0)
        return {
            "m2ll": float(-2 * loglik_i.sum()),
            "m2ll_se": float(se),
            "loglik_i": loglik_i,
            "ess": W**2 / acc["W2"],
            "pareto_k": khat,
            "widened": widened,
            "refit": refit,
            "draws": int(round(m_total.mean())),
            "draws_i": m_total,
            "mixture_subjects": int((n_comp > 1).sum()),
            "multimodal": multi,
            "modes": modes,
            "failed_draws": acc["n_fail"],
            "info": info,
            "score": Eg.sum(0),
            "ebe": ebe,
            "ebe_sd": np.sqrt(np.maximum(np.diagonal(ebe_cov, axis1=1, axis2=2), 0.0)),
            "ebe_cov": ebe_cov,
            "layout": layout,
            "psi": np.asarray(psi_hat),
            "pass1": lacc,
            "drawn": kept,
            "control": control1,
        }

    sample.compile_ahead = lambda: compile_ahead(ahead_jobs())
    return sample


def refit_mixture(phi, lw, k_max: int, cov0, iterations: int = 50):
    """A subject's proposal refitted to its weighted draws (numpy, on the host): a normal
    mixture of at most ``k_max`` components by weighted EM on the draws ``phi`` (n, d) with log
    importance weights ``lw`` (n,) (those within e^-20 of the largest: not only the heaviest
    few, whose 1 / q leans them away from the proposal's centre; until the weighted
    log-likelihood gains less than 1e-9 of itself), returned as the sampler's t components
    (means (k_max, d), Cholesky factors of the covariances times INFLATE (k_max, d, d), log
    weights (k_max,); unused slots at weight e^-40). The EM starts at the heaviest draw and at
    the next heaviest ones more than 2 SDs (of ``cov0``, the subject's proposal covariance) from
    those taken. The components start with the covariance of all the weighted draws and keep a tenth
    of it (a component that few draws carry must not collapse); each weight is at least 0.05.
    None without a finite weight."""
    fin = np.isfinite(lw)
    if not fin.any():
        return None
    order = np.argsort(-np.where(fin, lw, -np.inf))
    order = order[lw[order] >= lw[order[0]] - 20.0]
    x, w = phi[order], np.exp(lw[order] - lw[order[0]])
    w = w / w.sum()
    n, d = x.shape
    # the weighted draws' covariance: the components start with it and keep a tenth of it
    dx = x - w @ x
    cov_all = (w[:, None] * dx).T @ dx + 1e-10 * np.eye(d)
    floor = 0.1 * cov_all
    P0 = np.linalg.inv(cov0)
    means = [x[0]]
    far = np.ones(n, bool)  # draws more than 2 SDs from every start taken
    while len(means) < k_max:
        dx0 = x - means[-1]
        far &= np.einsum("ni,ij,nj->n", dx0, P0, dx0) > 4.0
        if not far.any():
            break
        means.append(x[np.argmax(far)])  # the heaviest such draw (x is in weight order)
    K = len(means)
    mu, cov, pi = np.array(means), np.repeat(cov_all[None], K, 0), np.full(K, 1.0 / K)
    previous = -np.inf
    for _ in range(iterations):
        logdet, prec = np.linalg.slogdet(cov)[1], np.linalg.inv(cov)
        logp = np.stack([
            np.log(pi[k]) - 0.5 * logdet[k]
            - 0.5 * np.einsum("ni,ni->n", (x - mu[k]) @ prec[k], x - mu[k])
            for k in range(len(pi))
        ])
        total = np.logaddexp.reduce(logp, axis=0)
        value = w @ total  # the weighted log-likelihood EM raises
        if value - previous < 1e-9 * abs(value):
            break
        previous = value
        r = np.exp(logp - total)  # (K, n) responsibilities
        nk = r @ w
        keep = nk > 1e-8
        mu, cov, pi, r, nk = mu[keep], cov[keep], pi[keep], r[keep], nk[keep]
        mu = (r * w) @ x / nk[:, None]
        cov = np.stack([((x - m) * rw[:, None]).T @ (x - m) for m, rw in zip(mu, r * w)])
        cov = cov / nk[:, None, None] + floor
        pi = np.maximum(nk / nk.sum(), 0.05)
        pi = pi / pi.sum()
    K = len(pi)
    means = np.repeat(mu[:1], k_max, 0)
    chols = np.repeat(np.linalg.cholesky(INFLATE * cov[:1]), k_max, 0)
    logw = np.full(k_max, -40.0)
    means[:K], chols[:K], logw[:K] = mu, np.linalg.cholesky(INFLATE * cov), np.log(pi)
    return means, chols, logw


def cv_mean(W, W2, V, V2, WV, m):
    """Per subject: the estimate of the mean importance weight after ``m`` draws and the
    variance of its log (delta method), from the sums of the weights w (``W``, ``W2``), of a
    control variate v = g / q (``V``, ``V2``: g a normal density, q the proposal, so E_q v = 1)
    and of w v (``WV``).

    The regression estimator mean(w) - b (mean(v) - 1), b = cov(w, v) / var(v), whose variance
    is var(w) (1 - corr(w, v)^2) / m (its bias is O(1/m); Owen, *Monte Carlo theory, methods
    and examples*, on control variates). With g the normal of a subject's conditional moments
    the weights of a nearly normal conditional distribution follow v closely: on the bundled
    200-subject Stein cohort the -2LL's Monte Carlo variance fell to a third. The plain mean of
    w where var(v) is 0 or the estimate is not positive; infinite variance for a subject without
    draws."""
    with np.errstate(divide="ignore", invalid="ignore"):
        w_bar, v_bar = W / m, V / m
        var_w = np.maximum(W2 / m - w_bar**2, 0.0)
        var_v = np.maximum(V2 / m - v_bar**2, 0.0)
        cov = WV / m - w_bar * v_bar
        b = cov / var_v
        est = w_bar - b * (v_bar - 1.0)
        use = (var_v > 0) & np.isfinite(est) & (est > 0)
        est = np.where(use, est, w_bar)
        var = np.where(use, np.maximum(var_w - b * cov, 0.0), var_w) / m / est**2
    return est, np.where((m > 0) & np.isfinite(var), var, np.inf)


def next_counts(v, counts, tv, M, hi):
    """The -2LL pass's next draws per subject with equal counts: one more row of M for every
    subject (at most ``hi``), except while some subject's variance ``v`` alone exceeds
    ``OUTLIER`` x the target variance ``tv`` of the log-likelihood, (target SE / 2)^2: then only
    those subjects draw, twice their ``counts``, where everyone would otherwise draw until that
    one subject's variance fell (measured on the 1,000-subject Stein ODE cohort: one subject
    with 70% of the variance, at k-hat 1.4 after two widenings, took every subject to 8,500
    draws)."""
    big = (v > OUTLIER * tv) & (counts < hi)
    if big.any():
        return np.where(big, np.minimum(2 * counts, hi), counts)
    return np.minimum(counts + M, hi)


def allocate_rows(v, m, M, cap, need, n):
    """Rows (M draws each) per subject for a chunk of ``n`` rows: first the rows each subject
    ``need``s (every such subject's first row before any second), then the rest where they
    remove the most Monte Carlo variance. A subject's variance ``v`` after ``m`` draws falls as
    1/draws, so its r-th extra row removes v m (1 / (m + (r - 1) M) - 1 / (m + r M)), less for
    each further row: taking the largest removals is the best allocation. No subject gets more
    than ``cap`` rows; rows that remove nothing are left unallocated."""
    counts = np.zeros(len(v), int)
    R = int(min(cap.max(initial=0), n))
    if R == 0:
        return counts
    mm = np.maximum(m, 1)[:, None]
    r = np.arange(1, R + 1)[None]
    gain = v[:, None] * mm * (1 / (mm + (r - 1) * M) - 1 / (mm + r * M))
    gain = np.where(r <= need[:, None], 1e300 / r, gain)
    gain = np.where(r <= cap[:, None], gain, 0.0).ravel()
    k = int(min(n, (gain > 0).sum()))
    if k:
        counts += np.bincount(np.argpartition(-gain, k - 1)[:k] // R, minlength=len(v))
    return counts


def merge_rows(out, col, n, k):
    """Per-subject sums of a chunk whose row j drew for subject ``col[j]`` (0 to n - 1, each
    with a row; -1: a row to drop): each subject's rows combined, and its draws' log weights (at
    most its k largest) standing for them."""
    col = np.asarray(col)
    rows = np.flatnonzero(col >= 0)
    rows = rows[np.argsort(col[rows], kind="stable")]
    c = col[rows]
    starts = np.searchsorted(c, np.arange(n))
    get = {key: np.asarray(a)[rows] for key, a in out.items()}
    W = get["W"]
    lmax_r = np.where(W > 0, get["lmax"], -np.inf)
    lmax = np.maximum.reduceat(lmax_r, starts)
    lmax = np.where(np.isfinite(lmax), lmax, 0.0)
    s = np.exp(lmax_r - lmax[c])

    def total(a):
        return np.add.reduceat(a, starts, axis=0)

    best_lw = np.maximum.reduceat(get["best_lw"], starts)
    first = np.flatnonzero(get["best_lw"] == best_lw[c])
    first = first[np.unique(c[first], return_index=True)[1]]
    merged = {"lmax": lmax, "W": total(s * W), "W2": total(s**2 * get["W2"]),
              "WV": total(s * get["WV"]), **{key: total(get[key]) for key in CV_PLAIN},
              "n_fail": total(get["n_fail"]), "best_lw": best_lw, "best": get["best"][first]}
    for key in LOUIS_SUMS:
        if key in get:
            merged[key] = total(s.reshape((-1,) + (1,) * (get[key].ndim - 1)) * get[key])
    # each subject's log weights side by side, at most its k largest (by the number of rows:
    # only subjects with more than k draws are sorted)
    lw = get["lw"]
    n_rows = np.bincount(c, minlength=n)
    width = min(k, int(n_rows.max()) * lw.shape[1])
    merged["lw"] = np.full((n, width), -np.inf)
    for cnt in np.unique(n_rows):
        subj = np.flatnonzero(n_rows == cnt)
        vals = lw[starts[subj][:, None] + np.arange(cnt)].reshape(len(subj), -1)
        if vals.shape[1] > width:
            vals = largest(vals, width)
        merged["lw"][subj, : vals.shape[1]] = vals
    return merged


def largest(lw, k):
    """The k largest values of each row of ``lw`` (N, M), in descending order (padded with
    -inf)."""
    if lw.shape[1] < k:
        lw = np.concatenate([lw, np.full((lw.shape[0], k - lw.shape[1]), -np.inf)], axis=1)
    return -np.sort(-lw, axis=1)[:, :k]


def pareto_k(tail, draws):
    """PSIS's Pareto k-hat per subject, as ``arviz.psislw`` computes it, from its largest log
    weights ``tail`` (N, K, descending) and its number of draws (N,). k-hat depends only on the
    tail that PSIS fits: the weights above the (n + 1)-th largest, n = ceil(min(S / 5, 3 sqrt
    S)) for S draws (Vehtari et al. 2024, JMLR 25(72)). Computed here rather than by psislw,
    which needs all S weights and costs its import (0.8 s) in a fit; the test checks they
    agree."""
    draws = np.asarray(draws).astype(int)
    out = np.full(len(draws), np.nan)
    floor = np.log(np.finfo(float).tiny)
    for i in np.flatnonzero(np.isfinite(tail[:, 0]) & (draws >= 5)):
        n = int(np.ceil(min(draws[i] / 5.0, 3 * np.sqrt(draws[i]))))
        if n + 1 > tail.shape[1]:
            continue
        x = tail[i, : n + 1] - tail[i, 0]
        cut = max(x[n], floor)
        above = x[:n][x[:n] > cut]
        if len(above) <= 4:  # too few to fit
            out[i] = np.inf
            continue
        with np.errstate(over="ignore"):  # the length-scale grid at large S
            out[i] = _gpd_shape(np.sort(np.exp(above) - np.exp(cut)))
    return out


def _gpd_shape(x):
    """The shape k of a generalized Pareto fit to the sorted exceedances ``x``: Zhang and
    Stephens' (2009) empirical Bayes estimate with PSIS's weakly informative prior (as
    arviz's ``_gpdfit``)."""
    n = len(x)
    m = 30 + int(n**0.5)
    b = 1 - np.sqrt(m / (np.arange(1, m + 1) - 0.5))
    b = b / (3 * x[int(n / 4 + 0.5) - 1]) + 1 / x[-1]
    k = np.log1p(-b[:, None] * x).mean(axis=1)
    len_scale = n * (np.log(-(b / k)) - k - 1)
    w = 1 / np.exp(len_scale - len_scale[:, None]).sum(axis=1)
    keep = w >= 10 * np.finfo(float).eps
    b_post = np.sum(b[keep] * w[keep]) / w[keep].sum()
    k_post = np.log1p(-b_post * x).mean()
    return (n * k_post + 10 * 0.5) / (n + 10)


def _mix_logpdf(x, mix_i):
    """Log density of one subject's t mixture at draws x (M, d); ``mix_i`` = (means (K, d),
    Cholesky factors (K, d, d), log weights (K,))."""
    m, L, logw = mix_i
    comp = jax.vmap(lambda mk, Lk: _mvt_logpdf(x, mk, Lk, NU))(m, L)  # (K, M)
    return jax.scipy.special.logsumexp(comp + logw[:, None], axis=0)


def importance_sample(stat, predict_draws, data, X, params, post_mean, post_cov, codes,
                      options: ISOptions = ISOptions(), progress: bool = False, m2ll: bool = True):
    """One importance-sampling evaluation at ``params`` (builds and compiles the sampler; a fit
    that evaluates several times builds it once with :func:`make_importance_sampler`).

    With ``m2ll=False`` only the first pass runs (information, score, EBEs; -2LL from those
    draws only, less precise): what a polishing step needs.
    """
    sample = make_importance_sampler(stat, predict_draws, data, X, codes, options)
    return sample(params, post_mean, post_cov, progress=progress, m2ll=m2ll)
