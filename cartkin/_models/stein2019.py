r"""Stein 2019: multiphasic cellular kinetics of tisagenlecleucel.

Stein AM, Grupp SA, Levine JE, et al. Tisagenlecleucel model-based cellular kinetic analysis of
chimeric antigen receptor-T cells. *CPT Pharmacometrics Syst Pharmacol* 2019;8(5):285-295,
doi:10.1002/psp4.12388. Typical values as transcribed in nlmixr2lib ``Stein_2019_Tisagenlecleucel``.

Transgene level :math:`C` (copies/ug genomic DNA), time :math:`t` in days. An effector pool
:math:`E` expands exponentially until :math:`T_{max}`, then declines at :math:`\alpha` while a
fraction :math:`F_B` passes into a memory pool :math:`M` that declines at :math:`\beta`:

.. math::

    t < T_{max}:\quad \dot E = \rho E,\ \rho = \ln(\mathrm{foldx}) / T_{max},\
    E(0) = C_{max}/\mathrm{foldx},\ M = 0

    t \ge T_{max}:\quad \dot E = -\alpha E,\quad \dot M = F_B(\alpha-\beta) E - \beta M

    C = E + M

Closed form after :math:`T_{max}`:
:math:`C = C_{max}[(1-F_B)e^{-\alpha(t-T_{max})} + F_B e^{-\beta(t-T_{max})}]`.

Variants:

* :class:`Stein2019` -- closed form. ``switch="exact"`` is the published piecewise curve;
  ``switch="softmin"`` replaces :math:`\log C = \min(\text{expansion}, \text{decline})` (an exact
  identity: each branch extended past the switch lies above the curve) by a soft minimum of width
  ``width`` log units, so that derivatives with respect to :math:`T_{max}` exist everywhere; the
  bias is at most ``width * ln 2`` at the peak.
* :class:`Stein2019ODE` -- the two-compartment ODE. ``switch="exact"`` integrates each phase
  separately with :math:`T_{max}` an exact integration boundary (agrees with the closed form to
  solver tolerance); ``switch="sigmoid"`` gates the phases with a logistic function of
  :math:`(t - T_{max})/\text{width}` (smooth in :math:`T_{max}`, but it overshoots the peak by up to
  ~0.15 log units at width 0.5 d -- prefer the softmin closed form for fitting).

``Fexp`` multiplies the expansion rate :math:`\rho`; it is 1 by default and is the handle for the
published tocilizumab effect (``Ftoci = 1.2``, not significant) as an intervention.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import jax
import jax.numpy as jnp

from .base import ClosedFormModel, ODEModel, Output, Param

CITATION = (
    "Stein AM, Grupp SA, Levine JE, et al. CPT Pharmacometrics Syst Pharmacol "
    "2019;8(5):285-295. doi:10.1002/psp4.12388"
)

_PARAMETERS = {
    "foldx": Param(3900.0, "1", "fold expansion from infusion to Cmax"),
    "Tmax": Param(9.3, "d", "time of peak expansion"),
    "Cmax": Param(24000.0, "copies/ug", "peak transgene level"),
    "alpha": Param(0.16, "1/d", "rate of the fast (effector) decline"),
    "FB": Param(0.0079, "1", "fraction of the peak passing into the slow phase", "unit"),
    "beta": Param(0.0032, "1/d", "rate of the slow (memory) decline"),
}
_OUTPUTS = {"C": Output("copies/ug", "transgene level in blood (qPCR)")}

#: published derived values, for reference: doubling time 0.78 d, decline half-life 4.3 d.
FTOCI = 1.2


def _log_branches(t, theta):
    """log C of the expansion branch and of the decline branch (each valid on its side)."""
    lfold = jnp.log(theta["foldx"])
    lcmax = jnp.log(theta["Cmax"])
    s = t - theta["Tmax"]
    expansion = lcmax + lfold * s / theta["Tmax"]
    fb = theta["FB"]
    decline = lcmax + jnp.logaddexp(
        jnp.log1p(-fb) - theta["alpha"] * s, jnp.log(fb) - theta["beta"] * s
    )
    return expansion, decline


class Stein2019(ClosedFormModel):
    """Stein 2019 multiphasic CK model, closed form (copies/ug; days)."""

    elementwise: ClassVar[bool] = True

    switch: Literal["exact", "softmin"] = "exact"
    width: float = 0.03

    parameters: ClassVar = _PARAMETERS
    outputs: ClassVar = _OUTPUTS
    citation: ClassVar[str] = CITATION

    def __check_init__(self):
        if self.switch not in ("exact", "softmin"):
            raise ValueError(f"switch must be 'exact' or 'softmin', got {self.switch!r}")

    def log_solution(self, t, theta):
        """log C at times t."""
        a, b = _log_branches(jnp.asarray(t), theta)
        if self.switch == "exact":
            return jnp.minimum(a, b)
        return -self.width * jnp.logaddexp(-a / self.width, -b / self.width)

    def solution(self, t, theta):
        return {"C": jnp.exp(self.log_solution(t, theta))}


class Stein2019ODE(ODEModel):
    """Stein 2019 multiphasic CK model as a two-compartment ODE (states E, M in copies/ug)."""

    switch: Literal["exact", "sigmoid"] = "exact"
    width: float = 0.5

    parameters: ClassVar = {**_PARAMETERS, "Fexp": Param(1.0, "1", "multiplier on rho")}
    outputs: ClassVar = _OUTPUTS
    states: ClassVar = ("E", "M")
    citation: ClassVar[str] = CITATION

    def __check_init__(self):
        if self.switch not in ("exact", "sigmoid"):
            raise ValueError(f"switch must be 'exact' or 'sigmoid', got {self.switch!r}")

    def initial_state(self, theta):
        return jnp.stack([theta["Cmax"] / theta["foldx"], jnp.zeros_like(theta["Cmax"])])

    def switch_times(self, theta):
        if self.switch == "exact":
            return jnp.reshape(theta["Tmax"], (1,))
        return jnp.zeros((0,))

    def at_segment(self, theta, t_mid):
        if self.switch == "exact":
            return {**theta, "_decline": (t_mid >= theta["Tmax"]).astype(float)}
        return theta

    def vector_field(self, t, y, theta):
        E, M = y[0], y[1]
        rho = theta["Fexp"] * jnp.log(theta["foldx"]) / theta["Tmax"]
        k = theta["FB"] * (theta["alpha"] - theta["beta"])
        if self.switch == "exact":
            w = theta["_decline"]
        else:
            w = jax.nn.sigmoid((t - theta["Tmax"]) / self.width)
        dE = ((1.0 - w) * rho - w * theta["alpha"]) * E
        dM = w * k * E - theta["beta"] * M
        return jnp.stack([dE, dM])

    def observe(self, t, y, theta):
        return {"C": y[0] + y[1]}
