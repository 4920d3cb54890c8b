"""Dose-risk prediction: P(CRS >= 2), P(CRS >= 3) and P(response) per dose, with 90% intervals.

For every draw ``s`` of the uncertain quantities (typical kinetic values, and the link calibrated
to the aggregated rates under those kinetics, then drawn from its Laplace posterior), ``n``
virtual patients are simulated at every dose of the grid; per draw the risk is the mean over
patients of P(G >= k | patient) (the link's probability, not a sampled grade), and the table
reports the mean over draws and the 5th and 95th percentiles (90% interval). Patients are the
same at every dose, regimen and burden profile (common random numbers), so differences between
rows are not Monte Carlo noise.

Scenarios: the base regimen, a fractionated alternative, tocilizumab rules
(:mod:`cartkin._crs.rules`), and burden profiles (the burden parameter fixed at given values,
everything else as in the population).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._regimen import Intervention, Regimen
from .calibrate import AggregateCohort, Calibration, Prior, calibrate_batch, fit_table
from .kinetics import BlockSampler, KineticPopulation, SolveSettings, cohort_metrics, simulate_block
from .link import OrdinalLink, standardisation
from .metrics import ExposureOutputs, final_metrics, response
from .rules import (
    Tocilizumab,
    probs_grade_rule,
    probs_il6_rule,
    probs_prophylactic,
    probs_untreated,
    resimulate_after_trigger,
)
from .summary import dose_windows, exposure_rows, group_rows


@dataclasses.dataclass(frozen=True)
class LinkSpec:
    """Which metrics the link uses, the prior on its slopes, and where the model keeps them."""

    metrics: tuple[str, ...] = ("log_peak_il6",)
    prior: Prior = dataclasses.field(
        default_factory=lambda: Prior({"log_peak_il6": 1.0}, {"log_peak_il6": 0.5})
    )
    outputs: ExposureOutputs = dataclasses.field(default_factory=ExposureOutputs)


@dataclasses.dataclass(frozen=True)
class DoseRiskSpec:
    """The dose grid, scenarios, limit and Monte Carlo sizes of a dose-risk prediction."""

    doses: tuple[float, ...]
    per_kg: bool = False
    fractions: tuple[float, ...] = (1.0,)
    fraction_times: tuple[float, ...] = (0.0,)
    fractionated: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    tocilizumab: tuple[Tocilizumab, ...] = ()
    burden_profiles: tuple[float, ...] = ()
    limit: float = 0.10
    response_reduction: float = 0.5
    response_target: float | None = 0.5
    draws: int = 40
    patients: int = 100
    calibration_patients: int = 100
    point_patients: int = 1000
    seed: int = 1

    def __post_init__(self):
        d = np.asarray(self.doses, float)
        if d.ndim != 1 or d.size == 0 or np.any(~np.isfinite(d)) or np.any(d <= 0):
            raise ValueError(f"doses must be positive numbers, got {list(self.doses)}")
        if np.any(np.diff(d) <= 0):
            raise ValueError("doses must be strictly increasing")
        if not 0 < self.limit < 1:
            raise ValueError(f"the limit on P(CRS >= 3) must be in (0, 1), got {self.limit}")
        for name in ("draws", "patients", "calibration_patients", "point_patients"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if any(b <= 0 for b in self.burden_profiles):
            raise ValueError(f"burden profiles must be positive, got {list(self.burden_profiles)}")
        Regimen.fractionated(1.0, self.fractions, self.fraction_times)  # validates
        if self.fractionated is not None:
            Regimen.fractionated(1.0, *self.fractionated)

    def regimens(self, kind: str, toci_at_zero: Tocilizumab | None = None) -> list[Regimen]:
        fr, ft = (self.fractions, self.fraction_times) if kind == "base" else self.fractionated
        base = Regimen.fractionated(1.0, fr, ft, per_kg=self.per_kg)
        regs = [base.scaled(d) for d in self.doses]
        if toci_at_zero is not None:
            iv = Intervention(0.0, toci_at_zero.kinetic_effects, "tocilizumab")
            regs = [r.with_intervention(iv) for r in regs]
        return regs


def _regimen_label(fr, ft) -> str:
    if len(fr) == 1:
        return "single infusion" if ft[0] == 0 else f"single infusion on day {ft[0]:g}"
    pct = "/".join(f"{100 * f:g}" for f in fr)
    return f"fractionated {pct}% on days {','.join(f'{t:g}' for t in ft)}"


@dataclasses.dataclass(frozen=True)
class _Group:
    """One set of solves: a burden profile and a regimen set, with the rules evaluated on it."""

    profile: float | None
    kind: str
    rules: tuple[Tocilizumab | None, ...]
    kinetic_toci: Tocilizumab | None = None


def _groups(spec: DoseRiskSpec) -> list[_Group]:
    plain = tuple(t for t in spec.tocilizumab if not t.kinetic_effects)
    kinetic = [t for t in spec.tocilizumab if t.kinetic_effects]
    groups = [_Group(None, "base", (None,) + plain)]
    for t in kinetic:
        if t.rule == "prophylactic":
            groups.append(_Group(None, "base", (t,), kinetic_toci=t))
        else:
            groups[0] = dataclasses.replace(groups[0], rules=groups[0].rules + (t,))
    if spec.fractionated is not None:
        groups.append(_Group(None, "fractionated", (None,)))
    for b in spec.burden_profiles:
        groups.append(_Group(b, "base", (None,) + plain))
    return groups


def _needs_resimulation(rule) -> bool:
    return rule is not None and bool(rule.kinetic_effects) and rule.rule == "il6"


def _rule_key(rule):
    """A hashable description of a rule's effect on the link (None: untreated)."""
    return None if rule is None else (rule.rule, rule.grade, rule.il6_threshold, rule.blockade)


def _rule_probs(key, times, out, names, roles, beta, cuts, center, scale):
    args = (times, out, names, roles, beta, cuts, center, scale)
    if key is None:
        return probs_untreated(*args)
    rule, grade, threshold, blockade = key
    if rule == "prophylactic":
        return probs_prophylactic(*args, blockade)
    if rule == "grade":
        return probs_grade_rule(*args, blockade, grade)
    return probs_il6_rule(*args, blockade, threshold)


@functools.partial(jax.jit, static_argnames=("names", "roles", "rules", "nseg", "reduction"))
def _block_summary(
    times, out, ok, seg, beta, cuts, center, scale, *, names, roles, rules, nseg, reduction
):
    """Per block of solves (D doses x B patients, patient b of draw ``seg[b]``): per draw and
    dose, the sum over patients of P(G >= k) under each rule, of responses and of good solves,
    and each solve's log peak IL-6 (NaN if it failed)."""
    D, B = ok.shape
    flat = {k: v.reshape(D * B, v.shape[-1]) for k, v in out.items()}
    b = jnp.tile(beta[seg], (D, 1))
    c = jnp.tile(cuts[seg], (D, 1))
    okf = ok[..., None]

    def per_draw(x):  # (D, B, ...) -> (D, nseg, ...)
        return jnp.moveaxis(
            jax.ops.segment_sum(jnp.moveaxis(x, 1, 0), seg, num_segments=nseg), 0, 1
        )

    sums = tuple(
        per_draw(
            jnp.where(
                okf,
                _rule_probs(r, times, flat, names, roles, b, c, center, scale).reshape(D, B, -1),
                0.0,
            )
        )
        for r in rules
    )
    rsp = response(flat, roles, reduction).reshape(D, B) & ok
    peak = (
        final_metrics(times, flat, ("log_peak_il6",), roles)[:, 0].reshape(D, B)
        if roles.il6
        else jnp.full((D, B), jnp.nan)
    )
    return (
        sums,
        per_draw(rsp.astype(float)),
        per_draw(ok.astype(float)),
        jnp.where(ok, peak, jnp.nan),
    )


@dataclasses.dataclass(frozen=True)
class DoseRiskResult:
    table: pd.DataFrame
    windows: pd.DataFrame
    calibration: Calibration
    fit: pd.DataFrame
    link_draws: np.ndarray
    exposure: pd.DataFrame
    info: dict


def run_dose_risk(
    kin: KineticPopulation,
    link: LinkSpec,
    cohorts: Sequence[AggregateCohort],
    spec: DoseRiskSpec,
    settings: SolveSettings | None = None,
    *,
    log=print,
) -> DoseRiskResult:
    """Calibrate the link, propagate uncertainty and tabulate risk per dose (see module doc)."""
    settings = SolveSettings() if settings is None else settings
    link.outputs.check(kin.model, link.metrics)
    if not cohorts:
        raise ValueError("no calibration cohorts: the link has nothing to be calibrated to")
    t_start = time.perf_counter()
    root = jax.random.PRNGKey(spec.seed)
    keys = {
        name: jax.random.fold_in(root, i)
        for i, name in enumerate(["kinetic", "point", "calibration", "link", "patients"])
    }
    names, roles = link.metrics, link.outputs
    info: dict = {"timings_s": {}}

    # 1. virtual cohorts: typical kinetics with many patients (the reported calibration), and
    #    for each draw of the kinetics, fewer patients (the link recalibrated under that draw)
    typ = kin.typical_theta()
    x0, w0, nfail = cohort_metrics(
        kin, [typ], keys["point"], spec.point_patients, cohorts, settings, names, roles
    )
    empty = [c.name for c, w in zip(cohorts, w0, strict=True) if not np.any(w[0] > 0)]
    if empty:
        raise ValueError(
            f"no virtual patient of cohort(s) {empty} could be simulated (all solves "
            "failed): check the population's parameters and the solver settings"
        )
    pooled = np.concatenate([x[0] for x in x0])
    center, scale = standardisation(pooled, np.concatenate([w[0] / w[0].sum() for w in w0]))
    info["point_calibration"] = {"patients_per_level": spec.point_patients, "failed_solves": nfail}
    S = spec.draws
    typicals = kin.draw_typical(keys["kinetic"], S)
    if kin.has_uncertainty:
        xd, wd, nfail = cohort_metrics(
            kin,
            typicals,
            keys["calibration"],
            spec.calibration_patients,
            cohorts,
            settings,
            names,
            roles,
        )
        info["draw_calibration"] = {
            "patients_per_level": spec.calibration_patients,
            "failed_solves": nfail,
        }
    info["timings_s"]["cohort_simulation"] = time.perf_counter() - t_start
    t0 = time.perf_counter()
    # two batches (padding the draws to the point size made the draws' fits 10x dearer)
    phi_hat, cov, value, gnorm = calibrate_batch(names, cohorts, x0, w0, link.prior, center, scale)
    template = OrdinalLink(
        tuple(names), jnp.asarray(center), jnp.asarray(scale), jnp.zeros(len(names)), jnp.zeros(4)
    )
    cal = Calibration(
        template.with_phi(jnp.asarray(phi_hat[0])),
        cov[0],
        float(value[0]),
        float(gnorm[0]),
        tuple(cohorts),
    )
    fit = fit_table(cal, [x[0] for x in x0], [w[0] for w in w0], seed=spec.seed)
    info["point_calibration"].update(converged=cal.converged, grad_norm=cal.grad_norm)
    if kin.has_uncertainty:
        phi_hat, cov, _, gnorm = calibrate_batch(names, cohorts, xd, wd, link.prior, center, scale)
        info["draw_calibration"]["unconverged_draws"] = int(np.sum(~(gnorm < 1e-3)))
    else:
        phi_hat, cov = np.repeat(phi_hat, S, 0), np.repeat(cov, S, 0)
    log(
        f"calibrated the link to {len(cohorts)} cohort(s): {int((fit['fit'] == 'ok').sum())} of "
        f"{len(fit)} reported rates within their binomial 95% interval"
    )

    # 2. one link per draw, from the Laplace posterior under that draw's kinetics
    p = cal.link.n_params
    z = np.asarray(
        jax.vmap(lambda s: jax.random.normal(jax.random.fold_in(keys["link"], s), (p,)))(
            jnp.arange(S)
        )
    )
    phi = np.stack([phi_hat[s] + _sqrtm(cov[s]) @ z[s] for s in range(S)])
    info["timings_s"]["calibration"] = time.perf_counter() - t0
    links = [cal.link.with_phi(jnp.asarray(f)) for f in phi]
    beta_s = np.stack([np.asarray(lk.beta) for lk in links])
    cuts_s = np.stack([np.asarray(lk.cuts) for lk in links])

    # 3. prediction at every dose, per group of solves
    sampler = BlockSampler(kin, typicals, keys["patients"])
    D, n, times = len(spec.doses), spec.patients, settings.times
    center, scale = cal.link.center, cal.link.scale
    t0 = time.perf_counter()
    rows, expo = [], []
    n_solves = 0
    for g in _groups(spec):
        regs = spec.regimens(g.kind, g.kinetic_toci)
        acc = [np.zeros((D, S, 4)) for _ in g.rules]
        resp = np.zeros((D, S))
        cnt = np.zeros((D, S))
        peak = np.full((D, S * n), np.nan)
        per = max(1, settings.block // D)
        plain = tuple(_rule_key(r) for r in g.rules if not _needs_resimulation(r))
        for lo in range(0, S * n, per):
            hi = min(S * n, lo + per)
            out, ok, draw, theta, weight = simulate_block(
                kin, sampler, settings, regs, roles, n, lo, hi, g.profile
            )
            n_solves += ok.size
            s0 = int(draw[0])
            seg = draw - s0
            used = int(seg[-1]) + 1
            nseg = per // n + 2  # fixed by the block and draw sizes: one compilation
            pad = np.arange(s0, s0 + nseg) % S
            args = (
                jnp.asarray(times),
                {k: jnp.asarray(v) for k, v in out.items()},
                jnp.asarray(ok),
                jnp.asarray(seg),
                jnp.asarray(beta_s[pad]),
                jnp.asarray(cuts_s[pad]),
                center,
                scale,
            )
            kw = dict(names=tuple(names), roles=roles, nseg=nseg, reduction=spec.response_reduction)
            sums, rsum, csum, pk = _block_summary(*args, rules=plain, **kw)
            sums = list(sums)
            for ri, rule in enumerate(g.rules):
                if _needs_resimulation(rule):
                    new, status = _resimulate_il6(
                        kin, settings, regs, theta, weight, out, roles, rule, times
                    )
                    extra = _block_summary(
                        args[0],
                        {k: jnp.asarray(v) for k, v in new.items()},
                        jnp.asarray(ok & (status == 0)),
                        *args[3:],
                        rules=(_rule_key(rule),),
                        **kw,
                    )[0][0]
                    sums.insert(ri, extra)
            for ri in range(len(g.rules)):
                acc[ri][:, s0 : s0 + used] += np.asarray(sums[ri])[:, :used]
            resp[:, s0 : s0 + used] += np.asarray(rsum)[:, :used]
            cnt[:, s0 : s0 + used] += np.asarray(csum)[:, :used]
            peak[:, lo:hi] = np.asarray(pk)
        frac = (
            spec.fractionated if g.kind == "fractionated" else (spec.fractions, spec.fraction_times)
        )
        reg_label = _regimen_label(*frac)
        profile = "population" if g.profile is None else f"burden {g.profile:g}"
        labels = [reg_label if r is None else f"{reg_label} + {r.label}" for r in g.rules]
        rows += group_rows(spec, labels, profile, g.profile, acc, resp, cnt, peak, n)
        expo += exposure_rows(spec, reg_label, profile, peak)
        log(f"  {profile}, {reg_label}: {S} draws x {n} patients x {D} doses")
    info["timings_s"]["prediction"] = time.perf_counter() - t0
    info["timings_s"]["total"] = time.perf_counter() - t_start
    info["prediction_solves"] = n_solves
    table = pd.DataFrame(rows)
    exposure = pd.DataFrame(expo).drop_duplicates(["regimen", "profile", "dose"])
    return DoseRiskResult(table, dose_windows(table, spec), cal, fit, phi, exposure, info)


def _sqrtm(cov):
    cov = 0.5 * (cov + cov.T)
    w, v = np.linalg.eigh(cov)
    return v * np.sqrt(np.clip(w, 0.0, None))


def _resimulate_il6(kin, settings, regs, theta, weight, out, roles, rule, times):
    from .rules import il6_trigger_index

    j = np.asarray(
        il6_trigger_index({roles.il6: jnp.asarray(out[roles.il6])}, roles, rule.il6_threshold)
    )
    t_trig = np.where(j < len(times), times[np.minimum(j, len(times) - 1)], np.inf)

    def sim(idx, regimens):
        th = {k: v[idx] for k, v in theta.items()}
        return settings.simulate(kin.model, th, regimens, weight[idx])

    new, status = resimulate_after_trigger(
        sim, regs, t_trig, rule.kinetic_effects, name="tocilizumab"
    )
    return {k: new[k] for k in out}, status
