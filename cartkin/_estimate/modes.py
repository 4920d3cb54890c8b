"""Per-subject conditional modes from several starts: the components of a multimodal proposal.

A subject's conditional distribution p(phi_i | y_i) can have several modes. In the Stein model,
with samples days apart, each interval between two samples can hold its own Tmax; a subject
whose first samples fall on the decline has one mode with Tmax before the first sample and
others far later. SAEM's chain of such a subject may sit in any one of them, and an
importance-sampling proposal built from that chain alone never sees the others: its weights look
healthy (a large ESS) while the subject's likelihood is short by the mass it missed. Measured on
a simulated 5,000-subject Stein cohort: the ODE fit's chain of one subject sat at Tmax 52 days,
35 log-likelihood units below the mode at Tmax 1.2 days that the closed-form fit's chain had
found (ESS 1,600: nothing looked wrong); two other subjects lost 2.9 and 0.6 units the other
way. The two fits' -2LL differed by 84 units at equal estimates.

The search: per subject, Levenberg-Marquardt ascent of log p(y_i | phi) + log p(phi | mu_i,
Omega) from ``2 + 2 d`` starts: the chain's mean, mu_i, and the chain's mean with one coordinate
moved to mu_ij - 2 or + 2 IIV SDs (``MOVES``: against four moves, -2, -1, +1, +2, the two lost
no subject of the 5,000-subject cohort and still found the stuck chain's mode above, and saved
the 200-subject Stein ODE fit 0.5-1.3 s; benchmarks/mode_starts.py). Derivatives of the
predictions are forward differences (each iteration one batched solve of every point and its d
neighbours, as importance sampling's draws are solved): measured on the Stein ODE form, 20
subjects x 26 starts, a jvp with d tangents through the batched Rosenbrock solver took 6.0 s to
compile and 69 ms to run, the d + 1 solves 1.0 s and 26 ms. The curvature is the generalised
Gauss-Newton one, J' |d2 l / d eta2| J + Omega^-1, where eta is a record's prediction on its
error scale (log f for log-additive errors). A step is kept only where it raises the log
density, so the approximate curvature costs iterations, not correctness. All linear algebra is
unrolled (d is a handful), so the search may be split over host devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._compile import jit
from .._devices import over_subjects
from .._likelihood import eta_logprior, forward_substitution, map_subjects, record_loglik

MOVES = (-2.0, 2.0)  # start offsets along each coordinate, in IIV SDs
FD_STEP = 1e-3  # forward-difference step on phi (log / logit scale)


def cholesky_unrolled(A):
    """Lower Cholesky factor of a small SPD matrix A (d, d), unrolled over d (plain XLA
    operations; a pivot that is not positive is floored at 1e-300)."""
    d = A.shape[-1]
    L = [[jnp.zeros_like(A[0, 0]) for _ in range(d)] for _ in range(d)]
    for j in range(d):
        s = A[j, j] - sum((L[j][k] ** 2 for k in range(j)), jnp.zeros_like(A[0, 0]))
        L[j][j] = jnp.sqrt(jnp.maximum(s, 1e-300))
        for i in range(j + 1, d):
            t = A[i, j] - sum((L[i][k] * L[j][k] for k in range(j)), jnp.zeros_like(A[0, 0]))
            L[i][j] = t / L[j][j]
    return jnp.stack([jnp.stack(row) for row in L])


def spd_solve(A, b):
    """A^-1 b for a small SPD matrix A (d, d) and b (d,), unrolled."""
    L = cholesky_unrolled(A)
    z = forward_substitution(L, b)
    # L^T x = z is a lower-triangular system with its rows and columns reversed
    return forward_substitution(L.T[::-1, ::-1], z[::-1])[::-1]


def make_mode_search(predict_draws, d: int, codes, n_iter: int, devices):
    """Build ``search(start, beta, L, oinv, sa, sp, data, X) -> (phi (N, S, d), logjoint (N, S),
    H (N, S, d, d), decrement (N, S))`` for the subjects of ``data``/``X`` (padded to the device
    count).

    ``start``: each subject's chain mean (N, d); L: Cholesky factor of Omega, oinv: Omega^-1;
    sa, sp: residual SDs per endpoint. ``logjoint`` is -inf where a start's solve
    failed. ``H``: the Gauss-Newton curvature of -log density at the returned point.
    """
    S = 2 + len(MOVES) * d
    codes = np.asarray(codes)
    log_only = bool(np.all(codes == 0))  # every endpoint log-additive
    # on the device: indexed by traced endpoint numbers
    is_log = jax.device_put(codes == 0)
    codes = jax.device_put(codes)

    def to_eta(f, data_i):
        """Predictions on each record's error scale (log f for log-additive errors)."""
        lg = is_log[data_i["endpoint"]]
        return jnp.where(lg, jnp.log(jnp.maximum(jnp.where(lg, f, 1.0), 1e-300)), f)

    def record_terms(eta, data_i, sa, sp):
        """log-likelihood, and its first and second derivative per record in eta (T,). A
        record's log-likelihood depends on its own eta only, so both derivatives are forward
        derivatives along a vector of ones (forward over forward: a smaller program than
        reverse over reverse, the same values)."""
        lg = is_log[data_i["endpoint"]]
        ones = jnp.ones_like(eta)

        def per_record(e):
            return record_loglik(codes, data_i, jnp.where(lg, jnp.exp(e), e), sa, sp, log_only)

        def first(e):
            return jax.jvp(per_record, (e,), (ones,))

        (ll, g), (_, h) = jax.jvp(first, (eta,), (ones,))
        clean = data_i["mask"] & jnp.isfinite(g) & jnp.isfinite(h)
        return jnp.sum(ll), jnp.where(clean, g, 0.0), jnp.where(clean, h, 0.0)

    def local(start, mu, data, L, oinv, sa, sp):
        n = start.shape[0]
        sd = jnp.sqrt(jnp.diag(L @ L.T))
        # the starts: chain mean, mu_i, chain mean with coordinate j at mu_ij + c SD_j
        moved = []
        for j in range(d):
            for c in MOVES:
                moved.append(start.at[:, j].set(mu[:, j] + c * sd[j]))
        phi0 = jnp.stack([start, mu] + moved, axis=1)  # (n, S, d)

        eye = FD_STEP * jnp.eye(d)

        def evaluate(p):
            """log density, gradient and Gauss-Newton curvature at p (n, S, d): one batched
            solve of each point and its d forward-difference neighbours."""
            pp = jnp.concatenate([p[:, :, None, :], p[:, :, None, :] + eye], axis=2)
            f, code = map_subjects(predict_draws, pp.reshape(n, S * (d + 1), d), data)
            eta = jax.vmap(jax.vmap(to_eta, (0, None)))(f, data).reshape(n, S, d + 1, -1)
            code = code.reshape(n, S, d + 1)
            J = jnp.swapaxes(eta[:, :, 1:] - eta[:, :, :1], -1, -2) / FD_STEP  # (n, S, T, d)
            ll, g, h = jax.vmap(jax.vmap(lambda e, di: record_terms(e, di, sa, sp), (0, None)))(
                eta[:, :, 0], data)
            dev = p - mu[:, None, :]
            lj = ll + eta_logprior(dev, L)
            lj = jnp.where(jnp.all(code == 0, -1) & jnp.isfinite(lj), lj, -jnp.inf)
            grad = jnp.einsum("nstd,nst->nsd", J, g) - dev @ oinv.T
            H = jnp.einsum("nstd,nst,nste->nsde", J, jnp.abs(h), J) + oinv
            return lj, grad, H

        def step(i, carry):
            # iteration 0 evaluates the starts (a zero step from a zero gradient): the solver is
            # traced once, inside the loop
            p, lj, grad, H, lam = carry
            damped = H + lam[..., None, None] * jnp.diag(jnp.ones(d)) * jnp.diagonal(
                H, axis1=-2, axis2=-1)[..., None, :]
            delta = jax.vmap(jax.vmap(spd_solve))(damped, grad)
            # no step longer than 2 IIV SDs in any coordinate
            delta = delta / jnp.maximum(1.0, jnp.max(jnp.abs(delta) / (2 * sd), -1))[..., None]
            trial = p + delta
            lj_t, grad_t, H_t = evaluate(trial)
            ok = (lj_t > lj) & jnp.all(jnp.isfinite(delta), -1) & jnp.all(jnp.isfinite(grad_t), -1)

            def keep(new, old):
                return jnp.where(ok.reshape(ok.shape + (1,) * (new.ndim - 2)), new, old)

            lam = jnp.where(i == 0, lam, jnp.clip(jnp.where(ok, lam / 3, lam * 4), 1e-6, 1e6))
            return keep(trial, p), keep(lj_t, lj), keep(grad_t, grad), keep(H_t, H), lam

        carry = (phi0, jnp.full((n, S), -jnp.inf), jnp.zeros((n, S, d)),
                 jnp.broadcast_to(jnp.eye(d), (n, S, d, d)), jnp.full((n, S), 1e-2))
        p, lj, grad, H, _ = jax.lax.fori_loop(0, n_iter + 1, step, carry)
        # the Newton decrement g' H^-1 g / 2 at the end point (small at a mode)
        dec = 0.5 * jnp.sum(grad * jax.vmap(jax.vmap(spd_solve))(H, grad), -1)
        return p, lj, H, jnp.where(jnp.isfinite(dec), dec, jnp.inf)

    @jit
    def search(start, beta, L, oinv, sa, sp, data, X):
        mu = jnp.einsum("njp,jp->nj", X, beta)
        return over_subjects(local, (start, mu, data), (L, oinv, sa, sp), devices)

    return search


def mixture_from_modes(phi, lj, H, dec, m0, L0, omega, k_max: int, inflate: float,
                       window: float = 8.0, converged: float = 0.01, min_share: float = 1e-3):
    """Per subject, proposal components at the modes the search found (numpy, on the host).

    An end point is a mode when its Newton decrement is below ``converged``. The end point of
    the chain's start stands for the chain's component whether or not it converged (the Stein
    model's mode often sits on its kink at Tmax, where the decrement does not fall). A mode gets a
    component when its log density is within ``window`` of the subject's best, it lies more than
    2 of its own SDs (Mahalanobis) from the points already taken and more than 2 SDs of the
    chain's component (m0, L0) from its mean, and it holds at least ``min_share`` of the Laplace
    mass of the points taken (leaving it out would cost the subject's log-likelihood less than
    that). Returns (means (N, k_max, d), Cholesky factors (N, k_max, d, d), log weights
    (N, k_max), number of components (N,)): slot 0 is the chain's component; each mode
    component's weight is its mass share (at least 0.05; at most 0.9 in all), the chain's
    component keeps the rest. A subject with no such mode keeps one component.
    """
    N, S, d = phi.shape
    means = np.repeat(np.asarray(m0)[:, None], k_max, 1)
    chols = np.repeat(np.asarray(L0)[:, None], k_max, 1)
    logw = np.full((N, k_max), -40.0)
    logw[:, 0] = 0.0
    n_comp = np.ones(N, int)
    floor = 0.01 * np.diag(np.diag(omega))
    finite = np.isfinite(lj)
    conv = finite & (dec < converged)
    best = np.max(np.where(finite, lj, -np.inf), axis=1)
    for i in np.flatnonzero(conv.any(1)):
        order = [0] if finite[i, 0] else []
        order += [s for s in np.argsort(-lj[i])
                  if s != 0 and conv[i, s] and lj[i, s] >= best[i] - window]
        taken, mass = [], []
        for s in order:
            x, Hs = phi[i, s], H[i, s]
            if any((x - phi[i, k]) @ H[i, k] @ (x - phi[i, k]) < 4.0 for k in taken):
                continue
            taken.append(s)
            sign, logdet = np.linalg.slogdet(Hs)
            mass.append(lj[i, s] - 0.5 * logdet if sign > 0 else -np.inf)
        mass = np.asarray(mass)
        share = np.exp(mass - np.logaddexp.reduce(mass))
        # converged modes away from the chain's component
        extra = []
        for s, sh in zip(taken, share, strict=True):
            z = np.linalg.solve(L0[i], phi[i, s] - m0[i])
            if s != 0 and z @ z > 4.0 and sh >= min_share:
                extra.append((s, sh))
        extra = extra[: k_max - 1]
        if not extra:
            continue
        w = []
        for k, (s, sh) in enumerate(extra, start=1):
            cov = inflate * np.linalg.inv(H[i, s]) + floor
            means[i, k] = phi[i, s]
            chols[i, k] = np.linalg.cholesky(0.5 * (cov + cov.T))
            w.append(max(0.05, sh))
        w = np.asarray(w)
        if w.sum() > 0.9:
            w = 0.9 * w / w.sum()
        logw[i, 0] = np.log(1.0 - w.sum())
        logw[i, 1 : 1 + len(w)] = np.log(w)
        n_comp[i] = 1 + len(w)
    return means, chols, logw, n_comp
