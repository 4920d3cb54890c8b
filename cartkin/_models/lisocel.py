r"""Liso-cel population cellular kinetics: lag, exponential expansion, biexponential decline.

Population cellular kinetic model of lisocabtagene maraleucel in relapsed/refractory large B-cell
lymphoma (TRANSCEND NHL 001; 2,524 transgene observations, 261 patients). *Clin Pharmacokinet*
2021, doi:10.1007/s40262-021-01039-5 (PMC8613160). The paper describes a piecewise model "that
featured lag, exponential growth, and biexponential decay phases" and reports the population means
(95% CI) used as defaults here: lag 3.27 d (2.71-3.97), doubling time 0.755 d (0.667-0.821),
Tmax 9.29 d (8.81-9.70), initial decline half-life 5.00 d (4.15-5.90), terminal half-life 352 d
(241-647).

Transgene level :math:`C` (copies/ug genomic DNA), time in days, :math:`k_g = \ln 2 / T_d`,
:math:`\alpha = \ln 2 / t_{1/2,fast}`, :math:`\beta = \ln 2 / t_{1/2,slow}`,
:math:`C_0 = C_{max} e^{-k_g (T_{max} - t_{lag})}`:

.. math::

    C(t) = \begin{cases}
      C_0 & t < t_{lag} \\
      C_0\, e^{k_g (t - t_{lag})} & t_{lag} \le t < T_{max} \\
      C_{max}\,[(1 - F) e^{-\alpha (t - T_{max})} + F e^{-\beta (t - T_{max})}] & t \ge T_{max}
    \end{cases}

ASSUMPTIONS (ours, not published in our sources; ``assumed_parameters``): the level scale
``Cmax`` = 1e4 copies/ug and the slow-phase fraction ``F`` = 0.01 are placeholders of the right
order for CD19 CAR-T qPCR (cf. Stein 2019 for tisagenlecleucel: Cmax 24,000 copies/ug, FB 0.0079);
the level during the lag phase is held at :math:`C_0` (the paper's exact parameterisation of the lag
phase is not in our notes). Because the level scale is ours, ``provenance = "constructed"``; the
time course shape (lag, doubling time, Tmax, half-lives) is the published one.

Variants: :class:`LisoCel` is the closed form; :class:`LisoCelODE` is the equivalent
two-compartment ODE (effector :math:`E`, slow pool :math:`M`, :math:`C = E + M`) with the lag end
and :math:`T_{max}` as exact integration boundaries (``switch_times``), like
:class:`~cartkin.Stein2019ODE`. Before :math:`T_{max}` only :math:`E` is present; after it
:math:`\dot E = -\alpha E`, :math:`\dot M = F(\alpha - \beta) E - \beta M`, which reproduces the
biexponential decline exactly.

Solver for :class:`LisoCelODE` (measured by ``benchmarks/published_models_solvers.py``: rtol
1e-6, atol 1e-9, 0-730 d, CPU float64 on 2 shared cores; steps accepted + rejected; times for
1 / 256 patients): Tsit5 124 + 5 steps, 1.5 / 12 ms; Kvaerno5 96 + 0 steps, 4 / 44 ms. Not stiff
(``stiff = False``). The closed form needs no solver.
"""

from __future__ import annotations

import math
from typing import ClassVar

import jax.numpy as jnp

from .base import ClosedFormModel, ODEModel, Output, Param

CITATION = (
    "Population cellular kinetics of lisocabtagene maraleucel in relapsed/refractory large B-cell "
    "lymphoma (TRANSCEND NHL 001). Clin Pharmacokinet 2021. doi:10.1007/s40262-021-01039-5 "
    "(PMC8613160)"
)

_PARAMETERS = {
    "lag": Param(3.27, "d", "duration of the lag phase"),
    "Td": Param(0.755, "d", "doubling time during expansion"),
    "Tmax": Param(9.29, "d", "time of peak level (must exceed lag)"),
    "thalf_fast": Param(5.00, "d", "initial decline half-life"),
    "thalf_slow": Param(352.0, "d", "terminal half-life"),
    "Cmax": Param(1e4, "copies/ug", "peak transgene level (ASSUMED placeholder)"),
    "F": Param(0.01, "1", "fraction of the peak in the slow phase (ASSUMED)", "unit"),
}
_ASSUMED = ("Cmax", "F")
_OUTPUTS = {"C": Output("copies/ug", "transgene level in blood (qPCR)")}

_LN2 = math.log(2.0)


def _rates(theta):
    kg = _LN2 / theta["Td"]
    alpha = _LN2 / theta["thalf_fast"]
    beta = _LN2 / theta["thalf_slow"]
    return kg, alpha, beta


def _log_c0(theta):
    kg, _, _ = _rates(theta)
    return jnp.log(theta["Cmax"]) - kg * (theta["Tmax"] - theta["lag"])


class LisoCel(ClosedFormModel):
    """Liso-cel population CK, closed form (copies/ug; days)."""

    elementwise: ClassVar[bool] = True

    parameters: ClassVar = _PARAMETERS
    outputs: ClassVar = _OUTPUTS
    citation: ClassVar[str] = CITATION
    provenance: ClassVar[str] = "constructed"
    assumed_parameters: ClassVar[tuple[str, ...]] = _ASSUMED

    def log_solution(self, t, theta):
        """log C at times t."""
        t = jnp.asarray(t)
        kg, alpha, beta = _rates(theta)
        lc0 = _log_c0(theta)
        growth = lc0 + kg * (t - theta["lag"])
        s = t - theta["Tmax"]
        fb = theta["F"]
        decline = jnp.log(theta["Cmax"]) + jnp.logaddexp(
            jnp.log1p(-fb) - alpha * s, jnp.log(fb) - beta * s
        )
        return jnp.where(t < theta["lag"], lc0, jnp.where(s < 0, growth, decline))

    def solution(self, t, theta):
        return {"C": jnp.exp(self.log_solution(t, theta))}


class LisoCelODE(ODEModel):
    """Liso-cel population CK as a two-compartment ODE with exact phase switches."""

    parameters: ClassVar = _PARAMETERS
    outputs: ClassVar = _OUTPUTS
    states: ClassVar = ("E", "M")
    citation: ClassVar[str] = CITATION
    provenance: ClassVar[str] = "constructed"
    assumed_parameters: ClassVar[tuple[str, ...]] = _ASSUMED

    def initial_state(self, theta):
        return jnp.stack([jnp.exp(_log_c0(theta)), jnp.zeros_like(theta["Cmax"])])

    def switch_times(self, theta):
        return jnp.stack([theta["lag"], theta["Tmax"]])

    def at_segment(self, theta, t_mid):
        grow = (t_mid >= theta["lag"]) & (t_mid < theta["Tmax"])
        return {
            **theta,
            "_grow": grow.astype(float),
            "_decline": (t_mid >= theta["Tmax"]).astype(float),
        }

    def vector_field(self, t, y, theta):
        E, M = y[0], y[1]
        kg, alpha, beta = _rates(theta)
        g, d = theta["_grow"], theta["_decline"]
        dE = (g * kg - d * alpha) * E
        dM = d * theta["F"] * (alpha - beta) * E - beta * M
        return jnp.stack([dE, dM])

    def observe(self, t, y, theta):
        return {"C": y[0] + y[1]}
