"""Exposure metrics from simulated kinetics: what the CRS link and the response are computed on.

A model's trajectories on a saved time grid (``times[0] == 0``, the day of the first infusion,
up to the exposure window, e.g. 28 days) give, per patient:

==================  ===========================================================  ============
metric              definition                                                   unit
==================  ===========================================================  ============
``log_peak_il6``    log of the peak IL-6 *signalling* (IL-6 x (1 - blockade)      log pg/mL
                    after tocilizumab, IL-6 before) over the window
``tpeak_il6``       time of that peak                                            d
``log_cmax_cart``   log of the peak CAR-T concentration in blood                 log cells/uL
``log_auc_cart``    log of the CAR-T AUC over the window (trapezoids)            log cells/uL d
``log_burden``      log of the baseline tumour burden (tumour output at t = 0)   log (model)
==================  ===========================================================  ============

Peaks are taken on the saved grid (choose a step that resolves them: 0.25 d by default).
Tocilizumab blocks the IL-6 receptor: serum IL-6 does not fall (it rises), but its signalling
does; the metric therefore scales IL-6 by ``1 - blockade`` from the time of the first dose of
tocilizumab on. ``blockade`` is an assumption of the scenario, not a published value.

Which model outputs hold IL-6, CAR-T and the tumour is declared by :class:`ExposureOutputs`
(defaults: the Hardiansyah 2019 names).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

METRICS = {
    "log_peak_il6": "log peak IL-6 signalling over the window (pg/mL)",
    "tpeak_il6": "time of the IL-6 peak (days)",
    "log_cmax_cart": "log peak CAR-T concentration over the window",
    "log_auc_cart": "log CAR-T AUC over the window (trapezoids)",
    "log_burden": "log baseline tumour burden (tumour output at t = 0)",
}
#: metrics whose value up to time t never decreases in t (usable by grade-triggered rules)
RUNNING = ("log_peak_il6", "log_cmax_cart", "log_auc_cart", "log_burden")
_NEEDS = {
    "log_peak_il6": "il6",
    "tpeak_il6": "il6",
    "log_cmax_cart": "cart",
    "log_auc_cart": "cart",
    "log_burden": "tumour",
}
_TINY = 1e-30


@dataclasses.dataclass(frozen=True)
class ExposureOutputs:
    """Names of the model outputs that hold IL-6 (pg/mL), CAR-T in blood and the tumour."""

    il6: str | None = "IL6"
    cart: str | None = "CART_pb_conc"
    tumour: str | None = "B"

    def check(self, model, metrics, *, response: bool = True) -> None:
        """Raise a ValueError naming what ``model`` lacks for ``metrics`` (and the response)."""
        needed = {_NEEDS[m] for m in metrics}
        if response:
            needed.add("tumour")
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown exposure metric(s) {unknown}; available: {list(METRICS)}")
        missing = []
        for role in sorted(needed):
            name = getattr(self, role)
            if name is None or name not in model.outputs:
                missing.append(f"{role} (output {name!r})")
        if missing:
            raise ValueError(
                f"{model.name} lacks the output(s) the CRS link needs: {', '.join(missing)}; its "
                f"outputs are {list(model.outputs)}. Name them under [exposure] outputs, or use "
                "a model with IL-6, CAR-T and tumour outputs (e.g. hardiansyah2019)"
            )


def _trapezoid_cumulative(times, y):
    dt = jnp.diff(times)
    inc = 0.5 * (y[..., 1:] + y[..., :-1]) * dt
    return jnp.concatenate([jnp.zeros_like(y[..., :1]), jnp.cumsum(inc, axis=-1)], axis=-1)


def _cummax(y, reverse=False):
    import jax

    if reverse:
        return jnp.flip(jax.lax.cummax(jnp.flip(y, -1), axis=y.ndim - 1), -1)
    return jax.lax.cummax(y, axis=y.ndim - 1)


def final_metrics(times, outputs, names, roles: ExposureOutputs, *, il6_scale=None):
    """Metrics ``names`` at the end of the window, shape ``(..., m)``.

    ``outputs`` maps output names to arrays ``(..., T)``; ``il6_scale`` (broadcast to (..., T))
    multiplies IL-6 before the peak is taken (tocilizumab blockade).
    """
    cols = []
    for name in names:
        if name in ("log_peak_il6", "tpeak_il6"):
            il6 = outputs[roles.il6]
            eff = il6 if il6_scale is None else il6 * il6_scale
            if name == "log_peak_il6":
                cols.append(jnp.log(jnp.maximum(jnp.max(eff, -1), _TINY)))
            else:
                cols.append(jnp.asarray(times)[jnp.argmax(eff, -1)])
        elif name == "log_cmax_cart":
            cols.append(jnp.log(jnp.maximum(jnp.max(outputs[roles.cart], -1), _TINY)))
        elif name == "log_auc_cart":
            auc = _trapezoid_cumulative(jnp.asarray(times), outputs[roles.cart])[..., -1]
            cols.append(jnp.log(jnp.maximum(auc, _TINY)))
        elif name == "log_burden":
            cols.append(jnp.log(jnp.maximum(outputs[roles.tumour][..., 0], _TINY)))
        else:
            raise ValueError(f"unknown exposure metric {name!r}; available: {list(METRICS)}")
    return jnp.stack(cols, axis=-1)


def running_metrics(times, outputs, names, roles: ExposureOutputs):
    """Metrics computed on the data up to each saved time: shape ``(..., T, m)``."""
    cols = []
    for name in names:
        if name == "log_peak_il6":
            cols.append(jnp.log(jnp.maximum(_cummax(outputs[roles.il6]), _TINY)))
        elif name == "log_cmax_cart":
            cols.append(jnp.log(jnp.maximum(_cummax(outputs[roles.cart]), _TINY)))
        elif name == "log_auc_cart":
            auc = _trapezoid_cumulative(jnp.asarray(times), outputs[roles.cart])
            cols.append(jnp.log(jnp.maximum(auc, _TINY)))
        elif name == "log_burden":
            b = outputs[roles.tumour]
            cols.append(jnp.broadcast_to(jnp.log(jnp.maximum(b[..., :1], _TINY)), b.shape))
        else:
            raise ValueError(
                f"metric {name!r} is not defined up to a time (it can decrease as data accrue), "
                f"so a grade-triggered rule cannot use it; running metrics: {list(RUNNING)}"
            )
    return jnp.stack(cols, axis=-1)


def blocked_after(times, outputs, names, roles: ExposureOutputs, blockade: float):
    """Final metrics if tocilizumab is given at saved time ``t_j``, for every j: ``(..., T, m)``.

    IL-6 signalling at times after ``t_j`` is scaled by ``1 - blockade``; samples up to and
    including ``t_j`` (which triggered the rule) are not. Other metrics are unchanged.
    """
    final = final_metrics(times, outputs, names, roles)
    T = jnp.shape(times)[0]
    out = jnp.broadcast_to(final[..., None, :], final.shape[:-1] + (T, final.shape[-1]))
    if "log_peak_il6" in names:
        il6 = outputs[roles.il6]
        before = _cummax(il6)
        after = _cummax(il6, reverse=True)
        after = jnp.concatenate([after[..., 1:], jnp.zeros_like(after[..., :1])], axis=-1)
        peak = jnp.maximum(before, (1.0 - blockade) * after)
        j = list(names).index("log_peak_il6")
        out = out.at[..., j].set(jnp.log(jnp.maximum(peak, _TINY)))
    return out


def response(outputs, roles: ExposureOutputs, reduction: float):
    """Whether the tumour output at the end of the window is at most ``(1 - reduction)`` times
    its baseline (e.g. reduction 0.5: at least a 50% reduction)."""
    b = outputs[roles.tumour]
    return b[..., -1] <= (1.0 - reduction) * b[..., 0]


def check_grid(times) -> np.ndarray:
    times = np.asarray(times, float)
    if times.ndim != 1 or times.size < 2 or times[0] != 0.0 or np.any(np.diff(times) <= 0):
        raise ValueError("the exposure grid must start at day 0 and increase strictly")
    return times
