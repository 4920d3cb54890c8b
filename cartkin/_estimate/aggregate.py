r"""Population fits to published aggregate kinetics: quantiles over time and NCA moments.

Most published CAR-T kinetics are summaries (medians and IQRs at a few days, or the mean and SD
of Cmax and AUC over n patients), not individual data. This module fits a population model to
them by simulating a large virtual population and matching the reported statistics with a
likelihood that accounts for the size n of the published sample.

**Population.** psi = (typical values on each parameter's natural scale: log, logit for
fractions; log of the between-patient SDs omega). Virtual patient j has parameters
``individual_parameters(model, theta(psi), omega(psi) * z_j)`` with z_j ~ N(0, I) drawn once per
fit from ``fold_in(PRNGKey(seed), j)`` (common random numbers): the objective is a deterministic,
smooth function of psi, and patient j is the same whatever the size M of the population.

**Simulated statistics.** Quantiles of log C at a day (or of log NCA metrics) are those of the
simulated distribution smoothed by a Gaussian kernel of width h = 0.9 sd M^(-1/5) (Silverman's
rule): the root of the kernel CDF, found by Newton steps from the sorted sample quantile. The
sorted quantile itself is piecewise differentiable, but its derivative is that of one virtual
patient's value (a noisy estimate of the quantile's derivative); the kernel quantile's derivative
is the kernel-weighted mean of the derivatives of the patients near it (implicit function
theorem), smooth enough for L-BFGS and for an exact Hessian. Means, SDs and the third and fourth
central moments are plain population averages.

**Likelihood.** For a published sample of n patients:

* sample quantiles p_1..p_k of one quantity (median and IQR of log C at one day) are jointly
  normal (asymptotically) with mean q_p and covariance p_i (1 - p_j) / (n f(q_i) f(q_j)),
  p_i <= p_j, with f the kernel density of the simulated population at the quantile;
* a sample mean and SD s of one quantity are compared as (mean, s^2), whose first two
  moments are exact: E = (mu, sigma^2), Var(mean) = sigma^2 / n,
  Var(s^2) = (mu_4 - sigma^4 (n - 3)/(n - 1)) / n and Cov(mean, s^2) = mu_3 / n, with the
  central moments mu_k of the simulated population (only the normal shape is approximate;
  the delta method for s itself overstates its SD by about 15% for a skewed AUC at n = 97).

**Estimation.** Iteratively reweighted generalised least squares: with the covariances C
held at the current psi, minimise r' C^-1 r / 2 (r: published minus simulated statistics) with
L-BFGS, recompute C at the new psi, repeat to the fixed point J' C(psi)^-1 r = 0. The full
Gaussian -log L (with log det C(psi)) is reported but not maximised: its log-det term pulls the
between-patient SDs down by O(1/n) (up to half an SE at n = 50; docs/aggregate.md). Standard
errors come from the inverse Hessian of the objective at the fixed point (forward over reverse
mode through the closed form, as ``jax.hessian``; J' C^-1 J at a perfect fit); r' C^-1 r is a
chi-square goodness of fit on (statistics - parameters) degrees of freedom.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._models.base import Model
from .._population import from_unconstrained, individual_parameters, to_unconstrained

#: NCA metrics computed per virtual patient, with the horizon of the AUCs (days)
AUC_HORIZONS = {"auc_0_28d": 28.0, "auc_0_6m": 365.25 / 2}
NCA_METRICS = ("cmax", "tmax", *AUC_HORIZONS)
_LOG2PI = float(np.log(2 * np.pi))


# --------------------------------------------------------------------------- published statistics
@dataclasses.dataclass(frozen=True)
class Group:
    """Published statistics of one quantity from one sample of n patients.

    ``quantity`` is ``"C@<day>"`` (the level at a day) or an NCA metric (``NCA_METRICS``);
    ``kind`` is ``"quantiles"`` (``labels`` are probabilities, compared on the log scale) or
    ``"moments"`` (``labels`` among ``"mean"``, ``"sd"``, natural scale). A group with
    ``fitted=False`` is simulated and compared but not part of the likelihood.
    """

    quantity: str
    kind: str
    labels: tuple
    observed: tuple[float, ...]
    n: float
    unit: str = ""
    source: str = ""
    fitted: bool = True

    @property
    def day(self) -> float | None:
        return float(self.quantity[2:]) if self.quantity.startswith("C@") else None


# --------------------------------------------------------------------------- virtual population
class AggregateProblem(eqx.Module):
    """The objective of an aggregate fit: a model, its fixed and estimated parts, the draws.

    ``estimate`` names the typical values fitted, ``estimate_iiv`` the omegas fitted; the others
    are held at ``theta_fixed`` / ``omega_fixed`` (omega as SDs on the natural scale).
    """

    model: Model
    groups: tuple[Group, ...] = eqx.field(static=True)
    estimate: tuple[str, ...] = eqx.field(static=True)
    estimate_iiv: tuple[str, ...] = eqx.field(static=True)
    theta_fixed: dict
    omega_fixed: dict
    z: jax.Array

    @property
    def names(self) -> tuple[str, ...]:
        """Labels of psi, in order."""
        return tuple(f"typical:{k}" for k in self.estimate) + tuple(
            f"iiv_sd:{k}" for k in self.estimate_iiv)

    @property
    def n_virtual(self) -> int:
        return int(self.z.shape[0])

    def psi_from(self, theta: Mapping[str, float], omega_sd: Mapping[str, float]) -> jax.Array:
        """psi from typical values and omega SDs (natural scale)."""
        u = [to_unconstrained(self.model.parameters[k].domain, jnp.asarray(theta[k], float))
             for k in self.estimate]
        w = [jnp.log(jnp.asarray(omega_sd[k], float)) for k in self.estimate_iiv]
        return jnp.stack(u + w)

    def unpack(self, psi) -> tuple[dict, dict]:
        """(typical values, omega SDs), each for every model parameter."""
        theta = dict(self.theta_fixed)
        omega = dict(self.omega_fixed)
        for i, k in enumerate(self.estimate):
            theta[k] = from_unconstrained(self.model.parameters[k].domain, psi[i])
        for i, k in enumerate(self.estimate_iiv):
            omega[k] = jnp.exp(psi[len(self.estimate) + i])
        return theta, omega

    def patients(self, psi) -> dict[str, jax.Array]:
        """Every virtual patient's parameters, ``{name: (M,)}``."""
        theta, omega = self.unpack(psi)
        names = tuple(self.model.parameters)
        sd = jnp.stack([jnp.asarray(omega[k], float) for k in names])
        return jax.vmap(lambda z: individual_parameters(self.model, theta, sd * z, names))(self.z)

    def quantities(self, psi) -> dict[str, jax.Array]:
        """Each group's quantity per virtual patient (natural scale), ``{quantity: (M,)}``."""
        th = self.patients(psi)
        out = {}
        days = sorted({g.day for g in self.groups if g.day is not None})
        if days:
            logc = log_level(self.model, jnp.asarray(days), th)
            for i, d in enumerate(days):
                out[f"C@{d:g}"] = jnp.exp(logc[:, i])
        for g in self.groups:
            if g.day is None and g.quantity not in out:
                out[g.quantity] = nca_metric(g.quantity, th)
        return out

    def simulated_statistics(self, psi) -> list[tuple[jax.Array, jax.Array]]:
        """Per group: the simulated statistics (log scale for quantiles, variance for an SD)
        and their covariance for a sample of the group's n. Groups with the same statistics
        are computed together (vmap: one copy of the computation to compile)."""
        q = self.quantities(psi)
        buckets: dict = {}
        for i, g in enumerate(self.groups):
            buckets.setdefault((g.kind, g.labels), []).append(i)
        res: list = [None] * len(self.groups)
        for (kind, labels), idx in buckets.items():
            x = jnp.stack([q[self.groups[i].quantity] for i in idx])
            n = jnp.asarray([self.groups[i].n for i in idx], float)
            if kind == "quantiles":
                ps = jnp.asarray(labels, float)
                mean, cov = jax.vmap(lambda v, m: quantile_stats(jnp.log(v), ps, m))(x, n)
            else:
                mean, cov = jax.vmap(lambda v, m: moment_stats(v, labels, m))(x, n)
            for j, i in enumerate(idx):
                res[i] = (mean[j], cov[j])
        return res

    def covariances(self, psi) -> tuple[jax.Array, ...]:
        """Each group's sampling covariance at ``psi`` (the weights of :meth:`objective`)."""
        return tuple(c for _, c in self.simulated_statistics(psi))

    def objective(self, psi, covs) -> jax.Array:
        """Half the generalised least-squares distance r' C^-1 r / 2 between the published
        and the simulated statistics, with the sampling covariances C held at ``covs``."""
        total = 0.0
        for g, (mean, _), c in zip(self.groups, self.simulated_statistics(psi), covs,
                                   strict=True):
            if g.fitted:
                chol = jnp.linalg.cholesky(c)
                r = jax.scipy.linalg.solve_triangular(chol, observed_vector(g) - mean, lower=True)
                total = total + 0.5 * (r @ r)
        return total

    def nll(self, psi) -> jax.Array:
        """-log L of the published statistics (normal approximations, constants included)."""
        total = 0.0
        for g, (mean, cov) in zip(self.groups, self.simulated_statistics(psi), strict=True):
            if g.fitted:
                total = total + gaussian_nll(observed_vector(g), mean, cov)
        return total


def make_problem(model: Model, groups: Sequence[Group], *, estimate: Sequence[str],
                 estimate_iiv: Sequence[str], theta_fixed: Mapping[str, float],
                 omega_fixed: Mapping[str, float], n_virtual: int, seed: int) -> AggregateProblem:
    """An :class:`AggregateProblem` with M = ``n_virtual`` standard-normal draws per parameter."""
    key = jax.random.PRNGKey(seed)
    k = len(model.parameters)
    z = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (k,)))(
        jnp.arange(n_virtual))
    return AggregateProblem(
        model=model, groups=tuple(groups), estimate=tuple(estimate),
        estimate_iiv=tuple(estimate_iiv),
        theta_fixed={k: jnp.asarray(v, float) for k, v in theta_fixed.items()},
        omega_fixed={k: jnp.asarray(v, float) for k, v in omega_fixed.items()}, z=z)


def observed_vector(g: Group) -> jax.Array:
    """The published statistics of a group on the scale the likelihood compares them: log for
    quantiles, the square for an SD, natural for a mean."""
    obs = jnp.asarray(g.observed, float)
    if g.kind == "quantiles":
        return jnp.log(obs)
    return jnp.where(jnp.asarray([lab == "sd" for lab in g.labels]), obs**2, obs)


def log_level(model: Model, days, th) -> jax.Array:
    """log of the model's (first) output at ``days`` for every patient, (M, T)."""
    if hasattr(model, "log_solution"):
        return jax.vmap(lambda p: model.log_solution(days, p))(th)
    out = next(iter(model.outputs))
    return jax.vmap(lambda p: jnp.log(model.solution(days, p)[out]))(th)


def nca_metric(name: str, th) -> jax.Array:
    """An NCA metric per patient from the exact Stein 2019 curve (analytic; no sampling grid).

    Cmax and Tmax are the parameters of the same name (the curve's peak); AUC(0, T) integrates
    the expansion ``C0 e^{rho t}`` up to min(Tmax, T) and the biexponential decline after it.
    """
    if name == "cmax":
        return th["Cmax"]
    if name == "tmax":
        return th["Tmax"]
    horizon = AUC_HORIZONS[name]
    lf = jnp.log(th["foldx"])
    rho = lf / th["Tmax"]
    t1 = jnp.minimum(th["Tmax"], horizon)
    s = jnp.maximum(horizon - th["Tmax"], 0.0)
    c0 = th["Cmax"] / th["foldx"]
    expansion = c0 * jnp.expm1(rho * t1) / rho
    fb = th["FB"]
    decline = th["Cmax"] * ((1 - fb) * -jnp.expm1(-th["alpha"] * s) / th["alpha"]
                            + fb * -jnp.expm1(-th["beta"] * s) / th["beta"])
    return expansion + decline


# --------------------------------------------------------------------------- simulated statistics
def bandwidth(x) -> jax.Array:
    """Silverman's kernel width 0.9 sd M^(-1/5) of a simulated sample (smooth in x)."""
    return 0.9 * jnp.std(x) * x.shape[0] ** -0.2


@jax.custom_jvp
def kernel_quantile(x, h, ps):
    """Quantiles ``ps`` of the distribution of ``x`` smoothed by a N(0, h^2) kernel.

    The root of F_h(q) = mean Phi((q - x_j)/h) = p, by Newton steps from the sorted sample
    quantile. Its derivative (implicit function theorem) is the kernel-weighted mean of the
    derivatives of the sample values near the quantile:
    dq = sum_j phi_j (dx_j + u_j dh) / sum_j phi_j + dp / f_h(q), u_j = (q - x_j)/h.
    """
    x, h, ps = jax.lax.stop_gradient((x, h, ps))

    def newton(_, q):
        u = (q[:, None] - x[None, :]) / h
        F = jnp.mean(jax.scipy.stats.norm.cdf(u), axis=1)
        f = jnp.mean(jax.scipy.stats.norm.pdf(u), axis=1) / h
        return q - jnp.clip((F - ps) / f, -2 * h, 2 * h)

    return jax.lax.fori_loop(0, 12, newton, jnp.quantile(x, ps))


@kernel_quantile.defjvp
def _kernel_quantile_jvp(primals, tangents):
    x, h, ps = primals
    dx, dh, dp = tangents
    q = kernel_quantile(x, h, ps)
    u = (q[:, None] - x[None, :]) / h
    w = jax.scipy.stats.norm.pdf(u)
    sw = jnp.sum(w, axis=1)
    dq = (w @ dx + jnp.sum(w * u, axis=1) * dh + x.shape[0] * h * dp) / sw
    return q, dq


def kernel_density(x, h, q):
    """The N(0, h^2) kernel density estimate of the distribution of ``x`` at points ``q``."""
    return jnp.mean(jax.scipy.stats.norm.pdf((q[:, None] - x[None, :]) / h), axis=1) / h


def smooth_quantile(x, ps, h=None):
    """Kernel quantiles of ``x`` at ``ps`` (Silverman width unless ``h``) and the density there."""
    h = bandwidth(x) if h is None else h
    q = kernel_quantile(x, h, ps)
    return q, kernel_density(x, h, q)


def quantile_stats(logx, ps, n):
    """Simulated quantiles of log x and the asymptotic covariance of n-sample quantiles."""
    q, f = smooth_quantile(logx, ps)
    lo, hi = jnp.minimum(ps[:, None], ps[None, :]), jnp.maximum(ps[:, None], ps[None, :])
    cov = lo * (1 - hi) / (n * f[:, None] * f[None, :])
    return q, cov


def moment_stats(x, labels, n):
    """Simulated mean and/or variance of x and the exact covariance of the n-sample mean and
    variance s^2 (labels ``"mean"``, ``"sd"``; an SD is compared as its square)."""
    mu = jnp.mean(x)
    d = x - mu
    m2, m3, m4 = jnp.mean(d**2), jnp.mean(d**3), jnp.mean(d**4)
    var_s2 = (m4 - m2**2 * (n - 3) / (n - 1)) / n
    full_mean = jnp.stack([mu, m2])
    full_cov = jnp.array([[m2 / n, m3 / n], [m3 / n, var_s2]])
    idx = jnp.asarray([("mean", "sd").index(lab) for lab in labels])
    return full_mean[idx], full_cov[jnp.ix_(idx, idx)]


def gaussian_nll(y, mean, cov) -> jax.Array:
    """-log N(y; mean, cov)."""
    chol = jnp.linalg.cholesky(cov)
    r = jax.scipy.linalg.solve_triangular(chol, y - mean, lower=True)
    return 0.5 * (r @ r) + jnp.sum(jnp.log(jnp.diag(chol))) + 0.5 * len(y) * _LOG2PI


# --------------------------------------------------------------------------- fit
@dataclasses.dataclass(frozen=True)
class AggregateResult:
    """An aggregate fit: psi at the estimate, its covariance and the convergence record.

    ``statistics`` are the simulated statistics and their sampling covariances at ``psi``
    (per group, as :meth:`AggregateProblem.simulated_statistics`); ``covs`` the covariances
    alone (the weights at the fixed point);
    ``chi2`` = r' C^-1 r there, ``df`` the number of fitted statistics minus len(psi);
    ``nll`` is the Gaussian -log L of the published statistics (constants and log det C
    included). ``covariance`` is the inverse Hessian of the objective at ``psi`` (NaN if it is
    not positive definite); ``newton_decrement`` = g' H^-1 g / 2, the objective still to gain;
    ``mc_se`` the Monte Carlo SE of psi (:func:`monte_carlo_se`) once computed.
    """

    problem: AggregateProblem
    psi: np.ndarray
    statistics: tuple
    covs: tuple
    chi2: float
    df: int
    nll: float
    grad: np.ndarray
    hessian: np.ndarray
    covariance: np.ndarray
    iterations: int
    reweightings: int
    newton_decrement: float
    converged: bool
    trace: np.ndarray
    mc_se: np.ndarray | None = None

    @property
    def se(self) -> np.ndarray:
        return np.sqrt(np.diag(self.covariance))

    @property
    def grad_norm(self) -> float:
        return float(np.max(np.abs(self.grad)))


def fit_aggregate(problem: AggregateProblem, psi0, *, optimizer=None, max_iter: int = 500,
                  gtol: float = 1e-6, max_reweight: int = 20, xtol: float = 1e-7,
                  callback=None) -> AggregateResult:
    """Iteratively reweighted generalised least squares, then the Hessian at the estimate.

    Each round holds the sampling covariances C at the current psi and minimises
    ``problem.objective`` (deterministic and smooth in psi) with ``optimizer`` (an
    ``optax.GradientTransformation``; default ``optax.lbfgs()`` with its zoom line search)
    until max |gradient| < ``gtol`` or ``max_iter`` steps; rounds repeat until psi moves less
    than ``xtol``. The fixed point solves J' C(psi)^-1 (observed - simulated) = 0: unlike the
    full Gaussian likelihood, whose log det C(psi) term pulls the between-patient SDs down by
    O(1/n), it returns the truth when the published statistics are the population's own.
    Converged: the last round met ``gtol`` and ``xtol``, the gradient at the fixed point is
    below ``gtol``, and the Hessian is positive definite.
    """
    import optax

    opt = optax.with_extra_args_support(optimizer or optax.lbfgs())

    @eqx.filter_jit
    def step(problem, covs, x, state):
        fun = lambda y: problem.objective(y, covs)  # noqa: E731
        value, grad = optax.value_and_grad_from_state(fun)(x, state=state)
        updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=fun)
        return optax.apply_updates(x, updates), state, value, grad

    def init(x):  # strongly typed: the state after a step must not trigger a recompilation
        return jax.tree.map(lambda a: jnp.array(a, dtype=a.dtype), opt.init(x))

    statistics = eqx.filter_jit(lambda p, x: p.simulated_statistics(x))
    x = jnp.asarray(psi0, float)
    trace, total, inner_ok, shift = [], 0, False, np.inf
    rounds = 0
    for rounds in range(1, max_reweight + 1):
        covs = tuple(c for _, c in statistics(problem, x))
        start, state = x, init(x)
        inner_ok = False
        for _ in range(max_iter):
            x_new, state, value, grad = step(problem, covs, x, state)
            total += 1
            trace.append((rounds, float(value), float(jnp.max(jnp.abs(grad)))))
            if callback is not None:
                callback(total, trace[-1])
            if not np.isfinite(trace[-1][1]):
                raise ValueError(f"the objective is not finite at iteration {total} "
                                 f"(psi {np.asarray(x)})")
            if trace[-1][2] < gtol:
                inner_ok = True
                break
            x = x_new
        shift = float(jnp.max(jnp.abs(x - start)))
        if shift < xtol:
            break
    stats = statistics(problem, x)
    covs = tuple(c for _, c in stats)
    value, grad, hess = (np.asarray(a) for a in _derivatives(problem, covs, x))
    hess = 0.5 * (hess + hess.T)
    grad = np.asarray(grad)
    pd = bool(np.all(np.linalg.eigvalsh(hess) > 0))
    cov = np.linalg.inv(hess) if pd else np.full_like(hess, np.nan)
    dec = float(0.5 * grad @ cov @ grad) if pd else float("inf")
    fitted = [g.fitted for g in problem.groups]
    n_stats = sum(len(g.labels) for g, f in zip(problem.groups, fitted, strict=True) if f)
    nll = sum(float(gaussian_nll(observed_vector(g), m, c))
              for g, (m, c) in zip(problem.groups, stats, strict=True) if g.fitted)
    return AggregateResult(
        problem=problem, psi=np.asarray(x), statistics=tuple(
            (np.asarray(m), np.asarray(c)) for m, c in stats), covs=covs, chi2=2 * float(value),
        df=n_stats - len(x), nll=nll, grad=grad, hessian=hess, covariance=cov,
        iterations=total, reweightings=rounds, newton_decrement=dec,
        converged=bool(pd and inner_ok and shift < xtol and np.max(np.abs(grad)) < gtol),
        trace=np.asarray(trace))


@eqx.filter_jit
def _derivatives(problem: AggregateProblem, covs, x):
    """The objective, its gradient and its Hessian (forward over reverse) at x, one program."""
    (value, grad), lin = jax.linearize(lambda y: jax.value_and_grad(problem.objective)(y, covs), x)
    hess = jax.vmap(lambda e: lin(e)[1])(jnp.eye(x.size, dtype=x.dtype))
    return value, grad, hess


def monte_carlo_se(problem: AggregateProblem, psi, covariance, covs, *,
                   batches: int = 10) -> np.ndarray:
    """Monte Carlo SE of the estimate psi from the finite virtual population.

    The gradient of the objective (weights ``covs``) at ``psi`` is evaluated on ``batches``
    disjoint sub-populations of m = M / batches patients (each repeated ``batches`` times, which
    leaves its distribution unchanged and reuses the compiled program); its variance at size M
    is their variance / batches (simulated statistics have Monte Carlo variance proportional to
    1/M), and the estimate moves by H^-1 times the gradient error:
    Var_MC(psi) = H^-1 Var(g) H^-1.
    """
    m = problem.n_virtual // batches
    psi = jnp.asarray(psi, float)
    g = []
    for b in range(batches):
        z = jnp.tile(problem.z[b * m:(b + 1) * m], (batches, 1))
        z = jnp.concatenate([z, problem.z[: problem.n_virtual - z.shape[0]]])[: problem.n_virtual]
        g.append(np.asarray(_derivatives(eqx.tree_at(lambda p: p.z, problem, z), covs, psi)[1]))
    var_g = np.atleast_2d(np.cov(np.stack(g).T)) / batches
    return np.sqrt(np.diag(covariance @ var_g @ covariance))
