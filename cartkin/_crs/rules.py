r"""Tocilizumab as a treatment rule: P(CRS grade >= k) when tocilizumab is given by a rule.

Rules (:class:`Tocilizumab`):

* ``prophylactic``: given before the infusion (day 0);
* ``grade``: given at the first saved time at which the patient's CRS reaches ``grade``
  (default 2);
* ``il6``: given at the first saved time at which IL-6 exceeds ``il6_threshold`` pg/mL.

What tocilizumab does is declared, not guessed: it blocks IL-6 signalling by ``blockade`` from
its time on (the link's IL-6 metric, :func:`cartkin._crs.metrics.blocked_after`), and it may also
multiply kinetic parameters from its time on (``kinetic_effects``, an
:class:`~cartkin.Intervention`), which changes the trajectory and needs a second solve. In the
Hardiansyah 2019 model IL-6 appears in no equation of the cells, so tocilizumab has no kinetic
effect there and ``kinetic_effects`` is empty: its whole effect is through the link.

The grade-triggered rule is computed exactly in the latent form of the link: a patient with
running linear predictor :math:`\eta(t)` (non-decreasing, from metrics up to t) and latent
:math:`\varepsilon` (standard logistic) has grade :math:`\ge g` at t when
:math:`\eta(t) + \varepsilon > c_g`. For :math:`\varepsilon` between
:math:`e_j = c_g - \eta(t_j)` and :math:`e_{j-1}`, tocilizumab is given at :math:`t_j` and the
final predictor is :math:`\eta^{toc}_j` (IL-6 blocked after :math:`t_j`); so for :math:`k > g`

.. math::

    P(G \ge k) = \sum_j \max\bigl(0, F(e_{j-1}) - F(\max(e_j, c_k - \eta^{toc}_j))\bigr),

with :math:`F` the logistic CDF and :math:`F(e_{-1}) = 1`; for :math:`k \le g` the rule changes
nothing (a patient below grade g never receives it). No sampling of the latent is involved.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from .metrics import ExposureOutputs, blocked_after, final_metrics, running_metrics

RULES = ("prophylactic", "grade", "il6")


@dataclasses.dataclass(frozen=True)
class Tocilizumab:
    """A tocilizumab rule.

    Args:
        rule: ``"prophylactic"``, ``"grade"`` or ``"il6"``.
        grade: the CRS grade that triggers it (rule ``"grade"``).
        il6_threshold: IL-6 (pg/mL) that triggers it (rule ``"il6"``).
        blockade: fraction of IL-6 signalling blocked from its time on (assumption, 0-1).
        kinetic_effects: parameter multipliers from its time on (empty: no kinetic effect).
    """

    rule: str = "grade"
    grade: int = 2
    il6_threshold: float | None = None
    blockade: float = 0.9
    kinetic_effects: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"unknown tocilizumab rule {self.rule!r}; choose from {list(RULES)}")
        if not 0.0 <= self.blockade < 1.0:
            raise ValueError(f"tocilizumab blockade must be in [0, 1), got {self.blockade}")
        if self.rule == "grade" and self.grade not in (1, 2, 3):
            raise ValueError(f"tocilizumab grade trigger must be 1, 2 or 3, got {self.grade}")
        if self.rule == "il6" and (self.il6_threshold is None or self.il6_threshold <= 0):
            raise ValueError("the il6 rule needs a positive il6_threshold (pg/mL)")
        if self.rule == "grade" and self.kinetic_effects:
            raise ValueError(
                "a grade-triggered tocilizumab with kinetic effects is not supported: the trigger "
                "time then depends on the latent CRS propensity and each would need its own "
                "solve; use the il6 rule or an empty kinetic_effects"
            )
        object.__setattr__(self, "kinetic_effects", dict(self.kinetic_effects))

    @property
    def label(self) -> str:
        if self.rule == "prophylactic":
            return "prophylactic tocilizumab"
        if self.rule == "grade":
            return f"tocilizumab at CRS grade >= {self.grade}"
        return f"tocilizumab at IL-6 > {self.il6_threshold:g} pg/mL"


def eta_of(x, beta, center, scale):
    """Linear predictor with per-row parameters: x (..., m), beta broadcastable to x."""
    return jnp.sum((x - center) / scale * beta, axis=-1)


def cumulative(eta, cuts):
    """P(G >= k), k = 1..4, with per-row cut points ``cuts`` (..., 4)."""
    return jax.nn.sigmoid(eta[..., None] - cuts)


def probs_untreated(times, outputs, names, roles, beta, cuts, center, scale):
    x = final_metrics(times, outputs, names, roles)
    return cumulative(eta_of(x, beta, center, scale), cuts)


def probs_prophylactic(times, outputs, names, roles, beta, cuts, center, scale, blockade):
    x = final_metrics(times, outputs, names, roles, il6_scale=1.0 - blockade)
    return cumulative(eta_of(x, beta, center, scale), cuts)


def il6_trigger_index(outputs, roles: ExposureOutputs, threshold):
    """First saved index where IL-6 exceeds ``threshold``; ``T`` (never) if it does not."""
    il6 = outputs[roles.il6]
    above = il6 > threshold
    T = il6.shape[-1]
    return jnp.where(jnp.any(above, -1), jnp.argmax(above, -1), T)


def probs_il6_rule(times, outputs, names, roles, beta, cuts, center, scale, blockade, threshold):
    """Rows (P, T) of outputs; per-row parameters ``beta`` (P, m), ``cuts`` (P, 4)."""
    xb = blocked_after(times, outputs, names, roles, blockade)  # (P, T, m)
    x0 = final_metrics(times, outputs, names, roles)  # (P, m)
    j = il6_trigger_index(outputs, roles, threshold)
    T = xb.shape[-2]
    xt = jnp.take_along_axis(xb, jnp.minimum(j, T - 1)[:, None, None], axis=-2)[:, 0]
    x = jnp.where((j < T)[:, None], xt, x0)
    return cumulative(eta_of(x, beta, center, scale), cuts)


def probs_grade_rule(times, outputs, names, roles, beta, cuts, center, scale, blockade, grade):
    """Exact P(G >= k) under tocilizumab at grade ``grade`` (see the module docstring)."""
    run = eta_of(running_metrics(times, outputs, names, roles), beta[:, None], center, scale)
    tox = eta_of(
        blocked_after(times, outputs, names, roles, blockade), beta[:, None], center, scale
    )
    untreated = cumulative(run[:, -1], cuts)  # (P, 4)
    cg = cuts[:, grade - 1]
    e = cg[:, None] - run  # (P, T), non-increasing in time
    f_hi = jnp.concatenate([jnp.ones_like(e[:, :1]), jax.nn.sigmoid(e[:, :-1])], axis=1)
    cols = []
    for k in range(1, cuts.shape[-1] + 1):
        if k <= grade:
            cols.append(untreated[:, k - 1])
            continue
        lo = jnp.maximum(e, cuts[:, k - 1][:, None] - tox)
        cols.append(jnp.sum(jnp.maximum(0.0, f_hi - jax.nn.sigmoid(lo)), axis=1))
    return jnp.stack(cols, axis=-1)


def resimulate_after_trigger(simulate_fn, regimens, trigger_time, effects, *, name):
    """Outputs when each patient receives ``Intervention(trigger_time[d, i], effects)``.

    ``simulate_fn(idx, regimens)`` returns a SimResult of patients ``idx`` (indices into the
    batch) at dose levels ``regimens``; ``trigger_time`` (D, N) is in days, ``inf`` for never.
    Patients are grouped by (dose level, trigger time) and each group is solved as one batch;
    the trigger times lie on the saved grid, so the groups are few.
    Returns ``(outputs {name: (D, N, T)}, status (D, N))``.
    """
    from .._regimen import Intervention

    trigger_time = np.asarray(trigger_time, float)
    D, N = trigger_time.shape
    outs, status = None, np.zeros((D, N), np.int8)
    for d in range(D):
        for t in np.unique(trigger_time[d]):
            idx = np.nonzero(trigger_time[d] == t)[0]
            reg = regimens[d]
            if np.isfinite(t):
                reg = reg.with_intervention(Intervention(float(t), dict(effects), name))
            res = simulate_fn(idx, [reg])
            if outs is None:
                T = next(iter(res.outputs.values())).shape[-1]
                outs = {k: np.zeros((D, N, T)) for k in res.outputs}
            for k, v in res.outputs.items():
                outs[k][d, idx] = v[0]
            status[d, idx] = res.status[0]
    return outs, status
