"""The sidecar: what each column of a dataset means, its unit, the endpoints and the source.

A sidecar is a JSON (or TOML) file next to the CSV with the same stem (``cohort.csv`` ->
``cohort.json``). For a NONMEM-style dataset it looks like::

    {
      "kind": "nonmem",
      "columns": {
        "SUBJ": {"role": "ID"},
        "TIME": {"unit": "d", "description": "time after the (first) infusion"},
        "AMT":  {"unit": "cells"},
        "WT":   {"role": "covariate", "unit": "kg", "covariate": "baseline"},
        "CRP":  {"role": "covariate", "unit": "mg/L", "covariate": "time-varying",
                 "interpolation": "locf"}
      },
      "endpoints": {
        "1": {"name": "transgene", "unit": "copies/ug", "lloq": 50, "log_scale": true}
      },
      "source": {"citation": "...", "doi": "...", "how_obtained": "..."},
      "status": "verified"
    }

``columns`` is keyed by the name in the CSV header (matched case-insensitively). A column's role
is a NONMEM name (ID, TIME, DV, AMT, EVID, MDV, CMT, RATE, CENS, LIMIT, LLOQ, OCC, DVID),
``covariate`` or ``drop`` (kept and written back, never used: identifiers, dates, free text); a
column named like a NONMEM item needs no role, any other column is a covariate. Units are never
guessed: a unit not stated is unknown, and conversions that need one refuse to run.
Every other top-level key (``simulation``, ``notes``, ...) is kept verbatim in ``extra``.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from collections.abc import Mapping
from pathlib import Path

from .problems import DataError, ProblemList

STANDARD = ("ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT", "RATE", "CENS", "LIMIT", "LLOQ",
            "OCC", "DVID")
REQUIRED = ("ID", "TIME", "DV")
ROLES = STANDARD + ("covariate", "drop")
COVARIATE_KINDS = ("baseline", "time-varying")
INTERPOLATIONS = ("locf", "nocb", "linear")
KINDS = ("nonmem", "table", "parameters")
_COLUMN_KEYS = {"role", "unit", "description", "covariate", "interpolation"}
_ENDPOINT_KEYS = {"name", "unit", "lloq", "uloq", "log_scale", "description"}
_TOP = ("name", "kind", "title", "description", "status", "source", "columns", "endpoints")


@dataclasses.dataclass(frozen=True)
class ColumnSpec:
    """One column: its name in the file, its role, unit and (for covariates) kind."""

    source: str
    role: str
    unit: str | None = None
    description: str = ""
    covariate: str | None = None
    interpolation: str | None = None

    def to_dict(self, standard_default: bool) -> dict:
        d = {} if standard_default else {"role": self.role}
        for key in ("unit", "description", "covariate", "interpolation"):
            if getattr(self, key):
                d[key] = getattr(self, key)
        return d


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One endpoint (DVID): what is measured, in which unit, and its limits of quantification.

    ``log_scale`` endpoints (cell levels, transgene copies, cytokines) are modelled on the log
    scale, so every value on them must be positive.
    """

    dvid: int
    name: str
    unit: str | None
    lloq: float | None = None
    uloq: float | None = None
    log_scale: bool = True
    description: str = ""

    def to_dict(self) -> dict:
        d = {"name": self.name, "unit": self.unit}
        if self.lloq is not None:
            d["lloq"] = self.lloq
        if self.uloq is not None:
            d["uloq"] = self.uloq
        d["log_scale"] = self.log_scale
        if self.description:
            d["description"] = self.description
        return {k: v for k, v in d.items() if v is not None}


@dataclasses.dataclass(frozen=True)
class Sidecar:
    """The parsed sidecar (immutable). ``columns`` is keyed by the CSV header name."""

    kind: str = "nonmem"
    name: str | None = None
    title: str = ""
    description: str = ""
    status: str | None = None
    source: Mapping = dataclasses.field(default_factory=dict)
    columns: Mapping[str, ColumnSpec] = dataclasses.field(default_factory=dict)
    endpoints: Mapping[int, Endpoint] = dataclasses.field(default_factory=dict)
    extra: Mapping = dataclasses.field(default_factory=dict)
    path: str | None = dataclasses.field(default=None, compare=False)

    def column(self, name: str) -> ColumnSpec | None:
        """The spec of a header name, matched case-insensitively."""
        for key, spec in self.columns.items():
            if key.upper() == name.upper():
                return spec
        return None

    def replace(self, **changes) -> Sidecar:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d: dict = {"kind": self.kind}
        for key in ("name", "title", "description", "status"):
            if getattr(self, key):
                d[key] = getattr(self, key)
        if self.source:
            d["source"] = dict(self.source)
        if self.columns:
            d["columns"] = {
                k: c.to_dict(self.kind != "nonmem" or k.upper() == c.role)
                for k, c in self.columns.items()
            }
        if self.endpoints:
            # endpoints inferred from the data (no unit stated) are not written: they are
            # inferred again on reading, and a sidecar endpoint must state its unit
            eps = {str(k): e.to_dict() for k, e in sorted(self.endpoints.items()) if e.unit}
            if eps:
                d["endpoints"] = eps
        d.update(self.extra)
        order = {k: i for i, k in enumerate(_TOP)}
        return dict(sorted(d.items(), key=lambda kv: order.get(kv[0], len(order))))

    @classmethod
    def from_dict(cls, d: Mapping, path: str | None = None) -> Sidecar:
        """Parse and check a sidecar; raises :class:`DataError` listing every problem."""
        where = str(path) if path else "<sidecar>"
        problems = ProblemList(where)
        if not isinstance(d, Mapping):
            raise DataError(f"{where}: a sidecar must be a JSON object or a TOML table")
        kind = d.get("kind", "nonmem")
        if kind not in KINDS:
            problems.add(None, "kind", kind, "unknown kind", f"one of {', '.join(KINDS)}")
        columns = {}
        for key, spec in dict(d.get("columns") or {}).items():
            col = _parse_column(str(key), spec, kind, problems)
            if col is not None:
                columns[str(key)] = col
        endpoints = {}
        for key, spec in dict(d.get("endpoints") or {}).items():
            ep = _parse_endpoint(key, spec, problems)
            if ep is not None:
                endpoints[ep.dvid] = ep
        source = d.get("source") or {}
        if not isinstance(source, Mapping):
            problems.add(None, "source", source, "source must be a table", "e.g. {citation, doi}")
            source = {}
        if problems:
            raise DataError(problems)
        return cls(
            kind=kind, name=d.get("name"), title=d.get("title", ""),
            description=d.get("description", ""), status=d.get("status"), source=dict(source),
            columns=columns, endpoints=endpoints,
            extra={k: v for k, v in d.items() if k not in _TOP}, path=str(path) if path else None,
        )


def _parse_column(key, spec, kind, problems) -> ColumnSpec | None:
    at = f"columns.{key}"
    if not isinstance(spec, Mapping):
        problems.add(None, at, spec, "a column spec must be a table", "e.g. {\"unit\": \"d\"}")
        return None
    unknown = set(spec) - _COLUMN_KEYS
    if unknown:
        problems.add(None, at, ", ".join(sorted(unknown)), "unknown key(s)",
                     f"only {', '.join(sorted(_COLUMN_KEYS))}")
    if kind != "nonmem":
        return ColumnSpec(key, "column", spec.get("unit"), spec.get("description", ""))
    role = spec.get("role")
    if role is None:
        role = key.upper() if key.upper() in STANDARD else "covariate"
    elif str(role).upper() in STANDARD:
        role = str(role).upper()
    elif role not in ("covariate", "drop"):
        problems.add(None, f"{at}.role", role, "unknown role",
                     f"a NONMEM item ({', '.join(STANDARD)}), 'covariate' or 'drop'")
        return None
    cov, interp = spec.get("covariate"), spec.get("interpolation")
    if role != "covariate" and (cov or interp):
        problems.add(None, at, role, "'covariate'/'interpolation' given for a non-covariate",
                     "them only on columns with role 'covariate'")
    if cov is not None and cov not in COVARIATE_KINDS:
        problems.add(None, f"{at}.covariate", cov, "unknown covariate kind",
                     " or ".join(COVARIATE_KINDS))
    if interp is not None and interp not in INTERPOLATIONS:
        problems.add(None, f"{at}.interpolation", interp, "unknown interpolation rule",
                     ", ".join(INTERPOLATIONS))
    if cov == "time-varying" and interp is None:
        problems.add(None, at, None, "a time-varying covariate needs a stated interpolation rule",
                     "\"interpolation\": \"locf\", \"nocb\" (NONMEM's) or \"linear\"")
    if cov == "baseline" and interp is not None:
        problems.add(None, f"{at}.interpolation", interp, "a baseline covariate is not "
                     "interpolated", "no interpolation, or \"covariate\": \"time-varying\"")
    return ColumnSpec(key, role, spec.get("unit"), spec.get("description", ""), cov, interp)


def _parse_endpoint(key, spec, problems) -> Endpoint | None:
    at = f"endpoints.{key}"
    try:
        dvid = int(str(key))
    except ValueError:
        problems.add(None, "endpoints", key, "endpoint keys are DVID values", "an integer")
        return None
    if not isinstance(spec, Mapping):
        problems.add(None, at, spec, "an endpoint must be a table", "{name, unit, lloq, ...}")
        return None
    unknown = set(spec) - _ENDPOINT_KEYS
    if unknown:
        problems.add(None, at, ", ".join(sorted(unknown)), "unknown key(s)",
                     f"only {', '.join(sorted(_ENDPOINT_KEYS))}")
    if not spec.get("unit"):
        problems.add(None, f"{at}.unit", None, f"endpoint DVID {dvid} has no unit",
                     "the unit of DV for this endpoint, e.g. \"copies/ug\" or \"cells/uL\"")
    limits = {}
    for lim in ("lloq", "uloq"):
        v = spec.get(lim)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or v <= 0):
            problems.add(None, f"{at}.{lim}", v, f"{lim} must be a positive number",
                         "a number > 0 in the endpoint's unit")
            v = None
        limits[lim] = None if v is None else float(v)
    log_scale = spec.get("log_scale", True)
    if not isinstance(log_scale, bool):
        problems.add(None, f"{at}.log_scale", log_scale, "log_scale must be true or false")
        log_scale = True
    return Endpoint(dvid, str(spec.get("name", f"DVID{dvid}")), spec.get("unit"),
                    limits["lloq"], limits["uloq"], log_scale, spec.get("description", ""))


#: usual CAR-T endpoints: name -> (unit, log scale, description). A suggestion to copy into a
#: sidecar through :func:`standard_endpoint`, never applied to a file that does not state it.
STANDARD_ENDPOINTS = {
    "transgene": ("copies/ug", True, "CAR transgene copies per ug genomic DNA (qPCR)"),
    "car_cells": ("cells/uL", True, "CAR+ T cells per uL of blood (flow cytometry)"),
    "il6": ("pg/mL", True, "interleukin-6 in serum"),
    "il10": ("pg/mL", True, "interleukin-10 in serum"),
    "ifng": ("pg/mL", True, "interferon-gamma in serum"),
    "tumour": (None, True, "tumour burden (state the measure and its unit: e.g. SPD in mm^2, "
               "marrow blasts in %, circulating B cells in 1e9 cells)"),
}


def standard_endpoint(name: str, dvid: int, *, lloq: float | None = None,
                      unit: str | None = None) -> Endpoint:
    """An :class:`Endpoint` for one of :data:`STANDARD_ENDPOINTS` (``unit`` overrides; tumour
    burden has no usual unit and needs one)."""
    if name not in STANDARD_ENDPOINTS:
        raise DataError(f"unknown standard endpoint {name!r}; known: "
                        f"{', '.join(STANDARD_ENDPOINTS)} (or build an Endpoint yourself)")
    u, log_scale, description = STANDARD_ENDPOINTS[name]
    if (unit or u) is None:
        raise DataError(f"endpoint {name!r} has no usual unit: pass unit=")
    return Endpoint(dvid, name, unit or u, lloq, None, log_scale, description)


def find_sidecar(csv_path) -> Path | None:
    """``x.json`` or ``x.toml`` next to ``x.csv``, if there is one."""
    p = Path(csv_path)
    for ext in (".json", ".toml"):
        cand = p.with_suffix(ext)
        if cand.is_file():
            return cand
    return None


def read_sidecar(path) -> Sidecar:
    """Read a JSON or TOML sidecar."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DataError(f"cannot read sidecar {path}: {e.strerror}") from None
    try:
        d = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise DataError(f"{path}: not valid {path.suffix[1:].upper()}: {e}") from None
    return Sidecar.from_dict(d, path)


def write_sidecar(sidecar: Sidecar, path) -> Path:
    """Write a sidecar as JSON (``.json``) or TOML (``.toml``, needs ``tomli_w``)."""
    path = Path(path)
    d = sidecar.to_dict()
    if path.suffix == ".toml":
        try:
            import tomli_w
        except ImportError:
            raise DataError("writing a TOML sidecar needs the tomli_w package; "
                            "write .json instead") from None
        path.write_text(tomli_w.dumps(d), encoding="utf-8")
    else:
        path.write_text(json.dumps(d, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def as_sidecar(sidecar) -> Sidecar | None:
    """Accept a Sidecar, a mapping, a path, or None."""
    if sidecar is None or isinstance(sidecar, Sidecar):
        return sidecar
    if isinstance(sidecar, Mapping):
        return Sidecar.from_dict(sidecar)
    return read_sidecar(sidecar)
