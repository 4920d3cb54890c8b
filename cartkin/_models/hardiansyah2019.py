r"""Hardiansyah & Ng 2019: CAR-T cells, CLL B cells and IL-6, IL-10, IFN-gamma.

Hardiansyah D, Ng CM. Quantitative systems pharmacology model of chimeric antigen receptor T-cell
therapy. *Clin Transl Sci* 2019;12(4):343-349, doi:10.1111/cts.12636. Equations 1-9 and Tables
S1-S2 are in the supplement (PMC6662387). Fitted to two CLL patients (UPN1, UPN3) of Kalos et al.
2011 *Sci Transl Med* 3:95ra73.

Time in days. Cell states in units of :math:`10^9` cells (``cells_per_unit = 1e9``): CLL B cells
in blood :math:`B`, effector CAR-T in blood / tissue :math:`E_{pb}, E_t`, memory CAR-T in blood /
tissue :math:`M_{pb}, M_t`. Cytokines :math:`IL6, IL10, IFN\gamma` in pg/mL. The infusion enters
:math:`E_{pb}`. With :math:`f = B / (B + h)`:

.. math::

    \dot B &= (r_B - d_B) B - K_{BC} E_{pb} B

    \dot E_{pb} &= r_E E_{pb} B - d_E E_{pb} - k_{in} E_{pb} + k_{out} E_t
                   - a_E E_{pb} (1 - f) + a_M M_{pb} f

    \dot E_t &= k_{in} E_{pb} - k_{out} E_t

    \dot M_{pb} &= (r_M - d_M) M_{pb} - k_{in} M_{pb} + k_{out} M_t
                   + a_E E_{pb} (1 - f) - a_M M_{pb} f

    \dot M_t &= k_{in} M_{pb} - k_{out} M_t

    \dot{IL6} &= d_{IL6} (IL6_0 - IL6) + 10^6 P_{IL6} B E_{pb}
    \quad (\text{IL-10 likewise})

    \dot{IFN\gamma} &= d_{IFN\gamma}(IFN\gamma_0 - IFN\gamma)
        + 10^6 P_{IFN\gamma} B E_{pb} [a_G + (1 - a_G) b_G / (IL10 + b_G)]

The factor :math:`10^6` converts the production constants (pg/uL per :math:`10^{15}` cells^2 per
day, as printed) to pg/mL per day with cells in :math:`10^9`.

Two defects of the printed supplement are resolved as in the replication of the paper's own
figures (nlmixr2lib ``Hardiansyah_2019_CART_upn1_qsp`` vignette): (a) the memory gain term printed
as :math:`a_E M_{pb}(1-f)` is :math:`a_E E_{pb}(1-f)` (as printed, memory stays identically
zero); (b) :math:`h = 10^5` is used numerically in the same :math:`10^9`-cell units as :math:`B`
(the printed unit "cells/mL" does not reproduce Fig. 1b). Consequently :math:`f \approx 0` over the
whole published range: memory forms at full rate and the :math:`a_M` term is inactive.

Parameters: Table S1 (fixed, both patients) and Table S2 (estimated; defaults are UPN1's).
:math:`B_0` is from the Fig. 2 caption. The cytokine baselines ``IL6_0``, ``IL10_0``, ``IFNg_0``
are in no table: they were digitised from the post-therapy plateaus of Fig. 1b (about +/-30%),
so they are figure-derived, not printed values. Use :meth:`Hardiansyah2019.patient` for the
UPN1 / UPN3 sets and :meth:`Hardiansyah2019.regimen` for the published 10/30/60% split infusion.

With the published values the simulated peaks agree with those digitised from Fig. 1b within
the digitisation error (x1.5 on the log axes) except UPN1's IL-10 peak, 915 pg/mL against 550
(x1.66); see ``tests/test_hardiansyah2019_digitised.py``.

Outputs: ``CART_pb`` (total CAR-T in blood, :math:`E_{pb} + M_{pb}`, :math:`10^9` cells),
``CARTM_pb`` (memory CAR-T in blood), ``CART_pb_conc`` (the same total in cells/uL, assuming a
blood volume of ``blood_volume_l`` = 5 L -- our assumption, the paper gives no volume), ``B``,
``IL6``, ``IL10``, ``IFNg``.

Solver (measured by ``benchmarks/published_models_solvers.py``: rtol 1e-6, atol 1e-9, published
regimens, CPU float64 on 2 shared cores, so times are rough; steps are accepted + rejected):

=========  ====================  ======================  ===========  ==============
patient    solver                steps, 0-400 d          1 patient    256 patients
=========  ====================  ======================  ===========  ==============
UPN1       Tsit5                 10,878 + 2,060          72 ms        585 ms
UPN1       Kvaerno5              644 + 577               117 ms       1,200 ms
UPN3       Tsit5                 9,157 + 2,495           65 ms        517 ms
UPN3       Kvaerno5              809 + 724               123 ms       1,585 ms
=========  ====================  ======================  ===========  ==============

Tsit5 is stability-limited (:math:`k_{in}` = 76.8 /d, :math:`d_E` = 23 /d): its steps grow with
the horizon (0-730 d: 19,328 + 4,383 for UPN1, more than ``simulate``'s default ``max_steps`` =
16,384 per segment, so the solve fails with MAX_STEPS), while Kvaerno5 needs 651 + 577 for 730 d.
Hence ``stiff = True``: ``simulate`` then uses cartkin's batched Rodas5 solver
(``cartkin/_batched.py``: 189 + 12 steps over 90 d; see benchmarks/README.md), and fits use
Kvaerno5 (diffrax), which is about 1.6-2.5x slower than Tsit5 on a 400-d CPU run,
but robust to the horizon and to faster parameter draws. At rtol 1e-10, Tsit5 takes 12,374 + 1,747
steps (UPN1, 400 d), Kvaerno5 4,885 + 4,567. Kvaerno5 rejects nearly one step per accepted step
with the default PID controller; ``PIDController(pcoeff=0.3, icoeff=0.3)`` cuts UPN1 to 431 + 70.
"""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp

from .base import ODEModel, Output, Param

CITATION = (
    "Hardiansyah D, Ng CM. Quantitative systems pharmacology model of chimeric antigen receptor "
    "T-cell therapy. Clin Transl Sci 2019;12(4):343-349. doi:10.1111/cts.12636"
)

_C = "1e9 cells"
_PERCELL = "1/(1e9 cells d)"
_PROD = "pg/uL per 1e15 cells^2 per d"

_PARAMETERS = {
    # Table S1 (fixed, both patients)
    "dIL6": Param(3.96, "1/d", "IL-6 elimination rate"),
    "dIL10": Param(4.68, "1/d", "IL-10 elimination rate"),
    "dIFNg": Param(1.51, "1/d", "IFN-gamma elimination rate"),
    "aG": Param(0.59, "1", "residual IFN-gamma secretion under maximal IL-10 inhibition", "unit"),
    "bG": Param(650.0, "pg/mL", "IL-10 level of half-maximal IFN-gamma inhibition"),
    "rM": Param(0.0509, "1/d", "memory CAR-T growth rate"),
    "dM": Param(0.408, "1/d", "memory CAR-T death rate"),
    "aM": Param(1.0, "1/d", "memory -> effector activation rate"),
    "kin": Param(76.78, "1/d", "CAR-T distribution rate, blood -> tissue"),
    "kout": Param(1.84, "1/d", "CAR-T distribution rate, tissue -> blood"),
    "h": Param(1e5, _C, "half-saturation of f(B) (used in B units; see module docstring)"),
    "rB": Param(9.3e-3, "1/d", "CLL B-cell growth rate"),
    "dB": Param(7.6e-3, "1/d", "CLL B-cell death rate"),
    # Table S2 (estimated; UPN1)
    "P_IL6": Param(1.8e-3, _PROD, "IL-6 production by B x E_pb contact"),
    "P_IL10": Param(7e-4, _PROD, "IL-10 production by B x E_pb contact"),
    "P_IFNg": Param(3e-4, _PROD, "IFN-gamma production by B x E_pb contact"),
    "rE": Param(16.16, _PERCELL, "effector CAR-T expansion per B cell"),
    "dE": Param(23.04, "1/d", "effector CAR-T elimination rate"),
    "aE": Param(0.024, "1/d", "effector -> memory conversion rate"),
    "KBC": Param(0.19, _PERCELL, "B-cell killing by effector CAR-T"),
    # initial state (UPN1)
    "B0": Param(4.14, _C, "baseline CLL B cells in blood (Fig. 2 caption)"),
    "IL6_0": Param(1.7, "pg/mL", "IL-6 baseline (digitised from Fig. 1b)"),
    "IL10_0": Param(4.5, "pg/mL", "IL-10 baseline (digitised from Fig. 1b)"),
    "IFNg_0": Param(2.3, "pg/mL", "IFN-gamma baseline (digitised from Fig. 1b)"),
}

#: Table S2 estimates, B0 (Fig. 2 caption) and digitised cytokine baselines, per patient.
PATIENTS: dict[str, dict[str, float]] = {
    "UPN1": {
        "P_IL6": 1.8e-3,
        "P_IL10": 7e-4,
        "P_IFNg": 3e-4,
        "rE": 16.16,
        "dE": 23.04,
        "aE": 0.024,
        "KBC": 0.19,
        "B0": 4.14,
        "IL6_0": 1.7,
        "IL10_0": 4.5,
        "IFNg_0": 2.3,
    },
    "UPN3": {
        "P_IL6": 6e-3,
        "P_IL10": 1.7e-2,
        "P_IFNg": 6e-3,
        "rE": 14.40,
        "dE": 1.44,
        "aE": 0.12,
        "KBC": 2.21,
        "B0": 0.93,
        "IL6_0": 1.0,
        "IL10_0": 0.5,
        "IFNg_0": 1.7,
    },
}

#: Published infusions: total cells, split 10/30/60% on days 0, 1, 2.
DOSING: dict[str, tuple[float, tuple[float, ...], tuple[float, ...]]] = {
    "UPN1": (1.1e9, (0.1, 0.3, 0.6), (0.0, 1.0, 2.0)),
    "UPN3": (1.4e7, (0.1, 0.3, 0.6), (0.0, 1.0, 2.0)),
}

_OUTPUTS = {
    "CART_pb": Output(_C, "total CAR-T in peripheral blood (E_pb + M_pb)"),
    "CARTM_pb": Output(_C, "memory CAR-T in peripheral blood"),
    "CART_pb_conc": Output("cells/uL", "total CAR-T in blood per uL (assumed blood volume)"),
    "B": Output(_C, "CLL B cells in peripheral blood"),
    "IL6": Output("pg/mL", "IL-6"),
    "IL10": Output("pg/mL", "IL-10"),
    "IFNg": Output("pg/mL", "IFN-gamma"),
}


def _check_patient(patient: str) -> None:
    if patient not in PATIENTS:
        raise ValueError(f"unknown patient {patient!r}; published ones are {list(PATIENTS)}")


class Hardiansyah2019(ODEModel):
    """Hardiansyah & Ng 2019 QSP model (cells in 1e9 cells, cytokines in pg/mL, days)."""

    blood_volume_l: float = 5.0

    parameters: ClassVar = _PARAMETERS
    outputs: ClassVar = _OUTPUTS
    states: ClassVar = ("B", "E_pb", "E_t", "M_pb", "M_t", "IL6", "IL10", "IFNg")
    dose_state: ClassVar = "E_pb"
    cells_per_unit: ClassVar = 1e9
    stiff: ClassVar = True
    citation: ClassVar[str] = CITATION

    @classmethod
    def patient(cls, patient: str = "UPN1", **overrides: float):
        """Published theta of ``"UPN1"`` or ``"UPN3"`` (Table S1 + S2, B0, baselines)."""
        _check_patient(patient)
        return cls().default_theta(**{**PATIENTS[patient], **overrides})

    @staticmethod
    def regimen(patient: str = "UPN1"):
        """The published infusion of ``patient``: 10/30/60% of the total on days 0, 1, 2."""
        _check_patient(patient)
        from .._regimen import Regimen  # plain data; kept local so models stay the base layer

        total, fractions, times = DOSING[patient]
        return Regimen.fractionated(total, fractions, times)

    def initial_state(self, theta):
        z = jnp.zeros_like(theta["B0"])
        return jnp.stack(
            [theta["B0"], z, z, z, z, theta["IL6_0"], theta["IL10_0"], theta["IFNg_0"]]
        )

    def vector_field(self, t, y, theta):
        B, Epb, Et, Mpb, Mt, il6, il10, ifng = (y[i] for i in range(8))
        f = B / (B + theta["h"])
        kin, kout = theta["kin"], theta["kout"]
        to_mem = theta["aE"] * Epb * (1.0 - f)
        to_eff = theta["aM"] * Mpb * f
        dB = (theta["rB"] - theta["dB"]) * B - theta["KBC"] * Epb * B
        dEpb = (theta["rE"] * B - theta["dE"] - kin) * Epb + kout * Et - to_mem + to_eff
        dEt = kin * Epb - kout * Et
        dMpb = (theta["rM"] - theta["dM"] - kin) * Mpb + kout * Mt + to_mem - to_eff
        dMt = kin * Mpb - kout * Mt
        contact = 1e6 * B * Epb
        inhib = theta["aG"] + (1.0 - theta["aG"]) * theta["bG"] / (il10 + theta["bG"])
        d6 = theta["dIL6"] * (theta["IL6_0"] - il6) + theta["P_IL6"] * contact
        d10 = theta["dIL10"] * (theta["IL10_0"] - il10) + theta["P_IL10"] * contact
        dg = theta["dIFNg"] * (theta["IFNg_0"] - ifng) + theta["P_IFNg"] * contact * inhib
        return jnp.stack([dB, dEpb, dEt, dMpb, dMt, d6, d10, dg])

    def observe(self, t, y, theta):
        cart = y[1] + y[3]
        return {
            "CART_pb": cart,
            "CARTM_pb": y[3],
            "CART_pb_conc": cart * self.cells_per_unit / (self.blood_volume_l * 1e6),
            "B": y[0],
            "IL6": y[5],
            "IL10": y[6],
            "IFNg": y[7],
        }
