"""Shared pieces of the virtual trials: populations, extinction, CRS link, intervals, results.

Everything here is post-processing of simulated trajectories (numpy) or a thin call to
:func:`cartkin.simulate`; the models themselves are in :mod:`cartkin._models`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .._models.base import Model
from .._population import Population
from .._simulate import simulate

#: cells: below one cell the deterministic models have no meaning; a compartment that falls below
#: it is extinct from then on (ASSUMED rule, the usual one for mean-field cancer models)
EXTINCTION = 1.0

HYPOTHETICAL = (
    "HYPOTHETICAL WHAT-IF ANALYSIS: the effect is not validated. No source was found for the "
    "claim under test; the model structure and the drug effects are our assumptions."
)


@dataclasses.dataclass(frozen=True)
class ScenarioResult:
    """What a trial returns: the main table, extra tables, a figure writer, summary lines."""

    table: pd.DataFrame
    plot: object  # callable(path) -> None
    summary: tuple[str, ...]
    record: Mapping[str, object]
    extra_tables: Mapping[str, pd.DataFrame] = dataclasses.field(default_factory=dict)
    notice: str = ""


@dataclasses.dataclass(frozen=True)
class CRSLink:
    """P(CRS grade >= 3) = sigmoid(slope * (ln peak IL-6 - ln il6_50)): an ASSUMED logistic link.

    ``slope`` (per natural-log unit of peak IL-6) has no published value (only the direction is
    known: Teachey 2016); ``il6_50`` is calibrated to a published rate (:func:`calibrate_il6_50`)
    or taken from such a calibration.
    """

    slope: float = 1.0
    il6_50: float = 1000.0

    def risk(self, peak_il6):
        z = self.slope * (np.log(np.maximum(peak_il6, 1e-12)) - np.log(self.il6_50))
        return 1.0 / (1.0 + np.exp(-z))


def calibrate_il6_50(peak_il6: np.ndarray, target: float, slope: float) -> float:
    """The ``il6_50`` for which the mean P(CRS >= 3) over ``peak_il6`` equals ``target``."""
    if not 0.0 < target < 1.0:
        raise ValueError(f"CRS calibration target must be in (0, 1), got {target}")
    lo, hi = np.log(1e-3), np.log(1e9)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if CRSLink(slope, float(np.exp(mid))).risk(peak_il6).mean() > target:
            lo = mid
        else:
            hi = mid
    return float(np.exp(0.5 * (lo + hi)))


def extinct_after(values: np.ndarray, *, feeders: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Trajectories (N, T) set to 0 from the first saved time a compartment is extinct.

    A compartment is extinct at the first time it is below :data:`EXTINCTION` while each of its
    ``feeders`` (compartments that produce it, already processed) is extinct too.
    """
    below = values < EXTINCTION
    for f in feeders:
        below &= f <= 0.0
    dead = np.maximum.accumulate(below, axis=1)
    return np.where(dead, 0.0, values)


def first_time(mask: np.ndarray, times: np.ndarray) -> np.ndarray:
    """First time where ``mask`` (N, T) is true, ``inf`` if never."""
    hit = mask.any(axis=1)
    idx = mask.argmax(axis=1)
    return np.where(hit, times[idx], np.inf)


def interval(x: np.ndarray, rng: np.random.Generator, *, draws: int = 400, stat=np.mean):
    """Point value and bootstrap 90% interval over virtual patients (Monte Carlo uncertainty)."""
    x = np.asarray(x, float)
    n = len(x)
    idx = rng.integers(0, n, size=(draws, n))
    boots = np.array([stat(x[i]) for i in idx])
    return float(stat(x)), float(np.quantile(boots, 0.05)), float(np.quantile(boots, 0.95))


def sample(model: Model, typical: Mapping, omega: Mapping, n: int, seed: int):
    """Virtual patients: (theta dict of (n,), ...) from the population's typical values and IIV."""
    pop = Population(model, dict(typical), omega=dict(omega) or None)
    theta, _, _ = pop.sample(n, seed=seed)
    return theta


def run_sim(
    model, theta, times, regimen, *, progress: bool, rtol=1e-6, atol=1e-6, method="batched"
):
    """:func:`cartkin.simulate` with the trials' tolerances; failed solves raise one message.

    The default solver is cartkin's batched Rosenbrock (``method="batched"``): at strong
    suppression and a large tumour the solid-tumour models' inactivation term ``a1 T / gC``
    reaches ~100 /d, and the B-cell aplasia model's killing ``kH C`` more; a vmapped Tsit5 then
    hit max_steps in some patients and took 30 s for 500 patients where the Rosenbrock solver
    took 0.2 s (measured on 2 shared CPU cores). ``max_steps`` is raised to 100,000 per segment.
    """
    res = simulate(
        model,
        theta,
        times,
        regimen,
        rtol=rtol,
        atol=atol,
        progress=progress,
        max_steps=100_000,
        method=method,
    )
    bad = int(np.sum(~res.ok))
    if bad:
        reasons = res.failures()["status"].value_counts().to_dict()
        raise ValueError(f"{bad} of {res.ok.size} solves of {model.name} failed: {reasons}")
    return res


def with_values(theta: Mapping, **values) -> dict:
    """A copy of a population's theta with some parameters set (broadcast) or scaled (``x*``)."""
    n = len(next(iter(theta.values())))
    out = dict(theta)
    for k, v in values.items():
        if k.endswith("_x"):
            out[k[:-2]] = np.asarray(theta[k[:-2]]) * v
        else:
            out[k] = np.full(n, float(v))
    return out


def fmt_p(p, lo, hi) -> str:
    return f"{100 * p:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def interp_crossing(x: np.ndarray, y: np.ndarray, target: float) -> float:
    """Smallest x at which the piecewise-linear curve y(x) reaches ``target`` (nan if never)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if y[0] >= target:
        return float(x[0])
    for i in range(1, len(x)):
        if y[i] >= target:
            return float(x[i - 1] + (target - y[i - 1]) * (x[i] - x[i - 1]) / (y[i] - y[i - 1]))
    return float("nan")


def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot
