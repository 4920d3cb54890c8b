r"""Armored (cytokine-secreting) CAR-T in a suppressive solid tumour (OUR CONSTRUCTION).

No published ODE model of an IL-12/IL-15/IL-18-secreting CAR-T was found (our literature notes);
the pattern of a T-cell-secreted cytokine feeding back on proliferation is that of Kirschner &
Panetta 1998 (*J Math Biol* 37:235; values not used). Everything here beyond the parent is
CONSTRUCTED with ASSUMED values (``provenance = "constructed"``).

Parent (published): :class:`~cartkin._models.leontriana2021_solid.LeonTriana2021Solid`, with its
immunosuppression ``a1`` as the suppression level. The CAR-T secrete a cytokine :math:`X`
(pg/mL), constitutively or, for an inducible design (``inducible`` = 1), in proportion to antigen
engagement; :math:`X` multiplies proliferation by :math:`1 + E_X X/(K_X + X)`, divides the
suppression by :math:`1 + X/K_S`, and drives IL-6 (so armoring trades efficacy against CRS):

.. math::

    \dot C &= \rho_C g\, \frac{C T}{g_T + T} + k C_b - \frac{a_1}{1 + X/K_S} \frac{C T}{g_C + C}
              - C/\tau_C, \qquad g = 1 + E_X \frac{X}{K_X + X}

    \dot T &= \rho_T T - a_2 C T

    \dot C_b &= \rho_{C_b} g\, \frac{C_b B}{g_B + B} - C_b/\tau_C - k C_b

    \dot B &= -a_B B C_b - B/\tau_B

    \dot X &= p_X \Big[(1 - \iota)(C + C_b) + \iota \Big(\frac{C T}{g_T + T}
              + \frac{C_b B}{g_B + B}\Big)\Big] - k_X X

    \dot{IL6} &= k_{IL6}(IL6_0 - IL6) + p_{IL6}(a_2 C T + a_B B C_b) + p_{IL6,X} X

A conventional CAR is ``pX = 0``: then :math:`X \equiv 0` and :math:`C, T, C_b, B` are exactly
the parent's (tested). ASSUMED values: ``pX`` 2e-7 pg/mL per cell per day and ``kX`` 2 /d
(1e9 CAR-T hold X near ``KX``), ``KX`` = ``KS`` = 100 pg/mL, ``EX`` 1 (at most doubles
proliferation), ``pIL6X`` 2 /d (X at ``KX`` adds about 50 pg/mL of IL-6), ``inducible`` 0, and
the IL-6 layer's ``pIL6``.
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

CITATION = "Construction on " + PARENT_CITATION

_PARAMETERS = {
    **PARENT_PARAMETERS,
    "pX": Param(
        2e-7, "pg/mL per cell per d", "cytokine secretion per CAR-T (ASSUMED; 0: conventional)"
    ),
    "kX": Param(2.0, "1/d", "cytokine clearance (ASSUMED)"),
    "KX": Param(100.0, "pg/mL", "cytokine level of half-maximal proliferation boost (ASSUMED)"),
    "EX": Param(1.0, "1", "maximal relative proliferation boost (ASSUMED)"),
    "KS": Param(100.0, "pg/mL", "cytokine level halving the suppression a1 (ASSUMED)"),
    "pIL6X": Param(
        2.0, "1/d", "IL-6 driven by the cytokine, pg/mL IL-6 per pg/mL X per d (ASSUMED)"
    ),
    "inducible": Param(0.0, "1", "0 constitutive, 1 secretion by engaged CAR-T only", "real"),
    **il6_layer.PARAMETERS,
}
_ASSUMED = ("pX", "kX", "KX", "EX", "KS", "pIL6X", *il6_layer.ASSUMED)

_OUTPUTS = {
    **PARENT_OUTPUTS,
    "X": Output("pg/mL", "CAR-secreted cytokine (assumed)"),
    "IL6": Output("pg/mL", "serum IL-6 (assumed IL-6 layer)"),
}


class ArmoredCAR(ODEModel):
    """Cytokine-secreting CAR-T on the León-Triana solid-tumour model (constructed). Doses: Cb."""

    parameters: ClassVar = _PARAMETERS
    outputs: ClassVar = _OUTPUTS
    states: ClassVar = ("C", "T", "Cb", "B", "X", "IL6")
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
        return jnp.stack([theta["C0"], theta["T0"], z, theta["B0"], z, theta["IL6_0"] + z])

    def vector_field(self, t, y, theta):
        C, T, Cb, B, X, il6 = (y[i] for i in range(6))
        boost = 1.0 + theta["EX"] * X / (theta["KX"] + X)
        relief = 1.0 / (1.0 + X / theta["KS"])
        dC, dT, dCb, dB, kill = solid_rates(C, T, Cb, B, theta, prolif=boost, suppression=relief)
        ind = theta["inducible"]
        engaged = C * T / (theta["gT"] + T) + Cb * B / (theta["gB"] + B)
        dX = theta["pX"] * ((1.0 - ind) * (C + Cb) + ind * engaged) - theta["kX"] * X
        dIL6 = il6_layer.d_il6(il6, kill, theta, theta["pIL6X"] * X)
        return jnp.stack([dC, dT, dCb, dB, dX, dIL6])

    def observe(self, t, y, theta):
        return {
            "CART": y[0] + y[2],
            "CART_tumour": y[0],
            "tumour": y[1],
            "Bcells": y[3],
            "X": y[4],
            "IL6": y[5],
        }
