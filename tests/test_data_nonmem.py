"""Reading and writing NONMEM-style data: round trips, conventions, arrays, unit conversions."""

import json

import numpy as np
import pandas as pd
import pytest

from cartkin.data import (
    DataError,
    Sidecar,
    dataset_from_frame,
    read_nonmem,
    standard_endpoint,
    to_csv_text,
    write_nonmem,
)

FULL = """\
ID,TIME,DV,AMT,EVID,MDV,CMT,RATE,CENS,LIMIT,OCC,DVID,WT,CRP,USUBJID
# patient 1: infusion on day 0
1,0,50,.,0,0,1,.,1,0,1,1,41.1,5,P-001
1,0,.,127000000,1,1,1,0,0,.,1,.,41.1,5,P-001
1,1,12.5,.,0,0,1,.,0,.,1,1,41.1,12,P-001
1,1,3.25,.,0,0,1,.,0,.,1,2,41.1,12,P-001
1,7,23051.7,.,0,0,1,.,0,.,1,1,41.1,80.5,P-001
1,14,.,.,2,1,1,.,0,.,1,.,41.1,40,P-001
1,28,1.5e+07,.,0,0,1,.,-1,.,1,1,41.1,3,P-001
1,91,.,.,0,1,1,.,0,.,1,1,41.1,.,P-001

2,0,.,2.5e8,1,1,1,1e8,0,.,1,.,70,2,P-002
2,4,0.000123,.,0,0,1,.,0,.,1,1,70,2,P-002
2,10,100,.,3,1,1,.,0,.,2,.,70,2,P-002
2,10,.,1e8,4,1,1,0,0,.,2,.,70,2,P-002
2,14,4.5,.,0,0,1,.,0,.,2,2,70,9,P-002
"""

SIDECAR = {
    "kind": "nonmem",
    "name": "full",
    "columns": {
        "TIME": {"unit": "d"},
        "AMT": {"unit": "cells"},
        "RATE": {"unit": "cells/d"},
        "WT": {"unit": "kg", "covariate": "baseline"},
        "CRP": {"unit": "mg/L", "covariate": "time-varying", "interpolation": "locf"},
        "USUBJID": {"role": "drop", "description": "sponsor's subject id"},
    },
    "endpoints": {
        "1": {"name": "transgene", "unit": "copies/ug", "lloq": 50, "uloq": 1.5e7},
        "2": {"name": "CAR+ cells", "unit": "cells/uL", "lloq": 0.1},
    },
    "source": {"citation": "test data"},
}


@pytest.fixture
def full(tmp_path):
    (tmp_path / "full.csv").write_text(FULL)
    (tmp_path / "full.json").write_text(json.dumps(SIDECAR))
    return read_nonmem(tmp_path / "full.csv")


def test_read_write_read_is_exact(full, tmp_path):
    write_nonmem(full, tmp_path / "copy.csv")
    again = read_nonmem(tmp_path / "copy.csv")
    assert again.equals(full)
    # a file written by cartkin is reproduced byte for byte, comments and blank lines included
    write_nonmem(again, tmp_path / "copy2.csv")
    assert (tmp_path / "copy2.csv").read_bytes() == (tmp_path / "copy.csv").read_bytes()
    assert (tmp_path / "copy2.json").read_bytes() == (tmp_path / "copy.json").read_bytes()
    text = (tmp_path / "copy.csv").read_text()
    assert text.splitlines()[1] == "# patient 1: infusion on day 0"
    assert text.splitlines()[10] == ""
    # numbers in their shortest exact form; the only differences from the input
    assert text == FULL.replace("1.5e+07", "15000000").replace("2.5e8", "250000000") \
        .replace(",1e8,", ",100000000,")


def test_missing_token_and_header_prefix_kept(tmp_path):
    src = "#ID,TIME,DV,AMT\n1,0,,1e6\n1,7,5.5,\n"
    (tmp_path / "a.csv").write_text(src)
    ds = read_nonmem(tmp_path / "a.csv")
    assert to_csv_text(ds) == "#ID,TIME,DV,AMT\n1,0,,1000000\n1,7,5.5,\n"


def test_conventions(full):
    assert full.name == "full"
    assert list(full.ids) == [1, 2]
    assert full.frame.index[0] == 3  # CSV line numbers: header 1, comment 2
    assert full.frame["USUBJID"].iloc[0] == "P-001"
    assert [e.line for e in full.excluded] == [2, 10, 11]  # comment, MDV=1, blank
    rec = full.records()
    assert rec.loc[12, "EVID"] == 1 and rec.loc[12, "RATE"] == 1e8
    summary = full.summary().set_index("DVID")
    assert summary.loc[1, "observations"] == 5 and summary.loc[1, "blq_fraction"] == 0.2
    assert summary.loc[1, "aloq_fraction"] == 0.2


def test_case_insensitive_names_and_defaults(tmp_path):
    (tmp_path / "b.csv").write_text("id,Time,dv,amt\n1,0,.,1e8\n1,7,5\n")
    with pytest.raises(DataError, match="line 3, value '1,7,5': 3 fields, the header has 4"):
        read_nonmem(tmp_path / "b.csv")
    (tmp_path / "b.csv").write_text("id,Time,dv,amt\n1,0,.,1e8\n1,7,5,.\n")
    ds = read_nonmem(tmp_path / "b.csv")
    rec = ds.records()
    # no EVID column: AMT > 0 makes a dose (NM-TRAN's rule); MDV follows EVID
    assert rec["EVID"].tolist() == [1, 0] and rec["MDV"].tolist() == [1, 0]
    assert ds.subjects()[0].dose_amt.tolist() == [1e8]
    assert to_csv_text(ds).splitlines()[0] == "id,Time,dv,amt"
    assert any("DVID 1 taken as log-scale" in n for n in ds.notes)


def test_subjects_and_arrays(full):
    s1, s2 = full.subjects()
    assert s1.id == 1 and s1.time.tolist() == [0, 1, 1, 7, 28]
    assert s1.cens.tolist() == [1, 0, 0, 0, -1] and s1.dv[0] == 50 and s1.limit[0] == 0
    assert s1.line.tolist() == [3, 5, 6, 7, 9]
    assert s1.covariates == {"WT": 41.1, "CRP": 5.0}
    assert s1.covariates_at_obs["CRP"].tolist() == [5, 12, 12, 80.5, 3]  # locf
    assert s2.reset_time.tolist() == [10, 10] and s2.dose_time.tolist() == [0, 10]
    assert s2.dose_rate.tolist() == [1e8, 0] and s2.occ.tolist() == [1, 2]
    a = full.to_arrays()
    assert a.time.shape == (2, 5) and a.dose_amt.shape == (2, 2)
    assert a.mask.tolist() == [[True] * 5, [True, True, False, False, False]]
    assert a.n_obs.tolist() == [5, 2]
    assert a.time[1].tolist() == [4, 14, 14, 14, 14] and a.dv[1, 2:].tolist() == [1, 1, 1]
    assert a.covariates["WT"].tolist() == [41.1, 70]
    only2 = full.to_arrays(dvid=2)
    assert only2.n_obs.tolist() == [1, 1] and np.all(only2.dvid[only2.mask] == 2)


def test_censored_without_dv_takes_the_stated_lloq(tmp_path):
    (tmp_path / "c.csv").write_text("ID,TIME,DV,CENS,MDV\n1,7,5,0,0\n1,14,.,1,0\n")
    side = {"endpoints": {"1": {"name": "transgene", "unit": "copies/ug", "lloq": 20}}}
    ds = read_nonmem(tmp_path / "c.csv", side)
    assert ds.subjects()[0].dv.tolist() == [5, 20]


@pytest.mark.parametrize("rule, expected", [("locf", [1, 3, 3, 5]), ("nocb", [3, 3, 5, 5]),
                                            ("linear", [2, 3, 4, 5])])
def test_time_varying_interpolation(tmp_path, rule, expected):
    # CRP recorded 1, 3, 5 on days 0, 2, 4 (EVID 2 records); observations on days 1, 2, 3, 5
    text = ("ID,TIME,DV,CRP,EVID,MDV\n1,0,.,1,2,1\n1,1,9,.,0,0\n1,2,.,3,2,1\n1,2,9,.,0,0\n"
            "1,3,9,.,0,0\n1,4,.,5,2,1\n1,5,9,.,0,0\n")
    (tmp_path / "d.csv").write_text(text)
    side = {"columns": {"CRP": {"covariate": "time-varying", "interpolation": rule}}}
    s = read_nonmem(tmp_path / "d.csv", side).subjects()[0]
    assert s.time.tolist() == [1, 2, 3, 5]
    assert s.covariates_at_obs["CRP"].tolist() == expected
    assert s.covariates["CRP"] == 1  # baseline: the first recorded value


def test_unstated_covariate_kind_is_inferred_and_noted(tmp_path):
    (tmp_path / "e.csv").write_text("ID,TIME,DV,WT,CRP\n1,1,5,40,1\n1,2,6,40,2\n")
    ds = read_nonmem(tmp_path / "e.csv")
    assert ds.covariates["WT"].covariate == "baseline"
    assert ds.covariates["CRP"].interpolation == "nocb"  # NONMEM's behaviour, stated in notes
    assert any("CRP: kind not stated" in n for n in ds.notes)


def test_toml_sidecar(tmp_path):
    (tmp_path / "f.csv").write_text("ID,TIME,CONC\n1,7,5\n")
    (tmp_path / "f.toml").write_text(
        '[columns.CONC]\nrole = "DV"\n[endpoints.1]\nname = "IL-6"\nunit = "pg/mL"\n')
    ds = read_nonmem(tmp_path / "f.csv")
    assert ds.endpoints[1].unit == "pg/mL" and "DV" in ds.frame


def test_dataset_from_frame_is_checked():
    frame = pd.DataFrame({"ID": [1, 1], "TIME": [0.0, -2.0], "DV": [1.0, 2.0]})
    with pytest.raises(DataError, match=r"<frame>, line 3, column TIME, value '-2'"):
        dataset_from_frame(frame)


def test_unit_conversions_are_explicit(full):
    with pytest.raises(DataError, match="factor .* is product- and assay-specific"):
        full.convert_endpoint(1, "cells/uL")
    conv = full.convert_endpoint(1, "cells/uL", factor=1 / 2000)
    assert conv.endpoints[1].unit == "cells/uL" and conv.endpoints[1].lloq == 50 / 2000
    assert conv.frame.loc[7, "DV"] == pytest.approx(23051.7 / 2000)
    assert conv.frame.loc[6, "DV"] == full.frame.loc[6, "DV"]  # DVID 2 untouched
    per_ml = full.convert_endpoint(2, "cells/mL")
    assert per_ml.frame.loc[6, "DV"] == pytest.approx(3250.0)
    with pytest.raises(DataError, match="needs each subject's weight"):
        full.convert_doses("cells/kg")
    per_kg = full.convert_doses("cells/kg", weight="WT")
    assert per_kg.frame.loc[4, "AMT"] == pytest.approx(127e6 / 41.1)
    assert per_kg.unit("AMT") == "cells/kg" and per_kg.unit("RATE") == "cells/kg/d"
    assert per_kg.frame.loc[12, "RATE"] == pytest.approx(1e8 / 70)
    back = per_kg.convert_doses("1e6 cells", weight="WT")
    assert back.frame.loc[4, "AMT"] == pytest.approx(127.0)


def test_standard_endpoints_and_quoted_text(tmp_path):
    eps = {1: standard_endpoint("transgene", 1, lloq=50), 3: standard_endpoint("il6", 3)}
    assert eps[1].unit == "copies/ug" and eps[3].unit == "pg/mL" and eps[1].log_scale
    with pytest.raises(DataError, match="has no usual unit: pass unit="):
        standard_endpoint("tumour", 5)
    frame = pd.DataFrame({"ID": [1, 1], "TIME": [1.0, 2.0], "DV": [60.0, 4.5], "DVID": [1, 3],
                          "SITE": ["Basel, CH", '"quoted"']})
    side = Sidecar(endpoints=eps, columns={"SITE": Sidecar.from_dict(
        {"columns": {"SITE": {"role": "drop"}}}).columns["SITE"]})
    ds = dataset_from_frame(frame, side)
    write_nonmem(ds, tmp_path / "q.csv")
    again = read_nonmem(tmp_path / "q.csv")
    assert again.equals(ds) and again.frame["SITE"].tolist() == ["Basel, CH", '"quoted"']
