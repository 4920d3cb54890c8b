"""Aggregate fits from a configuration file: ``cartkin fit fits/<name>_aggregate.toml``.

A fit configuration with an ``[aggregate]`` section describes a fit to published summaries
(see :mod:`cartkin._estimate.aggregate` for the method). Two kinds of summary, which may be
combined::

    [aggregate]                     # quantiles over time (a bundled table, one row per day)
    data = "axicel_zuma1_medians"
    time = "day"                    # the column holding the day
    quantiles = { q25_cells_per_uL = 0.25, median_cells_per_uL = 0.5, q75_cells_per_uL = 0.75 }
    n = 19                          # only where the data give no n: an assumption, say why
    assumptions = ["n = 19: ..."]   # every assumption in words (copied to run.json)

    [aggregate]                     # NCA summaries (rows of a long table such as product_kinetics)
    data = "product_kinetics"
    where = { product = "ciltacabtagene autoleucel", trial = "CARTITUDE-1" }
    fit = ["cmax", "tmax", "auc_0_28d"]
    compare = ["auc_0_6m"]          # simulated and reported, not fitted

    [model]
    name = "stein2019"
    options = { switch = "softmin" }

    [parameters]
    estimate = { Cmax = 30.0, Tmax = 5.0 }     # initial typical values (data's level unit)
    fixed_from = "stein2019_parameters"        # every other typical value and IIV SD
    omega_reading = "variance"
    fixed = { beta = 0.0032 }                  # optional overrides

    [iiv]
    estimate = { Cmax = 1.0 }                  # initial SDs (log scale; logit for fractions)
    fixed = { Tmax = 0.5 }                     # optional overrides of the fixed SDs

    [method]                                   # all optional
    seed = 1
    n_virtual = 20000
    max_iter = 500
    gtol = 1e-6

Only rows with status ``verified`` are used. Every error names the file and the key.
"""

from __future__ import annotations

import dataclasses
import json
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from .aggregate import (
    NCA_METRICS,
    AggregateResult,
    Group,
    fit_aggregate,
    make_problem,
    monte_carlo_se,
    observed_vector,
)

_TOP = {"title", "description", "aggregate", "model", "parameters", "iiv", "method"}
_KEYS = {
    "aggregate": {"data", "time", "quantiles", "n", "where", "fit", "compare", "assumptions"},
    "model": {"name", "options"},
    "parameters": {"estimate", "fixed", "fixed_from", "omega_reading"},
    "iiv": {"estimate", "fixed"},
    "method": {"seed", "n_virtual", "max_iter", "gtol"},
}
_QNAMES = {0.25: "q25", 0.5: "median", 0.75: "q75"}


@dataclasses.dataclass(frozen=True)
class AggregateConfig:
    """A parsed aggregate fit configuration (immutable)."""

    source: str
    title: str
    assumptions: tuple[str, ...]
    data: str
    level_unit: str
    level_params: tuple[str, ...]
    model: object
    groups: tuple[Group, ...]
    init: Mapping[str, float]
    iiv_init: Mapping[str, float]
    theta_fixed: Mapping[str, float]
    omega_fixed: Mapping[str, float]
    fixed_source: Mapping[str, str]
    seed: int
    n_virtual: int
    max_iter: int
    gtol: float
    raw: Mapping


def has_aggregate_section(path: str | Path) -> bool:
    """Whether the TOML file at ``path`` describes an aggregate fit (False if unreadable)."""
    try:
        return "aggregate" in tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False


def _err(path, msg) -> ValueError:
    return ValueError(f"{path}: {msg}")


def _section(path, raw, name, required=True) -> dict:
    if name not in raw:
        if required:
            raise _err(path, f"missing section [{name}]")
        return {}
    sec = raw[name]
    if not isinstance(sec, Mapping):
        raise _err(path, f"[{name}] must be a table")
    if unknown := sorted(set(sec) - _KEYS[name]):
        raise _err(path, f"unknown key(s) {unknown} in [{name}]; allowed: {sorted(_KEYS[name])}")
    return dict(sec)


def load_aggregate_config(path: str | Path, *, n_virtual: int | None = None,
                          max_iter: int | None = None) -> AggregateConfig:
    """Parse and check an aggregate fit TOML file (``n_virtual``/``max_iter`` override)."""
    from .. import data as cdata
    from .._models.registry import get_model

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"fit configuration {path} not found")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise _err(path, f"not valid TOML: {e}") from None
    if unknown := sorted(set(raw) - _TOP):
        raise _err(path, f"unknown section(s) {unknown}; allowed: {sorted(_TOP)}")
    agg = _section(path, raw, "aggregate")
    mdl = _section(path, raw, "model")
    par = _section(path, raw, "parameters")
    iiv = _section(path, raw, "iiv", required=False)
    meth = _section(path, raw, "method", required=False)
    try:
        model = get_model(mdl["name"], **mdl.get("options", {}))
    except KeyError:
        raise _err(path, "[model] needs name") from None
    except (ValueError, TypeError) as e:
        raise _err(path, f"[model]: {e}") from None
    if "data" not in agg:
        raise _err(path, "[aggregate] needs data (the name of a bundled table)")
    try:
        table = cdata.load(agg["data"])
    except ValueError as e:
        raise _err(path, f"[aggregate] data: {e}") from None
    if not hasattr(table, "verified"):
        raise _err(path, f"[aggregate] data {agg['data']!r} is not a published table")
    groups, units = [], set()
    if "quantiles" in agg:
        groups += _quantile_groups(path, agg, table, units)
    if "fit" in agg or "compare" in agg:
        if model.name not in ("Stein2019",):
            raise _err(path, f"[aggregate] fit: NCA metrics are implemented for stein2019 only, "
                             f"not {mdl['name']!r}")
        groups += _nca_groups(path, agg, table, units)
    elif "n" in agg and "quantiles" not in agg:
        raise _err(path, "[aggregate] n applies to quantiles tables only")
    if not groups:
        raise _err(path, "[aggregate] needs quantiles (a table over time) or fit (NCA metrics)")
    if len(units) != 1:
        raise _err(path, f"[aggregate] the statistics are in different level units {sorted(units)}")
    theta_fixed, omega_fixed, src = _fixed(path, par, iiv, model)
    init = _positive(path, "parameters", "estimate", par.get("estimate", {}), model)
    iiv_init = _positive(path, "iiv", "estimate", iiv.get("estimate", {}), model, sd=True)
    if not init:
        raise _err(path, "[parameters] estimate names no parameter")
    out_unit = next(iter(model.outputs.values())).unit
    level = [k for k, p in model.parameters.items() if p.unit == out_unit]
    for k in level:
        if k not in init:
            raise _err(path, f"[parameters] estimate must include {k}: it sets the level scale, "
                             f"which takes the data's unit ({next(iter(units))})")
    try:
        seed = int(meth.get("seed", 1))
        m = int(n_virtual or meth.get("n_virtual", 20000))
        iters = int(max_iter or meth.get("max_iter", 500))
        gtol = float(meth.get("gtol", 1e-6))
    except (TypeError, ValueError) as e:
        raise _err(path, f"[method]: {e}") from None
    if m < 500:
        raise _err(path, f"[method] n_virtual = {m}: use at least 500 virtual patients")
    return AggregateConfig(
        source=str(path), title=str(raw.get("title", path.stem)),
        assumptions=tuple(str(a) for a in agg.get("assumptions", [])), data=agg["data"],
        level_unit=next(iter(units)), level_params=tuple(level), model=model,
        groups=tuple(groups), init=init,
        iiv_init=iiv_init, theta_fixed=theta_fixed, omega_fixed=omega_fixed, fixed_source=src,
        seed=seed, n_virtual=m, max_iter=iters, gtol=gtol, raw=raw)


def _quantile_groups(path, agg, table, units) -> list[Group]:
    frame = table.verified()
    tcol = agg.get("time", "day")
    cols = agg["quantiles"]
    if not isinstance(cols, Mapping) or not cols:
        raise _err(path, "[aggregate] quantiles must map column names to probabilities")
    for c in [tcol, *cols]:
        if c not in frame.columns:
            raise _err(path, f"[aggregate] column {c!r} is not in {table.name} "
                             f"(columns: {list(frame.columns)})")
    if table.meta.columns[tcol].unit not in ("d", "day", "days"):
        raise _err(path, f"[aggregate] time column {tcol!r} is not in days")
    for c, p in cols.items():
        if not 0 < float(p) < 1:
            raise _err(path, f"[aggregate] quantiles {c} = {p}: a probability is in (0, 1)")
        units.add(table.meta.columns[c].unit)
    if "n" in frame.columns:
        if "n" in agg:
            raise _err(path, f"[aggregate] n: {table.name} gives n per row; remove n")
        ns = frame["n"].astype(float).tolist()
    elif "n" not in agg:
        raise _err(path, f"[aggregate] needs n: {table.name} does not give the sample size "
                         "(state it, with the reason, as an assumption)")
    else:
        n = agg["n"]
        ns = [float(v) for v in (n if isinstance(n, list) else [n] * len(frame))]
        if len(ns) != len(frame) or min(ns) < 2:
            raise _err(path, f"[aggregate] n must be a number >= 2 or a list of {len(frame)}")
    order = sorted(cols, key=lambda c: float(cols[c]))
    return [Group(f"C@{float(r[tcol]):g}", "quantiles", tuple(float(cols[c]) for c in order),
                  tuple(float(r[c]) for c in order), n, table.meta.columns[order[0]].unit,
                  table.citation)
            for (_, r), n in zip(frame.iterrows(), ns, strict=True)]


def _nca_groups(path, agg, table, units) -> list[Group]:
    frame = table.verified()
    for col, val in agg.get("where", {}).items():
        if col not in frame.columns:
            raise _err(path, f"[aggregate] where: {table.name} has no column {col!r}")
        frame = frame[frame[col] == val]
    out = []
    for key, fitted in (("fit", True), ("compare", False)):
        for q in agg.get(key, []):
            if q not in NCA_METRICS:
                raise _err(path, f"[aggregate] {key}: unknown metric {q!r}; choose from "
                                 f"{list(NCA_METRICS)}")
            rows = frame[frame["quantity"] == q]
            if len(rows) != 1:
                raise _err(path, f"[aggregate] {key}: {len(rows)} verified rows of {q!r} match "
                                 f"where = {agg.get('where', {})}; need exactly one")
            r = rows.iloc[0]
            n = float(r["n"])
            if not np.isfinite(n):
                raise _err(path, f"[aggregate] {key}: the {q} row gives no n")
            stat = str(r["statistic"])
            spread = r["spread"] if isinstance(r["spread"], str) else ""
            if stat == "mean":
                labels, obs = ["mean"], [float(r["value"])]
                if spread.startswith("SD "):
                    labels.append("sd")
                    obs.append(float(spread[3:]))
                g = Group(q, "moments", tuple(labels), tuple(obs), n, r["unit"], r["source"],
                          fitted)
            elif stat == "median":
                g = Group(q, "quantiles", (0.5,), (float(r["value"]),), n, r["unit"], r["source"],
                          fitted)
            else:
                raise _err(path, f"[aggregate] {key}: {q} is a {stat!r}; mean (with SD) and "
                                 "median are supported")
            if q.startswith("auc"):
                units.add(str(r["unit"]).removesuffix(" x day"))
            elif q == "cmax":
                units.add(str(r["unit"]))
            out.append(g)
    return out


def _positive(path, section, key, values, model, sd=False) -> dict[str, float]:
    out = {}
    for k, v in values.items():
        if k not in model.parameters:
            raise _err(path, f"[{section}] {key} names {k!r}, not a parameter of {model.name} "
                             f"({list(model.parameters)})")
        v = float(v)
        dom = "positive" if sd else model.parameters[k].domain
        bad = (dom == "positive" and v <= 0) or (dom == "unit" and not 0 < v < 1)
        if bad or not np.isfinite(v):
            raise _err(path, f"[{section}] {key} {k} = {v} is outside its domain ({dom})")
        out[k] = v
    return out


def _fixed(path, par, iiv, model):
    from .. import data as cdata

    theta, omega, src = {}, {}, {}
    if "fixed_from" in par:
        name = par["fixed_from"]
        try:
            pset = cdata.load(name, **({"omega_reading": par["omega_reading"]}
                                       if "omega_reading" in par else {}))
        except ValueError as e:
            raise _err(path, f"[parameters] fixed_from: {e}") from None
        if not hasattr(pset, "typical"):
            raise _err(path, f"[parameters] fixed_from: {name!r} is not a parameter set")
        for k in model.parameters:
            if k in pset.typical:
                theta[k], src[f"typical:{k}"] = pset.typical[k], name
            if k in pset.omega:
                omega[k] = float(np.sqrt(pset.omega[k]))
                src[f"iiv_sd:{k}"] = f"{name} ({pset.omega_reading} reading)"
    elif "omega_reading" in par:
        raise _err(path, "[parameters] omega_reading needs fixed_from")
    for k, v in _positive(path, "parameters", "fixed", par.get("fixed", {}), model).items():
        theta[k], src[f"typical:{k}"] = v, "configuration"
    for k, v in iiv.get("fixed", {}).items():
        if k not in model.parameters or float(v) < 0:
            raise _err(path, f"[iiv] fixed {k} = {v}: needs a parameter of {model.name} and an "
                             "SD >= 0")
        omega[k], src[f"iiv_sd:{k}"] = float(v), "configuration"
    est, est_iiv = par.get("estimate", {}), iiv.get("estimate", {})
    for k in model.parameters:
        if k not in theta and k not in est:
            raise _err(path, f"[parameters] {k} is neither estimated nor fixed (add it to "
                             "[parameters] fixed, or name a set in fixed_from)")
        if k not in omega and k not in est_iiv:
            raise _err(path, f"[iiv] the SD of {k} is neither estimated nor fixed (add it to "
                             "[iiv] fixed; 0 means no variability)")
    return theta, omega, src


# --------------------------------------------------------------------------- run
def run_aggregate_fit(config: str | Path, out: str | Path | None = None, *,
                      n_virtual: int | None = None, max_iter: int | None = None,
                      progress: bool = True) -> tuple[AggregateConfig, AggregateResult]:
    """Parse ``config``, fit, and (if ``out``) write the run folder atomically.

    The folder holds parameters.csv, summaries.csv, covariance.csv, run.json and
    aggregate_fit.png. ``n_virtual`` and ``max_iter`` override the configuration (tests).
    """
    from .._output import atomic_directory
    from .._record import file_hash, versions
    from ..data import data_dir
    from .aggregate_plot import plot_aggregate

    cfg = load_aggregate_config(config, n_virtual=n_virtual, max_iter=max_iter)
    problem = make_problem(cfg.model, cfg.groups, estimate=tuple(cfg.init),
                           estimate_iiv=tuple(cfg.iiv_init), theta_fixed=cfg.theta_fixed,
                           omega_fixed=cfg.omega_fixed, n_virtual=cfg.n_virtual, seed=cfg.seed)
    psi0 = problem.psi_from({**cfg.theta_fixed, **cfg.init}, {**cfg.omega_fixed, **cfg.iiv_init})

    def show(it, rec):
        if progress and (it == 1 or it % 10 == 0):
            print(f"  iteration {it:4d} (weights {rec[0]}): r'C^-1 r / 2 = {rec[1]:.6f}, "
                  f"max |gradient| {rec[2]:.2e}", flush=True)

    t0 = time.perf_counter()
    result = fit_aggregate(problem, psi0, max_iter=cfg.max_iter, gtol=cfg.gtol, callback=show)
    result = dataclasses.replace(result, mc_se=monte_carlo_se(
        problem, result.psi, result.covariance, result.covs))
    wall = time.perf_counter() - t0
    if out is not None:
        csv = Path(data_dir()) / f"{cfg.data}.csv"
        record = {
            "config_file": str(config), "config": cfg.raw, "title": cfg.title,
            "assumptions": list(cfg.assumptions), "seed": cfg.seed, "n_virtual": cfg.n_virtual,
            "data": cfg.data, "data_sha256": file_hash(csv) if csv.exists() else None,
            "level_unit": cfg.level_unit, "model": cfg.model.name, "citation": cfg.model.citation,
            "sample_sizes": {g.quantity: g.n for g in cfg.groups},
            "fixed_sources": dict(cfg.fixed_source),
            "psi": dict(zip(problem.names, result.psi.tolist(), strict=True)),
            "convergence": convergence(result), "wall_seconds": wall, "versions": versions(),
        }
        with atomic_directory(out) as tmp:
            parameter_table(cfg, result).to_csv(tmp / "parameters.csv", index=False)
            summary_table(result).to_csv(tmp / "summaries.csv", index=False)
            pd.DataFrame(result.covariance, index=problem.names,
                         columns=problem.names).to_csv(tmp / "covariance.csv")
            (tmp / "run.json").write_text(json.dumps(record, indent=2, default=_plain))
            plot_aggregate(cfg, result, tmp / "aggregate_fit.png")
    return cfg, result


def _plain(x):
    return x.tolist() if hasattr(x, "tolist") else str(x)


def convergence(result: AggregateResult) -> dict:
    from scipy.stats import chi2

    return {"method": "iteratively reweighted GLS; optax.lbfgs (zoom line search)",
            "iterations": result.iterations, "reweightings": result.reweightings,
            "max_abs_gradient": result.grad_norm, "newton_decrement": result.newton_decrement,
            "hessian_positive_definite": bool(np.all(np.isfinite(result.covariance))),
            "converged": result.converged, "chi2": result.chi2, "df": result.df,
            "p_value": float(chi2.sf(result.chi2, result.df)) if result.df > 0 else None,
            "m2ll": 2 * result.nll}


def parameter_table(cfg: AggregateConfig, result: AggregateResult) -> pd.DataFrame:
    """Typical values and IIV SDs: estimate, SE (delta method), RSE%, back-transformed 95% CI."""
    from .._population import from_unconstrained

    prob = result.problem
    theta, omega = prob.unpack(result.psi)
    idx = {nm: i for i, nm in enumerate(prob.names)}
    rows = []
    for kind, values in (("typical", theta), ("iiv_sd", omega)):
        for k, p in cfg.model.parameters.items():
            label = f"{kind}:{k}"
            scale = {"unit": "logit", "positive": "log"}.get(p.domain, "natural") + " scale"
            dom = p.domain if kind == "typical" else "positive"
            est = float(values[k])
            row = {"kind": kind, "parameter": k, "estimate": est,
                   "unit": (cfg.level_unit if k in cfg.level_params else p.unit)
                   if kind == "typical" else scale,
                   "status": "estimated" if label in idx else "fixed",
                   "source": "fit" if label in idx else cfg.fixed_source.get(label, "")}
            if label in idx:
                i = idx[label]
                u, su = result.psi[i], result.se[i]
                lo, hi = (float(from_unconstrained(dom, u + s * 1.959964 * su)) for s in (-1, 1))
                deriv = est if dom == "positive" else est * (1 - est)
                row.update(se=abs(deriv) * su, rse_pct=100 * abs(deriv) * su / abs(est),
                           ci_low=lo, ci_high=hi)
                if result.mc_se is not None:
                    row["mc_se"] = abs(deriv) * result.mc_se[i]
            rows.append(row)
    cols = ["kind", "parameter", "status", "estimate", "se", "rse_pct", "ci_low", "ci_high",
            "mc_se", "unit", "source"]
    return pd.DataFrame(rows).reindex(columns=cols)


def summary_table(result: AggregateResult) -> pd.DataFrame:
    """Each published statistic against the fitted population: the fitted value, the 95%
    interval of the statistic in a sample of the published n, and z = (observed - fitted)/SD
    on the likelihood's scale (log for quantiles, variance for an SD, natural for a mean)."""
    prob = result.problem
    rows = []
    for g, (mean, cov) in zip(prob.groups, result.statistics, strict=True):
        mean, sd = np.asarray(mean), np.sqrt(np.diag(np.asarray(cov)))
        obs = np.asarray(observed_vector(g))
        for j, lab in enumerate(g.labels):
            if g.kind == "quantiles":
                name, scale, back = _QNAMES.get(lab, f"q{100 * lab:g}"), "log", np.exp
            elif lab == "sd":
                name, scale, back = "sd", "variance", lambda v: np.sqrt(np.maximum(v, 0.0))
            else:
                name, scale, back = lab, "natural", lambda v: v
            rows.append({
                "quantity": "C" if g.day is not None else g.quantity, "day": g.day,
                "statistic": name, "n": g.n, "unit": g.unit, "observed": g.observed[j],
                "fitted": float(back(mean[j])),
                "pi_low": float(back(mean[j] - 1.959964 * sd[j])),
                "pi_high": float(back(mean[j] + 1.959964 * sd[j])),
                "z": float((obs[j] - mean[j]) / sd[j]), "scale": scale, "in_fit": g.fitted})
    return pd.DataFrame(rows)


def cli_run_aggregate(config: str | Path, out: Path, *, progress: bool = True) -> int:
    """``cartkin fit`` for a configuration with ``[aggregate]``: fit, print, exit status."""
    t0 = time.perf_counter()
    cfg, result = run_aggregate_fit(config, out, progress=progress)
    fmt = {"float_format": lambda x: f"{x:.4g}", "index": False}
    tv = parameter_table(cfg, result)
    print(tv[tv.status == "estimated"][["kind", "parameter", "estimate", "se", "rse_pct",
                                        "ci_low", "ci_high", "mc_se", "unit"]].to_string(**fmt))
    print(summary_table(result).drop(columns=["unit", "scale"]).to_string(**fmt))
    conv = convergence(result)
    gof = (f"chi2 {conv['chi2']:.2f} on {conv['df']} df (p = {conv['p_value']:.2f})"
           if conv["df"] > 0 else f"chi2 {conv['chi2']:.2f} (no degrees of freedom left)")
    print(f"{gof}; -2 log L {conv['m2ll']:.2f}; max |gradient| {conv['max_abs_gradient']:.1e} "
          f"after {conv['iterations']} iterations in {conv['reweightings']} reweightings "
          f"({'converged' if conv['converged'] else 'NOT converged'}); "
          f"{time.perf_counter() - t0:.1f} s; results in {out}/")
    return 0 if conv["converged"] else 3
