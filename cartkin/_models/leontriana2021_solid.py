r"""León-Triana et al. 2021: CAR-T cells against a solid tumour, with off-tumour stimulation.

León-Triana O, Pérez-Martínez A, Ramírez-Orellana M, Pérez-García VM. Dual-target CAR-Ts with on-
and off-tumour activity may override immune suppression in solid cancers: a mathematical proof of
concept. *Cancers* 2021;13(4):703, doi:10.3390/cancers13040703. BioModels BIOMD0000001014.
Equations and values as in our literature notes (``constructs.md``, status [read]); the title and
DOI are given from memory.

Time in days; states in cells: CAR-T at the tumour :math:`C`, tumour :math:`T`, CAR-T off tumour
:math:`C_b`, B cells :math:`B` (a second antigen on B cells gives the CAR an off-tumour stimulus):

.. math::

    \dot C &= \rho_C \frac{C T}{g_T + T} + k C_b - a_1 \frac{C T}{g_C + C} - C/\tau_C

    \dot T &= \rho_T T - a_2 C T

    \dot C_b &= \rho_{C_b} \frac{C_b B}{g_B + B} - C_b/\tau_C - k C_b

    \dot B &= -a_B B C_b - B/\tau_B

``a1`` is the tumour's immunosuppression (the paper sweeps it over 0-0.1 /d). Published values
(proof of concept, not fitted): rhoC 0.9 /d, gT 1e10, a1 0.02 /d, gC 2e9, tauC 7 d, rhoT 0.02 /d,
a2 2.5e-10 /(cell d), rhoCb 0.9 /d, gB 1e10, k 0.2 /d, aB 4.5e-11 /(cell d), tauB 60 d; initial
T0 3.35e10, B0 2.5e10, CAR-T 8e7 at the tumour (``C0``) and 2e8 off tumour.

Infusions enter :math:`C_b` (the blood); the paper's initial condition is ``C0 = 8e7`` plus
``Regimen.single(2e8)`` (:meth:`LeonTriana2021Solid.regimen`). For a trial in which all cells are
infused, set ``C0 = 0``. For a CLDN18.2 CAR, read :math:`B` as the normal antigen-positive tissue
(gastric mucosa) -- a reinterpretation of ours, with the B-cell values.
"""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp

from .base import ODEModel, Output, Param

CITATION = (
    "León-Triana O, Pérez-Martínez A, Ramírez-Orellana M, Pérez-García VM. Dual-target CAR-Ts "
    "with on- and off-tumour activity may override immune suppression in solid cancers: a "
    "mathematical proof of concept. Cancers 2021;13(4):703. doi:10.3390/cancers13040703 "
    "(BioModels BIOMD0000001014)"
)

_PERCELL = "1/(cell d)"

PARAMETERS = {
    "rhoC": Param(0.9, "1/d", "CAR-T proliferation at the tumour (maximal)"),
    "gT": Param(1e10, "cells", "tumour size of half-maximal CAR-T stimulation"),
    "a1": Param(0.02, "1/d", "immunosuppression: CAR-T inactivation by the tumour"),
    "gC": Param(2e9, "cells", "CAR-T number of half-maximal inactivation"),
    "tauC": Param(7.0, "d", "CAR-T mean lifetime"),
    "rhoT": Param(0.02, "1/d", "tumour growth rate"),
    "a2": Param(2.5e-10, _PERCELL, "tumour killing by CAR-T"),
    "rhoCb": Param(0.9, "1/d", "CAR-T proliferation off tumour (maximal)"),
    "gB": Param(1e10, "cells", "B-cell number of half-maximal off-tumour stimulation"),
    "k": Param(0.2, "1/d", "CAR-T migration to the tumour"),
    "aB": Param(4.5e-11, _PERCELL, "B-cell killing by CAR-T off tumour"),
    "tauB": Param(60.0, "d", "B-cell mean lifetime"),
    "T0": Param(3.35e10, "cells", "tumour cells at infusion"),
    "B0": Param(2.5e10, "cells", "B cells (off-tumour antigen) at infusion"),
    "C0": Param(8e7, "cells", "CAR-T at the tumour at time 0 (published; 0 for a trial)", "real"),
}

OUTPUTS = {
    "CART": Output("cells", "all CAR-T cells (at and off the tumour)"),
    "CART_tumour": Output("cells", "CAR-T cells at the tumour"),
    "tumour": Output("cells", "tumour cells"),
    "Bcells": Output("cells", "off-tumour antigen-positive cells (B cells)"),
}

#: published off-tumour CAR-T at time 0 (cells), given as an infusion
CB0 = 2e8


def solid_rates(C, T, Cb, B, theta, *, prolif=1.0, suppression=1.0):
    """The four derivatives of the parent, with multipliers on proliferation and on ``a1``.

    Returns ``(dC, dT, dCb, dB, kill flux)``; the kill flux (cells/d) is ``a2 C T + aB B Cb``.
    """
    stimC = theta["rhoC"] * prolif * C * T / (theta["gT"] + T)
    inact = theta["a1"] * suppression * C * T / (theta["gC"] + C)
    dC = stimC + theta["k"] * Cb - inact - C / theta["tauC"]
    kill_t = theta["a2"] * C * T
    dT = theta["rhoT"] * T - kill_t
    stimCb = theta["rhoCb"] * prolif * Cb * B / (theta["gB"] + B)
    dCb = stimCb - Cb / theta["tauC"] - theta["k"] * Cb
    kill_b = theta["aB"] * B * Cb
    dB = -kill_b - B / theta["tauB"]
    return dC, dT, dCb, dB, kill_t + kill_b


class LeonTriana2021Solid(ODEModel):
    """León-Triana 2021 solid-tumour model (cells; days). Doses enter Cb."""

    parameters: ClassVar = PARAMETERS
    outputs: ClassVar = OUTPUTS
    states: ClassVar = ("C", "T", "Cb", "B")
    dose_state: ClassVar = "Cb"
    citation: ClassVar[str] = CITATION

    @staticmethod
    def regimen():
        """The published off-tumour CAR-T at time 0 (2e8 cells), as an infusion into Cb."""
        from .._regimen import Regimen

        return Regimen.single(CB0)

    def initial_state(self, theta):
        return jnp.stack([theta["C0"], theta["T0"], jnp.zeros_like(theta["T0"]), theta["B0"]])

    def vector_field(self, t, y, theta):
        dC, dT, dCb, dB, _ = solid_rates(y[0], y[1], y[2], y[3], theta)
        return jnp.stack([dC, dT, dCb, dB])

    def observe(self, t, y, theta):
        return {"CART": y[0] + y[2], "CART_tumour": y[0], "tumour": y[1], "Bcells": y[3]}
