"""Solve one patient: a model, its parameters, its event table, its saved times.

Everything here is written for one patient and batched by the caller with ``jax.vmap``. Between
events (doses, interventions, the model's own switch times) the ODE is integrated with diffrax;
at an event the state jumps and the parameter multipliers change, exactly, with no smoothing.
"""

from __future__ import annotations

import enum

import diffrax as dfx
import jax
import jax.numpy as jnp

from ._models.base import ClosedFormModel, Model, ODEModel


class Status(enum.IntEnum):
    """Per-patient solver outcome."""

    OK = 0
    MAX_STEPS = 1
    NONFINITE = 2
    SOLVER_FAILED = 3

    @property
    def reason(self) -> str:
        return {
            0: "ok",
            1: "the solver reached max_steps (raise max_steps, or use a stiff solver)",
            2: "non-finite values (check the parameters: they may be out of range)",
            3: "the solver failed (step size collapsed: try a stiff solver or looser tolerances)",
        }[int(self)]


def _theta_at(model: Model, theta, log_mult):
    names = list(model.parameters)
    return {k: theta[k] * jnp.exp(log_mult[i]) for i, k in enumerate(names)}


def solve_patient(
    model: Model,
    theta,
    times,
    ev_time,
    ev_dose,
    ev_log_effect,
    *,
    solver: dfx.AbstractSolver,
    controller: dfx.AbstractStepSizeController,
    max_steps: int,
):
    """States and outputs of one patient at ``times`` (sorted, days).

    Returns ``(states (T, n), outputs {name: (T,)}, status int)``. States are empty for a
    closed-form model.
    """
    times = jnp.asarray(times, dtype=float)
    if isinstance(model, ClosedFormModel):
        out = model.solution(times, theta)
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in out.values()]))
        status = jnp.where(finite, jnp.int32(Status.OK), jnp.int32(Status.NONFINITE))
        return jnp.zeros((times.shape[0], 0)), out, status
    assert isinstance(model, ODEModel)

    t_start = jnp.minimum(0.0, times[0])
    t_end = times[-1]
    sw = model.switch_times(theta)
    n_sw = sw.shape[0]
    all_t = jnp.concatenate([ev_time, sw])
    all_dose = jnp.concatenate([ev_dose, jnp.zeros(n_sw)])
    all_eff = jnp.concatenate([ev_log_effect, jnp.zeros((n_sw, ev_log_effect.shape[1]))])
    order = jnp.argsort(all_t, stable=True)
    all_t, all_dose, all_eff = all_t[order], all_dose[order], all_eff[order]
    # events after the last saved time act on nothing we save: make them inert
    inert = all_t > t_end
    all_dose = jnp.where(inert, 0.0, all_dose)
    all_eff = jnp.where(inert[:, None], 0.0, all_eff)
    bounds = jnp.concatenate([t_start[None], jnp.clip(all_t, t_start, t_end), t_end[None]])
    n_seg = bounds.shape[0] - 1
    n_states = len(model.states)

    term = dfx.ODETerm(lambda t, y, args: model.vector_field(t, y, args))
    y0 = model.initial_state(theta)

    def segment(carry, k):
        y, log_mult, ys, status = carry
        # the event that opens segment k (k >= 1) is event k - 1
        ev = jnp.maximum(k - 1, 0)
        first = k == 0
        if model.dose_state is not None:
            dose = jnp.where(first, 0.0, all_dose[ev])
            y = y + model.dose_vector(dose)
        log_mult = log_mult + jnp.where(first, 0.0, all_eff[ev])
        ta, tb = bounds[k], bounds[k + 1]
        th = model.at_segment(_theta_at(model, theta, log_mult), 0.5 * (ta + tb))
        sol = dfx.diffeqsolve(
            term,
            solver,
            ta,
            tb,
            None,
            y,
            args=th,
            saveat=dfx.SaveAt(ts=jnp.clip(times, ta, tb), t1=True),
            stepsize_controller=controller,
            max_steps=max_steps,
            throw=False,
        )
        seg_ys = sol.ys[:-1]
        ys = jnp.where((times >= ta)[:, None], seg_ys, ys)
        code = jnp.where(
            sol.result == dfx.RESULTS.successful,
            jnp.int32(Status.OK),
            jnp.where(
                sol.result == dfx.RESULTS.max_steps_reached,
                jnp.int32(Status.MAX_STEPS),
                jnp.int32(Status.SOLVER_FAILED),
            ),
        )
        status = jnp.where(status == Status.OK, code, status)
        return (sol.ys[-1], log_mult, ys, status), None

    n_par = len(model.parameters)
    init = (y0, jnp.zeros(n_par), jnp.zeros((times.shape[0], n_states)), jnp.int32(Status.OK))
    (_, _, ys, status), _ = jax.lax.scan(segment, init, jnp.arange(n_seg))
    out = jax.vmap(lambda t, y: model.observe(t, y, theta))(times, ys)
    finite = jnp.all(jnp.isfinite(ys)) & jnp.all(
        jnp.stack([jnp.all(jnp.isfinite(v)) for v in out.values()])
    )
    status = jnp.where((status == Status.OK) & ~finite, jnp.int32(Status.NONFINITE), status)
    return ys, out, status
