"""The bundled datasets: every one loads, with its citation and status; names and readings."""

import json

import numpy as np
import pytest

import cartkin
from cartkin import data
from cartkin.data import DataError, ParameterSet, Table

BUNDLED = data.available()


def test_the_expected_datasets_are_bundled():
    assert set(BUNDLED) >= {
        "hardiansyah2019_digitised", "axicel_zuma1_medians", "product_kinetics", "crs_rates",
        "stein2019_parameters", "lisocel_parameters", "stein2019_sim200",
        "stein2019_sim200_truth",
    }
    assert list(data.catalog()["name"]) == BUNDLED


@pytest.mark.parametrize("name", BUNDLED)
def test_every_bundled_dataset_loads_with_its_provenance(name):
    obj = data.load(name)
    meta = data.sidecar(name)
    assert meta.name == name and meta.title and meta.status
    assert meta.source.get("citation") and meta.source.get("how_obtained")
    if meta.status not in ("simulated",):
        assert "table_figure" in meta.source
    if isinstance(obj, Table | ParameterSet):
        # every column is described, and described columns are exactly the CSV's
        assert list(obj.frame.columns) == list(meta.columns)
        assert all(c.description for c in meta.columns.values())
    else:
        assert len(obj.ids) > 0 and obj.meta.status == "simulated"


def test_published_values_are_the_literature_values():
    zuma = data.load("axicel_zuma1_medians").frame.set_index("day")
    assert zuma.loc[7, "median_cells_per_uL"] == 27.5 and zuma.loc[90, "q75_cells_per_uL"] == 0.4
    h = data.load("hardiansyah2019_digitised").frame
    peak = h[(h.patient == "UPN1") & (h.quantity == "il6_peak")]
    assert peak["value"].item() == 2800 and peak["unit"].item() == "pg/mL"
    crs = data.load("crs_rates")
    assert set(crs.frame["status"]) == {"verified", "recollection"}
    assert (crs.verified()["status"] == "verified").all() and len(crs.verified()) == 14
    pk = data.load("product_kinetics").frame
    assert pk[pk.quantity == "terminal_half_life"]["value"].tolist() == [220, 352]


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(DataError, match=r"unknown dataset 'stein2019'\. Did you mean "
                       r"'stein2019_sim200'.*Available: axicel_zuma1_medians, crs_rates"):
        data.load("stein2019")
    with pytest.raises(DataError, match=r"takes no option\(s\) \['omega_reading'\]"):
        data.load("crs_rates", omega_reading="sd")


def test_stein_parameters_and_the_omega_reading():
    default = data.load("stein2019_parameters")
    assert default.omega_reading == "variance" and default.omega["foldx"] == 2.4
    assert "read as variances" in default.reading and "omega_reading='sd'" in default.reading
    sd = data.load("stein2019_parameters", omega_reading="sd")
    assert sd.omega["foldx"] == pytest.approx(2.4**2) and sd.omega_printed == default.omega_printed
    assert default.typical == {"foldx": 3900, "Tmax": 9.3, "Cmax": 24000, "alpha": 0.16,
                               "FB": 0.0079, "beta": 0.0032}
    assert default.residual == {"ln_sd": 0.56} and default.effects["Ftoci"] == 1.2
    assert default.units["Cmax"] == "copies/ug"
    why = data.sidecar("stein2019_parameters").extra["omega_reading"]
    assert why["default"] == "variance" and "430,000" in why["why_default"]
    with pytest.raises(DataError, match="omega_reading must be one of"):
        data.load("stein2019_parameters", omega_reading="cv")
    pop = default.population()
    assert isinstance(pop.model, cartkin.Stein2019)
    assert np.allclose(np.diag(pop.omega_matrix), [2.4, 0.38, 0.65, 0.91, 0.8, 0.86])


def test_lisocel_parameters():
    p = data.load("lisocel_parameters")
    assert p.omega == {} and p.omega_reading is None
    assert p.typical["thalf_slow"] == 352 and p.intervals["Td"] == (0.667, 0.821)
    with pytest.raises(DataError, match="has no random effects"):
        data.load("lisocel_parameters", omega_reading="sd")
    pop = p.population()  # Cmax and F stay at the model's own (assumed) defaults
    assert pop.model.name == "LisoCel"
    assert float(pop.theta["Td"]) == 0.755 and pop.eta_names == ()


def test_sidecars_are_valid_json_with_status_words():
    for name in BUNDLED:
        d = json.loads((data.data_dir() / f"{name}.json").read_text())
        assert d["status"] in ("verified", "unverified", "mixed (per row)", "simulated")
