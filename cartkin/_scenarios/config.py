"""Scenario files (``scenarios/*.toml``): parsed once into a frozen :class:`ScenarioConfig`.

Layout::

    kind = "escape"            # which trial (see cartkin._scenarios.KINDS)
    title = "..."
    seed = 1                   # reproducible: same seed, same table
    patients = 1000            # virtual patients per arm
    [population]               # typical values (overrides of the model defaults) and IIV
    typical = { ... }
    omega = { name = variance on the natural (log/logit) scale, ... }
    [crs]                      # the assumed CRS link (see common.CRSLink)
    slope = 1.0
    il6_50 = 890.0             # or: calibrate = 0.26 (to a published rate, in the reference arm)
    [options]                  # kind-specific settings (each kind lists its own, with defaults)
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
from collections.abc import Mapping
from pathlib import Path

_TOP = {"kind", "title", "description", "seed", "patients", "population", "crs", "options"}
_POP = {"typical", "omega", "note"}
_CRS = {"slope", "il6_50", "calibrate", "source", "note"}


@dataclasses.dataclass(frozen=True)
class ScenarioConfig:
    kind: str
    title: str
    description: str
    seed: int
    patients: int
    typical: Mapping[str, float]
    omega: Mapping[str, float]
    crs: Mapping[str, object]
    options: Mapping[str, object]
    source: str
    raw: Mapping[str, object]


def _frozen(d):
    return types.MappingProxyType(dict(d))


def _check_keys(section: Mapping, allowed, where: str, path: Path) -> None:
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown} in {where}; allowed: {sorted(allowed)}")


def _numbers(d, where: str, path: Path) -> dict[str, float]:
    if not isinstance(d, Mapping):
        raise ValueError(f"{path}: {where} must be a table of name = number")
    out = {}
    for k, v in d.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError(f"{path}: {where}.{k} must be a number, got {v!r}")
        out[k] = float(v)
    return out


def load_scenario(path: str | Path, **overrides) -> ScenarioConfig:
    """Parse and check a scenario file; ``overrides`` (seed, patients) replace its values."""
    from . import KINDS

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"scenario file {path} not found")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML ({err})") from None
    _check_keys(raw, _TOP, "the top level", path)
    kind = raw.get("kind")
    if kind not in KINDS:
        raise ValueError(
            f"{path}: kind = {kind!r} is not a known trial; choose from {sorted(KINDS)}"
        )
    module = KINDS[kind]
    seed = overrides.get("seed") if overrides.get("seed") is not None else raw.get("seed", 0)
    patients = overrides.get("patients") or raw.get("patients", 1000)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"{path}: seed must be a non-negative integer, got {seed!r}")
    if not isinstance(patients, int) or isinstance(patients, bool) or patients < 10:
        raise ValueError(f"{path}: patients must be an integer >= 10, got {patients!r}")
    pop = raw.get("population", {})
    _check_keys(pop, _POP, "[population]", path)
    typical = _numbers(pop.get("typical", {}), "population.typical", path)
    omega = _numbers(pop.get("omega", {}), "population.omega", path)
    params = module.MODEL.parameters
    for where, d in (("population.typical", typical), ("population.omega", omega)):
        unknown = [k for k in d if k not in params]
        if unknown:
            raise ValueError(
                f"{path}: {where} names unknown parameter(s) {unknown} of "
                f"{module.MODEL.name}; its parameters are {list(params)}"
            )
    if any(v < 0 for v in omega.values()):
        raise ValueError(f"{path}: population.omega holds variances; they must be >= 0")
    crs = raw.get("crs", {})
    _check_keys(crs, _CRS, "[crs]", path)
    options = dict(module.OPTIONS)
    given = raw.get("options", {})
    _check_keys(given, module.OPTIONS, f"[options] of kind {kind!r}", path)
    for k, v in given.items():
        default = module.OPTIONS[k]
        if isinstance(default, list | tuple) and not isinstance(v, list):
            raise ValueError(f"{path}: options.{k} must be a list, got {v!r}")
        if isinstance(default, float) and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise ValueError(f"{path}: options.{k} must be a number, got {v!r}")
        options[k] = tuple(v) if isinstance(v, list) else v
    return ScenarioConfig(
        kind=kind,
        title=str(raw.get("title", path.stem)),
        description=str(raw.get("description", "")).strip(),
        seed=int(seed),
        patients=int(patients),
        typical=_frozen(typical),
        omega=_frozen(omega),
        crs=_frozen(crs),
        options=_frozen(options),
        source=str(path),
        raw=raw,
    )
