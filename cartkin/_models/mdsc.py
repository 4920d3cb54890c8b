r"""MDSC suppression of CAR-T in a solid tumour, with a combination drug (OUR CONSTRUCTION).

Parent (published): :class:`~cartkin._models.leontriana2021_solid.LeonTriana2021Solid`. Added:
a myeloid-derived suppressor cell compartment :math:`M` in the form of Anderson, Takacs, Harris,
Kuang, Harrison & Stepien (glioma, T cells and MDSC; bioRxiv 2023, doi:10.1101/2023.05.15.540846;
code stepien-lab/glioma-Tcell-MDSC): MDSC are recruited by the tumour (linear and saturable
terms) and die at :math:`d_M`; they inactivate CAR-T at the tumour at rate :math:`r M` per CAR-T
cell -- the CARTmath inactivation form :math:`\alpha T C_T` of Barros et al. 2021 with the MDSC
count in place of the tumour count. A combination drug at relative exposure :math:`D` (0 = no
drug, 1 = the reference exposure; effects linear in :math:`D`, ASSUMED) lowers recruitment by the
fraction :math:`e_{rec}`, suppression by :math:`e_{sup}`, changes CAR-T proliferation by the
fraction :math:`e_{car}` and IL-6 production by :math:`-e_{IL6}`; every effect may take either
sign (a drug that also harms CAR-T has :math:`e_{car} < 0`):

.. math::

    \dot M &= (1 - D e_{rec}) \Big(s_M T + \frac{a\,T}{q + T}\Big) - d_M M

    \dot C &= (1 + D e_{car}) \rho_C \frac{C T}{g_T + T} + k C_b - a_1 \frac{C T}{g_C + C}
              - (1 - D e_{sup})\, r M C - C/\tau_C

    \dot C_b &= (1 + D e_{car}) \rho_{C_b} \frac{C_b B}{g_B + B} - C_b/\tau_C - k C_b

    \dot{IL6} &= k_{IL6}(IL6_0 - IL6) + (1 - D e_{IL6})\, p_{IL6}(a_2 C T + a_B B C_b)

and :math:`T, B` as in the parent. :math:`M(0)` = ``M0``.

Published (Anderson et al., fitted by ABC to mouse glioma; that the code's nominal vector equals
the paper's table is not checked): the recruitment rates ``sM`` 0.0372 /d and ``a`` 3.6e8
cells/d with ``q`` 3.51e10 cells, and ``dM`` 0.251 /d. ASSUMED: ``r`` -- the published 6.92e-6
/(cell d) belongs to a tumour of ~1e5 cells; at human scale (:math:`M \approx 5\times10^9`) it
would inactivate CAR-T within minutes, so we rescale it to 1e-11 /(cell d) (about 0.05 /d of
inactivation at the published tumour size, within León-Triana's range for ``a1``); ``M0`` is the
quasi-steady MDSC level of the published tumour (5.7e9 cells); the drug effects default to 0
(no drug). Barros 2021 gives the one published size of "a drug that lowers suppression": the IDO
inhibitor 1-MT lowered the inactivation rate from 1.4617e-8 to 1.2617e-8 /(cell d) (-14%).

Limiting case (tested): with ``M0 = sM = a = 0`` the states :math:`C, T, C_b, B` are exactly the
parent's.
"""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp

from . import il6_layer
from .base import ODEModel, Output, Param
from .leontriana2021_solid import CB0, solid_rates
from .leontriana2021_solid import CITATION as PARENT_CITATION
from .leontriana2021_solid import OUTPUTS as PARENT_OUTPUTS
from .leontriana2021_solid import PARAMETERS as PARENT_PARAMETERS

CITATION = (
    "Construction on " + PARENT_CITATION + "; MDSC form of Anderson HG, Takacs GP, Harris DC, "
    "Kuang Y, Harrison JK, Stepien TL. bioRxiv 2023. doi:10.1101/2023.05.15.540846"
)

_PARAMETERS = {
    **PARENT_PARAMETERS,
    "sM": Param(0.0372, "1/d", "MDSC recruitment per tumour cell (Anderson et al.)"),
    "a": Param(3.6e8, "cells/d", "saturable MDSC recruitment (Anderson et al.)"),
    "q": Param(3.51e10, "cells", "tumour size of half-maximal saturable recruitment (Anderson)"),
    "dM": Param(0.251, "1/d", "MDSC death rate (Anderson et al.)"),
    "r": Param(1e-11, "1/(cell d)", "CAR-T inactivation per MDSC (ASSUMED; rescaled)"),
    "M0": Param(5.7e9, "cells", "MDSC at infusion (ASSUMED: quasi-steady level)"),
    "drug": Param(0.0, "1", "relative drug exposure (0: none, 1: reference)", "real"),
    "e_rec": Param(0.0, "1", "fractional reduction of MDSC recruitment at D = 1", "real"),
    "e_sup": Param(0.0, "1", "fractional reduction of MDSC suppression at D = 1", "real"),
    "e_car": Param(0.0, "1", "fractional change of CAR-T proliferation at D = 1", "real"),
    "e_il6": Param(0.0, "1", "fractional reduction of IL-6 production at D = 1", "real"),
    **il6_layer.PARAMETERS,
}
_ASSUMED = ("r", "M0", *il6_layer.ASSUMED)

_OUTPUTS = {
    **PARENT_OUTPUTS,
    "MDSC": Output("cells", "myeloid-derived suppressor cells"),
    "IL6": Output("pg/mL", "serum IL-6 (assumed IL-6 layer)"),
}


class MDSCSuppression(ODEModel):
    """MDSC + combination drug on the León-Triana solid-tumour model (constructed). Doses: Cb."""

    parameters: ClassVar = _PARAMETERS
    outputs: ClassVar = _OUTPUTS
    states: ClassVar = ("C", "T", "Cb", "B", "M", "IL6")
    dose_state: ClassVar = "Cb"
    citation: ClassVar[str] = CITATION
    provenance: ClassVar[str] = "constructed"
    assumed_parameters: ClassVar[tuple[str, ...]] = _ASSUMED

    @staticmethod
    def regimen():
        from .._regimen import Regimen

        return Regimen.single(CB0)

    def initial_state(self, theta):
        z = jnp.zeros_like(theta["T0"])
        return jnp.stack(
            [theta["C0"], theta["T0"], z, theta["B0"], theta["M0"], theta["IL6_0"] + z]
        )

    def vector_field(self, t, y, theta):
        C, T, Cb, B, M, il6 = (y[i] for i in range(6))
        D = theta["drug"]
        prolif = 1.0 + D * theta["e_car"]
        dC, dT, dCb, dB, kill = solid_rates(C, T, Cb, B, theta, prolif=prolif)
        dC = dC - (1.0 - D * theta["e_sup"]) * theta["r"] * M * C
        recruit = theta["sM"] * T + theta["a"] * T / (theta["q"] + T)
        dM = (1.0 - D * theta["e_rec"]) * recruit - theta["dM"] * M
        dIL6 = il6_layer.d_il6(il6, (1.0 - D * theta["e_il6"]) * kill, theta)
        return jnp.stack([dC, dT, dCb, dB, dM, dIL6])

    def observe(self, t, y, theta):
        return {
            "CART": y[0] + y[2],
            "CART_tumour": y[0],
            "tumour": y[1],
            "Bcells": y[3],
            "MDSC": y[4],
            "IL6": y[5],
        }
