"""The population statistical model, written once.

Individual parameters (mu-referenced, on each parameter's natural scale ``u``: log, logit or
identity)::

    phi_i = mu_i + eta_i,   mu_i = X_i beta,   eta_i ~ N(0, Omega)
    theta_i = u^{-1}(phi_i)

Residual error per endpoint, on the scale where it is normal::

    log_additive   log DV ~ N(log f, sigma^2)            (qPCR CAR-T data)
    additive       DV ~ N(f, sigma^2)
    proportional   DV ~ N(f, (sigma f)^2)
    combined       DV ~ N(f, sigma_add^2 + (sigma_prop f)^2)

Censoring (M3): CENS=1 contributes P(DV < LIMIT), CENS=-1 contributes P(DV > LIMIT).

Everything below is a pure JAX function of arrays. :func:`subject_loglik` is the one
conditional likelihood; the SAEM E-step, the importance sampler, the Louis information and the
NUTS log-density all call it. -2LL includes all constants (``log 2 pi``) and is on the scale
where the error is normal (log DV for ``log_additive``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ._models.base import Model
from ._population import from_unconstrained, interval_domain, to_unconstrained

ERROR_MODELS = {"log_additive": 1, "additive": 1, "proportional": 1, "combined": 2}


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One observed endpoint: which model output, which DVID, which error model."""

    output: str
    dvid: int = 1
    error: str = "log_additive"

    def __post_init__(self):
        if self.error not in ERROR_MODELS:
            raise ValueError(
                f"unknown error model {self.error!r} for endpoint {self.output!r}; "
                f"choose from {list(ERROR_MODELS)}"
            )


@dataclasses.dataclass(frozen=True)
class FitData:
    """Observations of N subjects, padded to T records each (fixed shapes for jit).

    ``endpoint`` indexes the fit's endpoints; ``mask`` is False on padding. Doses are the
    event-table arrays of :mod:`cartkin._regimen` (N, E).
    """

    ids: np.ndarray  # (N,)
    time: np.ndarray  # (N, T)
    dv: np.ndarray  # (N, T)
    cens: np.ndarray  # (N, T) int: 0, 1 (below LIMIT), -1 (above LIMIT)
    limit: np.ndarray  # (N, T)
    endpoint: np.ndarray  # (N, T) int
    mask: np.ndarray  # (N, T) bool
    ev_time: np.ndarray  # (N, E)
    ev_dose: np.ndarray  # (N, E)
    ev_log_effect: np.ndarray  # (N, E, P)
    covariates: Mapping[str, np.ndarray]  # name -> (N,)

    @property
    def n_subjects(self) -> int:
        return self.time.shape[0]

    @property
    def n_obs(self) -> int:
        return int(self.mask.sum())

    def subset(self, idx) -> FitData:
        return FitData(
            self.ids[idx], self.time[idx], self.dv[idx], self.cens[idx], self.limit[idx],
            self.endpoint[idx], self.mask[idx], self.ev_time[idx], self.ev_dose[idx],
            self.ev_log_effect[idx], {k: v[idx] for k, v in self.covariates.items()},
        )


def residual_sd(kind_codes, f, sigma_add, sigma_prop):
    """SD of each record's residual on its normal scale (the log scale for log-additive records)
    at prediction f: the one formula of the likelihood, the sdtab and simulated replicates."""
    return jnp.where(
        (kind_codes == 0) | (kind_codes == 1),
        sigma_add,
        jnp.where(kind_codes == 2, sigma_prop * jnp.abs(f),
                  jnp.sqrt(sigma_add**2 + (sigma_prop * f) ** 2)),
    )


def _record_terms(kind_codes, y, f, cens, limit, sigma_add, sigma_prop, mask, log_only=False):
    """Per record: the residual SD, the standardised residual z, the M3 argument u and the
    uncensored and censored log-likelihoods (see :func:`residual_loglik`).

    ``log_only``: every record is log-additive (known when the program is traced). The SD then
    does not depend on the prediction, so under a vmap over draws its logarithm is taken once
    per record instead of once per draw and record."""
    safe_f = jnp.where(mask, f, 1.0)
    if log_only:
        m = jnp.log(jnp.maximum(safe_f, 1e-300))
        yy = jnp.log(jnp.where(mask & (y > 0), y, 1.0))
        lim = jnp.log(jnp.where(mask & (limit > 0), limit, 1.0))
        sd = sigma_add
    else:
        is_log = kind_codes == 0
        m = jnp.where(is_log, jnp.log(jnp.maximum(safe_f, 1e-300)), safe_f)
        yy = jnp.where(is_log, jnp.log(jnp.where(mask & (y > 0), y, 1.0)), y)
        lim = jnp.where(is_log, jnp.log(jnp.where(mask & (limit > 0), limit, 1.0)), limit)
        sd = residual_sd(kind_codes, safe_f, sigma_add, sigma_prop)
    z = (yy - m) / sd
    ll_obs = -0.5 * z**2 - jnp.log(sd) - 0.5 * jnp.log(2 * jnp.pi)
    z_lim = (lim - m) / sd
    # M3: log P(y < LLOQ) = log Phi(u), u = z for CENS=1, log P(y > ULOQ) = log Phi(-z) for
    # CENS=-1 (u = 0 on uncensored records: their limit may be infinite, and a derivative
    # through the unused branch must stay finite)
    u = jnp.where(cens == 0, 0.0, jnp.where(cens == -1, -z_lim, z_lim))
    return sd, z, u, ll_obs, log_ndtr(u)


def residual_loglik(kind_codes, y, f, cens, limit, sigma_add, sigma_prop, mask,
                    log_only=False):
    """Log-likelihood of each record given the prediction f (M3 for censored records).

    ``kind_codes`` per record: 0 log-additive, 1 additive, 2 proportional, 3 combined.
    ``sigma_add``/``sigma_prop`` per record (the endpoint's parameters). ``log_only``: every
    code is 0, known when tracing (the same values, fewer operations per prediction).
    """
    _, _, _, ll_obs, ll_cens = _record_terms(kind_codes, y, f, cens, limit, sigma_add,
                                             sigma_prop, mask, log_only)
    return jnp.where(mask, jnp.where(cens == 0, ll_obs, ll_cens), 0.0)


def residual_loglik_sigma_derivatives(endpoints, data_i, f, log_sigma):
    """One subject's residual log-likelihood (summed over records, M3 included) with its
    gradient (n_s,) and Hessian (n_s, n_s) in the free log residual SDs ``log_sigma``
    (:func:`sigma_layout`'s order): what Louis's formula needs per draw, in one pass.

    ``f``: the predictions (T,), or a batch of them with the records first (T, B): the results
    then have the batch's shape in front ((B,), (B, n_s), (B, n_s, n_s)). On the CPU, XLA
    vectorises an element-wise computation along the last axis: with 250 draws there rather
    than the bundled cohort's 13 records, these terms took 2.3x fewer seconds (the same at 12 or
    16 records, multiples of the vector width: ``benchmarks/residual_loglik.py``).

    Per record the log-likelihood depends on sigma only through s = log sd: uncensored,
    l = -z^2/2 - s + c with z = (y - m) e^-s, so dl/ds = z^2 - 1 and d2l/ds2 = -2 z^2; censored,
    l = log Phi(u) with u = +-(limit - m) e^-s, so dl/ds = -u lam and d2l/ds2 = u lam (1 - u (u +
    lam)), lam = phi(u) / Phi(u) (from the log Phi already computed). s is log sigma_add or
    log sigma_prop plus a constant, except for the combined error (s = log(sa^2 + sp^2 f^2) / 2),
    whose weights wa = sa^2 / V, wp = 1 - wa give ds = (wa, wp) and d2s = 2 wa wp [[1, -1], [-1,
    1]]. Same values as autodiff of :func:`record_loglik` (``tests/test_derivatives.py``); an
    importance-sampling chunk's weighing took half the seconds of autodiff's."""
    # endpoint -> its additive / proportional parameter, one-hot (E, n_s)
    n_s = jnp.shape(log_sigma)[0]
    Ea, Ep = ((pos[:, None] == np.arange(n_s)).astype(float) for pos in sigma_positions(endpoints))
    codes = kind_codes(endpoints)
    log_only = bool(np.all(codes == 0))
    sa, sp = sigma_per_endpoint(endpoints, jnp.exp(log_sigma))
    batch = (1,) * (jnp.ndim(f) - 1)  # the records' arrays against a batch of predictions

    def per_record(a):
        return jnp.reshape(a, jnp.shape(a)[:1] + batch + jnp.shape(a)[1:])

    ep = data_i["endpoint"]
    mask, cens = per_record(data_i["mask"]), per_record(data_i["cens"])
    kind, sa, sp = (per_record(a) for a in (jnp.asarray(codes)[ep], sa[ep], sp[ep]))
    sd, z, u, l_obs, l_cen = _record_terms(kind, per_record(data_i["dv"]), f, cens,
                                           per_record(data_i["limit"]), sa, sp, mask, log_only)
    lam = jnp.exp(-0.5 * u**2 - 0.5 * np.log(2 * np.pi) - l_cen)
    obs = mask & (cens == 0)
    cen = mask & (cens != 0)
    ll = jnp.where(obs, l_obs, jnp.where(cen, l_cen, 0.0))
    l_s = jnp.where(obs, z**2 - 1.0, jnp.where(cen, -u * lam, 0.0))
    l_ss = jnp.where(obs, -2.0 * z**2, jnp.where(cen, u * lam * (1.0 - u * (u + lam)), 0.0))
    Ea_r, Ep_r = jnp.asarray(Ea)[ep], jnp.asarray(Ep)[ep]  # (T, n_s)
    if log_only:  # s = log sigma_add: wa = 1, wp = 0
        return (ll.sum(0), jnp.einsum("t...,ti->...i", l_s, Ea_r),
                jnp.einsum("t...,ti,tj->...ij", l_ss, Ea_r, Ea_r))
    wa = jnp.where(kind == 3, sa**2 / sd**2, jnp.where(kind == 2, 0.0, 1.0))
    wp = 1.0 - wa
    comb = jnp.where(kind == 3, 2.0 * wa * wp, 0.0)
    Ea_b, Ep_b = per_record(Ea_r), per_record(Ep_r)
    ds = wa[..., None] * Ea_b + wp[..., None] * Ep_b  # (T, B, n_s)
    dd = Ea_r - Ep_r  # the combined error's second derivative: 2 wa wp dd dd'
    grad = jnp.einsum("t...,t...i->...i", l_s, ds)
    hess = (jnp.einsum("t...,t...i,t...j->...ij", l_ss, ds, ds)
            + jnp.einsum("t...,ti,tj->...ij", l_s * comb, dd, dd))
    return ll.sum(0), grad, hess


def log_ndtr(z):
    """log Phi(z), the standard normal log-CDF, for the M3 likelihood: one erfc per value above
    z = -20, the asymptotic series (six terms) below, where the second derivative of log(erfc)
    would underflow. Within 1e-11 of scipy's log_ndtr and 4x faster than
    jax.scipy.special.log_ndtr on the CPU (which evaluates erf, erfc and a series for every
    value); it is the costliest step of an M3 likelihood."""
    low = z < -20.0
    zc = jnp.where(low, -20.0, z)
    main = jnp.log(0.5 * jax.scipy.special.erfc(-zc / np.sqrt(2.0)))
    zl = jnp.where(low, z, -20.0)
    r = 1.0 / zl**2
    series = r * (-1 + r * (3 + r * (-15 + r * (105 + r * (-945)))))
    asym = -0.5 * zl**2 - 0.5 * np.log(2 * np.pi) - jnp.log(-zl / (1.0 + series))  # one log
    return jnp.where(low, asym, main)


@dataclasses.dataclass(frozen=True)
class StatModel:
    """Structural model + IIV + covariates + residual error: the population model to fit.

    Args:
        model: the structural model.
        endpoints: observed endpoints (DVID -> model output and error model).
        iiv: parameters with a random effect (each is estimated).
        fixed: parameter values held fixed (default: the model's defaults for the rest).
        omega_blocks: groups of ``iiv`` names with correlated random effects (default diagonal).
        covariates: covariate effects (cartkin._population PowerEffect/ExpEffect/
            CategoricalEffect); their coefficients are estimated.
    """

    model: Model
    endpoints: tuple[Endpoint, ...]
    iiv: tuple[str, ...]
    fixed: Mapping[str, float] = dataclasses.field(default_factory=dict)
    omega_blocks: tuple[tuple[str, ...], ...] = ()
    covariates: tuple = ()
    # {name: (lower, upper)}: a parameter with IIV kept inside (lower, upper), its typical value
    # and every individual value (logit-normal on the interval instead of log-normal)
    bounds: Mapping[str, tuple[float, float]] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        names = list(self.model.parameters)
        for k, ab in self.bounds.items():
            if k not in self.iiv:
                raise ValueError(f"bounds name {k!r}, which is not an estimated parameter with "
                                 f"IIV ({list(self.iiv)})")
            lo, hi = (float(v) for v in ab)
            dom = self.model.parameters[k].domain
            inside = {"positive": lo >= 0, "unit": lo >= 0 and hi <= 1}.get(dom, True)
            if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi and inside):
                raise ValueError(f"bounds of {k!r} must be finite, lower < upper and inside "
                                 f"its domain ({dom}), not {list(ab)}")
        for k in self.iiv:
            if k not in names:
                raise ValueError(f"iiv names unknown parameter {k!r}; parameters are {names}")
        for k in self.fixed:
            if k not in names:
                raise ValueError(f"fixed names unknown parameter {k!r}; parameters are {names}")
            if k in self.iiv:
                raise ValueError(f"parameter {k!r} is both fixed and given IIV")
        for blk in self.omega_blocks:
            for k in blk:
                if k not in self.iiv:
                    raise ValueError(f"omega block member {k!r} has no IIV")
        for e in self.covariates:
            if e.parameter not in self.iiv:
                raise ValueError(
                    f"covariate effect on {e.parameter!r}: only parameters with IIV can carry "
                    "covariate effects in this estimator"
                )
        for ep in self.endpoints:
            if ep.output not in self.model.outputs:
                raise ValueError(
                    f"endpoint output {ep.output!r} is not an output of {self.model.name} "
                    f"({list(self.model.outputs)})"
                )

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(interval_domain(*self.bounds[k]) if k in self.bounds
                     else self.model.parameters[k].domain for k in self.iiv)

    def omega_mask(self) -> np.ndarray:
        """Boolean (d, d): which Omega elements are estimated (diagonal + blocks)."""
        d = len(self.iiv)
        mask = np.eye(d, dtype=bool)
        for blk in self.omega_blocks:
            ix = [self.iiv.index(k) for k in blk]
            mask[np.ix_(ix, ix)] = True
        return mask

    def n_sigma(self) -> int:
        return sum(ERROR_MODELS[e.error] for e in self.endpoints)

    def design(self, covariates: Mapping[str, np.ndarray], n: int) -> list[np.ndarray]:
        """Per parameter j, the design matrix X_j (N, 1 + k_j): intercept and covariate columns."""
        out = []
        for name in self.iiv:
            cols = [np.ones(n)]
            for e in self.covariates:
                if e.parameter != name:
                    continue
                if e.covariate not in covariates:
                    raise ValueError(
                        f"covariate {e.covariate!r} (effect on {name}) is not in the data; "
                        f"data covariates: {list(covariates)}"
                    )
                x = np.asarray(covariates[e.covariate], float)
                if type(e).__name__ == "PowerEffect":
                    if np.any(x <= 0):
                        raise ValueError(f"power effect of {e.covariate!r} needs positive values")
                    cols.append(np.log(x / e.ref))
                elif type(e).__name__ == "ExpEffect":
                    cols.append(x - e.ref)
                else:
                    for lev in range(1, len(e.coefs) + 1):
                        cols.append((x == lev).astype(float))
            out.append(np.stack(cols, axis=1))
        return out

    def design_matrix(self, data: FitData) -> np.ndarray:
        """X (N, d, P): per subject and parameter, the intercept and covariate columns
        (zero-padded to the longest)."""
        cols = self.design(data.covariates, data.n_subjects)
        P = max(c.shape[1] for c in cols)
        X = np.zeros((data.n_subjects, len(cols), P))
        for j, c in enumerate(cols):
            X[:, j, : c.shape[1]] = c
        return X

    def theta_from_phi(self, phi: jnp.ndarray) -> dict[str, jnp.ndarray]:
        """Structural parameters of one subject from its phi (d,)."""
        base = {k: p.default for k, p in self.model.parameters.items()} | dict(self.fixed)
        th = {k: jnp.asarray(v, dtype=float) for k, v in base.items()}
        for j, (k, dom) in enumerate(zip(self.iiv, self.domains)):
            th[k] = from_unconstrained(dom, phi[j])
        return th

    def phi_from_theta(self, theta: Mapping[str, float]) -> np.ndarray:
        return np.array(
            [float(to_unconstrained(d, float(theta[k]))) for k, d in zip(self.iiv, self.domains)]
        )


def record_loglik(kind_codes, data_i, f, sigma_add, sigma_prop, log_only=False):
    """:func:`residual_loglik` of one subject's records (T,), with the per-endpoint error kinds
    and SDs (E,) picked by each record's endpoint."""
    ep = data_i["endpoint"]
    return residual_loglik(kind_codes[ep], data_i["dv"], f, data_i["cens"], data_i["limit"],
                           sigma_add[ep], sigma_prop[ep], data_i["mask"], log_only)


def subject_loglik(stat, predict_one, phi, data_i, sigma_add, sigma_prop, kind_codes):
    """log p(y_i | phi_i, sigma) of one subject (M3 included); -inf if the solve failed.

    ``predict_one(phi, data_i) -> (f (T,), ok)``.
    """
    f, ok = predict_one(phi, data_i)
    ll = record_loglik(kind_codes, data_i, f, sigma_add, sigma_prop).sum()
    return jnp.where(ok & jnp.isfinite(ll), ll, -jnp.inf)


def forward_substitution(L, x):
    """L^-1 x for a lower-triangular L (d, d) and x (..., d), unrolled over d (meant for the
    handful of random effects): plain XLA operations. A LAPACK solve runs its batch on the thread
    pool and, with each CPU core a device, has deadlocked a sharded program (jax 0.10)."""
    d = L.shape[-1]
    z = []
    for i in range(d):
        acc = x[..., i]
        for j in range(i):
            acc = acc - L[i, j] * z[j]
        z.append(acc / L[i, i])
    return jnp.stack(z, -1)


def eta_logprior(eta, omega_chol):
    """log N(eta; 0, Omega) with Omega = L L^T."""
    d = eta.shape[-1]
    z = forward_substitution(omega_chol, eta)
    return -0.5 * jnp.sum(z**2, -1) - jnp.sum(jnp.log(jnp.diag(omega_chol))) - 0.5 * d * jnp.log(2 * jnp.pi)


def sigma_layout(endpoints: Sequence[Endpoint]):
    """Which residual parameters each endpoint has: (uses_add (E,), uses_prop (E,)). The free
    residual parameters are ordered: the additive SDs of the endpoints that have one, then the
    proportional ones."""
    add = np.array([e.error in ("log_additive", "additive", "combined") for e in endpoints])
    prop = np.array([e.error in ("proportional", "combined") for e in endpoints])
    return add, prop


def sigma_positions(endpoints: Sequence[Endpoint]) -> tuple[np.ndarray, np.ndarray]:
    """Per endpoint, the position of its additive and of its proportional SD among the free
    residual parameters (:func:`sigma_layout`'s order: the additive SDs, then the proportional
    ones); -1 where it has none."""
    add, prop = sigma_layout(endpoints)
    pos_a = np.where(add, np.cumsum(add) - 1, -1)
    pos_p = np.where(prop, add.sum() + np.cumsum(prop) - 1, -1)
    return pos_a, pos_p


def sigma_per_endpoint(endpoints: Sequence[Endpoint], sigma):
    """(sigma_add (E,), sigma_prop (E,)) from the free residual parameters ``sigma`` (natural
    scale, in :func:`sigma_layout`'s order); 1 where an endpoint has no such parameter. Numpy
    arrays for a numpy ``sigma`` (host-side set-up: no device program)."""
    xp = np if isinstance(sigma, np.ndarray) else jnp
    sigma = xp.asarray(sigma)
    return tuple(xp.where(pos >= 0, sigma[np.maximum(pos, 0)], 1.0)
                 for pos in sigma_positions(endpoints))


def kind_codes(endpoints: Sequence[Endpoint]) -> np.ndarray:
    codes = {"log_additive": 0, "additive": 1, "proportional": 2, "combined": 3}
    return np.array([codes[e.error] for e in endpoints])


@dataclasses.dataclass(frozen=True)
class SolverSettings:
    """How ODE models are solved inside a fit (closed-form models ignore it)."""

    solver: object = None
    rtol: float = 1e-6
    atol: float = 1e-9
    max_steps: int = 4096


def make_predictor(stat: StatModel, settings: SolverSettings = SolverSettings(), *,
                   status: bool = False):
    """``predict_one(phi (d,), data_i) -> (f (T,), ok)``: predictions of one subject (with
    ``status=True`` the solver's :class:`~cartkin._solve.Status` code instead of ``ok``)."""
    import diffrax as dfx

    from ._models.base import ClosedFormModel
    from ._solve import Status, solve_patient

    model = stat.model
    solver = settings.solver
    if solver is None and not isinstance(model, ClosedFormModel):
        solver = dfx.Kvaerno5() if getattr(model, "stiff", False) else dfx.Tsit5()
    outputs = [e.output for e in stat.endpoints]
    want_status = status

    def predict_one(phi, data_i):
        theta = stat.theta_from_phi(phi)
        controller = dfx.PIDController(rtol=settings.rtol, atol=settings.atol)
        _, out, code = solve_patient(
            model, theta, data_i["time"], data_i["ev_time"], data_i["ev_dose"],
            data_i["ev_log_effect"], solver=solver, controller=controller,
            max_steps=settings.max_steps,
        )
        F = jnp.stack([out[o] for o in outputs])  # (n_endpoints, T)
        f = F[data_i["endpoint"], jnp.arange(F.shape[1])]
        return f, (code if want_status else code == Status.OK)

    return predict_one


def make_draws_predictor(stat: StatModel, settings: SolverSettings = SolverSettings()):
    """``predict_draws(phi (M, d), data_i) -> (f (M, T), status (M,))``: M parameter vectors of
    one subject (forward only: SAEM's kernels, importance sampling); ``status`` holds the
    solver's :class:`~cartkin._solve.Status` codes (0: solved).

    ODE models without an explicit ``settings.solver`` are solved by the batched Rosenbrock
    solver of :mod:`cartkin._batched` with the M draws innermost (4-5x fewer seconds per solve
    than a vmapped diffrax solve of the Stein ODE form); closed-form models and explicit diffrax
    solvers vmap :func:`make_predictor`. Map it over subjects with :func:`map_subjects`.
    """
    from ._models.base import ClosedFormModel

    model = stat.model
    if isinstance(model, ClosedFormModel) or settings.solver is not None:
        predict_draws = jax.vmap(make_predictor(stat, settings, status=True), in_axes=(0, None))
        # a closed form may be split over devices; a diffrax solve may call LAPACK (an implicit
        # solver's linear solves), which a program split over host devices must not
        predict_draws.split = isinstance(model, ClosedFormModel)
        if isinstance(model, ClosedFormModel) and model.elementwise and settings.solver is None:
            predict_draws.draws_last = _closed_form_draws_last(stat)
        return predict_draws

    from ._batched import solve_batch

    outputs = [e.output for e in stat.endpoints]

    def predict_many(phi, data, rtol=None):
        """phi (G, M, d) of G subjects (data: leading axis G) -> (f (G, M, T), status (G, M)):
        all G x M solves in one loop of lanes, each lane with its subject's saved times and
        doses; ``rtol`` (a traced scalar may be given: one program for several tolerances)
        replaces the settings' relative tolerance."""
        G, M = phi.shape[:2]
        theta = jax.vmap(stat.theta_from_phi)(phi.reshape(G * M, -1))
        # the solver saves at strictly increasing times: a repeated time (two endpoints sampled
        # together, padding) is read from its first occurrence, and its slot in the grid moves
        # just past the last time
        t = data["time"]
        T = t.shape[1]
        idx = jnp.arange(T)
        dup = jnp.concatenate([jnp.zeros((G, 1), bool), t[:, 1:] <= t[:, :-1]], axis=1)
        first = jax.lax.cummax(jnp.where(dup, 0, idx), axis=1)
        grid = jnp.where(dup, t[:, -1:] + 1e-3 * (1 + idx), t)
        order = jnp.argsort(grid, axis=1)
        where = jnp.take_along_axis(jnp.argsort(order, axis=1), first, axis=1)

        def lanes_of(a):  # per subject -> per lane (subject-major)
            return jnp.repeat(a, M, axis=0, total_repeat_length=G * M)

        _, out, status = solve_batch(
            model, theta, lanes_of(jnp.take_along_axis(grid, order, axis=1)),
            lanes_of(data["ev_time"]), lanes_of(data["ev_dose"]), lanes_of(data["ev_log_effect"]),
            rtol=settings.rtol if rtol is None else rtol, atol=settings.atol,
            max_steps=settings.max_steps,
        )
        F = jnp.stack([out[o] for o in outputs], axis=1).reshape(G, M, len(outputs), T)
        f = jax.vmap(lambda F_g, w, ep: F_g[:, :, w][:, ep, idx])(F, where, data["endpoint"])
        return f, status.reshape(G, M)

    def predict_draws(phi, data_i):
        f, status = predict_many(phi[None], jax.tree.map(lambda a: a[None], data_i))
        return f[0], status[0]

    # an adaptive loop runs until its slowest lane is done: group subjects so that one loop
    # carries about this many lanes. Measured on the Stein ODE form on the CPU, 200 subjects x
    # 250 importance-sampling draws (t with 4 degrees of freedom): 8.8 us per solve with one
    # subject (250 lanes) per loop, 9.2 with 500, 12.6 with 1,000 (the heavy-tailed draws make
    # stragglers); all 50,000 in one loop was 2.4x slower than 1,000. A GPU needs wide loops.
    # An explicit pair (Dormand-Prince 5(4) in this same loop) took 28 us per solve on those draws,
    # and 9 of 25,000 ran out of steps: the t tails reach decline rates that make it stiff.
    predict_draws.lanes = 256 if jax.default_backend() == "cpu" else 1 << 17
    predict_draws.many = predict_many
    predict_draws.rtol = settings.rtol  # (predict_many's default)
    predict_draws.split = True  # its linear algebra is unrolled: no LAPACK call
    return predict_draws


def _closed_form_draws_last(stat: StatModel):
    """``(phi (M, d), data_i) -> (f (T, M), status (M,))`` of an element-wise closed form: the
    solution at times (T, 1) with parameters (M,), the draws on the last axis (a subject's 250
    draws of the Stein closed form in 2.6 instead of 4.8 ms on one core against the solution
    mapped over the draws). ``data_i``'s time and endpoint may also be (T, M), a column per
    draw: SAEM's E-step passes its subjects so, one chain each. Status as
    :func:`~cartkin._solve.solve_patient` gives it: NONFINITE where any output is not finite."""
    from ._solve import Status

    outputs = [e.output for e in stat.endpoints]

    def draws_last(phi, data_i):
        theta = jax.vmap(stat.theta_from_phi)(phi)
        t, ep = jnp.asarray(data_i["time"], float), data_i["endpoint"]
        T, M = t.shape[0], phi.shape[0]
        if t.ndim == 1:  # one subject's times for every draw
            t, ep = t[:, None], ep[:, None]
        out = {k: jnp.broadcast_to(v, (T, M)) for k, v in stat.model.solution(t, theta).items()}
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v), axis=0) for v in out.values()]), 0)
        F = jnp.stack([out[o] for o in outputs])  # (n_endpoints, T, M)
        f = jnp.take_along_axis(F, jnp.broadcast_to(ep, (T, M))[None], axis=0)[0]
        return f, jnp.where(finite, jnp.int32(Status.OK), jnp.int32(Status.NONFINITE))

    return draws_last


def map_subjects(predict_draws, phi, data, draws_last: bool = False, rtol=None):
    """``predict_draws`` over subjects: phi (N, M, d), data with leading axis N -> (f (N, M, T),
    status (N, M)); ``draws_last``: f (N, T, M), computed so where the predictor can (an
    element-wise closed form: ``predict_draws.draws_last``). ``rtol``: the relative tolerance
    of the batched solver's solves instead of the predictor's own (other predictors ignore
    it)."""
    lanes = getattr(predict_draws, "lanes", None)
    if lanes is None:
        if draws_last and hasattr(predict_draws, "draws_last"):
            return jax.vmap(predict_draws.draws_last)(phi, data)
        f, status = jax.vmap(predict_draws)(phi, data)
        return (jnp.swapaxes(f, 1, 2) if draws_last else f), status
    # groups of G subjects, each group's G x M solves one loop of lanes (predict_draws.many).
    # Not a vmap of the solver over subjects: that batches its while_loop, which cost tracing
    # time and a select of every carry at every step (one subject of 250 draws per loop: 7.9 ->
    # 6.6 us per solve without it; SAEM's E-step of the Stein ODE form, 100 subjects x 1 chain
    # per loop: 15% fewer seconds)
    N, M = phi.shape[:2]
    G = max(1, min(N, lanes // M))
    n_groups = -(-N // G)

    def grouped(a):  # (N, ...) -> (n_groups, G, ...), padded with copies of the last subject
        a = jnp.concatenate([a, jnp.repeat(a[-1:], n_groups * G - N, axis=0)]) if n_groups * G > N else a
        return a.reshape((n_groups, G) + a.shape[1:])

    xs = jax.tree.map(grouped, (phi, data))
    if n_groups == 1:
        f, status = predict_draws.many(*jax.tree.map(lambda a: a[0], xs), rtol)
    else:
        f, status = jax.lax.map(lambda x: predict_draws.many(*x, rtol), xs)
    f = f.reshape((n_groups * G,) + f.shape[-2:])[:N]
    return (jnp.swapaxes(f, 1, 2) if draws_last else f), status.reshape(n_groups * G, M)[:N]


def data_arrays(data: FitData) -> dict[str, jnp.ndarray]:
    """The per-subject arrays that ``predict_one`` and ``subject_loglik`` read (leading axis N)."""
    # put from the host (jnp.asarray is a small program per shape and dtype)
    names = ("time", "dv", "cens", "limit", "endpoint", "mask", "ev_time", "ev_dose",
             "ev_log_effect")
    return {k: jax.device_put(np.asarray(getattr(data, k))) for k in names}
