"""The batched Rosenbrock solve as one Pallas kernel (cartkin._kernel, ``method="kernel"``).

On a CPU the kernel runs in Pallas's interpreter: these tests check its logic (the lanewise
evaluation of the model, segments, doses, step control, status codes) against
:func:`cartkin._batched.solve_batch`, the analytic solution and scipy. On an H200 the compiled
kernel gave the batched solver's outputs to the last bit on 4,096 Hardiansyah patients, with the
same step counts (``benchmarks/kernel_gpu.py``, benchmarks/README.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_batched import assert_matches_scipy

import cartkin as ck
from cartkin import _batched, _kernel
from cartkin._models import Hardiansyah2019
from cartkin._population import Population
from cartkin._regimen import compile_regimen, stack_event_tables


def test_lanewise_equals_vmap():
    """Slicing, stacking, reshaping, reductions, constants and select, lane by lane."""

    def f(y, a):
        z = jnp.concatenate([y[:2] * a, jnp.reshape(y[2:], (2,))])
        return jnp.stack(
            [jnp.sum(z), jnp.max(z) + jnp.exp(y[0]), jnp.where(y[1] > 0, a**2, -a)]
        ) + jnp.arange(3.0) + jnp.transpose(jnp.broadcast_to(y[3], (1, 3)))[:, 0]

    run = _kernel.lanewise(f, jnp.zeros(4), jnp.zeros(()))
    rng = np.random.default_rng(0)
    Y, A = rng.normal(size=(5, 4)), rng.normal(size=5)
    out = run(_kernel._obj([jnp.asarray(Y[:, i]) for i in range(4)], (4,)),
              _kernel._obj(jnp.asarray(A)))
    got = np.stack([np.asarray(_kernel._vec(o, jnp.zeros(5))) for o in out], axis=1)
    np.testing.assert_allclose(got, np.asarray(jax.vmap(f)(Y, A)), rtol=1e-15, atol=1e-15)


def test_lanewise_refuses_what_it_cannot_split():
    run = _kernel.lanewise(lambda y: jnp.cumsum(y), jnp.zeros(3))
    with pytest.raises(_kernel.NotLanewise, match="cumsum"):
        run(_kernel._obj([jnp.ones(4)] * 3, (3,)))


def test_kernel_equals_batched_on_a_population():
    """32 Hardiansyah patients (30% CV): the same steps, status and values to rounding."""
    m = Hardiansyah2019()
    pop = Population(m, omega={k: np.log1p(0.09) for k in ("rE", "dE", "aE", "KBC", "P_IL6")})
    n = 32
    th, _, _ = pop.sample(n, seed=3)
    table = compile_regimen(m.regimen("UPN1"), list(m.parameters), n_events=3)
    ev = stack_event_tables([table] * n)
    times = np.linspace(0.0, 30.0, 7)
    args = (m, th, times, ev.time, ev.dose, ev.log_effect)
    kw = dict(rtol=1e-6, atol=1e-9, max_steps=4096)
    ya, _, sa, st_a = _batched.solve_batch(*args, stats=True, **kw)
    yb, _, sb, st_b = _kernel.solve_batch_kernel(*args, **kw)
    np.testing.assert_array_equal(np.asarray(sa), 0)
    np.testing.assert_array_equal(np.asarray(sb), 0)
    np.testing.assert_array_equal(np.asarray(st_a["accepted"]), np.asarray(st_b["accepted"]))
    np.testing.assert_array_equal(np.asarray(st_a["rejected"]), np.asarray(st_b["rejected"]))
    np.testing.assert_allclose(np.asarray(yb), np.asarray(ya), rtol=1e-11, atol=1e-18)


@pytest.mark.parametrize("case", ["hardiansyah_upn1_steroid", "kimmel_two_infusions",
                                  "barros_raji", "lisocel_ode"])
def test_kernel_matches_scipy(case):
    """Published models with interventions, two infusions, a late dose, switch times: rtol 1e-10
    against scipy LSODA at rtol 1e-11, to 1e-5 relative (the bar of test_batched_matches_scipy)."""
    assert_matches_scipy(case, "kernel")


def test_kernel_failures_are_per_patient():
    """Out of steps: MAX_STEPS, with the values saved before; an overflow: NONFINITE or
    SOLVER_FAILED; each patient flagged on its own."""
    m = Hardiansyah2019()
    th = {k: np.full(3, float(v)) for k, v in m.default_theta().items()}
    th["P_IL6"] = np.array([1.8e-3, 1.8e-3, 1e308])  # the third overflows
    times = np.array([0.5, 10.0, 30.0])
    res = ck.simulate(m, th, times, m.regimen("UPN1"), method="kernel", max_steps=60)
    assert res.status[0] == ck.Status.MAX_STEPS, res.failures()
    assert np.isfinite(res.outputs["IL6"][0, 0]) and np.isnan(res.outputs["IL6"][0, -1])
    assert res.status[2] in (ck.Status.NONFINITE, ck.Status.SOLVER_FAILED)


def test_kernel_arguments_checked():
    m = Hardiansyah2019()
    with pytest.raises(ValueError, match="interpolate=False"):
        ck.simulate(m, m.default_theta(), [1.0, 2.0], m.regimen(), method="kernel",
                    interpolate=True)
    with pytest.raises(ValueError, match="solver=None"):
        import diffrax as dfx

        ck.simulate(m, m.default_theta(), [1.0, 2.0], m.regimen(), method="kernel",
                    solver=dfx.Tsit5())
