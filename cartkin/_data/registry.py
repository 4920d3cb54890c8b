"""The bundled datasets: published kinetics, parameter sets and simulated cohorts, by name.

Each dataset is a CSV with a JSON sidecar of the same stem in the repository's ``data/`` folder;
an installed wheel carries the same files as ``cartkin/_data/bundled/`` (see ``setup.py``). The
sidecar's ``kind`` says what :func:`load` returns: a :class:`~cartkin._data.dataset.Dataset`
(``nonmem``), a :class:`~cartkin._data.tables.Table` (``table``) or a
:class:`~cartkin._data.tables.ParameterSet` (``parameters``).
"""

from __future__ import annotations

import difflib
import json
from importlib import resources
from pathlib import Path

import pandas as pd

from .nonmem import read_nonmem
from .problems import DataError
from .sidecar import Sidecar, read_sidecar
from .tables import read_parameters, read_table


def data_dir() -> Path:
    """Where the bundled files are: inside the installed package, else the checkout's data/."""
    packaged = Path(str(resources.files("cartkin._data"))) / "bundled"
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / "data"
    if checkout.is_dir():
        return checkout
    raise DataError("the bundled datasets are missing: neither cartkin/_data/bundled (installed "
                    f"package) nor {checkout} (source checkout) exists")


def _sidecars() -> dict[str, Path]:
    out = {}
    for p in sorted(data_dir().glob("*.json")):
        if p.with_suffix(".csv").is_file():
            out[p.stem] = p
    return out


def available() -> list[str]:
    """The names of the bundled datasets."""
    return list(_sidecars())


def catalog() -> pd.DataFrame:
    """One row per bundled dataset: name, kind, status, title."""
    rows = []
    for name, p in _sidecars().items():
        d = json.loads(p.read_text(encoding="utf-8"))
        rows.append({"name": name, "kind": d.get("kind", "nonmem"), "status": d.get("status"),
                     "title": d.get("title", "")})
    return pd.DataFrame(rows, columns=["name", "kind", "status", "title"])


def sidecar(name: str) -> Sidecar:
    """The sidecar of a bundled dataset (citation, columns, status, how it was made)."""
    return read_sidecar(_path(name))


def _path(name: str) -> Path:
    found = _sidecars()
    if name not in found:
        close = difflib.get_close_matches(name, list(found), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise DataError(f"unknown dataset {name!r}.{hint} Available: {', '.join(found)}")
    return found[name]


def load(name: str, **options):
    """Load a bundled dataset by name (see :func:`available`).

    Options: ``omega_reading="variance" | "sd"`` for parameter sets with random effects printed
    ambiguously (the default and the reason for it are in the set's sidecar, and in
    ``ParameterSet.reading``).
    """
    path = _path(name)
    meta = read_sidecar(path)
    csv = path.with_suffix(".csv")
    allowed = {"parameters": {"omega_reading"}}.get(meta.kind, set())
    if unknown := sorted(set(options) - allowed):
        raise DataError(f"load({name!r}) takes no option(s) {unknown}"
                        + (f"; options: {sorted(allowed)}" if allowed else ""))
    if meta.kind == "nonmem":
        return read_nonmem(csv, meta)
    if meta.kind == "table":
        return read_table(csv, meta, name)
    return read_parameters(csv, meta, name, **options)
