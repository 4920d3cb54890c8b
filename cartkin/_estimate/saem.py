"""SAEM: stochastic-approximation EM for the population model (Monolix-style).

Each iteration runs, for all subjects at once (vmap), a Metropolis-Hastings E-step on the
individual parameters phi_i (prior proposals, full random walks, component-wise random walks,
adaptive scales), then updates the sufficient statistics by stochastic approximation and takes a
closed-form M-step for beta and Omega and a Newton M-step for the residual-error parameters (M3
censoring included). Only forward solves of the model are needed: no derivative ever goes through
an ODE solver. Step size gamma_k = 1 for the first ``k1`` iterations, then 1/(k - k1 + 1) for
``k2`` iterations. During the first ``anneal`` iterations variances may shrink by at most 5% per
iteration (simulated annealing) so the chains explore before Omega contracts.

A block of iterations (``SAEMOptions.block``) is one jitted program, a scan over them: the
E-step per subject and split over the local devices (``cartkin._devices.over_subjects``: on a
CPU each core is a host device, and an ODE solve loop runs on one core), then the rest
(statistics, M-step) on every device, on the subjects' arrays gathered there, so nothing goes
through the host between iterations. Every subject draws from its own random key, so the chains
do not depend on the split.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from .._compile import jit
from .._devices import over_subjects, pad_subjects, subject_devices
from .._likelihood import (
    eta_logprior,
    log_ndtr,
    map_subjects,
    record_loglik,
    residual_loglik_sigma_derivatives,
    sigma_layout,
    sigma_per_endpoint,
)


@dataclasses.dataclass(frozen=True)
class SAEMOptions:
    """Iteration schedule and kernels of SAEM (defaults measured on the Stein cohort)."""

    k1: int = 200
    k2: int = 100
    anneal: int = 100
    n_prior: int = 1
    n_rw: int = 2
    n_component: int = 1
    block: int = 50
    seed: int = 0
    # relative tolerance of SAEM's ODE solves (the larger of this and the fit's own; 0: the
    # fit's). The chains need far less accurate predictions than the -2LL: on the Stein ODE form
    # rtol 1e-4 changed log-predictions by at most 1.1e-4 (residual SD 0.56) and halved the
    # seconds per solve. Importance sampling's information passes solve at this tolerance too;
    # the mode search and the -2LL use the fit's (docs/estimation.md).
    rtol: float = 1e-4


SUBJECT = ("phi", "f", "ok", "ll", "s_rw", "s_comp")  # the per-subject part of the state
START, SKIP = -1, -2  # iteration numbers of a block: the start's E-step, nothing


def saem_settings(settings, options: SAEMOptions):
    """The solver settings of SAEM's ODE solves: the fit's, with the larger of the two relative
    tolerances (``options.rtol``)."""
    return dataclasses.replace(settings, rtol=max(settings.rtol, options.rtol))


def _strong(tree):
    """The arrays of ``tree`` without weak types (a weak-typed input traces a program again),
    put on the device from host copies (an eager copy would be a small program of its own)."""
    return jax.tree.map(lambda x: jax.device_put(np.asarray(x)), tree)


def make_saem(stat, predict_draws, data, X, options: SAEMOptions, codes):
    """Build ``init(params0) -> state`` and ``run_block(state, ks) -> (state, trace)``."""
    N, d = data["time"].shape[0], len(stat.iiv)
    # the E-step is split over the devices when it runs solver loops: measured on the 2-core CPU,
    # 200 subjects, SAEM of the Stein ODE form 8.0 -> 6.5 s on two devices (with a program per
    # E-step and per M-step; 3.4 -> 2.7 s warm as one program per block). The closed form's
    # E-step gained nothing from the split (1.0-1.1 s either way, one program per block; 1.8 ->
    # 2.4 s with transfers between the two programs of each iteration)
    solver_loops = getattr(predict_draws, "lanes", None) is not None
    split_ok = getattr(predict_draws, "split", False) and solver_loops
    devices = subject_devices(split_ok)
    n_dev = len(devices)
    X_host = np.asarray(X, float)  # (N, d, P): a constant of the programs below, on every device
    # the subjects' arrays padded to a multiple of the device count (copies of the last subject,
    # left out of every sum)
    data_pad = pad_subjects({k: np.asarray(v) for k, v in data.items()}, n_dev)
    X_pad_host = pad_subjects(X_host, n_dev)
    idx_pad = np.arange(X_pad_host.shape[0])
    whole = None  # on several devices: every array on all of them
    if n_dev > 1:
        mesh = jax.sharding.Mesh(np.asarray(devices), ("subjects",))
        whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    # constants of the programs below, computed on the host (eager device operations would each
    # be a small program to trace and load)
    P = X_host.shape[2]
    colmask = np.any(X_host != 0, axis=0)  # (d, P)
    XtX = np.einsum("njp,njq->jpq", X_host, X_host) + np.eye(P) * (~colmask)[:, :, None]
    XtX_inv = np.linalg.inv(XtX)
    G = np.einsum("njp,nkq->jpkq", X_host, X_host)  # for sum_i mu_ij mu_ik
    omask = np.asarray(stat.omega_mask())
    add, prop = sigma_layout(stat.endpoints)
    n_free = int(add.sum() + prop.sum())
    log_only = bool(np.all(np.asarray(codes) == 0))  # every endpoint log-additive
    codes = jax.device_put(np.asarray(codes))  # indexed by traced endpoint numbers

    columns = getattr(predict_draws, "draws_last", None)

    def predict_all(phi, data):
        if columns is not None:  # an element-wise closed form: the subjects on the last axis
            f, code = columns(phi, {k: data[k].T for k in ("time", "endpoint")})
            return f.T, code == 0
        f, code = map_subjects(predict_draws, phi[:, None, :], data)
        return f[:, 0], code[:, 0] == 0

    def resid_ll(f, ok, sa, sp, data):
        # the records first, the subjects last
        rec = {k: data[k].T for k in ("endpoint", "dv", "cens", "limit", "mask")}
        ll = record_loglik(codes, rec, f.T, sa, sp, log_only).sum(0)
        return jnp.where(ok & jnp.isfinite(ll), ll, -jnp.inf)

    # the kernel schedule of one E-step: 0 = prior proposal, 1 = full random walk,
    # 2 + j = random walk on component j. One scan over it: one compiled model solve.
    schedule = np.asarray(
        [0] * options.n_prior + [1] * options.n_rw + list(range(2, 2 + d)) * options.n_component,
        dtype=np.int32,
    )

    def e_local(idx, phi, f, ok, ll, s_rw, s_comp, mu, data, key, L, sd, sa, sp):
        """The E-step of the subjects given (a device's share): MH kernels per subject."""
        n = phi.shape[0]
        # every kernel's normals, and one more each for its acceptance test (log U = log Phi(z)),
        # in one draw per subject: one generator call per E-step instead of four per kernel
        zz = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i),
                                                  (schedule.shape[0], d + 1)))(idx)

        def kernel(st, inp):
            kind, zu = inp
            z, log_u = zu[:, :d], log_ndtr(zu[:, d])
            j = jnp.maximum(kind - 2, 0)
            onehot = jax.nn.one_hot(j, d)
            cand_prior = mu + z @ L.T
            cand_rw = st["phi"] + st["s_rw"][:, None] * (z @ L.T)
            cand_comp = st["phi"] + onehot[None, :] * (
                z[:, 0] * jnp.take(st["s_comp"], j, axis=1) * sd[j]
            )[:, None]
            phi_new = jnp.where(kind == 0, cand_prior, jnp.where(kind == 1, cand_rw, cand_comp))
            f_new, ok_new = predict_all(phi_new, data)
            ll_new = resid_ll(f_new, ok_new, sa, sp, data)
            prior_ratio = eta_logprior(phi_new - mu, L) - eta_logprior(st["phi"] - mu, L)
            log_a = ll_new - st["ll"] + jnp.where(kind == 0, 0.0, prior_ratio)
            acc = (log_u < log_a) & jnp.isfinite(ll_new)

            def sel(a, b):
                return jnp.where(acc.reshape((n,) + (1,) * (a.ndim - 1)), a, b)

            rate = acc.astype(float)
            s_rw = jnp.where(kind == 1, jnp.clip(st["s_rw"] * jnp.exp(0.3 * (rate - 0.3)), 1e-3, 10.0), st["s_rw"])
            s_c = jnp.clip(jnp.take(st["s_comp"], j, axis=1) * jnp.exp(0.3 * (rate - 0.4)), 1e-3, 10.0)
            s_comp = jnp.where(kind >= 2, st["s_comp"].at[:, j].set(s_c), st["s_comp"])
            new = dict(st, phi=sel(phi_new, st["phi"]), f=sel(f_new, st["f"]),
                       ok=sel(ok_new, st["ok"]), ll=sel(ll_new, st["ll"]), s_rw=s_rw, s_comp=s_comp)
            return new, None

        st = dict(phi=phi, f=f, ok=ok, ll=ll, s_rw=s_rw, s_comp=s_comp)
        st, _ = jax.lax.scan(kernel, st, (schedule, jnp.moveaxis(zz, 1, 0)))
        return tuple(st[k] for k in SUBJECT)

    def e_step(key, subj, mu, L, sd, sa, sp):
        return over_subjects(e_local, (idx_pad, *subj, mu, data_pad), (key, L, sd, sa, sp),
                             devices)

    def sigma_step(f, ok, log_sigma):
        def derivatives(ls):
            """Gradient and Hessian in log sigma of the residual log-likelihood summed over the
            subjects whose predictions are usable (closed-form per record, as Louis's formula
            takes them: no autodiff)."""
            ll, g, h = jax.vmap(
                lambda di, fi: residual_loglik_sigma_derivatives(stat.endpoints, di, fi, ls)
            )(data, f)
            use = ok & jnp.isfinite(ll) & jnp.all(jnp.isfinite(g), -1)
            return (jnp.where(use[:, None], g, 0.0).sum(0),
                    jnp.where(use[:, None, None], h, 0.0).sum(0))

        def newton(_, ls):
            g, h = derivatives(ls)
            w, v = jnp.linalg.eigh(-h)
            step = v @ ((v.T @ g) / jnp.maximum(w, 1e-3 * jnp.abs(g).max() + 1e-8))
            return ls + jnp.clip(step, -1.0, 1.0)

        return jax.lax.fori_loop(0, 4, newton, log_sigma)

    def m_step(stats, params, k):
        B, S2 = stats["B"], stats["S2"]
        beta = jnp.einsum("jpq,jq->jp", XtX_inv, jnp.einsum("jpj->jp", B)) * colmask
        cross = jnp.einsum("jp,jpk->jk", beta, B)  # sum_i mu_ij phi_ik
        mm = jnp.einsum("jp,jpkq,kq->jk", beta, G, beta)
        omega = (S2 - cross - cross.T + mm) / N
        omega = jnp.where(omask, 0.5 * (omega + omega.T), 0.0)
        dnew = jnp.maximum(jnp.diag(omega), 1e-10)
        dann = jnp.where(k < options.anneal, jnp.maximum(dnew, 0.95 * jnp.diag(params["omega"])), dnew)
        r = jnp.sqrt(dann / dnew)
        omega = omega * r[:, None] * r[None, :]
        chol = jnp.linalg.cholesky(omega + 1e-12 * jnp.eye(d))
        return dict(params, beta=beta, omega=omega, chol=chol)

    def e_inputs(params):
        """What the E-step needs of the parameters: mu (padded), L, the IIV SDs, the residual
        SDs (numpy for numpy parameters: the host-side start makes no device program)."""
        xp = np if isinstance(params["beta"], np.ndarray) else jnp
        sa, sp = sigma_per_endpoint(stat.endpoints, xp.exp(params["log_sigma"]))
        mu = xp.einsum("njp,jp->nj", X_pad_host, params["beta"])
        return mu, params["chol"], xp.sqrt(xp.diag(params["omega"])), sa, sp

    def m_step_all(state, subj, k):
        """Everything after the E-step of iteration k."""
        st = dict(state, **dict(zip(SUBJECT, subj)))
        params = state["params"]
        phi = st["phi"][:N]
        gamma = jnp.where(k < options.k1, 1.0, 1.0 / (k - options.k1 + 1.0))
        B_new = jnp.einsum("njp,nk->jpk", X_host, phi)
        S2_new = phi.T @ phi
        stats = {"B": st["stats"]["B"] + gamma * (B_new - st["stats"]["B"]),
                 "S2": st["stats"]["S2"] + gamma * (S2_new - st["stats"]["S2"])}
        params = m_step(stats, params, k)
        ls_hat = sigma_step(st["f"][:N], st["ok"][:N], params["log_sigma"])
        ls_sa = params["log_sigma"] + gamma * (ls_hat - params["log_sigma"])
        ls_new = jnp.where(k < options.anneal, jnp.maximum(ls_sa, params["log_sigma"] + jnp.log(0.95)), ls_sa)
        params = dict(params, log_sigma=ls_new)
        sa, sp = sigma_per_endpoint(stat.endpoints, jnp.exp(ls_new))
        st["ll"] = resid_ll(st["f"], st["ok"], sa, sp, data_pad)
        w = jnp.where(k >= options.k1, 1.0 / (k - options.k1 + 1.0), 0.0)
        st["post_m"] = st["post_m"] + w * (phi - st["post_m"])
        outer = phi[:, :, None] * phi[:, None, :]
        st["post_s"] = st["post_s"] + w * (outer - st["post_s"])
        key, sub = jax.random.split(st["key"])
        st.update(stats=stats, params=params, key=key, sub=sub, e_in=e_inputs(params))
        ll_i = st["ll"][:N]
        trace = {"beta0": params["beta"][:, 0], "omega_diag": jnp.diag(params["omega"]),
                 "log_sigma": ls_new, "ll": jnp.sum(jnp.where(jnp.isfinite(ll_i), ll_i, 0.0))}
        return st, trace

    def iteration(state, k):
        """SAEM iteration k (k = START: the E-step at the start, whose proposals are the chains'
        starting values, and no M-step; k = SKIP: nothing)."""

        def run(state):
            subj = e_step(state["sub"], tuple(state[n] for n in SUBJECT), *state["e_in"])
            st, trace = m_step_all(state, subj, k)
            # the start: the predictions at the starting values (the chains, their scales and
            # the keys stay as they are: the zero-width proposals do not depend on the key)
            _, f, ok, ll, _, _ = subj
            st0 = dict(state, f=f, ok=ok, ll=ll, e_in=e_inputs(state["params"]))
            st = jax.tree.map(lambda a, b: jnp.where(k == START, a, b), st0, st)
            return st, trace

        def skip(state):
            return state, {"beta0": jnp.zeros(d), "omega_diag": jnp.zeros(d),
                           "log_sigma": jnp.zeros(n_free), "ll": jnp.zeros(())}

        return jax.lax.cond(k == SKIP, skip, run, state)

    @jit
    def block(state, ks):
        """SAEM iterations ``ks`` in one program: the E-step split over the devices, the rest
        on each (no transfer between iterations)."""
        state, trace = jax.lax.scan(iteration, state, ks)
        if n_dev > 1:  # laid out as it came in (else the next block compiles again)
            state = jax.lax.with_sharding_constraint(state, whole)
        return state, trace

    def run_block(state, ks):
        """SAEM iterations ``ks`` (an integer array of ``options.block``, SKIP-padded); returns
        the state and the stacked trace of the iterations run."""
        ks = np.asarray(ks, np.int32)
        state, trace = block(state, ks)
        return state, jax.tree.map(lambda a: np.asarray(a)[ks >= 0], trace)

    def init(beta0, omega0, log_sigma0):
        # on the host: eager device operations would each be a small program
        beta0, omega0, log_sigma0 = (np.asarray(a, float) for a in (beta0, omega0, log_sigma0))
        params = {"beta": beta0, "omega": omega0, "chol": np.linalg.cholesky(omega0),
                  "log_sigma": log_sigma0}
        e_in = e_inputs(params)
        phi0, sa, sp = e_in[0], e_in[3], e_in[4]  # the chains start at mu
        n_pad = phi0.shape[0]
        s_rw0, s_comp0 = np.full((n_pad,), 0.5), np.full((n_pad, d), 1.0)
        # the predictions at phi0: one E-step whose every proposal is phi0 (a zero-width
        # population distribution; the chains start at log-likelihood -inf, so the first
        # kernel's solve is accepted wherever it succeeds), run as a block's START iteration so
        # that the model solve is traced and compiled once
        width = np.full((d,), 1e-300)
        key, sub = jax.random.split(jax.random.PRNGKey(options.seed))
        state = {
            "phi": phi0, "f": np.zeros(data_pad["time"].shape), "ok": np.zeros(n_pad, bool),
            "ll": np.full((n_pad,), -np.inf), "s_rw": s_rw0, "s_comp": s_comp0,
            "stats": {"B": np.einsum("njp,nk->jpk", X_host, phi0[:N]),
                      "S2": phi0[:N].T @ phi0[:N]},
            "params": params, "post_m": np.zeros((N, d)), "post_s": np.zeros((N, d, d)),
            "key": key, "sub": sub,
            "e_in": (phi0, np.diag(width), width, sa, sp),
        }
        # strong types throughout, so that every block reuses one compilation; on several
        # devices, every array on all of them (the E-step takes its share of each subject array)
        state = _strong(state)
        if n_dev > 1:
            state = jax.device_put(state, whole)
        ks = np.full(options.block, SKIP, np.int32)
        ks[0] = START
        return run_block(state, ks)[0]

    return init, run_block, n_free
