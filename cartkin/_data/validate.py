"""The checks of a NONMEM-style dataset: every rule, every record, all problems at once.

Each rule adds :class:`~cartkin._data.problems.Problem` objects (line, column, value, what is
expected) to one list; nothing stops at the first problem. Records that are kept but not used as
observations (EVID 0 with MDV 1) are listed as excluded, with the reason.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from .problems import Excluded, ProblemList
from .records import DOSE_EVIDS, RESET_EVIDS, complete_records, is_observation
from .sidecar import ColumnSpec, Endpoint, Sidecar

_CODES = {
    "EVID": ((0, 1, 2, 3, 4), "0 (observation), 1 (dose), 2 (other), 3 (reset) or 4 (reset "
             "and dose)"),
    "MDV": ((0, 1), "0 (DV used) or 1 (DV missing or not used)"),
    "CENS": ((-1, 0, 1), "0 (quantified), 1 (below the LLOQ, DV = LLOQ) or -1 (above the "
             "ULOQ, DV = ULOQ)"),
}


@dataclasses.dataclass
class Checked:
    """What the checks found besides problems: exclusions, endpoints, covariates, notes."""

    excluded: list[Excluded]
    endpoints: dict[int, Endpoint]
    columns: dict[str, ColumnSpec]
    notes: list[str]


def _fmt(v) -> str:
    v = float(v)
    return str(int(v)) if v.is_integer() and abs(v) < 1e16 else repr(v)


def check_records(frame: pd.DataFrame, meta: Sidecar, problems: ProblemList,
                  bad_lines: set[int]) -> Checked:
    """Apply every rule to ``frame`` (index: CSV line numbers; NONMEM items by standard name).

    ``meta.columns`` maps each header name to its resolved spec; ``bad_lines`` are records with
    unparseable cells, already reported, which the per-record rules skip.
    """
    rec = complete_records(frame)
    lines = rec.index.to_numpy()
    good = ~np.isin(lines, list(bad_lines))
    notes: list[str] = []

    def each(mask, column, message, expected):
        """A problem on every (parseable) record in ``mask``, showing the value as in the file
        (the NONMEM default when the column is absent)."""
        source = frame if column in frame else rec
        for line in lines[np.asarray(mask) & good]:
            problems.add(int(line), column, source.at[line, column], message, expected)

    ids, times = rec["ID"].to_numpy(float), rec["TIME"].to_numpy(float)
    each(np.isnan(ids), "ID", "ID is missing", "an integer subject identifier")
    each(~np.isnan(ids) & (ids != np.round(ids)), "ID", "ID is not an integer",
         "an integer subject identifier (NONMEM reads IDs as integers)")
    each(np.isnan(times), "TIME", "TIME is missing", "a time >= 0")
    each(times < 0, "TIME", "TIME is negative",
         "TIME >= 0 (time since the first dose; a pre-dose sample is at TIME 0, before the dose "
         "record)")
    for name, (codes, expected) in _CODES.items():
        v = rec[name].to_numpy(float)
        each(~np.isin(v, codes), name, f"unknown {name} code", expected)
    evid, mdv, cens = (rec[c].to_numpy(float) for c in ("EVID", "MDV", "CENS"))
    amt, dv = rec["AMT"].to_numpy(float), rec["DV"].to_numpy(float)
    for name in ("CMT", "DVID", "OCC"):
        v = rec[name].to_numpy(float)
        low = 0 if name == "OCC" else 1
        bad = ~np.isnan(v) & ((v != np.round(v)) | (v < low))
        each(bad, name, f"{name} is not an integer >= {low}", f"an integer >= {low}")
    rate = rec["RATE"].to_numpy(float)
    each((rate < 0) & ~np.isin(rate, (-1, -2)), "RATE", "RATE is negative",
         "RATE > 0 (infusion), 0 (bolus), -1 (modelled rate) or -2 (modelled duration)")

    dose = np.isin(evid, DOSE_EVIDS)
    amt_raw = frame["AMT"].to_numpy(float) if "AMT" in frame else np.full(len(rec), np.nan)
    each(dose & np.isnan(amt_raw), "AMT", "dose record without AMT",
         "AMT > 0 (the amount given, in the AMT column's unit)")
    each(dose & (amt_raw <= 0), "AMT", "dose with AMT <= 0",
         "AMT > 0 (the amount given, in the AMT column's unit)")
    each(~dose & np.isin(evid, (0, 2, 3)) & (amt != 0), "AMT",
         "AMT on a record that is not a dose",
         "AMT 0 or '.' unless EVID is 1 or 4 (dose records)")
    each(np.isin(evid, (1, 2, 3, 4)) & (mdv == 0), "MDV",
         "MDV=0 on a record that is not an observation", "MDV=1 on EVID 1, 2, 3 and 4 records")

    obs = is_observation(rec).to_numpy() & good
    endpoints = _endpoints(rec, obs, meta, notes)
    dvid = rec["DVID"].to_numpy(float)
    known = np.isin(dvid, list(endpoints))
    each(obs & np.isnan(dvid), "DVID", "DVID is missing on an observation",
         "the endpoint number of the observation")
    if meta.endpoints:
        each(obs & ~np.isnan(dvid) & ~known, "DVID", "unknown DVID",
             "one of the endpoints declared in the sidecar: "
             + ", ".join(f"{k} ({e.name})" for k, e in sorted(endpoints.items())))
    each(obs & (cens == 0) & np.isnan(dv), "DV", "observation without DV",
         "a DV, or MDV=1 to mark the record as not observed")
    _check_censoring(rec, obs & known, endpoints, each)
    for k, ep in endpoints.items():
        on = obs & (dvid == k)
        if ep.log_scale:
            each(on & (dv <= 0), "DV", f"DV <= 0 on log-scale endpoint DVID {k} ({ep.name})",
                 "DV > 0; code a result below the LLOQ as CENS=1 with DV = LLOQ")
        if ep.lloq is not None and np.any(on & (cens == 0) & (dv < ep.lloq)):
            n = int(np.sum(on & (cens == 0) & (dv < ep.lloq)))
            notes.append(f"{n} quantified observation(s) of DVID {k} lie below its stated LLOQ "
                         f"{_fmt(ep.lloq)} (kept as reported, CENS=0)")
    excluded = [Excluded(int(line), float(ids[i]), "EVID 0 with MDV=1: not used as an "
                         "observation") for i, line in enumerate(lines)
                if good[i] and evid[i] == 0 and mdv[i] == 1]

    _check_subjects(rec, good, obs, problems)
    _check_duplicates(rec, good, obs, problems)
    columns = _check_covariates(frame, rec, good, meta, problems, notes)
    return Checked(excluded, endpoints, columns, notes)


def _endpoints(rec, obs, meta: Sidecar, notes) -> dict[int, Endpoint]:
    if meta.endpoints:
        return dict(meta.endpoints)
    found = sorted({int(k) for k in rec["DVID"].to_numpy(float)[obs] if k == k and k >= 1})
    if found:
        notes.append("endpoints not declared (no sidecar 'endpoints'): DVID "
                     + ", ".join(map(str, found)) + " taken as log-scale endpoints of unknown unit")
    return {k: Endpoint(k, f"DVID{k}", None) for k in found}


def _check_censoring(rec, obs, endpoints, each):
    cens, dv = rec["CENS"].to_numpy(float), rec["DV"].to_numpy(float)
    dvid = rec["DVID"].to_numpy(float)
    lloq_col, limit = rec["LLOQ"].to_numpy(float), rec["LIMIT"].to_numpy(float)
    ep_lloq = np.array([_ep(endpoints, k, "lloq") for k in dvid])
    ep_uloq = np.array([_ep(endpoints, k, "uloq") for k in dvid])
    below, above = obs & (cens == 1), obs & (cens == -1)
    each(below & np.isnan(dv) & np.isnan(lloq_col) & np.isnan(ep_lloq), "CENS",
         "CENS=1 without a limit: DV is missing, there is no LLOQ on the record and the "
         "endpoint states no lloq",
         "DV = LLOQ on a censored record (or an LLOQ column, or \"lloq\" for the endpoint in "
         "the sidecar)")
    each(above & np.isnan(dv) & np.isnan(ep_uloq), "CENS",
         "CENS=-1 without a limit: DV is missing and the endpoint states no uloq",
         "DV = ULOQ on a record above the ULOQ (or \"uloq\" for the endpoint in the sidecar)")
    each(below & ~np.isnan(dv) & ~np.isnan(lloq_col) & (dv != lloq_col), "DV",
         "DV differs from LLOQ on a CENS=1 record", "DV = LLOQ on a record below the LLOQ")
    bound = np.where(np.isnan(dv), np.where(np.isnan(lloq_col), ep_lloq, lloq_col), dv)
    each(below & ~np.isnan(limit) & (limit >= bound), "LIMIT", "LIMIT is not below the LLOQ",
         "LIMIT < LLOQ on a CENS=1 record (the value lies between LIMIT and the LLOQ)")
    bound_up = np.where(np.isnan(dv), ep_uloq, dv)
    each(above & ~np.isnan(limit) & (limit <= bound_up), "LIMIT", "LIMIT is not above the ULOQ",
         "LIMIT > ULOQ on a CENS=-1 record (the value lies between the ULOQ and LIMIT)")


def _ep(endpoints, k, attr):
    ep = endpoints.get(int(k)) if k == k else None
    v = getattr(ep, attr) if ep is not None else None
    return np.nan if v is None else v


def _check_subjects(rec, good, obs, problems):
    ids = rec["ID"].to_numpy(float)
    times, evid = rec["TIME"].to_numpy(float), rec["EVID"].to_numpy(float)
    lines = rec.index.to_numpy()
    seen: dict[float, int] = {}
    prev_id, prev_t, prev_line = None, None, None
    for i, line in enumerate(lines):
        if not good[i] or np.isnan(ids[i]):
            continue
        sid = ids[i]
        if sid != prev_id:
            if sid in seen:
                problems.add(int(line), "ID", sid, f"ID {_fmt(sid)} appears again after other "
                             f"IDs (its earlier records end on line {seen[sid]})",
                             "the records of each ID together (NONMEM would read this as a new "
                             "subject)")
            prev_t = None
        elif (prev_t is not None and times[i] < prev_t and evid[i] not in RESET_EVIDS):
            problems.add(int(line), "TIME", times[i], f"TIME decreases within ID {_fmt(sid)} "
                         f"(line {prev_line} has TIME {_fmt(prev_t)})",
                         "non-decreasing TIME within an ID (only an EVID 3 or 4 reset may go "
                         "back in time)")
        seen[sid] = int(line)
        prev_id = sid
        if not np.isnan(times[i]):
            prev_t, prev_line = times[i], int(line)
    has_obs = set(ids[obs])
    first: dict[float, int] = {}
    for i, line in enumerate(lines):
        if good[i] and not np.isnan(ids[i]):
            first.setdefault(ids[i], int(line))
    for sid, line in first.items():
        if sid not in has_obs:
            problems.add(line, "ID", sid, f"ID {_fmt(sid)} has no observations",
                         "at least one observation record (EVID 0, MDV 0) per ID")


def _check_duplicates(rec, good, obs, problems):
    sub, o = rec[good], obs[good]
    for frame, key, what, expected in (
        (sub[o], ["ID", "TIME", "DVID"], "duplicate observation",
         "one observation per ID, TIME and endpoint (average replicates, or set MDV=1 on the one "
         "not used)"),
        (sub[~o], list(sub.columns), "duplicate record", "each record once"),
    ):
        dup = frame[frame.duplicated(subset=key, keep=False)]
        for _, grp in dup.groupby(key, sort=False, dropna=False):
            first = int(grp.index[0])
            for line in grp.index[1:]:
                r = grp.loc[line]
                same = ("same ID, TIME and DVID" if what == "duplicate observation"
                        else "identical record")
                problems.add(int(line), None, None,
                             f"{what} (ID {_fmt(r['ID'])}, TIME {_fmt(r['TIME'])}): {same} as "
                             f"line {first}", expected)


def _check_covariates(frame, rec, good, meta, problems, notes) -> dict[str, ColumnSpec]:
    columns = dict(meta.columns)
    ids = rec["ID"].to_numpy(float)
    for header, spec in meta.columns.items():
        if spec.role != "covariate":
            continue
        v = frame[header].to_numpy(float)
        df = pd.DataFrame({"id": ids, "v": v, "line": rec.index.to_numpy()})
        df = df[good & ~np.isnan(ids) & ~np.isnan(v)]
        first = df.groupby("id", sort=False).nth(0).set_index("id")
        diff = df[df["v"].to_numpy() != first.loc[df["id"], "v"].to_numpy()]
        diff = diff.groupby("id", sort=False).nth(0)
        varying = {
            sid: (int(first.at[sid, "line"]), first.at[sid, "v"], int(line), val)
            for sid, line, val in zip(diff["id"], diff["line"], diff["v"], strict=True)
        }
        if spec.covariate == "baseline":
            for sid, (l0, v0, l1, v1) in varying.items():
                problems.add(l1, header, v1, f"covariate {header} is declared baseline but "
                             f"varies within ID {_fmt(sid)} ({_fmt(v0)} on line {l0})",
                             "one value per ID, or \"covariate\": \"time-varying\" with an "
                             "interpolation rule in the sidecar")
        elif spec.covariate is None:
            kind = "time-varying" if varying else "baseline"
            interp = "nocb" if varying else None
            columns[header] = dataclasses.replace(spec, covariate=kind, interpolation=interp)
            notes.append(f"covariate {header}: kind not stated, taken as {kind}"
                         + (" with NONMEM's interpolation (nocb)" if varying else
                            " (one value per ID)"))
    return columns
