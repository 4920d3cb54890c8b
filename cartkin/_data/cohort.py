"""Simulated cohorts with known truth, drawn from a published population model.

No individual CAR-T time courses are public, so demos and tests use cohorts simulated from a
published population model (Stein 2019 first) with a realistic schedule, residual error and qPCR
censoring, written as NONMEM-style data with a sidecar that records how they were made and a
truth table of every subject's parameters.

Assumptions (ours, stated in every cohort's sidecar):

* schedule: pre-dose, days 1, 4, 7, 10, 14, 21, 28 and months 2, 3, 6, 9, 12 (a month is
  365.25/12 days: days 61, 91, 183, 274, 365), with visit windows of +/-1 day (days 4-10),
  +/-2 days (days 14, 21), +/-3 days (day 28), +/-7 days (months 2-3) and +/-14 days (months
  6-12); actual times are whole days;
* the pre-dose sample is below the LLOQ (no CAR-T yet): DV = LLOQ, CENS = 1, at TIME 0 before
  the dose record;
* residual error additive on the ln scale (Stein: SD 0.56), values rounded to 4 significant
  digits; a value below the LLOQ is reported as DV = LLOQ with CENS = 1 (M3 coding);
* qPCR LLOQ 50 copies/ug: an assumed round value, not from the literature;
* weight log-normal with median 39 kg (Stein's population median) and CV 45%; dose (AMT,
  cells) 3.1e6 cells/kg up to 50 kg, 1.0e8 cells above (the population's median doses). The
  Stein model takes no dose into its states: the dose record completes the data.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .._population import LogNormalCovariate, Population
from .._simulate import simulate
from .dataset import Dataset
from .nonmem import dataset_from_frame, write_nonmem
from .problems import DataError
from .sidecar import Sidecar, write_sidecar
from .tables import ParameterSet


@dataclasses.dataclass(frozen=True)
class Visit:
    """A scheduled sample: nominal day and half-width of its visit window (days)."""

    name: str
    day: float
    window: float = 0.0


_M = 365.25 / 12
STEIN_SCHEDULE: tuple[Visit, ...] = (
    Visit("pre-dose", 0), Visit("day 1", 1), Visit("day 4", 4, 1), Visit("day 7", 7, 1),
    Visit("day 10", 10, 1), Visit("day 14", 14, 2), Visit("day 21", 21, 2),
    Visit("day 28", 28, 3), Visit("month 2", round(2 * _M), 7), Visit("month 3", round(3 * _M), 7),
    Visit("month 6", round(6 * _M), 14), Visit("month 9", round(9 * _M), 14),
    Visit("month 12", round(12 * _M), 14),
)
DEFAULT_WEIGHT = LogNormalCovariate(39.0, 0.45)


def _dose_cells(wt: float) -> float:
    amt = 3.1e6 * wt if wt <= 50.0 else 1.0e8
    return _round(amt, 3)


def _round(v: float, digits: int | None) -> float:
    if digits is None or v == 0 or not math.isfinite(v):
        return float(v)
    return float(round(v, digits - 1 - math.floor(math.log10(abs(v)))))


@dataclasses.dataclass(frozen=True, eq=False)
class Cohort:
    """A simulated cohort: the dataset, the truth per subject, and how it was made."""

    dataset: Dataset
    truth: pd.DataFrame
    population: Population
    #: per observation record, in file order (NaN for pre-dose samples): the value before
    #: censoring (rounded to ``digits``) and the true residual error on the ln scale
    uncensored: np.ndarray
    epsilon: np.ndarray

    @property
    def name(self) -> str:
        return self.dataset.name

    def write(self, path) -> Path:
        """Write ``<name>.csv`` + ``.json`` and the truth ``<name>_truth.csv`` + ``.json``."""
        path = Path(path)
        if path.suffix != ".csv":
            path = path / f"{self.name}.csv"
        write_nonmem(self.dataset, path)
        truth_csv = path.with_name(f"{path.stem}_truth.csv")
        self.truth.to_csv(truth_csv, index=False, lineterminator="\n")
        write_sidecar(_truth_sidecar(self, path.stem), truth_csv.with_suffix(".json"))
        return path


def simulate_cohort(
    n: int,
    seed: int = 0,
    *,
    parameters: str | ParameterSet = "stein2019_parameters",
    omega_reading: str | None = None,
    omega: Mapping[str, float] | None = None,
    model=None,
    residual_sd: float | None = None,
    lloq: float | None = 50.0,
    blq_fraction: float | None = None,
    schedule: Sequence[Visit] = STEIN_SCHEDULE,
    visit_windows: bool = True,
    weight: LogNormalCovariate = DEFAULT_WEIGHT,
    digits: int | None = 4,
    name: str = "cohort",
) -> Cohort:
    """Draw ``n`` subjects from a published population model and sample them like a trial.

    Args:
        n: number of subjects. Subject i depends only on ``seed`` and i, not on ``n``.
        seed: random seed (individual parameters, visit times, residual errors).
        parameters: a bundled parameter set name or a :class:`ParameterSet`.
        omega_reading: how the set's printed random effects are read ("variance" or "sd").
        omega: between-subject variances replacing the set's (``{}``: no variability).
        model: the model (default: the set's own, e.g. ``Stein2019()``).
        residual_sd: SD of the additive ln-scale residual error (default: the set's ``ln_sd``).
        lloq: limit of quantification in the endpoint's unit (default 50 copies/ug, assumed).
        blq_fraction: instead of ``lloq``, the fraction of post-dose samples to fall below
            it; the LLOQ is then the matching quantile of the simulated values.
        schedule, visit_windows: the visits; windows off gives the nominal days.
        weight: weight distribution (kg).
        digits: significant digits of DV (None: unrounded).
        name: dataset name (file stem when written).
    """
    if isinstance(parameters, str):
        from .registry import load

        parameters = load(parameters, omega_reading=omega_reading)
    if blq_fraction is not None:
        if not 0 < blq_fraction < 1:
            raise DataError(f"blq_fraction must be in (0, 1), got {blq_fraction}")
        lloq = None
    if lloq is not None and lloq <= 0:
        raise DataError(f"lloq must be positive, got {lloq}")
    if omega is not None:
        parameters = dataclasses.replace(parameters, omega=dict(omega))
    pop = parameters.population(model, covariates={"WT": weight})
    model = pop.model
    out = next(iter(model.outputs))
    if residual_sd is None and "ln_sd" not in parameters.residual:
        raise DataError(f"{parameters.name} states no ln-scale residual error: pass residual_sd=")
    sd = float(parameters.residual["ln_sd"]) if residual_sd is None else float(residual_sd)
    theta, covs, eta = pop.sample(n, seed)

    nominal = np.array([v.day for v in schedule], float)
    if np.any(nominal < 0) or np.any(np.diff(nominal) <= 0):
        raise DataError("the schedule's days must be >= 0 (pre-dose = day 0) and increasing")
    windows = np.array([v.window for v in schedule], float)
    times = np.empty((n, len(schedule)))
    eps = np.empty((n, len(schedule)))
    for i in range(n):  # per-subject streams: subject i does not depend on n
        rng = np.random.default_rng([seed, i])
        jitter = np.round(rng.uniform(-1.0, 1.0, len(schedule)) * windows)
        times[i] = nominal + (jitter if visit_windows else 0.0)
        eps[i] = rng.standard_normal(len(schedule))
    grid = np.unique(times)
    sim = simulate(model, theta, grid, progress=False)
    if not np.all(sim.ok):
        raise DataError(f"the model failed for subjects {np.flatnonzero(~sim.ok).tolist()}: "
                        f"{sim.failures()}")
    conc = sim.outputs[out][np.arange(n)[:, None], np.searchsorted(grid, times)]
    eps = sd * eps
    values = np.vectorize(lambda v: _round(v, digits))(conc * np.exp(eps))
    pre = nominal <= 0
    if lloq is None and blq_fraction is None:  # no censoring: a pre-dose level 0 has no DV
        schedule = [v for v, p in zip(schedule, pre, strict=True) if not p]
        times, values, eps = times[:, ~pre], values[:, ~pre], eps[:, ~pre]
        nominal, pre = nominal[~pre], pre[~pre]
    if blq_fraction is not None:
        post = np.sort(values[:, ~pre].ravel())
        lloq = _round(post[int(round(blq_fraction * post.size))], digits)
    cens = np.where(pre[None, :] | (values < (lloq or 0.0)), 1, 0)

    n_pre = int(np.sum(pre))  # pre-dose visits (day 0) come first: the schedule is sorted
    rows = []
    for i in range(n):
        wt = _round(float(covs["WT"][i]), 3)
        dose = (i + 1, 0.0, np.nan, _dose_cells(wt), 1, 1, 1, 0, np.nan, wt)
        if n_pre == 0:
            rows.append(dose)
        for j in range(len(schedule)):
            dv = lloq if cens[i, j] else values[i, j]
            rows.append((i + 1, times[i, j], dv, np.nan, 0, 0, 1, cens[i, j], 1, wt))
            if j == n_pre - 1:
                rows.append(dose)
    frame = pd.DataFrame(rows, columns=["ID", "TIME", "DV", "AMT", "EVID", "MDV", "CMT", "CENS",
                                        "DVID", "WT"])
    realised = float(np.mean(cens[:, ~pre]))
    meta = _sidecar(name, parameters, pop, out, sd, lloq, blq_fraction, realised, seed, n,
                    schedule, visit_windows, weight, digits, omega_reading, omega)
    dataset = dataset_from_frame(frame, meta)
    truth = pd.DataFrame({"ID": np.arange(1, n + 1), "WT": [_round(w, 3) for w in covs["WT"]]})
    for k in model.parameters:
        truth[k] = theta[k]
    for j, k in enumerate(pop.eta_names):
        truth[f"ETA_{k}"] = eta[:, j]
    unc = np.where(pre[None, :], np.nan, values).ravel()
    return Cohort(dataset, truth, pop, unc, np.where(pre[None, :], np.nan, eps).ravel())


def _sidecar(name, pset, pop, out, sd, lloq, blq_fraction, realised, seed, n, schedule,
             windows, weight, digits, omega_reading, omega) -> Sidecar:
    model = pop.model
    unit = model.outputs[out].unit
    call = {"n": n, "seed": seed, "parameters": pset.name, "omega_reading": pset.omega_reading,
            "omega": None if omega is None else {k: float(v) for k, v in omega.items()},
            "residual_sd": sd, "lloq": None if blq_fraction is not None else lloq,
            "blq_fraction": blq_fraction, "visit_windows": windows, "digits": digits,
            "name": name}
    return Sidecar.from_dict({
        "kind": "nonmem",
        "name": name,
        "title": f"Simulated cohort of {n} subjects from {pset.name} ({model.name}): "
                 f"{unit} with qPCR LLOQ censoring",
        "description": "SIMULATED data with known truth (no individual CAR-T time courses are "
                       "public). See 'simulation' for the model, parameters, seed and "
                       f"assumptions; the subjects' true parameters are in {name}_truth.",
        "status": "simulated",
        "source": {k: v for k, v in {
            "citation": f"simulated from {pset.citation}", "doi": pset.meta.source.get("doi"),
            "how_obtained": "cartkin.data.simulate_cohort(**simulation.call)"}.items() if v},
        "columns": {
            "ID": {"description": "subject"},
            "TIME": {"unit": "d", "description": "actual time after the infusion"},
            "DV": {"unit": unit, "description": "observation; on CENS=1 records the LLOQ"},
            "AMT": {"unit": "cells", "description": "CAR-T cells infused (not used by "
                    f"{model.name}: its initial level is a parameter)"},
            "EVID": {}, "MDV": {}, "CMT": {},
            "CENS": {"description": "1: below the LLOQ (DV = LLOQ)"},
            "DVID": {},
            "WT": {"role": "covariate", "unit": "kg", "covariate": "baseline",
                   "description": "body weight (no effect on the parameters)"},
        },
        "endpoints": {"1": {"name": "transgene" if unit == "copies/ug" else out, "unit": unit,
                            "lloq": lloq, "log_scale": model.outputs[out].log_scale,
                            "description": model.outputs[out].description}},
        "simulation": {
            "simulated": True,
            "generator": "cartkin.data.simulate_cohort",
            "call": call,
            "model": f"{model.name} ({model.citation})",
            "parameters": pset.name,
            "omega_reading": pset.omega_reading,
            "theta": {k: float(v) for k, v in pop.theta.items()},
            "omega": {k: float(pop.omega_matrix[i, i]) for i, k in enumerate(pop.eta_names)},
            "residual": {"model": "additive on the ln scale", "sd": sd},
            "lloq": lloq,
            "lloq_basis": ("the quantile giving blq_fraction of post-dose samples"
                           if blq_fraction is not None else
                           "assumed qPCR LLOQ (a round value, not from the literature)"),
            "blq_fraction_post_dose": realised,
            "seed": seed,
            "schedule": [{"visit": v.name, "day": v.day, "window": v.window} for v in schedule],
            "weight": {"distribution": "log-normal", "median_kg": weight.median,
                       "cv": weight.cv},
            "dose": "3.1e6 cells/kg up to 50 kg, 1.0e8 cells above (3 significant digits)",
            "truth": f"{name}_truth",
            "regenerate": "python data/make_cohorts.py (bundled cohorts)",
        },
    })


def _truth_sidecar(cohort: Cohort, stem: str) -> Sidecar:
    model = cohort.population.model
    cols = {"ID": {"description": "subject (as in the dataset)"},
            "WT": {"unit": "kg", "description": "body weight"}}
    for k, p in model.parameters.items():
        cols[k] = {"unit": p.unit, "description": f"true individual {p.description}"}
    for k in cohort.population.eta_names:
        cols[f"ETA_{k}"] = {"description": f"random effect of {k} on its natural scale "
                            f"({'logit' if model.parameters[k].domain == 'unit' else 'log'})"}
    return Sidecar.from_dict({
        "kind": "table", "name": f"{stem}_truth",
        "title": f"True individual parameters of the simulated cohort {stem}",
        "status": "simulated",
        "source": {"citation": f"simulated; see the sidecar of {stem}",
                   "how_obtained": "cartkin.data.simulate_cohort (see simulation.call in "
                                   f"{stem}.json)"},
        "columns": cols,
    })
