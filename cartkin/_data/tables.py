"""Published tables and population parameter sets, each a CSV with a sidecar.

A :class:`Table` is a published summary (medians and IQRs, summary kinetics, CRS rates, digitised
values) with its citation, the meaning and unit of each column, how the numbers were obtained
and their status. A :class:`ParameterSet` is a published population model's parameters (typical
values, random effects, residual error) in the long form ``parameter, kind, value, lower, upper,
unit, description``; ``kind`` is ``typical``, ``random_effect``, ``residual``, ``effect`` or
``derived``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from .problems import DataError
from .sidecar import Sidecar

_PARAM_COLUMNS = ["parameter", "kind", "value", "lower", "upper", "unit", "description"]
_PARAM_KINDS = ("typical", "random_effect", "residual", "effect", "derived")
OMEGA_READINGS = ("variance", "sd")


def _read_csv(path: Path, meta: Sidecar) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, keep_default_na=False, na_values=["", "."])
    except (OSError, pd.errors.ParserError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    declared, present = list(meta.columns), list(frame.columns)
    problems = []
    if extra := [c for c in present if c not in declared]:
        problems.append(f"column(s) {extra} of {path.name} are not described in the sidecar")
    if absent := [c for c in declared if c not in present]:
        problems.append(f"column(s) {absent} described in the sidecar are not in {path.name}")
    if problems:
        raise DataError("; ".join(problems))
    return frame


@dataclasses.dataclass(frozen=True, eq=False)
class Table:
    """A published table: ``frame`` plus its sidecar (``meta``: citation, columns, status)."""

    name: str
    frame: pd.DataFrame
    meta: Sidecar

    @property
    def citation(self) -> str:
        return self.meta.source.get("citation", "")

    @property
    def status(self) -> str | None:
        return self.meta.status

    def columns(self) -> pd.DataFrame:
        """Each column's unit and meaning."""
        return pd.DataFrame([{"column": k, "unit": c.unit, "description": c.description}
                             for k, c in self.meta.columns.items()])

    def verified(self) -> pd.DataFrame:
        """The rows whose ``status`` is ``verified`` (all rows if the table has one status)."""
        if "status" in self.frame:
            return self.frame[self.frame["status"] == "verified"]
        return self.frame if self.meta.status == "verified" else self.frame.iloc[:0]

    def __repr__(self) -> str:
        return (f"Table({self.name!r}: {len(self.frame)} rows; status {self.status}; "
                f"{self.citation[:80]})")


def read_table(path, meta: Sidecar, name: str) -> Table:
    return Table(name, _read_csv(Path(path), meta), meta)


@dataclasses.dataclass(frozen=True, eq=False)
class ParameterSet:
    """A published population parameter set.

    Attributes:
        typical: typical values ``{parameter: value}`` in ``units``.
        omega: between-subject variances on the parameters' natural (log / logit) scale,
            ``{parameter: omega^2}``, after applying ``omega_reading`` to the printed values.
        omega_printed: the random-effect values as printed in the source.
        omega_reading: ``"variance"`` (printed values are omega^2) or ``"sd"`` (they are
            omega), or None when the source gives no random effects.
        residual: residual-error parameters, e.g. ``{"ln_sd": 0.56}``.
        intervals: ``{parameter: (lower, upper)}`` where the source gives them (95% CI).
        model: the name of the cartkin model the parameters belong to (None if none).
    """

    name: str
    model: str | None
    typical: dict[str, float]
    units: dict[str, str]
    omega: dict[str, float]
    omega_printed: dict[str, float]
    omega_reading: str | None
    residual: dict[str, float]
    effects: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    frame: pd.DataFrame
    meta: Sidecar

    @property
    def citation(self) -> str:
        return self.meta.source.get("citation", "")

    @property
    def reading(self) -> str:
        """The reading taken of the random effects, in words."""
        if self.omega_reading is None:
            return "no random effects in the source"
        printed = ", ".join(f"{k} {v:g}" for k, v in self.omega_printed.items())
        if self.omega_reading == "variance":
            return (f"random effects read as variances omega^2 (printed: {printed}); "
                    "pass omega_reading='sd' to read them as standard deviations")
        return (f"random effects read as standard deviations omega (printed: {printed}; "
                "variances are their squares); pass omega_reading='variance' for the other "
                "reading")

    def population(self, model=None, **kwargs):
        """A :class:`~cartkin._population.Population` with these typical values and omega.

        ``model`` defaults to the cartkin model named by the set; extra keyword arguments
        (covariates, effects) go to ``Population``.
        """
        from .._models.registry import get_model
        from .._population import Population

        if model is None:
            if self.model is None:
                raise DataError(f"{self.name} names no cartkin model; pass model=")
            try:
                model = get_model(self.model)
            except ValueError as e:
                raise DataError(f"{self.name} belongs to model {self.model!r}: {e}") from None
        unknown = [k for k in self.typical if k not in model.parameters]
        if unknown:
            raise DataError(f"{self.name} has parameter(s) {unknown} that {model.name} does not "
                            f"have (its parameters: {list(model.parameters)})")
        return Population(model, theta=dict(self.typical), omega=dict(self.omega) or None,
                          **kwargs)

    def __repr__(self) -> str:
        return (f"ParameterSet({self.name!r}: model {self.model}, {len(self.typical)} typical "
                f"values; {self.reading})")


def read_parameters(path, meta: Sidecar, name: str, omega_reading: str | None = None
                    ) -> ParameterSet:
    """Read a parameter set; ``omega_reading`` chooses how printed random effects are read."""
    frame = _read_csv(Path(path), meta)
    if list(frame.columns) != _PARAM_COLUMNS:
        raise DataError(f"{name}: a parameter table has the columns {_PARAM_COLUMNS}, got "
                        f"{list(frame.columns)}")
    bad = sorted(set(frame["kind"]) - set(_PARAM_KINDS))
    if bad:
        raise DataError(f"{name}: unknown kind(s) {bad}; expected {', '.join(_PARAM_KINDS)}")
    rows = {k: frame[frame["kind"] == k] for k in _PARAM_KINDS}
    typical = dict(zip(rows["typical"]["parameter"], rows["typical"]["value"].astype(float),
                       strict=True))
    printed = dict(zip(rows["random_effect"]["parameter"],
                       rows["random_effect"]["value"].astype(float), strict=True))
    default = meta.extra.get("omega_reading", {}).get("default") if printed else None
    reading = omega_reading or default
    if printed and reading not in OMEGA_READINGS:
        raise DataError(f"omega_reading must be one of {OMEGA_READINGS}, got {reading!r}")
    if not printed and omega_reading is not None:
        raise DataError(f"{name} has no random effects to read (omega_reading applies to "
                        "parameter sets with random effects)")
    omega = {k: (v if reading == "variance" else v**2) for k, v in printed.items()}
    intervals = {
        r.parameter: (float(r.lower), float(r.upper))
        for r in frame.itertuples() if np.isfinite(r.lower) and np.isfinite(r.upper)
    }
    return ParameterSet(
        name=name, model=meta.extra.get("model"), typical=typical,
        units={r.parameter: r.unit for r in frame.itertuples() if r.kind != "random_effect"},
        omega=omega,
        omega_printed=printed, omega_reading=reading if printed else None,
        residual=dict(zip(rows["residual"]["parameter"], rows["residual"]["value"], strict=True)),
        effects=dict(zip(rows["effect"]["parameter"], rows["effect"]["value"], strict=True)),
        intervals=intervals, frame=frame, meta=meta,
    )
