"""The kinetic side of a CRS scenario: a virtual population with parameter uncertainty, and its
simulation on the exposure grid.

:class:`KineticPopulation` holds typical values, between-patient variability (Omega, variances on
each parameter's natural scale), the uncertainty of the typical values (standard errors on the
same scale, or a covariance from a fit) and the tumour-burden parameter, whose variability is the
burden distribution of the population. Draw ``s`` of the typical values comes from
``fold_in(key, s)`` and patient ``i`` of draw ``s`` from ``fold_in(fold_in(key', s), i)``
(:meth:`cartkin._population.Population.sample`), so results do not depend on how draws and
patients are split into batches.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np

from .._compile import jit
from .._models.base import Model
from .._population import (
    LogNormalCovariate,
    Population,
    from_unconstrained,
    individual_parameters,
    to_unconstrained,
)
from .._regimen import Dose, Regimen
from .metrics import final_metrics


@dataclasses.dataclass(frozen=True)
class KineticPopulation:
    """A model's virtual population for CRS predictions.

    Args:
        model: a cartkin ODE model with IL-6, CAR-T and tumour outputs.
        typical: typical values (others: the model's defaults).
        omega: ``{name: variance}`` of the random effects on the natural scale, or
            ``(names, covariance)``; include the burden parameter to give the population a
            burden distribution (log-normal).
        uncertainty: ``{name: standard error}`` of the typical values on the natural scale
            (independent), or ``(names, covariance)``; empty for none.
        burden: the parameter that is the baseline tumour burden (fixed by burden profiles).
        weight: ``(median kg, CV)`` of body weight, used only for doses in cells/kg.
    """

    model: Model
    typical: Mapping[str, float]
    omega: object
    uncertainty: object = dataclasses.field(default_factory=dict)
    burden: str = "B0"
    weight: tuple[float, float] = (70.0, 0.2)

    def __post_init__(self):
        params = self.model.parameters
        omega_names = self.omega if isinstance(self.omega, Mapping) else self.omega[0]
        for what, names in (("typical", self.typical), ("omega", omega_names)):
            unknown = [k for k in names if k not in params]
            if unknown:
                raise ValueError(
                    f"{what} names unknown parameter(s) {unknown} of {self.model.name}"
                )
        if self.burden not in params:
            raise ValueError(
                f"burden parameter {self.burden!r} is not a parameter of {self.model.name}"
            )
        names, cov = self.uncertainty_matrix()
        unknown = [k for k in names if k not in params]
        if unknown:
            raise ValueError(
                f"uncertainty names unknown parameter(s) {unknown} of {self.model.name}"
            )
        if np.any(np.linalg.eigvalsh(cov) < -1e-12) if len(names) else False:
            raise ValueError("the uncertainty covariance must be positive semi-definite")

    def uncertainty_matrix(self):
        u = self.uncertainty
        if isinstance(u, Mapping):
            names = tuple(u)
            return names, np.diag([float(u[k]) ** 2 for k in names])
        names, cov = u
        return tuple(names), np.asarray(cov, float)

    @property
    def has_uncertainty(self) -> bool:
        names, cov = self.uncertainty_matrix()
        return len(names) > 0 and bool(np.any(np.diag(cov) > 0))

    def typical_theta(self) -> dict[str, float]:
        th = self.model.default_theta(**dict(self.typical))
        return {k: float(v) for k, v in th.items()}

    def draw_typical(self, key, draws: int) -> list[dict[str, float]]:
        """``draws`` sets of typical values; draw s depends only on ``key`` and s."""
        base = self.typical_theta()
        names, cov = self.uncertainty_matrix()
        if not len(names):
            return [dict(base) for _ in range(draws)]
        chol = jnp.asarray(np.linalg.cholesky(cov + 1e-300 * np.eye(len(names))))
        z = jax.vmap(lambda s: chol @ jax.random.normal(jax.random.fold_in(key, s), (len(names),)))(
            jnp.arange(draws)
        )
        z = np.asarray(z)
        out = []
        for s in range(draws):
            th = dict(base)
            for j, k in enumerate(names):
                dom = self.model.parameters[k].domain
                th[k] = float(from_unconstrained(dom, to_unconstrained(dom, base[k]) + z[s, j]))
            out.append(th)
        return out

    def population(self, typical: Mapping[str, float]) -> Population:
        wt_median, wt_cv = self.weight
        return Population(
            self.model,
            dict(typical),
            omega=dict(self.omega) if isinstance(self.omega, Mapping) else self.omega,
            covariates={"WT": LogNormalCovariate(wt_median, wt_cv)},
        )


def default_block() -> int:
    """Solves per simulation call: 8,192 on the CPU (memory), 2^20 on a GPU, where a call of
    10 doses x 10^5 patients ran the CRS benchmark's prediction in 0.8 s on an H200."""
    return 8192 if jax.default_backend() == "cpu" else 1 << 20


@dataclasses.dataclass(frozen=True)
class SolveSettings:
    """Exposure grid and solver for the CRS window.

    The saved grid is ``fine_step`` apart up to ``fine_until`` days, then ``step`` apart up to
    ``window``: at high burden IL-6 peaks within hours of the infusion, and a 0.25-day grid read
    those peaks up to 2.4-fold low (Hardiansyah population of the shipped scenario; with 0.05 d
    over the first 2 days the largest error is 10%, the median 0.04%, against a 0.02-day grid).

    ``method`` and ``solver`` are passed to :func:`cartkin.simulate` (``solver=None`` with
    ``method="auto"``: its default for the model). Measured on this window (Hardiansyah
    population, 2 shared CPU cores): cartkin's batched Rosenbrock solver (``method="batched"``,
    rtol 1e-4) about 310 us per solve, a vmapped Tsit5 (rtol 1e-5, stability-limited at about
    830 steps) about 780 us, Kvaerno5 slower still; the batched solver compiles for longer
    (20-40 s), so short runs and the tests use Tsit5.

    ``interpolate`` (batched solver; see :func:`cartkin.simulate`): read the saved grid from the
    solver's continuous extension instead of ending a step on each of its 145 times. Measured
    (one dose of 1e8 cells, 1,024 patients of the shipped scenario, rtol 1e-4, one core): 91 loop
    iterations instead of 192, 1.4x less time per solve with 256 patients per chunk (33 us
    against 47 us), and the log peak IL-6 within 9e-5 of an rtol 1e-10 reference (1.2e-5 with
    steps ending on the grid); diffrax solvers always interpolate.
    """

    window: float = 28.0
    step: float = 0.25
    fine_step: float = 0.05
    fine_until: float = 2.0
    solver: dfx.AbstractSolver | None = dataclasses.field(default_factory=dfx.Tsit5)
    method: str = "auto"
    interpolate: bool = True
    rtol: float = 1e-5
    atol: float = 1e-8
    max_steps: int = 16384
    block: int = dataclasses.field(default_factory=default_block)
    chunk_size: int | None = None
    devices: Sequence | None = None

    def __post_init__(self):
        if not self.window > 0 or not 0 < self.step <= self.window:
            raise ValueError(
                f"exposure window {self.window} d and step {self.step} d must be positive, "
                "step <= window"
            )
        if not 0 < self.fine_step <= self.step or self.fine_until < 0:
            raise ValueError("exposure fine_step must be in (0, step] and fine_until >= 0")
        if self.block < 1:
            raise ValueError(f"block must be a positive number of patients, got {self.block}")

    @property
    def times(self) -> np.ndarray:
        until = min(self.fine_until, self.window)
        fine = np.arange(0.0, until, self.fine_step)
        n = int(round((self.window - until) / self.step))
        coarse = until + self.step * np.arange(n + 1)
        grid = np.unique(np.round(np.r_[fine, coarse, self.window], 12))
        return grid[grid <= self.window + 1e-9]

    def simulate(
        self, model, theta, regimens, weight, outputs=None, on_device=False, order_by=None
    ):
        from .._simulate import simulate

        return simulate(
            model,
            theta,
            self.times,
            list(regimens),
            weight=weight,
            solver=self.solver,
            method=self.method,
            interpolate=self.interpolate,
            rtol=self.rtol,
            atol=self.atol,
            max_steps=self.max_steps,
            chunk_size=self.chunk_size,
            devices=self.devices,
            progress=False,
            outputs=outputs,
            on_device=on_device,
            order_by=order_by,
        )


class BlockSampler:
    """Patients of many draws in one compiled call, identical to
    :meth:`cartkin._population.Population.sample` for each draw.

    Draw ``s`` has typical values ``typicals[s]`` and key ``fold_in(key, s)``; its patient ``i``
    comes from ``fold_in(fold_in(key, s), i)`` exactly as in ``Population.sample``, so a block
    of rows (draw, patient) can mix draws and start anywhere. (Calling ``Population.sample``
    once per draw would compile once per draw.)
    """

    def __init__(self, kin: KineticPopulation, typicals: Sequence[Mapping[str, float]], key):
        pop = kin.population(typicals[0])
        self.names = list(kin.model.parameters)
        self.typ = jnp.asarray([[t[k] for k in self.names] for t in typicals], float)
        self.key = key
        eta_names = pop.eta_names
        self.chol = jnp.asarray(
            np.linalg.cholesky(pop.omega_matrix + 1e-300 * np.eye(len(eta_names)))
        )
        self._fn = _sampler(kin.model, tuple(eta_names), tuple(pop.covariates.items()))

    def rows(self, draw, index):
        """Patients ``index[r]`` of draws ``draw[r]``: ``(theta {name: (R,)}, covariates)``."""
        draw, index = np.asarray(draw, int), np.asarray(index, int)
        r = draw.size
        size = max(64, 1 << (r - 1).bit_length())  # few distinct shapes: few compilations
        pad = np.zeros(size - r, int)
        d, i = np.concatenate([draw, pad]), np.concatenate([index, pad])
        th, cov = self._fn(self.typ[d], self.key, jnp.asarray(d), jnp.asarray(i), self.chol)
        return (
            {k: np.asarray(v)[:r] for k, v in th.items()},
            {k: np.asarray(v)[:r] for k, v in cov.items()},
        )

    def block(self, n: int, lo: int, hi: int):
        """Rows ``lo .. hi-1`` of the flattened (draw, patient) index with ``n`` patients per
        draw: ``(theta, weight (B,), draw (B,))``."""
        flat = np.arange(lo, hi)
        draw, index = flat // n, flat % n
        th, cov = self.rows(draw, index)
        return th, cov["WT"], draw


@functools.lru_cache(maxsize=16)
def _sampler(model, eta_names, cov_items):
    names = list(model.parameters)

    def one(typ_row, key, s, i, chol):
        k = jax.random.fold_in(jax.random.fold_in(key, s), i)
        k_eta, k_cov = jax.random.split(k)
        eta = chol @ jax.random.normal(k_eta, (len(eta_names),))
        covs = {
            c: dist.sample(jax.random.fold_in(k_cov, j)) for j, (c, dist) in enumerate(cov_items)
        }
        theta = {n: typ_row[j] for j, n in enumerate(names)}
        return individual_parameters(model, theta, eta, eta_names, covs, ()), covs

    return jit(jax.vmap(one, in_axes=(0, None, 0, 0, None)), cpu_options=False)


def simulate_block(kin, sampler, settings, regimens, roles, n, lo, hi, burden=None):
    """Solve rows ``lo..hi-1`` at every regimen.

    Returns ``(outputs (D, B, T), ok (D, B), draw (B,), theta, weight)``; outputs and ok are
    JAX arrays left on the devices (the metrics are computed there: on a GPU the solves'
    outputs never travel to the host).
    """
    theta, weight, draw = sampler.block(n, lo, hi)
    if burden is not None:
        theta[kin.burden] = np.full_like(theta[kin.burden], burden)
    names = sorted({roles.il6, roles.cart, roles.tumour} - {None})
    # patients of like burden share a chunk: their solves take like step counts
    res = settings.simulate(
        kin.model, theta, regimens, weight, outputs=names, on_device=True, order_by=kin.burden
    )
    keep = {k: res.outputs[k] for k in names}
    return keep, res.ok, draw, theta, weight


def cohort_metrics(kin, typicals, key, n, cohorts, settings, names, roles):
    """Virtual patients of every cohort, for every draw.

    Returns ``xs[c]`` (S, P_c, m), ``ws[c]`` (S, P_c) and the number of failed solves.
    """
    levels = []
    for ci, c in enumerate(cohorts):
        for amount, share in c.doses:
            levels.append((ci, Regimen((Dose(0.0, amount, c.per_kg),)), share))
    regs = [r for _, r, _ in levels]
    S = len(typicals)
    sampler = BlockSampler(kin, typicals, key)
    per = max(1, settings.block // len(regs))
    x_all = np.zeros((len(regs), S * n, len(names)))
    ok_all = np.zeros((len(regs), S * n), bool)
    times = settings.times
    for lo in range(0, S * n, per):
        hi = min(S * n, lo + per)
        out, ok, _, _, _ = simulate_block(kin, sampler, settings, regs, roles, n, lo, hi)
        x_all[:, lo:hi] = np.asarray(final_metrics(times, out, names, roles))
        ok_all[:, lo:hi] = np.asarray(ok) & np.all(np.isfinite(x_all[:, lo:hi]), axis=-1)
    xs, ws = [], []
    for ci in range(len(cohorts)):
        idx = [j for j, (cj, _, _) in enumerate(levels) if cj == ci]
        x = np.concatenate([x_all[j].reshape(S, n, -1) for j in idx], axis=1)
        w = np.concatenate([ok_all[j].reshape(S, n) * (levels[j][2] / n) for j in idx], axis=1)
        xs.append(np.where(np.isfinite(x), x, 0.0))
        ws.append(w)
    return xs, ws, int((~ok_all).sum())
