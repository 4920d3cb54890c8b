"""Read and write NONMEM-style CSV datasets.

Reading follows NONMEM's conventions where pharmacometricians rely on them:

* the first non-blank line is the header (a leading ``#`` on it is allowed); column names are
  case-insensitive; other names are mapped with ``column_map=`` or the sidecar's ``columns``;
* later lines starting with ``#`` are comments (NONMEM's ``IGNORE=#``): excluded, listed, and
  written back in place; blank lines likewise;
* ``.`` and empty cells are missing;
* every problem is collected and reported at once in one :class:`DataError` (lines are the file's
  1-based line numbers, header = line 1).

Writing gives back the same columns, names, order, records, comments and missing-value token;
numbers are written in the shortest form that reads back to the same float (``1.50`` is written
``1.5``), so ``read -> write -> read`` is exact and a file written by cartkin is reproduced byte
for byte.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from .dataset import CsvFormat, Dataset
from .problems import DataError, Excluded, ProblemList
from .sidecar import (
    REQUIRED,
    STANDARD,
    ColumnSpec,
    Sidecar,
    as_sidecar,
    find_sidecar,
    write_sidecar,
)
from .validate import check_records

_MISSING = ("", ".")


def read_nonmem(path, sidecar=None, *, column_map: Mapping[str, str] | None = None) -> Dataset:
    """Read and check a NONMEM-style CSV file.

    Args:
        path: the CSV file.
        sidecar: a JSON/TOML sidecar path, a mapping, a :class:`Sidecar`, ``None`` (use
            ``<stem>.json`` / ``<stem>.toml`` next to the file if there is one) or ``False``.
        column_map: ``{name in the file: role}`` for columns named otherwise, e.g.
            ``{"SUBJ": "ID", "CONC": "DV"}``; a role is a NONMEM item, ``"covariate"`` or
            ``"drop"`` (kept, not used).

    Raises:
        DataError: listing every problem (file, line, column, value, what is expected).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    if sidecar is False:
        side = None
    elif sidecar is None:
        found = find_sidecar(path)
        side = as_sidecar(found) if found is not None else None
    else:
        side = as_sidecar(sidecar)
    return _build(text.splitlines(), side, column_map, str(path), source=str(path))


def dataset_from_frame(frame: pd.DataFrame, sidecar=None, *,
                       column_map: Mapping[str, str] | None = None) -> Dataset:
    """A checked :class:`Dataset` from a DataFrame whose columns are the file's columns.

    The frame goes through exactly the checks of :func:`read_nonmem` (its rows are numbered as
    the lines of the CSV it would be written to: the first row is line 2).
    """
    header = [str(c) for c in frame.columns]
    body = [[_cell(v) for v in row] for row in frame.itertuples(index=False)]
    lines = _csv_lines([header, *body])
    return _build(lines, as_sidecar(sidecar), column_map, "<frame>", source=None)


def write_nonmem(dataset: Dataset, path, *, sidecar=True) -> Path:
    """Write ``dataset`` as CSV, and its sidecar as ``<stem>.json`` (or to the path given)."""
    path = Path(path)
    path.write_text(to_csv_text(dataset), encoding="utf-8")
    if sidecar:
        side_path = path.with_suffix(".json") if sidecar is True else Path(sidecar)
        write_sidecar(dataset.meta, side_path)
    return path


def to_csv_text(dataset: Dataset) -> str:
    """The CSV text of a dataset (see the module docstring for what is preserved)."""
    fmt = dataset.format
    headers = list(dataset.meta.columns)
    cols = [_frame_name(h, dataset.meta.columns[h]) for h in headers]
    rows: dict[int, str] = {}
    head = _csv_lines([headers])[0]
    rows[_header_line(dataset)] = fmt.header_prefix + head
    values = [dataset.frame[c].tolist() for c in cols]
    body = [[v if isinstance(v, str) else _cell(v, fmt.missing) for v in row]
            for row in zip(*values, strict=True)]
    for line, text in zip(dataset.frame.index, _csv_lines(body), strict=True):
        rows[int(line)] = text
    for ex in dataset.excluded:
        if ex.text is not None:
            rows[ex.line] = ex.text
    return "".join(rows[k] + "\n" for k in sorted(rows))


def _header_line(dataset: Dataset) -> int:
    """The header's line number (1, unless blank lines precede it)."""
    blank = {ex.line for ex in dataset.excluded if ex.text is not None}
    line = 1
    while line in blank:
        line += 1
    return line


def _cell(v, missing: str = ".") -> str:
    if isinstance(v, str):
        return v
    if v is None:
        return missing
    v = float(v)
    if math.isnan(v):
        return missing
    return str(int(v)) if v.is_integer() and abs(v) < 1e16 else repr(v)


def _csv_lines(rows) -> list[str]:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().split("\n")[:-1]


def _frame_name(header: str, spec: ColumnSpec) -> str:
    return spec.role if spec.role in STANDARD else header


def _number(text: str) -> float | None:
    """float(text) if ``text`` is a finite number written plainly, else None."""
    if "_" in text:
        return None
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _build(lines, side: Sidecar | None, column_map, file: str, source) -> Dataset:
    problems = ProblemList(file)
    if side is not None and side.kind != "nonmem":
        raise DataError(f"{side.path or 'the sidecar'} describes a {side.kind!r} dataset, not a "
                        "NONMEM-style one (its \"kind\" must be \"nonmem\")")
    excluded: list[Excluded] = []
    n = 0
    while n < len(lines) and not lines[n].strip():
        excluded.append(Excluded(n + 1, None, "blank line", lines[n]))
        n += 1
    if n == len(lines):
        raise DataError(f"{file}: the file is empty (expected a header line and records)")
    prefix = "#" if lines[n].lstrip().startswith("#") else ""
    header = [h.strip() for h in next(csv.reader([lines[n].lstrip().removeprefix("#")]))]
    header_line = n + 1
    rows, row_lines = [], []
    for i in range(n + 1, len(lines)):
        text, line = lines[i], i + 1
        if not text.strip():
            excluded.append(Excluded(line, None, "blank line", text))
        elif text.lstrip().startswith("#"):
            excluded.append(Excluded(line, None, "comment line (starts with #, as NONMEM's "
                                     "IGNORE=#)", text))
        else:
            fields = [f.strip() for f in next(csv.reader([text]))]
            if len(fields) != len(header):
                problems.add(line, None, text, f"{len(fields)} fields, the header has "
                             f"{len(header)}", f"{len(header)} comma-separated fields")
            else:
                rows.append(fields)
                row_lines.append(line)

    column_problems = ProblemList(file)
    specs = _resolve_columns(header, header_line, side, column_map, column_problems)
    problems.extend(column_problems)
    missing_token = {"": 0, ".": 0}
    data, bad_lines = {}, set()
    for j, h in enumerate(header):
        spec = specs.get(h)
        if spec is None:
            continue
        texts = [r[j] for r in rows]
        if spec.role == "drop":
            data[_frame_name(h, spec)] = pd.array(texts, dtype=object)
            continue
        vals = np.empty(len(texts))
        for k, t in enumerate(texts):
            if t in _MISSING:
                missing_token[t] += 1
                vals[k] = np.nan
                continue
            v = _number(t)
            if v is None:
                problems.add(row_lines[k], h, t, "not a number",
                             "a number, or '.' or an empty cell for missing")
                bad_lines.add(row_lines[k])
                v = np.nan
            vals[k] = v
        data[_frame_name(h, spec)] = vals
    frame = pd.DataFrame(data, index=pd.Index(row_lines, name="line", dtype=int))
    roles = {s.role for s in specs.values()}
    absent = [r for r in REQUIRED if r not in roles]
    for r in absent:
        problems.add(header_line, r, None, f"required column {r} is missing",
                     "columns ID, TIME and DV (map other names with column_map= or the sidecar's "
                     "\"columns\")")
    if absent or column_problems:
        raise DataError(problems)
    meta = (side or Sidecar()).replace(columns=specs)
    checked = check_records(frame, meta, problems, bad_lines)
    if problems:
        raise DataError(problems)
    meta = meta.replace(columns=checked.columns, endpoints=checked.endpoints)
    missing = "" if missing_token[""] > missing_token["."] else "."
    return Dataset(
        frame=frame, meta=meta,
        excluded=tuple(sorted(excluded + checked.excluded, key=lambda e: e.line)),
        notes=tuple(checked.notes), source=source,
        format=CsvFormat(missing=missing, header_prefix=prefix),
    )


def _resolve_columns(header, header_line, side, column_map, problems) -> dict[str, ColumnSpec]:
    """Each header name's resolved spec (role, unit, covariate kind); problems for conflicts."""
    cmap = {str(k).upper(): str(v) for k, v in (column_map or {}).items()}
    specs: dict[str, ColumnSpec] = {}
    seen: dict[str, str] = {}
    for h in header:
        if h.upper() in seen:
            problems.add(header_line, h, None, f"column name {h} appears twice (names are "
                         "case-insensitive)", "each column once")
            continue
        seen[h.upper()] = h
        spec = side.column(h) if side is not None else None
        target = cmap.get(h.upper())
        if target is not None:
            role = target.upper() if target.upper() in STANDARD else target
            if role not in STANDARD and role not in ("covariate", "drop"):
                problems.add(None, h, target, "unknown role in column_map",
                             f"a NONMEM item ({', '.join(STANDARD)}), 'covariate' or 'drop'",
                             file="column_map")
                continue
        elif spec is not None:
            role = spec.role
        else:
            role = h.upper() if h.upper() in STANDARD else "covariate"
        base = spec or ColumnSpec(h, role)
        specs[h] = dataclasses.replace(base, source=h, role=role)
    by_role: dict[str, str] = {}
    for h, s in specs.items():
        if s.role in STANDARD:
            if s.role in by_role:
                problems.add(header_line, h, None, f"columns {by_role[s.role]} and {h} both have "
                             f"role {s.role}", "one column per NONMEM item")
            by_role[s.role] = h
    for h, s in specs.items():
        if s.role not in STANDARD and h.upper() in STANDARD and h.upper() in by_role:
            problems.add(header_line, h, None, f"column {h} is not used as {h.upper()} but "
                         f"{by_role[h.upper()]} is", f"rename {h} in the file")
    if side is not None:
        for key in side.columns:
            if key.upper() not in seen:
                problems.add(None, key, None, f"column {key} is declared in the sidecar but is "
                             "not in the CSV", f"one of the CSV's columns: {', '.join(header)}",
                             file=side.path or "<sidecar>")
    for key in cmap:
        if key not in seen:
            problems.add(None, key, None, f"column_map names column {key}, which is not in the "
                         "CSV", f"one of: {', '.join(header)}", file="column_map")
    return specs
