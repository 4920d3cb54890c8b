"""CRS scenarios: one TOML file in fits/ (``fits/crs_*.toml``) parses once into a frozen
:class:`CRSConfig`; a finished fit's run folder can replace its kinetic population.

Sections (see ``fits/crs_hardiansyah.toml`` for a complete, commented example)::

    [model]          name (any cartkin ODE model with IL-6, CAR-T and tumour outputs)
    [population]     typical, omega (variances, natural scale), uncertainty (SE of typical
                     values, natural scale), burden (parameter), weight = {median, cv}
    [exposure]       window, step, fine_step, fine_until (days), outputs = {il6, cart, tumour},
                     solver = {name (tsit5, ..., or batched), rtol, atol, interpolate},
                     block (solves per call; default 8192 on a CPU, 2^20 on a GPU),
                     chunk_size (see cartkin.simulate)
    [link]           metrics, prior = {metric = {mean, sd}}
    [calibration]    table, gradings, patients, point_patients, [[calibration.cohorts]]
    [doses]          grid, unit, regimen, fractionated, limit, response_reduction,
                     response_target, burden_profiles
    [[tocilizumab]]  rule, grade, il6_threshold, blockade, kinetic_effects
    [uncertainty]    draws, patients, seed
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .calibrate import AggregateCohort, Prior
from .kinetics import KineticPopulation, SolveSettings, default_block
from .metrics import ExposureOutputs
from .risk import DoseRiskSpec, LinkSpec
from .rules import Tocilizumab

_SECTIONS = {
    "title",
    "description",
    "model",
    "population",
    "exposure",
    "link",
    "calibration",
    "doses",
    "tocilizumab",
    "uncertainty",
}


@dataclasses.dataclass(frozen=True)
class CRSConfig:
    """A parsed CRS scenario (immutable)."""

    source: str
    title: str
    kinetics: KineticPopulation
    link: LinkSpec
    cohorts: tuple[AggregateCohort, ...]
    spec: DoseRiskSpec
    settings: SolveSettings
    raw: Mapping
    kinetics_source: str = "scenario"


def _err(path, msg):
    return ValueError(f"{path}: {msg}")


def _only(path, section, table, allowed):
    if not isinstance(table, Mapping):
        raise _err(path, f"[{section}] must be a table")
    unknown = set(table) - set(allowed)
    if unknown:
        raise _err(
            path, f"unknown key(s) {sorted(unknown)} in [{section}]; allowed: {sorted(allowed)}"
        )


def load_scenario(path, **overrides) -> CRSConfig:
    """Parse and check a CRS scenario TOML; every error names the file and the key.

    ``overrides`` replace fields of the dose-risk spec (e.g. ``draws=10``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"CRS scenario {path} not found")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise _err(path, f"not valid TOML: {e}") from None
    return scenario_from_dict(raw, path, **overrides)


def _float_map(path, section, table):
    try:
        return {str(k): float(v) for k, v in dict(table).items()}
    except (TypeError, ValueError):
        raise _err(path, f"[{section}] values must be numbers") from None


def _solver(path, table):
    import diffrax as dfx

    _only(path, "exposure.solver", table, {"name", "rtol", "atol", "max_steps", "interpolate"})
    solvers = {
        "tsit5": dfx.Tsit5,
        "dopri5": dfx.Dopri5,
        "kvaerno5": dfx.Kvaerno5,
        "bosh3": dfx.Bosh3,
    }
    name = str(table.get("name", "tsit5")).lower()
    tol = {k: table[k] for k in ("rtol", "atol", "max_steps", "interpolate") if k in table}
    if name in ("batched", "auto"):  # cartkin.simulate's own choice / batched Rosenbrock solver
        return None, {"method": name, **tol}
    if name not in solvers:
        raise _err(
            path,
            f"[exposure] solver name {name!r} unknown; choose from "
            f"{list(solvers) + ['batched', 'auto']}",
        )
    return solvers[name](), tol


def scenario_from_dict(raw: Mapping, path, **overrides) -> CRSConfig:
    from .._models.registry import get_model

    path = Path(path)
    _only(path, "top level", raw, _SECTIONS)
    for s in ("model", "population", "link", "calibration", "doses"):
        if s not in raw:
            raise _err(path, f"missing section [{s}]")
    mdl = raw["model"]
    _only(path, "model", mdl, {"name", "options"})
    try:
        model = get_model(mdl["name"], **mdl.get("options", {}))
    except (KeyError, ValueError, TypeError) as e:
        raise _err(path, f"[model]: {e}") from None
    kin = _population(path, model, raw["population"])
    exp = raw.get("exposure", {})
    _only(
        path,
        "exposure",
        exp,
        {
            "window",
            "step",
            "fine_step",
            "fine_until",
            "outputs",
            "solver",
            "block",
            "chunk_size",
            "note",
        },
    )
    roles = (
        ExposureOutputs(**{**dataclasses.asdict(ExposureOutputs()), **exp.get("outputs", {})})
        if set(exp.get("outputs", {})) <= {"il6", "cart", "tumour"}
        else None
    )
    if roles is None:
        raise _err(path, "[exposure] outputs takes il6, cart and tumour (model output names)")
    solver, tol = _solver(path, exp.get("solver", {}))
    try:
        grid = {k: float(exp[k]) for k in ("window", "step", "fine_step", "fine_until") if k in exp}
        settings = SolveSettings(
            **grid,
            solver=solver,
            block=int(exp.get("block", default_block())),
            chunk_size=exp.get("chunk_size"),
            **tol,
        )
    except (TypeError, ValueError) as e:
        raise _err(path, f"[exposure]: {e}") from None
    link = _link(path, raw["link"], roles)
    try:
        roles.check(model, link.metrics)
    except ValueError as e:
        raise _err(path, str(e)) from None
    cal = raw["calibration"]
    _only(
        path,
        "calibration",
        cal,
        {"table", "gradings", "patients", "point_patients", "cohorts", "note"},
    )
    cohorts = cohorts_from_table(path, cal)
    spec = _spec(path, raw, cal, overrides)
    return CRSConfig(
        str(path), str(raw.get("title", path.stem)), kin, link, cohorts, spec, settings, raw
    )


def _population(path, model, pop):
    _only(path, "population", pop, {"typical", "omega", "uncertainty", "burden", "weight", "note"})
    w = pop.get("weight", {})
    _only(path, "population.weight", w, {"median", "cv"})
    try:
        return KineticPopulation(
            model,
            _float_map(path, "population.typical", pop.get("typical", {})),
            _float_map(path, "population.omega", pop.get("omega", {})),
            _float_map(path, "population.uncertainty", pop.get("uncertainty", {})),
            burden=str(pop.get("burden", "B0")),
            weight=(float(w.get("median", 70.0)), float(w.get("cv", 0.2))),
        )
    except ValueError as e:
        raise _err(path, f"[population]: {e}") from None


def _link(path, lk, roles):
    _only(path, "link", lk, {"metrics", "prior", "note"})
    metrics = tuple(lk.get("metrics", ["log_peak_il6"]))
    if not metrics:
        raise _err(path, "[link] metrics is empty")
    prior = lk.get("prior", {})
    mean, sd = {}, {}
    for m in metrics:
        if m not in prior:
            raise _err(path, f"[link] prior gives no {{mean, sd}} for metric {m!r}")
        _only(path, f"link.prior.{m}", prior[m], {"mean", "sd"})
        mean[m], sd[m] = float(prior[m]["mean"]), float(prior[m]["sd"])
        if not sd[m] > 0:
            raise _err(path, f"[link] prior sd of {m!r} must be positive")
    return LinkSpec(metrics, Prior(mean, sd), roles)


def cohorts_from_table(path, cal) -> tuple[AggregateCohort, ...]:
    """The calibration cohorts: rows of a bundled rates table, with the doses and grade
    counts the configuration adds; only verified rows on an accepted grading scale."""
    from .. import data

    table = data.load(cal.get("table", "crs_rates"))
    frame = table.frame
    gradings = list(cal.get("gradings", ["Lee 2014", "ASTCT", "Lee 2014/ASTCT"]))
    out = []
    specs = cal.get("cohorts", [])
    if not specs:
        raise _err(path, "[calibration] lists no [[calibration.cohorts]]")
    for i, c in enumerate(specs):
        where = f"[[calibration.cohorts]] #{i + 1}"
        _only(
            path,
            where,
            c,
            {"product", "trial", "doses", "shares", "per_kg", "grades", "note", "name"},
        )
        try:
            product, trial, doses = c["product"], c["trial"], [float(d) for d in c["doses"]]
        except KeyError as k:
            raise _err(path, f"{where} needs {k}") from None
        rows = frame[(frame["product"] == product) & (frame["trial"] == trial)]
        if len(rows) != 1:
            avail = "; ".join(
                f"{p} / {t}" for p, t in zip(frame["product"], frame["trial"], strict=True)
            )
            raise _err(
                path,
                f"{where}: no single row of {table.name} has product {product!r} and "
                f"trial {trial!r}; rows are: {avail}",
            )
        row = rows.iloc[0]
        if row["status"] != "verified":
            raise _err(
                path, f"{where}: the row {product} / {trial} is {row['status']!r}, not verified"
            )
        grading = "" if not isinstance(row["grading"], str) else row["grading"]
        if grading not in gradings:
            raise _err(
                path,
                f"{where}: the row {product} / {trial} is graded "
                f"{grading or 'on an unrecorded scale'!r}, not on an accepted scale {gradings} "
                "(grades of different scales are not comparable)",
            )
        n = int(row["n"])
        pct = {}
        if np.isfinite(float(row["crs_any_pct"])):
            pct[1] = float(row["crs_any_pct"])
        if np.isfinite(float(row["crs_grade3plus_pct"])):
            pct[3] = float(row["crs_grade3plus_pct"])
        for k, v in dict(c.get("grades", {})).items():
            k = int(k)
            if k in pct and not np.isclose(pct[k], float(v), atol=0.5):
                raise _err(path, f"{where}: grades {k} = {v}% disagrees with the table's {pct[k]}%")
            pct.setdefault(k, float(v))
        shares = c.get("shares", [1.0 / len(doses)] * len(doses))
        if len(shares) != len(doses):
            raise _err(
                path, f"{where}: shares ({len(shares)}) and doses ({len(doses)}) differ in length"
            )
        try:
            out.append(
                AggregateCohort(
                    str(c.get("name", f"{product} ({trial})")),
                    n,
                    {k: int(round(v / 100.0 * n)) for k, v in pct.items()},
                    tuple(zip(doses, [float(s) for s in shares], strict=True)),
                    per_kg=bool(c.get("per_kg", False)),
                    grading=grading,
                    source=str(row["source"]),
                    note=str(c.get("note", "")),
                )
            )
        except ValueError as e:
            raise _err(path, f"{where}: {e}") from None
    return tuple(out)


def _spec(path, raw, cal, overrides):
    d = raw["doses"]
    _only(
        path,
        "doses",
        d,
        {
            "grid",
            "unit",
            "regimen",
            "fractionated",
            "limit",
            "response_reduction",
            "response_target",
            "burden_profiles",
        },
    )
    unit = d.get("unit", "cells")
    if unit not in ("cells", "cells/kg"):
        raise _err(path, f"[doses] unit must be 'cells' or 'cells/kg', got {unit!r}")
    reg = d.get("regimen", {"fractions": [1.0], "times": [0.0]})
    frac = d.get("fractionated")
    tocis = []
    for i, t in enumerate(raw.get("tocilizumab", [])):
        _only(
            path,
            f"tocilizumab #{i + 1}",
            t,
            {"rule", "grade", "il6_threshold", "blockade", "kinetic_effects", "note"},
        )
        try:
            tocis.append(Tocilizumab(**{k: v for k, v in t.items() if k != "note"}))
        except (TypeError, ValueError) as e:
            raise _err(path, f"[[tocilizumab]] #{i + 1}: {e}") from None
    unc = raw.get("uncertainty", {})
    _only(path, "uncertainty", unc, {"draws", "patients", "seed"})
    kw = dict(
        doses=tuple(float(x) for x in d.get("grid", [])),
        per_kg=unit == "cells/kg",
        fractions=tuple(reg.get("fractions", [1.0])),
        fraction_times=tuple(reg.get("times", [0.0])),
        fractionated=None if frac is None else (tuple(frac["fractions"]), tuple(frac["times"])),
        tocilizumab=tuple(tocis),
        burden_profiles=tuple(float(b) for b in d.get("burden_profiles", [])),
        limit=float(d.get("limit", 0.10)),
        response_reduction=float(d.get("response_reduction", 0.5)),
        response_target=d.get("response_target", 0.5),
        draws=int(unc.get("draws", 40)),
        patients=int(unc.get("patients", 100)),
        calibration_patients=int(cal.get("patients", 100)),
        point_patients=int(cal.get("point_patients", 1000)),
        seed=int(unc.get("seed", 1)),
    )
    kw.update(overrides)
    try:
        return DoseRiskSpec(**kw)
    except (TypeError, ValueError, KeyError) as e:
        raise _err(path, f"[doses]/[uncertainty]: {e}") from None


def kinetics_from_run(run_dir, cfg: CRSConfig) -> CRSConfig:
    """``cfg`` with its kinetic population replaced by a finished fit's (``runs/<name>/``).

    Typical values are the fit's estimates (at the reference covariate values), Omega its
    estimate, and the uncertainty of the typical values its covariance of the log/logit
    typical values (``covariance.csv``). If the fit gives the burden parameter no variability,
    the scenario's burden variance is added.
    """
    import pandas as pd

    from .._population import from_unconstrained
    from ..api_fit import load_run

    run_dir = Path(run_dir)
    fcfg, est, _ = load_run(run_dir)
    model = fcfg.stat.model
    try:
        cfg.link.outputs.check(model, cfg.link.metrics)
    except ValueError as e:
        raise ValueError(f"{run_dir}: the fit's model cannot give CRS risk: {e}") from None
    if type(model) is not type(cfg.kinetics.model):
        raise ValueError(
            f"{run_dir}: the fit's model is {model.name} but the scenario's is "
            f"{cfg.kinetics.model.name}; use a scenario written for {model.name}"
        )
    iiv = list(est["iiv"])
    typical = {k: float(v) for k, v in est.get("fixed", {}).items()}
    for name, dom, coefs in zip(iiv, est["domains"], est["beta"], strict=True):
        typical[name] = float(from_unconstrained(dom, coefs[0]))
    omega = np.asarray(est["omega"], float)
    burden = cfg.kinetics.burden
    names = list(iiv)
    scen_omega = cfg.kinetics.omega if isinstance(cfg.kinetics.omega, Mapping) else {}
    if burden not in names and burden in scen_omega:
        names.append(burden)
        big = np.zeros((len(names), len(names)))
        big[:-1, :-1] = omega
        big[-1, -1] = float(scen_omega[burden])
        omega = big
    cov_file = run_dir / "covariance.csv"
    if not cov_file.exists():
        raise FileNotFoundError(
            f"{run_dir} has no covariance.csv: the uncertainty of the fit is needed"
        )
    cov = pd.read_csv(cov_file, index_col=0)
    rows = [f"theta:{k}" for k in iiv]
    missing = [r for r in rows if r not in cov.index]
    if missing:
        raise ValueError(f"{cov_file} lacks rows {missing}")
    unc = (tuple(iiv), cov.loc[rows, rows].to_numpy(float))
    kin = KineticPopulation(
        model, typical, (tuple(names), omega), unc, burden=burden, weight=cfg.kinetics.weight
    )
    return dataclasses.replace(cfg, kinetics=kin, kinetics_source=f"fit run {run_dir}")
