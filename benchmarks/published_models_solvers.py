"""Solver choice for the published ODE models: accepted steps and wall time, Tsit5 vs Kvaerno5.

Run: ``python benchmarks/published_models_solvers.py [rtol]`` (default rtol 1e-6, atol 1e-9,
the defaults of ``cartkin.simulate``). Steps are counted by integrating the same segments that
``cartkin.simulate`` integrates (between doses and switch times) with diffrax directly; times are
warm ``cartkin.simulate`` calls (median of 5) for one patient and for 256 identical patients.
The numbers quoted in the model docstrings come from this script.
"""

from __future__ import annotations

import sys
import time

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

import cartkin  # noqa: E402
from cartkin._models import Barros2021, Hardiansyah2019, Kimmel2021, LisoCelODE  # noqa: E402


def count_steps(model, theta, regimen, t_end, solver, rtol, atol):
    th = {k: jnp.asarray(v) for k, v in theta.items()}
    doses: dict[float, float] = {}
    for d in regimen.doses if regimen is not None else ():
        doses[d.time] = doses.get(d.time, 0.0) + d.amount
    sw = [float(s) for s in np.atleast_1d(np.asarray(model.switch_times(th)))]
    events = sorted(set(doses) | set(sw))
    bounds = [0.0] + [e for e in events if 0.0 <= e < t_end] + [t_end]
    y = model.initial_state(th)
    term = dfx.ODETerm(lambda t, y, args: model.vector_field(t, y, args))
    acc = rej = 0
    for ta, tb in zip(bounds[:-1], bounds[1:], strict=True):
        if ta in doses:
            y = y + model.dose_vector(jnp.asarray(doses[ta]))
        if tb <= ta:
            continue
        args = model.at_segment(th, jnp.asarray(0.5 * (ta + tb)))
        sol = dfx.diffeqsolve(
            term,
            solver,
            ta,
            tb,
            None,
            y,
            args=args,
            max_steps=1_000_000,
            stepsize_controller=dfx.PIDController(rtol=rtol, atol=atol),
        )
        y = sol.ys[-1]
        acc += int(sol.stats["num_accepted_steps"])
        rej += int(sol.stats["num_rejected_steps"])
    return acc, rej


def wall_time(model, theta, regimen, t_end, solver, rtol, atol, n):
    times = np.linspace(0.0, t_end, 201)
    th = {k: np.full(n, float(v)) for k, v in theta.items()}

    def run():
        return cartkin.simulate(model, th, times, regimen, solver=solver, rtol=rtol, atol=atol)

    res = run()
    assert res.ok.all(), res.failures()
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        run()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def cases():
    h = Hardiansyah2019()
    yield "Hardiansyah2019 UPN1", h, h.patient("UPN1"), h.regimen("UPN1"), 400.0
    yield "Hardiansyah2019 UPN3", h, h.patient("UPN3"), h.regimen("UPN3"), 400.0
    k = Kimmel2021()
    yield "Kimmel2021", k, k.default_theta(), k.regimen(), 365.0
    b = Barros2021()
    one = cartkin.Regimen.single(1e6)
    yield "Barros2021 HDLM-2", b, b.cell_line("HDLM-2"), one, 100.0
    yield "Barros2021 Raji", b, b.raji(), one, 100.0
    m = LisoCelODE()
    yield "LisoCelODE", m, m.default_theta(), None, 730.0


def main(rtol=1e-6, atol=1e-9):
    print(f"rtol={rtol:g} atol={atol:g}  backend={jax.default_backend()}")
    print(
        f"{'case':24s} {'solver':9s} {'accepted':>9s} {'rejected':>9s} {'1 pt ms':>9s} "
        f"{'256 pt ms':>10s}"
    )
    for name, model, theta, regimen, t_end in cases():
        for solver in (dfx.Tsit5(), dfx.Kvaerno5()):
            acc, rej = count_steps(model, theta, regimen, t_end, solver, rtol, atol)
            t1 = wall_time(model, theta, regimen, t_end, solver, rtol, atol, 1)
            t256 = wall_time(model, theta, regimen, t_end, solver, rtol, atol, 256)
            print(
                f"{name:24s} {type(solver).__name__:9s} {acc:9d} {rej:9d} {1e3 * t1:9.2f} "
                f"{1e3 * t256:10.1f}"
            )


if __name__ == "__main__":
    main(*(float(a) for a in sys.argv[1:2]))
