"""Hardiansyah & Ng 2019 with the published UPN1/UPN3 parameters against values read off the paper.

The reference values are those of ``hardiansyah2019_digitized.csv`` in the project's literature
notes (Fig. 1b peaks and Fig. S1 B cells, digitised via the nlmixr2lib replication vignette); they
are copied below so that the test runs from a checkout alone, and checked against that file when it
is present. Tolerances are the digitisation errors stated there:

* CAR-T peaks (total and memory, log axis): "about x1.5";
* B cells on days 50 and 350 (linear axis): "about +/-0.1" (1e9 cells);
* cytokine baselines (post-therapy plateau): "about +/-30%";
* cytokine peaks (log axis): no error is stated; we use the x1.5 of the CAR-T peaks read off the
  same figure's log axes. One value is outside it (UPN1 IL-10, simulated/digitised = 1.66); see
  ``test_upn1_il10_peak_known_discrepancy``.
"""

from __future__ import annotations

import csv
import functools
import pathlib

import numpy as np
import pytest

import cartkin
from cartkin._models import Hardiansyah2019

CSV = pathlib.Path("/work/shared/literature/hardiansyah2019_digitized.csv")

# (patient, quantity) -> (time in days or None for a peak, value); units: 1e9 cells or pg/mL
DIGITISED = {
    ("UPN1", "cart_total_pb_peak"): (None, 2.3),
    ("UPN1", "cart_memory_pb_peak"): (None, 0.0070),
    ("UPN3", "cart_total_pb_peak"): (None, 0.12),
    ("UPN3", "cart_memory_pb_peak"): (None, 0.0075),
    ("UPN1", "il6_peak"): (None, 2800.0),
    ("UPN1", "il10_peak"): (None, 550.0),
    ("UPN1", "ifng_peak"): (None, 700.0),
    ("UPN3", "il6_peak"): (None, 50.0),
    ("UPN3", "il10_peak"): (None, 150.0),
    ("UPN3", "ifng_peak"): (None, 110.0),
    ("UPN1", "b_cells_pb@50"): (50.0, 0.30),
    ("UPN1", "b_cells_pb@350"): (350.0, 0.45),
    ("UPN1", "il6_baseline"): (0.0, 1.7),
    ("UPN1", "il10_baseline"): (0.0, 4.5),
    ("UPN1", "ifng_baseline"): (0.0, 2.3),
    ("UPN3", "il6_baseline"): (0.0, 1.0),
    ("UPN3", "il10_baseline"): (0.0, 0.5),
    ("UPN3", "ifng_baseline"): (0.0, 1.7),
}
DOSE_TOTAL_1E9 = {"UPN1": 1.1, "UPN3": 0.014}
B0_1E9 = {"UPN1": 4.14, "UPN3": 0.93}

PEAK_OUTPUT = {
    "cart_total_pb_peak": "CART_pb",
    "cart_memory_pb_peak": "CARTM_pb",
    "il6_peak": "IL6",
    "il10_peak": "IL10",
    "ifng_peak": "IFNg",
}
LOG_AXIS_FACTOR = 1.5
KNOWN_OUTSIDE = {("UPN1", "il10_peak")}

TIMES = np.arange(0.0, 400.0 + 1e-9, 0.05)  # peaks on a 0.05-d grid: < 0.01% below a 0.002-d grid


@functools.cache
def _simulated(patient):
    model = Hardiansyah2019()
    res = cartkin.simulate(
        model, model.patient(patient), TIMES, model.regimen(patient), rtol=1e-8, atol=1e-12
    )
    assert res.ok.all(), res.failures()
    return {k: v[0] for k, v in res.outputs.items()}


def test_copied_values_match_literature_file():
    if not CSV.exists():
        pytest.skip(f"{CSV} not available")
    with CSV.open(newline="") as f:
        rows = list(csv.DictReader(f))
    seen = set()
    for r in rows:
        p, q = r["patient"], r["quantity"]
        if q == "dose_total":
            assert float(r["value"]) == DOSE_TOTAL_1E9[p]
            continue
        if q == "b_cells_pb" and float(r["time_day"]) == 0:
            assert float(r["value"]) == B0_1E9[p]
            continue
        key = (p, f"{q}@{int(float(r['time_day']))}") if q == "b_cells_pb" else (p, q)
        assert DIGITISED[key][1] == float(r["value"]), key
        seen.add(key)
    assert seen == set(DIGITISED)


@pytest.mark.parametrize("patient", ["UPN1", "UPN3"])
def test_published_dose_and_burden(patient):
    model = Hardiansyah2019()
    assert model.regimen(patient).total == pytest.approx(DOSE_TOTAL_1E9[patient] * 1e9)
    sim = _simulated(patient)
    assert sim["B"][0] == pytest.approx(B0_1E9[patient], rel=1e-12)


def _peak_cases():
    for (patient, quantity), (_, value) in DIGITISED.items():
        if quantity in PEAK_OUTPUT:
            marks = []
            if (patient, quantity) in KNOWN_OUTSIDE:
                marks = [pytest.mark.xfail(strict=True, reason="simulated/digitised = 1.66")]
            yield pytest.param(patient, quantity, value, id=f"{patient}-{quantity}", marks=marks)


@pytest.mark.parametrize("patient, quantity, digitised", list(_peak_cases()))
def test_peaks_within_digitisation_error(patient, quantity, digitised):
    peak = float(np.max(_simulated(patient)[PEAK_OUTPUT[quantity]]))
    ratio = peak / digitised
    assert 1 / LOG_AXIS_FACTOR < ratio < LOG_AXIS_FACTOR, (patient, quantity, peak, digitised)


def test_upn1_il10_peak_known_discrepancy():
    """UPN1's IL-10 peak: 915 pg/mL simulated against 550 digitised (ratio 1.66).

    Not a unit or baseline effect: the peak is ~200x the baseline (4.5 pg/mL), IL-6 shares the
    same B x E_pb drive and the same 1e6 factor and matches to 2%, and IL-10 of UPN3 matches
    (0.78). With the printed P_IL10 = 7e-4 the model's IL-10/IL-6 peak ratio is fixed near
    (7e-4/1.8e-3) x (3.96/4.68) = 0.33, against 550/2800 = 0.20 in the figure. The independent
    nlmixr2lib replication reports the same 915 (and gates cytokines at x1.8). We keep a factor-2
    gate, which a wrong unit or transcription would still fail.
    """
    peak = float(np.max(_simulated("UPN1")["IL10"]))
    ratio = peak / DIGITISED[("UPN1", "il10_peak")][1]
    assert 1 / 2 < ratio < 2


@pytest.mark.parametrize("day", [50.0, 350.0])
def test_upn1_b_cells_within_digitisation_error(day):
    """Fig. S1 (linear axis, +/-0.1 x 1e9 cells)."""
    i = int(np.argmin(np.abs(TIMES - day)))
    assert TIMES[i] == pytest.approx(day)
    b = _simulated("UPN1")["B"][i]
    assert abs(b - DIGITISED[("UPN1", f"b_cells_pb@{int(day)}")][1]) < 0.1


@pytest.mark.parametrize("patient", ["UPN1", "UPN3"])
@pytest.mark.parametrize("cytokine", ["il6", "il10", "ifng"])
def test_cytokines_return_to_digitised_plateau(patient, cytokine):
    """After the response the cytokines settle on the digitised post-therapy plateau (+/-30%).

    The baselines are parameters set from these very plateaus, so this checks only that the
    response has subsided by day 300 and that the plateau is the baseline -- not a fit.
    """
    out = {"il6": "IL6", "il10": "IL10", "ifng": "IFNg"}[cytokine]
    late = _simulated(patient)[out][TIMES >= 300.0]
    plateau = DIGITISED[(patient, f"{cytokine}_baseline")][1]
    np.testing.assert_allclose(late, plateau, rtol=0.3)
