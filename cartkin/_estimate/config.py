"""Fit configurations: one TOML file in fits/ parses once into a frozen :class:`FitConfig`.

Example (``fits/stein2019.toml``)::

    [data]
    name = "stein2019_sim200"        # a bundled dataset, or: path = "cohort.csv"

    [model]
    name = "stein2019"                # any model of cartkin (see `cartkin simulate --model`)

    [[endpoints]]
    dvid = 1
    output = "C"
    error = "log_additive"            # log_additive | additive | proportional | combined
    sigma = 0.5                       # initial SD (and sigma_prop for combined)

    [parameters]
    estimate = { Cmax = 20000, Tmax = 8.0 }   # initial typical values; these get IIV
    fixed = { Fexp = 1.0 }                    # held at these values (others: model defaults)

    [iiv]
    omega = { Cmax = 0.3, Tmax = 0.1 }        # initial variances (default 0.25)
    blocks = [["Cmax", "Tmax"]]               # correlated random effects (default diagonal)

    [[covariates]]
    parameter = "Cmax"
    covariate = "WT"
    effect = "power"                          # power | exponential | categorical
    ref = 70

    [method]                                  # all optional
    seed = 1
    starts = 1                                # SAEM from several starting points (best kept)
    saem = { k1 = 200, k2 = 100 }
    importance = { target_se = 0.5 }
    solver = { name = "rodas5", rtol = 1e-6, atol = 1e-9 }   # rodas5 | tsit5 | dopri5 | dopri8 | kvaerno5
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .._likelihood import Endpoint, FitData, SolverSettings, StatModel
from .._models.registry import get_model
from .._population import CategoricalEffect, ExpEffect, PowerEffect
from .importance import ISOptions
from .saem import SAEMOptions

_SECTIONS = {"data", "model", "endpoints", "parameters", "iiv", "covariates", "method", "title", "description", "bayes", "aggregate"}


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """A parsed fit configuration (immutable)."""

    source: str
    title: str
    data_name: str | None
    data_path: str | None
    stat: StatModel
    init: Mapping[str, float]
    omega_init: Mapping[str, float]
    sigma_init: Mapping[str, float]
    saem: SAEMOptions
    importance: ISOptions
    settings: SolverSettings
    raw: Mapping
    starts: int = 1


def _err(path, msg):
    return ValueError(f"{path}: {msg}")


def _only(path, section, table, allowed):
    unknown = set(table) - set(allowed)
    if unknown:
        raise _err(path, f"unknown key(s) {sorted(unknown)} in [{section}]; allowed: {sorted(allowed)}")


def _check_numbers(path, section, opts):
    """Every numeric field of an options dataclass is a number of its default's kind (a whole
    number where the default is one), not negative (a field with a text default checks itself)."""
    for f in dataclasses.fields(opts):
        v = getattr(opts, f.name)
        if isinstance(f.default, str):
            continue
        whole = isinstance(f.default, int)
        if (isinstance(v, bool) or not isinstance(v, int if whole else int | float)
                or not v >= 0):
            kind = "a whole number" if whole else "a number"
            raise _err(path, f"[method] {section}.{f.name} must be {kind} >= 0, not {v!r}")


def load_config(path: str | Path) -> FitConfig:
    """Parse and check a fit TOML file; every error names the file and the key."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"fit configuration {path} not found")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise _err(path, f"not valid TOML: {e}") from None
    return config_from_dict(raw, path)


def config_from_dict(raw: Mapping, path: str | Path) -> FitConfig:
    """Parse an already-read configuration; ``path`` names it in messages and anchors
    relative data paths."""
    path = Path(path)
    _only(path, "top level", raw, _SECTIONS)
    for s in ("data", "model", "endpoints", "parameters"):
        if s not in raw:
            raise _err(path, f"missing section [{s}]")
    data = raw["data"]
    _only(path, "data", data, {"name", "path", "sidecar"})
    if ("name" in data) == ("path" in data):
        raise _err(path, "[data] needs exactly one of name (bundled dataset) or path (CSV file)")
    data_path = None
    if "path" in data:
        data_path = str((path.parent / data["path"]).resolve())
    mdl = raw["model"]
    _only(path, "model", mdl, {"name", "options"})
    try:
        model = get_model(mdl["name"], **mdl.get("options", {}))
    except (ValueError, TypeError) as e:
        raise _err(path, f"[model]: {e}") from None
    eps, sig = [], {}
    for i, ep in enumerate(raw["endpoints"]):
        _only(path, f"endpoints #{i + 1}", ep, {"dvid", "output", "error", "sigma", "sigma_prop"})
        try:
            e = Endpoint(ep["output"], int(ep.get("dvid", 1)), ep.get("error", "log_additive"))
        except KeyError as k:
            raise _err(path, f"[[endpoints]] #{i + 1} needs {k}") from None
        except ValueError as v:
            raise _err(path, f"[[endpoints]] #{i + 1}: {v}") from None
        eps.append(e)
        sig[e.output] = float(ep.get("sigma", 0.5))
        sig[e.output + "_prop"] = float(ep.get("sigma_prop", 0.2))
    par = raw["parameters"]
    _only(path, "parameters", par, {"estimate", "fixed", "bounds"})
    est = {k: float(v) for k, v in par.get("estimate", {}).items()}
    bounds = {}
    for k, ab in par.get("bounds", {}).items():
        ok = (isinstance(ab, list) and len(ab) == 2
              and all(isinstance(v, int | float) and not isinstance(v, bool) for v in ab))
        if not ok:
            raise _err(path, f"[parameters] bounds {k} must be [lower, upper], not {ab!r}")
        if k not in est:
            raise _err(path, f"[parameters] bounds names {k!r}, which is not under estimate")
        if not ab[0] < est[k] < ab[1]:
            raise _err(path, f"[parameters] estimate {k} = {est[k]} is not inside its bounds {ab}")
        bounds[k] = (float(ab[0]), float(ab[1]))
    fixed = {k: float(v) for k, v in par.get("fixed", {}).items()}
    for k, v in {**est, **fixed}.items():
        if k not in model.parameters:
            raise _err(path, f"[parameters] names {k!r}, not a parameter of {model.name} "
                             f"({list(model.parameters)})")
        dom = model.parameters[k].domain
        if (dom == "positive" and v <= 0) or (dom == "unit" and not 0 < v < 1) or not np.isfinite(v):
            raise _err(path, f"[parameters] {k} = {v} is outside its domain ({dom})")
    iiv = raw.get("iiv", {})
    _only(path, "iiv", iiv, {"omega", "blocks"})
    omega = {k: float(v) for k, v in iiv.get("omega", {}).items()}
    for k, v in omega.items():
        if k not in est:
            raise _err(path, f"[iiv] omega names {k!r}, which is not under [parameters] estimate")
        if v <= 0:
            raise _err(path, f"[iiv] omega {k} = {v}: an initial variance must be positive")
    effects = []
    for i, c in enumerate(raw.get("covariates", [])):
        _only(path, f"covariates #{i + 1}", c, {"parameter", "covariate", "effect", "ref", "levels"})
        kind = c.get("effect", "power")
        try:
            if kind == "power":
                effects.append(PowerEffect(c["parameter"], c["covariate"], float(c["ref"]), 0.0))
            elif kind == "exponential":
                effects.append(ExpEffect(c["parameter"], c["covariate"], float(c.get("ref", 0.0)), 0.0))
            elif kind == "categorical":
                effects.append(CategoricalEffect(c["parameter"], c["covariate"], (0.0,) * (int(c["levels"]) - 1)))
            else:
                raise _err(path, f"[[covariates]] #{i + 1}: unknown effect {kind!r} "
                                 "(power, exponential, categorical)")
        except KeyError as k:
            raise _err(path, f"[[covariates]] #{i + 1} needs {k}") from None
    try:
        stat = StatModel(model, tuple(eps), iiv=tuple(est), fixed=fixed,
                         omega_blocks=tuple(tuple(b) for b in iiv.get("blocks", [])),
                         covariates=tuple(effects), bounds=bounds)
    except ValueError as e:
        raise _err(path, str(e)) from None
    meth = raw.get("method", {})
    _only(path, "method", meth, {"seed", "saem", "importance", "solver", "starts"})
    seed = int(meth.get("seed", 1))
    starts = meth.get("starts", 1)
    if not isinstance(starts, int) or isinstance(starts, bool) or starts < 1:
        raise _err(path, f"[method] starts must be a whole number >= 1, not {starts!r}")
    try:
        saem = SAEMOptions(**{"seed": seed, **meth.get("saem", {})})
        imp = ISOptions(**{"seed": seed + 1, **meth.get("importance", {})})
    except (TypeError, ValueError) as e:
        raise _err(path, f"[method]: {e}") from None
    for section, opts in (("saem", saem), ("importance", imp)):
        _check_numbers(path, section, opts)
    solver = dict(meth.get("solver", {}))
    name = solver.pop("name", None)
    import diffrax as dfx

    # "rodas5" (the default): SAEM and importance sampling solve ODE models with the batched
    # Rosenbrock solver; a diffrax solver named here is used everywhere instead
    solvers = {"rodas5": None, "tsit5": dfx.Tsit5, "dopri5": dfx.Dopri5, "dopri8": dfx.Dopri8,
               "kvaerno5": dfx.Kvaerno5}
    if name is not None and name.lower() not in solvers:
        raise _err(path, f"[method] solver name {name!r} unknown; choose from {list(solvers)}")
    try:
        cls = solvers[name.lower()] if name else None
        settings = SolverSettings(solver=cls() if cls else None, **solver)
    except TypeError as e:
        raise _err(path, f"[method] solver: {e}") from None
    return FitConfig(
        source=str(path), title=str(raw.get("title", path.stem)), data_name=data.get("name"),
        data_path=data_path, stat=stat, init=est, omega_init=omega, sigma_init=sig,
        saem=saem, importance=imp, settings=settings, raw=raw, starts=starts,
    )


def fitdata_from_dataset(ds, stat: StatModel) -> FitData:
    """The fit's arrays from a validated :class:`cartkin.data.Dataset`.

    Every observed DVID must be one of the fit's endpoints; doses (AMT, cells) become the event
    table of each subject.
    """
    eps = {e.dvid: i for i, e in enumerate(stat.endpoints)}
    t_unit = (ds.unit("TIME") or "d").lower()
    if t_unit not in ("d", "day", "days"):
        raise ValueError(
            f"{ds.name}: TIME is in {t_unit!r}; cartkin models run in days: convert TIME to days "
            "(or state unit 'd' in the sidecar)"
        )
    if "AMT" in ds.frame.columns:
        a_unit = ds.unit("AMT")
        if a_unit not in (None, "cells"):
            raise ValueError(
                f"{ds.name}: AMT is in {a_unit!r}; doses must be in cells: use "
                "Dataset.convert_doses('cells', weight='WT') for doses per kg"
            )
    arr = ds.to_arrays()
    observed = set(np.unique(arr.dvid[arr.mask]).tolist())
    missing = observed - set(eps)
    if missing:
        raise ValueError(
            f"{ds.name}: observations with DVID {sorted(missing)} have no [[endpoints]] entry in "
            f"the fit (endpoints: {sorted(eps)}); add one or remove those records"
        )
    endpoint = np.vectorize(lambda v: eps.get(int(v), 0))(arr.dvid)
    limit = np.where(arr.cens != 0, arr.dv, np.nan)
    names = list(stat.model.parameters)
    n, D = arr.dose_time.shape
    ev_time = np.where(arr.dose_mask, arr.dose_time, 1e30)
    ev_dose = np.where(arr.dose_mask, arr.dose_amt, 0.0)
    for i in range(n):
        order = np.argsort(ev_time[i], kind="stable")
        ev_time[i], ev_dose[i] = ev_time[i][order], ev_dose[i][order]
    return FitData(
        ids=arr.id, time=arr.time, dv=arr.dv, cens=arr.cens, limit=np.nan_to_num(limit, nan=1.0),
        endpoint=endpoint, mask=arr.mask, ev_time=ev_time, ev_dose=ev_dose,
        ev_log_effect=np.zeros((n, D, len(names))), covariates=dict(arr.covariates),
    )
