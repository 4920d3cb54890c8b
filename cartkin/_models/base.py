"""The model interface: one patient, declared states, parameters and outputs.

A model is an :class:`equinox.Module`. Its *structure* (names, units, domains) is class-level
metadata; its *numbers* are a parameter dictionary ``theta`` (name -> scalar array) passed to
every method, so that the same model object serves one patient, a vmapped batch, a likelihood
and a sampler. Later code asks the model what it has (``model.parameters``, ``model.outputs``)
instead of hard-coding names.

Two kinds of model:

* :class:`ODEModel` declares ``vector_field``, ``initial_state`` and ``observe``; doses enter a
  declared state, interventions multiply parameters from a given time on, and parameter-dependent
  switch times (e.g. Stein's Tmax) become exact integration boundaries.
* :class:`ClosedFormModel` declares ``solution(t, theta)``: no solver is involved.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from typing import ClassVar, Literal

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

Domain = Literal["positive", "real", "unit"]


@dataclasses.dataclass(frozen=True)
class Param:
    """Metadata of one model parameter.

    ``domain`` says how it is transformed for estimation: ``positive`` -> log,
    ``unit`` (0, 1) -> logit, ``real`` -> identity.
    """

    default: float
    unit: str
    description: str = ""
    domain: Domain = "positive"


@dataclasses.dataclass(frozen=True)
class Output:
    """Metadata of one observable output."""

    unit: str
    description: str = ""
    log_scale: bool = True


class Model(eqx.Module):
    """Abstract base of all cartkin models (one patient; batch with ``jax.vmap``)."""

    parameters: ClassVar[Mapping[str, Param]]
    outputs: ClassVar[Mapping[str, Output]]
    citation: ClassVar[str] = ""
    #: "published" when structure and values come from the cited paper; "constructed" otherwise.
    provenance: ClassVar[str] = "published"

    @property
    def name(self) -> str:
        return type(self).__name__

    def default_theta(self, **overrides: float) -> dict[str, Array]:
        """The published parameter values as a ``theta`` dict, with optional overrides."""
        unknown = set(overrides) - set(self.parameters)
        if unknown:
            raise ValueError(
                f"{self.name} has no parameter(s) {sorted(unknown)}; "
                f"its parameters are {list(self.parameters)}"
            )
        theta = {k: p.default for k, p in self.parameters.items()}
        theta.update(overrides)
        return {k: jnp.asarray(v, dtype=float) for k, v in theta.items()}

    def check_theta(self, theta: Mapping[str, ArrayLike]) -> None:
        """Raise a ValueError naming missing or unknown parameters (trace-time check)."""
        missing = [k for k in self.parameters if k not in theta]
        unknown = [k for k in theta if k not in self.parameters]
        if missing or unknown:
            msg = [f"theta does not match the parameters of {self.name}:"]
            if missing:
                msg.append(f"missing {missing}")
            if unknown:
                msg.append(f"unknown {unknown}")
            msg.append(f"(expected exactly {list(self.parameters)}; see {self.name}.parameters)")
            raise ValueError(" ".join(msg))


class ODEModel(Model):
    """A model integrated numerically.

    Subclasses set ``states`` and ``dose_state`` (the state an infusion enters, or ``None`` for
    empirical models whose initial state is a parameter) and implement the methods below.
    """

    states: ClassVar[tuple[str, ...]]
    dose_state: ClassVar[str | None] = None
    #: cells per state unit of ``dose_state`` (e.g. 1e9 when states are in 1e9 cells)
    cells_per_unit: ClassVar[float] = 1.0
    #: whether the model is stiff enough that an implicit solver is the better default
    stiff: ClassVar[bool] = False

    @abc.abstractmethod
    def initial_state(self, theta: Mapping[str, Array]) -> Float[Array, " n"]:
        """State at the start of the simulation, before any dose."""

    @abc.abstractmethod
    def vector_field(
        self, t: Array, y: Float[Array, " n"], theta: Mapping[str, Array]
    ) -> Float[Array, " n"]:
        """dy/dt at time t (days)."""

    @abc.abstractmethod
    def observe(
        self, t: Array, y: Float[Array, " n"], theta: Mapping[str, Array]
    ) -> dict[str, Array]:
        """Observable outputs (see ``outputs``) from the state at time t."""

    def switch_times(self, theta: Mapping[str, Array]) -> Float[Array, " k"]:
        """Parameter-dependent times where the vector field changes form (exact boundaries)."""
        return jnp.zeros((0,))

    def at_segment(self, theta: Mapping[str, Array], t_mid: Array) -> Mapping[str, Array]:
        """Hook for switch models: theta for the segment whose midpoint is ``t_mid``."""
        return theta

    def dose_vector(self, amount_cells: Array) -> Float[Array, " n"]:
        """State increment of an infusion of ``amount_cells`` cells."""
        if self.dose_state is None:
            raise ValueError(
                f"{self.name} takes no dose: its initial state is set by its parameters "
                "(pass regimen=None)"
            )
        i = self.states.index(self.dose_state)
        return jnp.zeros(len(self.states)).at[i].set(amount_cells / self.cells_per_unit)


class ClosedFormModel(Model):
    """A model with an explicit solution; no solver, no doses.

    ``elementwise``: the solution is element-wise in t and theta, so times (T, 1) with
    parameters of shape (B,) give outputs (T, B). Fits then compute a batch of draws with the
    draws on the last axis, which XLA vectorises on the CPU; ``tests/test_models_published.py``
    checks each library model that declares it against the solution mapped over the draws.
    """

    elementwise: ClassVar[bool] = False

    @abc.abstractmethod
    def solution(self, t: Float[Array, " T"], theta: Mapping[str, Array]) -> dict[str, Array]:
        """Outputs at times t (days), each of shape (T,)."""
