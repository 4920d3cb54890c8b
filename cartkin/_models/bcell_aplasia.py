r"""On-target/off-tumour: healthy antigen-positive cells under CAR-T (B-cell aplasia).

CAR-T kinetics (published): the Stein et al. 2019 multiphasic model of tisagenlecleucel
(:class:`~cartkin._models.stein2019.Stein2019ODE`, transgene :math:`E + M` in copies/ug, exact
switch at :math:`T_{max}`), unchanged. Added (OUR CONSTRUCTION, ``provenance = "constructed"``):
healthy antigen-positive cells :math:`H` in cells/uL of blood (CD19+ B cells after a CD19 CAR;
normal antigen-positive tissue for a solid target), renewed towards :math:`H_{ss}` with mean
lifetime :math:`\tau_H` and killed by CAR-T cells:

.. math::

    \dot H = (H_{ss} - H)/\tau_H - k_H \frac{E + M}{\kappa} H

with :math:`\kappa` copies/ug per CAR-T cell/uL. :math:`H(0) = H_0`.

Values: ``kappa`` 2000 copies/ug per cell/uL is Singh et al. 2021's conversion (ide-cel:
copies/ug = 0.002 x CAR-T cells per L; product- and assay-specific); ``tauH`` 60 d is the
B-cell lifetime of León-Triana 2021 (a literature scale there, not fitted). ASSUMED: ``Hss`` =
``H0`` = 200 B cells/uL (a normal adult blood count; lymphodepletion is ignored) and ``kH``, the
killing per CAR-T cell/uL per day -- the one free parameter, which scenario 4 calibrates to the
published one-year B-cell recovery and then checks against the day-30 figure. The steady state
under a constant CAR-T level is :math:`H_{ss} / (1 + \tau_H k_H C)`: aplasia lasts as long as
functional CAR-T persist.
"""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp

from .base import ODEModel, Output, Param
from .stein2019 import CITATION as STEIN_CITATION
from .stein2019 import Stein2019ODE

CITATION = (
    "Construction on " + STEIN_CITATION + "; conversion: Singh AP et al. CPT Pharmacometrics "
    "Syst Pharmacol 2021;10:362-376. doi:10.1002/psp4.12598"
)

_STEIN = Stein2019ODE()

_PARAMETERS = {
    **Stein2019ODE.parameters,
    "kappa": Param(
        2000.0, "copies/ug per cell/uL", "transgene copies per CAR-T cell/uL (Singh 2021)"
    ),
    "tauH": Param(60.0, "d", "lifetime of healthy antigen-positive cells (León-Triana 2021)"),
    "Hss": Param(200.0, "cells/uL", "normal level of healthy antigen-positive cells (ASSUMED)"),
    "H0": Param(200.0, "cells/uL", "healthy antigen-positive cells at infusion (ASSUMED)"),
    "kH": Param(10.0, "1/(cell/uL d)", "killing per CAR-T cell/uL (ASSUMED; calibrated)"),
}

_OUTPUTS = {
    "C": Stein2019ODE.outputs["C"],
    "CART_conc": Output("cells/uL", "CAR-T cells per uL of blood (C / kappa)"),
    "H": Output("cells/uL", "healthy antigen-positive cells (B cells) per uL of blood"),
}


class BCellAplasia(ODEModel):
    """Stein 2019 CAR-T kinetics killing healthy antigen-positive cells (constructed)."""

    parameters: ClassVar = _PARAMETERS
    outputs: ClassVar = _OUTPUTS
    states: ClassVar = ("E", "M", "H")
    citation: ClassVar[str] = CITATION
    provenance: ClassVar[str] = "constructed"
    assumed_parameters: ClassVar[tuple[str, ...]] = ("Hss", "H0", "kH")

    def initial_state(self, theta):
        return jnp.concatenate([_STEIN.initial_state(theta), jnp.reshape(theta["H0"], (1,))])

    def switch_times(self, theta):
        return _STEIN.switch_times(theta)

    def at_segment(self, theta, t_mid):
        return _STEIN.at_segment(theta, t_mid)

    def vector_field(self, t, y, theta):
        d_stein = _STEIN.vector_field(t, y[:2], theta)
        cells = (y[0] + y[1]) / theta["kappa"]
        dH = (theta["Hss"] - y[2]) / theta["tauH"] - theta["kH"] * cells * y[2]
        return jnp.concatenate([d_stein, jnp.reshape(dH, (1,))])

    def observe(self, t, y, theta):
        c = y[0] + y[1]
        return {"C": c, "CART_conc": c / theta["kappa"], "H": y[2]}
