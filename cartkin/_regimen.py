"""Dosing regimens: infusions (single or fractionated) and interventions as events.

A :class:`Regimen` is a frozen description in the user's units; :func:`compile_regimen` turns it
into fixed-shape arrays (an event table) that a jitted, vmapped solve consumes:

* ``time`` (E,) event times in days, sorted;
* ``dose`` (E,) cells infused at that time (0 for an intervention);
* ``log_effect`` (E, P) log multipliers applied to the parameters from that time on.

Event tables of different regimens are padded to a common length with inert events at
``+inf``-like times beyond the horizon, so that a batch of patients or dose levels shares one shape.
Doses at the same time are summed; a dose at an observation time is seen by that observation
(observations are right-continuous: the state just after the dose).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Dose:
    """One infusion.

    ``amount`` is in cells, or in cells/kg when ``per_kg`` (multiplied by the patient's weight
    covariate ``WT`` in kg when the regimen is compiled).
    """

    time: float
    amount: float
    per_kg: bool = False


@dataclasses.dataclass(frozen=True)
class Intervention:
    """A treatment that multiplies model parameters from ``time`` (days) on.

    Example: tocilizumab in the Stein model, ``Intervention(5.0, {"Fexp": 1.2}, "tocilizumab")``;
    a corticosteroid damping expansion in the Hardiansyah model, ``{"rE": 0.5}``.
    """

    time: float
    effects: Mapping[str, float]
    name: str = "intervention"


@dataclasses.dataclass(frozen=True)
class Regimen:
    """Doses and interventions for one patient (or one dose level)."""

    doses: tuple[Dose, ...] = ()
    interventions: tuple[Intervention, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "doses", tuple(self.doses))
        object.__setattr__(self, "interventions", tuple(self.interventions))
        for i, d in enumerate(self.doses):
            if not np.isfinite(d.time) or d.time < 0:
                raise ValueError(f"dose {i}: time {d.time} must be finite and >= 0 (days)")
            if not np.isfinite(d.amount) or d.amount <= 0:
                raise ValueError(
                    f"dose {i}: amount {d.amount} must be a positive number of cells "
                    "(or cells/kg with per_kg=True)"
                )
        for i, iv in enumerate(self.interventions):
            if not np.isfinite(iv.time) or iv.time < 0:
                raise ValueError(f"intervention {i} ({iv.name}): time {iv.time} must be >= 0")
            for k, v in iv.effects.items():
                if not np.isfinite(v) or v <= 0:
                    raise ValueError(
                        f"intervention {i} ({iv.name}): effect on {k!r} is {v}; "
                        "effects are positive multipliers"
                    )

    @classmethod
    def single(cls, amount: float, *, time: float = 0.0, per_kg: bool = False) -> Regimen:
        """One infusion of ``amount`` cells (or cells/kg) at ``time`` days."""
        return cls((Dose(time, amount, per_kg),))

    @classmethod
    def fractionated(
        cls,
        total: float,
        fractions: Sequence[float],
        times: Sequence[float],
        *,
        per_kg: bool = False,
    ) -> Regimen:
        """``total`` split into ``fractions`` (summing to 1) given at ``times`` days.

        Hardiansyah & Ng 2019: ``Regimen.fractionated(1.1e9, [0.1, 0.3, 0.6], [0, 1, 2])``.
        """
        fractions = np.asarray(fractions, float)
        if len(fractions) != len(times):
            raise ValueError(
                f"fractions ({len(fractions)}) and times ({len(times)}) must have equal length"
            )
        if not np.isclose(fractions.sum(), 1.0, rtol=1e-9, atol=1e-12):
            raise ValueError(f"fractions must sum to 1, they sum to {fractions.sum():.6g}")
        return cls(tuple(Dose(t, total * f, per_kg) for t, f in zip(times, fractions)))

    def with_intervention(self, intervention: Intervention) -> Regimen:
        return dataclasses.replace(self, interventions=self.interventions + (intervention,))

    def scaled(self, factor: float) -> Regimen:
        """The same schedule with every dose multiplied by ``factor``."""
        doses = tuple(dataclasses.replace(d, amount=d.amount * factor) for d in self.doses)
        return dataclasses.replace(self, doses=doses)

    @property
    def total(self) -> float:
        return float(sum(d.amount for d in self.doses))


@dataclasses.dataclass(frozen=True)
class EventTable:
    """Fixed-shape event arrays of one or more regimens (leading batch axis optional)."""

    time: np.ndarray
    dose: np.ndarray
    log_effect: np.ndarray

    @property
    def n_events(self) -> int:
        return self.time.shape[-1]


def regimen_events(
    regimen: Regimen | None,
    parameter_names: Sequence[str],
    *,
    n_events: int | None = None,
    pad_time: float = 1e30,
) -> tuple[EventTable, np.ndarray]:
    """Event table of one regimen, doses as given (cells, or cells/kg), padded to ``n_events``
    inert events at ``pad_time``; and which events are doses in cells/kg (bool, same order)."""
    regimen = regimen or Regimen()
    names = list(parameter_names)
    rows: list[tuple[float, float, np.ndarray, bool]] = []
    for d in regimen.doses:
        rows.append((d.time, d.amount, np.zeros(len(names)), bool(d.per_kg)))
    for iv in regimen.interventions:
        eff = np.zeros(len(names))
        for k, v in iv.effects.items():
            if k not in names:
                raise ValueError(
                    f"intervention {iv.name!r} acts on unknown parameter {k!r}; "
                    f"parameters are {names}"
                )
            eff[names.index(k)] = np.log(v)
        rows.append((iv.time, 0.0, eff, False))
    rows.sort(key=lambda r: r[0])
    n = len(rows) if n_events is None else n_events
    if len(rows) > n:
        raise ValueError(f"regimen has {len(rows)} events, more than n_events={n}")
    time = np.full(n, pad_time)
    dose = np.zeros(n)
    eff = np.zeros((n, len(names)))
    per_kg = np.zeros(n, bool)
    for i, (t, a, e, kg) in enumerate(rows):
        time[i], dose[i], eff[i], per_kg[i] = t, a, e, kg
    return EventTable(time, dose, eff), per_kg


def check_weight(weight) -> None:
    """A dose in cells/kg needs a positive, finite body weight (kg)."""
    if weight is None or not np.isfinite(weight) or weight <= 0:
        raise ValueError(
            f"a dose in cells/kg needs a positive weight covariate WT (kg), got {weight}"
        )


def compile_regimen(
    regimen: Regimen | None,
    parameter_names: Sequence[str],
    *,
    weight: float | None = None,
    n_events: int | None = None,
    pad_time: float = 1e30,
) -> EventTable:
    """Event table of one regimen (doses in cells: those in cells/kg times ``weight``), padded
    to ``n_events`` inert events at ``pad_time``."""
    table, per_kg = regimen_events(regimen, parameter_names, n_events=n_events, pad_time=pad_time)
    if not per_kg.any():
        return table
    check_weight(weight)
    return EventTable(table.time, np.where(per_kg, table.dose * weight, table.dose),
                      table.log_effect)


def stack_event_tables(tables: Sequence[EventTable]) -> EventTable:
    return EventTable(
        np.stack([t.time for t in tables]),
        np.stack([t.dose for t in tables]),
        np.stack([t.log_effect for t in tables]),
    )
