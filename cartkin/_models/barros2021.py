r"""Barros et al. 2021 (CARTmath): effector and memory CAR-T cells against a tumour, in mice.

Barros LRC, Paixao EA, Valli AMP, Naozuka GT, Fassoni AC, Almeida RC. CARTmath -- a mathematical
model of CAR-T immunotherapy in preclinical studies of hematological cancers. *Cancers*
2021;13(12):2941, doi:10.3390/cancers13122941. (Our literature notes give "Cancers 2021", the
equations and both parameter sets; the author list, volume and DOI are given from memory and were
not re-checked against the article here.)

Time in days; states in cells: effector CAR-T :math:`C_T`, memory CAR-T :math:`C_M`, tumour
:math:`T`:

.. math::

    \dot C_T &= \phi C_T - \rho C_T + \theta T C_M - \alpha T C_T

    \dot C_M &= \epsilon C_T - \theta T C_M - \mu C_M

    \dot T &= r T (1 - b T) - \gamma C_T T

Effector cells expand at :math:`\phi` and contract at :math:`\rho`, become memory at
:math:`\epsilon`; memory cells are reactivated by tumour contact (:math:`\theta`) and die at
:math:`\mu`; tumour contact exhausts effectors (:math:`\alpha`); the tumour grows logistically with
capacity :math:`1/b` and is killed at :math:`\gamma`. The infusion enters :math:`C_T`; the tumour
starts at ``T0``, CAR-T states at 0.

Two published parameter sets (xenografts in NSG mice): HDLM-2 (Hodgkin lymphoma; the default)
and Raji (Burkitt lymphoma; :meth:`Barros2021.raji`). In the Raji set :math:`b = 0`
(exponential tumour growth): it simulates, but ``b`` cannot be log-transformed for fitting there.
No dose is part of the parameter sets; the infused number of cells is the user's regimen.
Note that memory formation :math:`\epsilon C_T` is not subtracted from :math:`C_T` (as in our
transcription of the equations), and that in the Raji set :math:`\phi = \rho` and
:math:`\mu \approx 0`: once the tumour is cleared the effectors stay constant and the memory pool
grows linearly without bound.

Solver (measured by ``benchmarks/published_models_solvers.py``: rtol 1e-6, atol 1e-9, 0-100 d,
one infusion of 1e6 cells at day 0, CPU float64 on 2 shared cores; steps accepted + rejected;
times for 1 / 256 patients): HDLM-2 -- Tsit5 129 + 1 steps, 2 / 9 ms; Kvaerno5 201 + 122 steps,
32 / 397 ms. Raji -- Tsit5 1,106 + 162 steps, 8 / 57 ms; Kvaerno5 1,274 + 1,285 steps,
103 / 1,350 ms. Not stiff (``stiff = False``).
"""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp

from .base import ODEModel, Output, Param

CITATION = (
    "Barros LRC, Paixao EA, Valli AMP, Naozuka GT, Fassoni AC, Almeida RC. CARTmath - a "
    "mathematical model of CAR-T immunotherapy in preclinical studies of hematological cancers. "
    "Cancers 2021;13(12):2941. doi:10.3390/cancers13122941"
)

_PERCELL = "1/(cell d)"

_PARAMETERS = {
    "phi": Param(0.265, "1/d", "effector CAR-T expansion rate"),
    "rho": Param(0.35, "1/d", "effector CAR-T contraction rate"),
    "eps": Param(0.15, "1/d", "effector -> memory differentiation rate"),
    "theta": Param(6e-6, _PERCELL, "memory -> effector reactivation by tumour contact"),
    "alpha": Param(4.5e-8, _PERCELL, "effector inactivation by tumour contact"),
    "mu": Param(5e-3, "1/d", "memory CAR-T death rate"),
    "r": Param(0.0565, "1/d", "tumour growth rate"),
    "b": Param(1.40e-12, "1/cell", "inverse tumour carrying capacity"),
    "gamma": Param(3.72e-6, _PERCELL, "tumour killing by effector CAR-T"),
    "T0": Param(2e6, "cells", "tumour cells at time 0"),
}

#: the two published parameter sets
CELL_LINES: dict[str, dict[str, float]] = {
    "HDLM-2": {k: p.default for k, p in _PARAMETERS.items()},
    "Raji": {
        "phi": 0.83,
        "rho": 0.830,
        "eps": 1.598,
        "theta": 2.3e-4,
        "alpha": 1.25e-8,
        "mu": 6.89e-7,
        "r": 0.507,
        "b": 0.0,
        "gamma": 3.37e-8,
        "T0": 3e6,
    },
}

_OUTPUTS = {
    "CART": Output("cells", "total CAR-T cells (effector + memory)"),
    "CT": Output("cells", "effector CAR-T cells"),
    "CM": Output("cells", "memory CAR-T cells"),
    "tumour": Output("cells", "tumour cells"),
}


class Barros2021(ODEModel):
    """CARTmath (Barros 2021): effector/memory CAR-T and tumour (cells; days). Dose enters CT."""

    parameters: ClassVar = _PARAMETERS
    outputs: ClassVar = _OUTPUTS
    states: ClassVar = ("CT", "CM", "T")
    dose_state: ClassVar = "CT"
    citation: ClassVar[str] = CITATION

    @classmethod
    def cell_line(cls, name: str = "HDLM-2", **overrides: float):
        """Published theta of ``"HDLM-2"`` (default) or ``"Raji"``."""
        if name not in CELL_LINES:
            raise ValueError(f"unknown cell line {name!r}; published ones are {list(CELL_LINES)}")
        return cls().default_theta(**{**CELL_LINES[name], **overrides})

    @classmethod
    def raji(cls, **overrides: float):
        """Published theta of the Raji xenograft."""
        return cls.cell_line("Raji", **overrides)

    def initial_state(self, theta):
        z = jnp.zeros_like(theta["T0"])
        return jnp.stack([z, z, theta["T0"]])

    def vector_field(self, t, y, theta):
        CT, CM, T = y[0], y[1], y[2]
        reactivation = theta["theta"] * T * CM
        dCT = (theta["phi"] - theta["rho"] - theta["alpha"] * T) * CT + reactivation
        dCM = theta["eps"] * CT - reactivation - theta["mu"] * CM
        dT = theta["r"] * T * (1.0 - theta["b"] * T) - theta["gamma"] * CT * T
        return jnp.stack([dCT, dCM, dT])

    def observe(self, t, y, theta):
        return {"CART": y[0] + y[1], "CT": y[0], "CM": y[1], "tumour": y[2]}
