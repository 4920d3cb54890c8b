r"""Kimmel, Locke & Altrock 2021: CAR-T cells competing with normal T cells, and tumour.

Kimmel GJ, Locke FL, Altrock PM. The roles of T cell competition and stochastic extinction events
in chimeric antigen receptor T cell therapy. *Proc R Soc B* 2021;288:20210229,
doi:10.1098/rspb.2021.0229. Parameters from Table 1 (calibrated on ZUMA-1 axi-cel medians).

Time in days; all states in cells: normal T cells :math:`N`, CAR-T cells :math:`C`, CD19+ tumour
cells :math:`B`; :math:`T = N + C`. Gompertz competition for a shared niche (the mean-field limit
of the paper's birth-death process):

.. math::

    \dot N &= -r_N N \ln\frac{N + C}{K_N}

    \dot C &= -r_C(T)\, C \ln\frac{N + C}{K_C},\qquad
    r_C(T) = \rho_C + \frac{b (T - K_N)^2}{a T^2 + (T - K_N)^2}

    \dot B &= r_B B - \gamma_B B \frac{C}{k_B + C}

The infusion enters :math:`C` (Table 1: :math:`C(0) = 1.8\times10^8` cells, i.e.
``Regimen.single(1.8e8)``); :math:`N(0)` and :math:`B(0)` are parameters ``N0`` and ``B0``. The
paper converts cell numbers to blood counts by dividing by :math:`5\times10^8` (its Fig. 2b initial
condition 0.36 cells/uL = 1.8e8 cells; :math:`K_N` = 500 normal T cells/uL); the outputs
``CART_conc`` and ``N_conc`` use that factor.

``rB`` is published only as a range, 0.01-0.5 /d. Its default here, 0.19 /d, is our choice
inside that range (the "medium" tumour growth rate the paper uses in its Fig. 3b progression-free
survival simulations, as read from a public transcription). It is the one assumed value
(``assumed_parameters``); everything else is Table 1.

The paper's cure/progression analysis switches the tumour to a stochastic process below ~100
cells; this class is the deterministic mean field only.

Solver (measured by ``benchmarks/published_models_solvers.py``: rtol 1e-6, atol 1e-9, 0-365 d,
published infusion, CPU float64 on 2 shared cores; steps accepted + rejected): Tsit5 234 + 12
steps, 2 ms for one patient, 17 ms for 256; Kvaerno5 672 + 577 steps, 52 ms / 568 ms. Not stiff
(``stiff = False``).
"""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp

from .base import ODEModel, Output, Param

CITATION = (
    "Kimmel GJ, Locke FL, Altrock PM. The roles of T cell competition and stochastic extinction "
    "events in chimeric antigen receptor T cell therapy. Proc R Soc B 2021;288:20210229. "
    "doi:10.1098/rspb.2021.0229"
)

#: cells per (cell/uL of blood), the paper's conversion
CELLS_PER_CELL_PER_UL = 5e8

#: Table 1 initial CAR-T number (cells), the published infusion
C0 = 1.8e8

_PARAMETERS = {
    "KN": Param(2.5e11, "cells", "normal T-cell carrying capacity"),
    "KC": Param(6.96e10, "cells", "CAR-T carrying capacity"),
    "rN": Param(0.17, "1/d", "normal T-cell net growth rate"),
    "rhoC": Param(0.0251, "1/d", "baseline CAR-T net growth rate"),
    "a": Param(0.423, "1", "signalling inefficiency factor in r_C"),
    "b": Param(0.525, "1/d", "immune reconstitution impact in r_C"),
    "gammaB": Param(1.15, "1/d", "maximal tumour killing rate"),
    "kB": Param(2.02e9, "cells", "CAR-T number of half-maximal killing"),
    "rB": Param(0.19, "1/d", "tumour net growth rate (ASSUMED: published range 0.01-0.5)"),
    "N0": Param(3e9, "cells", "normal T cells at infusion"),
    "B0": Param(9.486e10, "cells", "tumour cells at infusion (median)"),
}

_OUTPUTS = {
    "CART": Output("cells", "CAR-T cells"),
    "CART_conc": Output("cells/uL", "CAR-T cells per uL of blood (paper's conversion, / 5e8)"),
    "N": Output("cells", "normal T cells"),
    "N_conc": Output("cells/uL", "normal T cells per uL of blood (/ 5e8)"),
    "tumour": Output("cells", "CD19+ tumour cells"),
}


class Kimmel2021(ODEModel):
    """Kimmel 2021 T-cell competition model (cells; days). Dose enters C."""

    parameters: ClassVar = _PARAMETERS
    outputs: ClassVar = _OUTPUTS
    states: ClassVar = ("N", "C", "B")
    dose_state: ClassVar = "C"
    citation: ClassVar[str] = CITATION
    #: parameters whose defaults are our choice, not a published point value
    assumed_parameters: ClassVar[tuple[str, ...]] = ("rB",)

    @staticmethod
    def regimen():
        """The Table 1 infusion: 1.8e8 CAR-T cells at day 0."""
        from .._regimen import Regimen  # plain data; kept local so models stay the base layer

        return Regimen.single(C0)

    def initial_state(self, theta):
        return jnp.stack([theta["N0"], jnp.zeros_like(theta["N0"]), theta["B0"]])

    def vector_field(self, t, y, theta):
        N, C, B = y[0], y[1], y[2]
        T = N + C
        dev = (T - theta["KN"]) ** 2
        rC = theta["rhoC"] + theta["b"] * dev / (theta["a"] * T**2 + dev)
        dN = -theta["rN"] * N * jnp.log(T / theta["KN"])
        dC = -rC * C * jnp.log(T / theta["KC"])
        dB = theta["rB"] * B - theta["gammaB"] * B * C / (theta["kB"] + C)
        return jnp.stack([dN, dC, dB])

    def observe(self, t, y, theta):
        return {
            "CART": y[1],
            "CART_conc": y[1] / CELLS_PER_CELL_PER_UL,
            "N": y[0],
            "N_conc": y[0] / CELLS_PER_CELL_PER_UL,
            "tumour": y[2],
        }
