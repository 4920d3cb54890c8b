r"""León-Triana et al. 2021: CAR-T cells, leukaemic and healthy B cells in B-ALL.

León-Triana O, Sabir S, Calvo GF, Belmonte-Beitia J, Chulián S, Martínez-Rubio Á, Rosa M,
Pérez-Martínez A, Ramírez-Orellana M, Pérez-García VM. CAR T cell therapy in B-cell acute
lymphoblastic leukaemia: insights from mathematical models. *Commun Nonlinear Sci Numer Simul*
2021;94:105570, doi:10.1016/j.cnsns.2020.105570. BioModels BIOMD0000001011 (base) and
BIOMD0000001012 (marrow inflow). Equations and values as in our literature notes
(``constructs.md``, status [read]); the author list after the fifth author and the DOI are given
from memory.

Time in days; states in cells: CAR-T :math:`C`, leukaemic B cells :math:`L`, healthy CD19+ B
cells :math:`B`. With the marrow inflow of B cells (variant 1012),
:math:`I(C) = I_0 / (1 + C/C_{50})`:

.. math::

    \dot C &= \rho_C \,(L + B + \beta I(C))\, C - C/\tau_C

    \dot L &= \rho_L L - \alpha L C

    \dot B &= -\alpha B C - B/\tau_B + I(C)/\tau_I

Setting ``I0 = 0`` gives the base model (BIOMD0000001011). Values (published, "set from
literature scales, not fitted"): alpha 4.5e-11 /(cell d), rhoC 1.125e-11 /(cell d), rhoL 1/30 /d,
tauC 14 d, tauB 60 d; L0 5e10, B0 2.5e10 cells; the infusion of C0 = 1e7 CAR-T cells enters
:math:`C` (``LeonTriana2021BALL.regimen()``); inflow I0 1e7 cells, tauI 6 d, C50 1e9 cells,
beta 0.1.

OUR RECONSTRUCTION (not a published equation as printed): the converted model file of variant
1012 leaves one flux undefined; the notes give the inflow ``I0/tauI / (1 + C/C50)`` and the
stimulus ``rhoC beta I0/(1 + C/C50)``. We read the stimulus as a per-CAR-T proliferation term
like ``rhoC (L + B)`` (so it multiplies :math:`C`), and the inflow as entering :math:`B`.
Note that with the inflow the B-cell pool tends to :math:`I_0 \tau_B/\tau_I` = 1e8 cells, not to
B0, without CAR-T.

Below one cell the deterministic model has no meaning: extinction is decided after the solve
(see :mod:`cartkin._scenarios.common`), not inside the vector field.
"""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp

from .base import ODEModel, Output, Param

CITATION = (
    "León-Triana O, Sabir S, Calvo GF, et al. CAR T cell therapy in B-cell acute lymphoblastic "
    "leukaemia: insights from mathematical models. Commun Nonlinear Sci Numer Simul "
    "2021;94:105570. doi:10.1016/j.cnsns.2020.105570 (BioModels BIOMD0000001011/1012)"
)

_PERCELL = "1/(cell d)"

#: the published CAR-T infusion (cells)
C0 = 1e7

PARAMETERS = {
    "alpha": Param(4.5e-11, _PERCELL, "killing of CD19+ cells by CAR-T"),
    "rhoC": Param(1.125e-11, _PERCELL, "CAR-T proliferation per CD19+ target cell"),
    "rhoL": Param(1.0 / 30.0, "1/d", "leukaemia growth rate"),
    "tauC": Param(14.0, "d", "CAR-T mean lifetime"),
    "tauB": Param(60.0, "d", "healthy B-cell mean lifetime"),
    "L0": Param(5e10, "cells", "leukaemic cells at infusion"),
    "B0": Param(2.5e10, "cells", "healthy B cells at infusion"),
    "I0": Param(1e7, "cells", "marrow inflow scale of B cells (0: BIOMD0000001011)"),
    "tauI": Param(6.0, "d", "time scale of the marrow inflow"),
    "C50": Param(1e9, "cells", "CAR-T number halving the marrow inflow"),
    "beta": Param(0.1, "1", "CAR-T stimulus by the marrow inflow (relative to rhoC)"),
}

OUTPUTS = {
    "CART": Output("cells", "CAR-T cells"),
    "leukaemia": Output("cells", "leukaemic B cells"),
    "Bcells": Output("cells", "healthy CD19+ B cells"),
}


def inflow(C, theta):
    """Marrow inflow scale :math:`I_0/(1 + C/C_{50})` (cells)."""
    return theta["I0"] / (1.0 + C / theta["C50"])


class LeonTriana2021BALL(ODEModel):
    """León-Triana 2021 B-ALL model with marrow inflow (cells; days). Dose enters C."""

    parameters: ClassVar = PARAMETERS
    outputs: ClassVar = OUTPUTS
    states: ClassVar = ("C", "L", "B")
    dose_state: ClassVar = "C"
    citation: ClassVar[str] = CITATION

    @staticmethod
    def regimen():
        """The published infusion: 1e7 CAR-T cells at day 0."""
        from .._regimen import Regimen  # plain data; kept local so models stay the base layer

        return Regimen.single(C0)

    def initial_state(self, theta):
        return jnp.stack([jnp.zeros_like(theta["L0"]), theta["L0"], theta["B0"]])

    def vector_field(self, t, y, theta):
        C, L, B = y[0], y[1], y[2]
        inf = inflow(C, theta)
        dC = theta["rhoC"] * (L + B + theta["beta"] * inf) * C - C / theta["tauC"]
        dL = theta["rhoL"] * L - theta["alpha"] * L * C
        dB = -theta["alpha"] * B * C - B / theta["tauB"] + inf / theta["tauI"]
        return jnp.stack([dC, dL, dB])

    def observe(self, t, y, theta):
        return {"CART": y[0], "leukaemia": y[1], "Bcells": y[2]}
