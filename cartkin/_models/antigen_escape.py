r"""Antigen escape in B-ALL: single- vs dual-target CARs (OUR CONSTRUCTION on León-Triana 2021).

Parent (published): :class:`~cartkin._models.leontriana2021_ball.LeonTriana2021BALL`, whose
equations and values are kept unchanged. CONSTRUCTED here (``provenance = "constructed"``; the
form is the proposal in our literature notes, the values are ASSUMED): the leukaemia is split by
antigen,

* :math:`L_+` carries the CAR's first antigen (e.g. CD19),
* :math:`L_-` has lost it but keeps the second (e.g. CD22),
* :math:`L_{--}` has lost both,

with antigen loss :math:`L_+ \to L_-` at rate :math:`\mu` and :math:`L_- \to L_{--}` at rate
:math:`\mu_2`. ``dual`` is the setting of the CAR: 0 = single-target (kills and is stimulated by
:math:`L_+` only), 1 = dual-target (also kills and is stimulated by :math:`L_-`; escape needs the
loss of both antigens). Healthy B cells carry both antigens (on-target/off-tumour killing: B-cell
aplasia). With the inflow :math:`I(C) = I_0/(1 + C/C_{50})`, targets
:math:`A = L_+ + d L_- + B`:

.. math::

    \dot C &= \rho_C (A + \beta I(C))\, C - C/\tau_C

    \dot L_+ &= (\rho_L - \mu) L_+ - \alpha L_+ C

    \dot L_- &= \rho_{L} L_- + \mu L_+ - \mu_2 L_- - d\,\alpha L_- C

    \dot L_{--} &= \rho_{L} L_{--} + \mu_2 L_-

    \dot B &= -\alpha B C - B/\tau_B + I(C)/\tau_I

    \dot{IL6} &= k_{IL6}(IL6_0 - IL6) + p_{IL6}\,\alpha C A \quad
    \text{(the shared IL-6 layer, :mod:`~cartkin._models.il6_layer`)}

At :math:`t = 0`: :math:`L_- = f_- L_0`, :math:`L_{--} = f_-^2 L_0` (independent losses, ASSUMED),
:math:`L_+ = L_0 - L_- - L_{--}`. Limiting case (tested): with ``mu = mu2 = fneg = 0`` the states
:math:`C, L_+, B` are exactly the parent model's :math:`C, L, B`, whatever ``dual``.

ASSUMED values (``assumed_parameters``): ``mu`` 1e-8 /d and ``mu2`` = ``mu`` (antigen loss per
cell per day; no published rate in our sources), ``fneg`` 1e-7 (pre-existing antigen-negative
fraction; scenarios give it a wide log-normal spread), and the IL-6 layer's ``pIL6``. The
clinical anchor for the outcome is an abstract only (Liu et al. 2022 *J Immunother Cancer*: CR
70-90%, later relapse 30-60%, CD19+ or CD19-); Hamieh et al. 2019 *Nature* (abstract) warn that
dual-target CARs can still fail at low antigen density, which this model does not represent.
"""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp

from . import il6_layer
from .base import ODEModel, Output, Param
from .leontriana2021_ball import C0, inflow
from .leontriana2021_ball import CITATION as PARENT_CITATION
from .leontriana2021_ball import PARAMETERS as PARENT_PARAMETERS

CITATION = (
    "Construction on " + PARENT_CITATION + "; IL-6 form after Hardiansyah D, Ng CM. Clin Transl "
    "Sci 2019;12(4):343-349. doi:10.1111/cts.12636"
)

_PARAMETERS = {
    **PARENT_PARAMETERS,
    "mu": Param(1e-8, "1/d", "loss of the first antigen, L+ -> L- (ASSUMED)"),
    "mu2": Param(1e-8, "1/d", "loss of the second antigen, L- -> L-- (ASSUMED)"),
    "fneg": Param(1e-7, "1", "antigen-negative fraction of L0 at infusion (ASSUMED)", "unit"),
    "dual": Param(0.0, "1", "CAR setting: 0 single-target, 1 dual-target", "real"),
    **il6_layer.PARAMETERS,
}

_OUTPUTS = {
    "CART": Output("cells", "CAR-T cells"),
    "leukaemia": Output("cells", "all leukaemic cells"),
    "Lpos": Output("cells", "leukaemia carrying the first antigen"),
    "Lneg": Output("cells", "leukaemia without the first antigen, with the second"),
    "Lnegneg": Output("cells", "leukaemia without either antigen"),
    "Bcells": Output("cells", "healthy B cells"),
    "IL6": Output("pg/mL", "serum IL-6 (assumed IL-6 layer)"),
}


class AntigenEscapeBALL(ODEModel):
    """León-Triana B-ALL with antigen-positive/-negative leukaemia; ``dual`` 0/1 (constructed)."""

    parameters: ClassVar = _PARAMETERS
    outputs: ClassVar = _OUTPUTS
    states: ClassVar = ("C", "Lp", "Ln", "Lnn", "B", "IL6")
    dose_state: ClassVar = "C"
    citation: ClassVar[str] = CITATION
    provenance: ClassVar[str] = "constructed"
    assumed_parameters: ClassVar[tuple[str, ...]] = ("mu", "mu2", "fneg", *il6_layer.ASSUMED)

    @staticmethod
    def regimen():
        """The parent's published infusion: 1e7 CAR-T cells at day 0."""
        from .._regimen import Regimen

        return Regimen.single(C0)

    def initial_state(self, theta):
        L0, f = theta["L0"], theta["fneg"]
        ln0 = f * L0
        lnn0 = f * f * L0
        z = jnp.zeros_like(L0)
        return jnp.stack([z, L0 - ln0 - lnn0, ln0, lnn0, theta["B0"], theta["IL6_0"] + z])

    def vector_field(self, t, y, theta):
        C, Lp, Ln, Lnn, B, il6 = (y[i] for i in range(6))
        d = theta["dual"]
        inf = inflow(C, theta)
        targets = Lp + d * Ln + B
        dC = theta["rhoC"] * (targets + theta["beta"] * inf) * C - C / theta["tauC"]
        dLp = (theta["rhoL"] - theta["mu"]) * Lp - theta["alpha"] * Lp * C
        dLn = (
            theta["rhoL"] * Ln + theta["mu"] * Lp - theta["mu2"] * Ln - d * theta["alpha"] * Ln * C
        )
        dLnn = theta["rhoL"] * Lnn + theta["mu2"] * Ln
        dB = -theta["alpha"] * B * C - B / theta["tauB"] + inf / theta["tauI"]
        dIL6 = il6_layer.d_il6(il6, theta["alpha"] * C * targets, theta)
        return jnp.stack([dC, dLp, dLn, dLnn, dB, dIL6])

    def observe(self, t, y, theta):
        return {
            "CART": y[0],
            "leukaemia": y[1] + y[2] + y[3],
            "Lpos": y[1],
            "Lneg": y[2],
            "Lnegneg": y[3],
            "Bcells": y[4],
            "IL6": y[5],
        }
