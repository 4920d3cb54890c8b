r"""The IL-6 layer shared by the construct models (OUR CONSTRUCTION, assumed values).

None of the construct models' parent papers has a cytokine. To give each an IL-6 output for the
CRS link, we add one state with the form of Hardiansyah & Ng 2019 (IL-6 returns to its baseline at
``kIL6`` and is produced in proportion to CAR-T/target engagement), with the engagement measured as
the number of target cells killed per day (``kill flux``, cells/d):

.. math::

    \dot{IL6} = k_{IL6}\,(IL6_0 - IL6) + p_{IL6}\,\text{kill flux} \;[+\; p_{X} X]

``kIL6`` = 3.96 /d is Hardiansyah & Ng's published IL-6 elimination rate (Table S1) and ``IL6_0``
= 1.3 pg/mL the geometric mean of their two patients' digitised baselines; ``pIL6`` is ASSUMED:
2e-7 pg/mL per killed cell makes a kill flux of 2e10 cells/d (the peak of the León-Triana B-ALL
model at its published values) hold IL-6 near 1,000 pg/mL, the range of severe CRS. The armored
model adds a term for its secreted cytokine X.
"""

from __future__ import annotations

from .base import Param

PARAMETERS = {
    "kIL6": Param(3.96, "1/d", "IL-6 elimination rate (Hardiansyah & Ng 2019 Table S1)"),
    "IL6_0": Param(1.3, "pg/mL", "IL-6 baseline (Hardiansyah & Ng 2019, digitised)"),
    "pIL6": Param(2e-7, "pg/mL per cell", "IL-6 released per target cell killed (ASSUMED)"),
}
ASSUMED = ("pIL6",)


def d_il6(il6, kill_flux, theta, extra=0.0):
    """dIL6/dt for a kill flux in cells/d (and an extra production term in pg/mL/d)."""
    return theta["kIL6"] * (theta["IL6_0"] - il6) + theta["pIL6"] * kill_flux + extra
