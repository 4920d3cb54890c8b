"""Each validation rule, with a small file that breaks it and the message it must give.

Lines are the CSV's 1-based line numbers (header = line 1).
"""

import json

import pytest

from cartkin.data import DataError, read_nonmem

HEAD = "ID,TIME,DV,AMT,EVID,MDV,CENS,DVID"
DOSE1 = "1,0,.,1e8,1,1,0,."
ENDPOINTS = {"1": {"name": "transgene", "unit": "copies/ug", "log_scale": True}}


def _read(tmp_path, text, sidecar=None, **kwargs):
    path = tmp_path / "broken.csv"
    path.write_text(text)
    if sidecar is not None:
        (tmp_path / "broken.json").write_text(json.dumps(sidecar))
    return read_nonmem(path, **kwargs)


CASES = {
    "missing required column": (
        "ID,TIME,AMT\n1,0,1e8\n", None,
        r"line 1, column DV: required column DV is missing; expected columns ID, TIME and DV"),
    "non-numeric value": (
        f"{HEAD}\n{DOSE1}\n1,7,abc,.,0,0,0,1\n", None,
        r"line 3, column DV, value 'abc': not a number; expected a number, or '\.' or an empty"),
    "negative TIME": (
        f"{HEAD}\n1,-1,5,.,0,0,0,1\n{DOSE1}\n", None,
        r"line 2, column TIME, value '-1': TIME is negative; expected TIME >= 0"),
    "decreasing TIME within an ID": (
        f"{HEAD}\n{DOSE1}\n1,7,5,.,0,0,0,1\n1,4,6,.,0,0,0,1\n", None,
        r"line 4, column TIME, value '4': TIME decreases within ID 1 \(line 3 has TIME 7\); "
        r"expected non-decreasing TIME within an ID"),
    "dose with AMT <= 0": (
        f"{HEAD}\n1,0,.,0,1,1,0,.\n1,7,5,.,0,0,0,1\n", None,
        r"line 2, column AMT, value '0': dose with AMT <= 0; expected AMT > 0"),
    "dose without AMT": (
        f"{HEAD}\n1,0,.,.,1,1,0,.\n1,7,5,.,0,0,0,1\n", None,
        r"line 2, column AMT, value '\.': dose record without AMT"),
    "DV <= 0 on a log-scale endpoint": (
        f"{HEAD}\n{DOSE1}\n1,7,0,.,0,0,0,1\n", {"endpoints": ENDPOINTS},
        r"line 3, column DV, value '0': DV <= 0 on log-scale endpoint DVID 1 \(transgene\); "
        r"expected DV > 0; code a result below the LLOQ as CENS=1 with DV = LLOQ"),
    "CENS without LIMIT or LLOQ": (
        f"{HEAD}\n{DOSE1}\n1,7,5,.,0,0,0,1\n1,28,.,.,0,0,1,1\n", {"endpoints": ENDPOINTS},
        r"line 4, column CENS, value '1': CENS=1 without a limit: DV is missing, there is no "
        r"LLOQ on the record and the endpoint states no lloq"),
    "unknown DVID": (
        f"{HEAD}\n{DOSE1}\n1,7,5,.,0,0,0,1\n1,7,30,.,0,0,0,3\n", {"endpoints": ENDPOINTS},
        r"line 4, column DVID, value '3': unknown DVID; expected one of the endpoints declared "
        r"in the sidecar: 1 \(transgene\)"),
    "duplicate observation": (
        f"{HEAD}\n{DOSE1}\n1,7,5,.,0,0,0,1\n1,7,6,.,0,0,0,1\n", None,
        r"line 4: duplicate observation \(ID 1, TIME 7\): same ID, TIME and DVID as line 3"),
    "duplicate record": (
        f"{HEAD}\n{DOSE1}\n{DOSE1}\n1,7,5,.,0,0,0,1\n", None,
        r"line 3: duplicate record \(ID 1, TIME 0\): identical record as line 2"),
    "ID without observations": (
        f"{HEAD}\n{DOSE1}\n1,7,5,.,0,0,0,1\n2,0,.,1e8,1,1,0,.\n", None,
        r"line 4, column ID, value '2': ID 2 has no observations; expected at least one "
        r"observation record"),
    "ID records not together": (
        f"{HEAD}\n1,7,5,.,0,0,0,1\n2,7,5,.,0,0,0,1\n1,9,5,.,0,0,0,1\n", None,
        r"line 4, column ID, value '1': ID 1 appears again after other IDs \(its earlier "
        r"records end on line 2\)"),
    "unknown EVID": (
        f"{HEAD}\n{DOSE1}\n1,7,5,.,7,0,0,1\n1,8,5,.,0,0,0,1\n", None,
        r"line 3, column EVID, value '7': unknown EVID code; expected 0 \(observation\), 1 "
        r"\(dose\)"),
    "unknown CENS": (
        f"{HEAD}\n{DOSE1}\n1,7,5,.,0,0,2,1\n", None,
        r"line 3, column CENS, value '2': unknown CENS code"),
    "MDV=0 on a dose": (
        f"{HEAD}\n1,0,.,1e8,1,0,0,.\n1,7,5,.,0,0,0,1\n", None,
        r"line 2, column MDV, value '0': MDV=0 on a record that is not an observation"),
    "observation without DV": (
        f"{HEAD}\n{DOSE1}\n1,7,.,.,0,0,0,1\n1,8,5,.,0,0,0,1\n", None,
        r"line 3, column DV, value '\.': observation without DV; expected a DV, or MDV=1"),
    "AMT on an observation": (
        f"{HEAD}\n{DOSE1}\n1,7,5,100,0,0,0,1\n", None,
        r"line 3, column AMT, value '100': AMT on a record that is not a dose"),
    "wrong number of fields": (
        f"{HEAD}\n{DOSE1}\n1,7,5\n1,8,5,.,0,0,0,1\n", None,
        r"line 3, value '1,7,5': 3 fields, the header has 8"),
    "non-integer ID": (
        "ID,TIME,DV\n1.5,7,5\n", None, r"line 2, column ID, value '1.5': ID is not an integer"),
    "DV differs from the LLOQ column": (
        "ID,TIME,DV,CENS,LLOQ\n1,7,5,0,50\n1,14,40,1,50\n", None,
        r"line 3, column DV, value '40': DV differs from LLOQ on a CENS=1 record"),
    "LIMIT not below the LLOQ": (
        "ID,TIME,DV,CENS,LIMIT\n1,7,5,0,.\n1,14,50,1,60\n", None,
        r"line 3, column LIMIT, value '60': LIMIT is not below the LLOQ"),
    "duplicate column names": (
        "ID,TIME,DV,time\n1,7,5,8\n", None,
        r"line 1, column time: column name time appears twice \(names are case-insensitive\)"),
    "two columns with one role": (
        "ID,TIME,DV,CONC\n1,7,5,8\n", {"columns": {"CONC": {"role": "DV"}}},
        r"line 1, column CONC: columns DV and CONC both have role DV"),
    "baseline covariate that varies": (
        "ID,TIME,DV,WT\n1,7,5,40\n1,14,4,42\n",
        {"columns": {"WT": {"unit": "kg", "covariate": "baseline"}}},
        r"line 3, column WT, value '42': covariate WT is declared baseline but varies within ID "
        r"1 \(40 on line 2\)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_rule(tmp_path, case):
    text, sidecar, message = CASES[case]
    with pytest.raises(DataError, match=message):
        _read(tmp_path, text, sidecar)


@pytest.mark.parametrize(
    "sidecar, message",
    [
        ({"columns": {"WT": {}}}, r"broken\.json, column WT: column WT is declared in the "
         r"sidecar but is not in the CSV"),
        ({"endpoints": {"1": {"name": "transgene"}}},
         r"column endpoints\.1\.unit: endpoint DVID 1 has no unit"),
        ({"columns": {"CRP": {"covariate": "time-varying"}}},
         r"column columns\.CRP: a time-varying covariate needs a stated interpolation rule"),
        ({"columns": {"TIME": {"role": "clock"}}}, r"value 'clock': unknown role"),
        ({"endpoints": {"1": {"name": "x", "unit": "pg/mL", "lloq": -1}}},
         r"lloq must be a positive number"),
    ],
)
def test_sidecar_rules(tmp_path, sidecar, message):
    with pytest.raises(DataError, match=message):
        _read(tmp_path, f"{HEAD}\n{DOSE1}\n1,7,5,.,0,0,0,1\n", sidecar)


def test_every_problem_at_once(tmp_path):
    text = (f"{HEAD}\n{DOSE1}\n1,-1,5,.,0,0,0,1\n1,7,abc,.,0,0,0,1\n1,8,0,.,0,0,0,1\n"
            "2,0,.,0,1,1,0,.\n")
    with pytest.raises(DataError) as info:
        _read(tmp_path, text)
    found = {(p.line, p.column) for p in info.value.problems}
    # negative TIME (also decreasing after TIME 0), non-numeric DV, DV <= 0, AMT <= 0, ID 2
    # without observations: all reported together, each with its line and column
    assert {(3, "TIME"), (4, "DV"), (5, "DV"), (6, "AMT"), (6, "ID")} <= found
    assert str(info.value).startswith(f"{len(info.value.problems)} problems in ")
    frame = info.value.to_frame()
    assert list(frame.columns) == ["file", "line", "column", "value", "message", "expected"]


def test_column_map_fixes_names(tmp_path):
    text = "subj,Time,conc\n1,7,5\n"
    ds = _read(tmp_path, text, column_map={"SUBJ": "ID", "conc": "DV"})
    assert list(ds.frame.columns) == ["ID", "TIME", "DV"]
    with pytest.raises(DataError, match=r"column_map, column X: column_map names column X"):
        _read(tmp_path, text, column_map={"SUBJ": "ID", "conc": "DV", "X": "WT"})


def test_mdv_observations_are_listed_not_dropped(tmp_path):
    ds = _read(tmp_path, f"{HEAD}\n# screening visit\n{DOSE1}\n1,7,5,.,0,0,0,1\n1,9,.,.,0,1,0,1\n")
    reasons = {e.line: e.reason for e in ds.excluded}
    assert reasons[2].startswith("comment line")
    assert reasons[5] == "EVID 0 with MDV=1: not used as an observation"
    assert len(ds.frame) == 3 and len(ds.observations()) == 1


def test_unreadable_inputs(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        read_nonmem(tmp_path / "absent.csv")
    with pytest.raises(DataError, match="the file is empty"):
        _read(tmp_path, "\n\n")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "bad.csv").write_text("ID,TIME,DV\n1,7,5\n")
    with pytest.raises(DataError, match=r"bad\.json: not valid JSON"):
        read_nonmem(tmp_path / "bad.csv")
