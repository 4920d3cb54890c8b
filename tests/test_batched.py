"""The batched Rosenbrock solver (cartkin._batched, ``simulate(method="batched")``).

References: scipy LSODA at tight tolerances (tests/helpers.py), analytic solutions, the diffrax
path of ``simulate``, and the local error order of each tableau.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import ClassVar

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import scipy_reference
from test_models_published import FLOOR, SCIPY_CASES, _JitVF
from test_simulate import OneCompartment, analytic_one_compartment

import cartkin as ck
from cartkin import _batched
from cartkin._models import Hardiansyah2019
from cartkin._models.base import ODEModel, Output, Param
from cartkin._population import Population


@pytest.mark.parametrize("case", list(SCIPY_CASES))
def test_batched_matches_scipy(case):
    """Every published ODE case, rtol 1e-10 against scipy LSODA at rtol 1e-11, to 1e-5 relative.

    The same bar and floor as test_models_published.test_ode_models_match_scipy: both solvers run
    about 1e5 times tighter than the check, so a failure means a different solution (dose, event,
    switch handling), not solver noise.
    """
    assert_matches_scipy(case, "batched")


def assert_matches_scipy(case, method):
    """``simulate(method=...)`` of a SCIPY_CASES case at rtol 1e-10 against scipy at 1e-11."""
    model, theta, regimen, times = SCIPY_CASES[case]
    atol = 1e-14 if isinstance(model, Hardiansyah2019) else 1e-16
    res = ck.simulate(model, theta, times, regimen, rtol=1e-10, atol=atol, method=method)
    assert res.ok.all(), res.failures()
    ref = scipy_reference(_JitVF(model), theta, times, regimen, rtol=1e-11, atol=atol)
    for name in model.outputs:
        got, want = res.outputs[name][0], ref[name]
        keep = np.abs(want) > FLOOR
        np.testing.assert_allclose(got[keep], want[keep], rtol=1e-5, err_msg=f"{case}: {name}")


def test_batched_matches_diffrax_on_a_population():
    """64 Hardiansyah patients (30% CV), rtol 1e-8: the two solvers agree to 1e-5 relative.

    At rtol 1e-8 each solver's error is of order 1e-7 relative, so 1e-5 leaves a margin of ~100;
    values below FLOOR are set by atol, not by the dynamics, and are not compared.
    """
    m = Hardiansyah2019()
    pop = Population(m, omega={k: np.log1p(0.09) for k in ("rE", "dE", "aE", "KBC", "P_IL6")})
    th, _, _ = pop.sample(64, seed=1)
    times = np.linspace(0.0, 90.0, 31)
    kw = dict(rtol=1e-8, atol=1e-12, progress=False)
    a = ck.simulate(m, th, times, m.regimen("UPN1"), method="batched", **kw)
    b = ck.simulate(m, th, times, m.regimen("UPN1"), method="diffrax", **kw)
    assert a.ok.all() and b.ok.all()
    for k in m.outputs:
        keep = np.abs(b.outputs[k]) > FLOOR
        np.testing.assert_allclose(a.outputs[k][keep], b.outputs[k][keep], rtol=1e-5, err_msg=k)


@pytest.mark.parametrize("method", ["batched", "kernel"])
def test_batched_dose_events_exact(method):
    """Doses at t=0 with a t=0 sample, coincident doses (summed), a dose at an observation time
    (also for the kernel form of the solver, cartkin._kernel)."""
    m = OneCompartment()
    times = np.array([0.0, 0.5, 1.0, 2.0, 3.0, 5.0])
    reg = ck.Regimen((ck.Dose(0.0, 10.0), ck.Dose(1.0, 3.0), ck.Dose(1.0, 4.0), ck.Dose(2.0, 5.0)))
    res = ck.simulate(m, m.default_theta(), times, reg, rtol=1e-10, atol=1e-12, method=method)
    ref = analytic_one_compartment(times, [(0, 10), (1, 7), (2, 5)], 0.3, 5.0)
    np.testing.assert_allclose(res.outputs["C"][0], ref, rtol=1e-8)
    assert res.outputs["C"][0][0] == pytest.approx(2.0)


def test_batched_per_patient_events_and_dose_levels():
    """Per-kg doses give every patient its own event table; D dose levels x N patients."""
    m = OneCompartment()
    times = np.array([0.5, 1.5, 2.5, 4.0])
    base = ck.Regimen.fractionated(1.0, [0.1, 0.3, 0.6], [0, 1, 2], per_kg=True)
    levels = [base.scaled(f) for f in (1.0, 5.0)]
    wt = np.array([50.0, 80.0, 65.0])
    th = {"k": np.array([0.3, 0.1, 0.5]), "V": np.full(3, 5.0)}
    res = ck.simulate(m, th, times, levels, weight=wt, rtol=1e-10, method="batched")
    for d, f in enumerate((1.0, 5.0)):
        for i in range(3):
            doses = [(0, 0.1 * f * wt[i]), (1, 0.3 * f * wt[i]), (2, 0.6 * f * wt[i])]
            ref = analytic_one_compartment(times, doses, th["k"][i], 5.0)
            np.testing.assert_allclose(res.outputs["C"][d, i], ref, rtol=1e-8)


def test_batched_failures_are_per_patient():
    """A patient out of steps is flagged MAX_STEPS; a non-finite one NONFINITE; others are fine."""
    m = Hardiansyah2019()
    th = {k: np.full(3, float(v)) for k, v in m.default_theta().items()}
    th["P_IL6"] = np.array([1.8e-3, 1.8e-3, 1e308])  # overflows: IL-6 becomes infinite
    times = np.array([1.0, 10.0, 30.0])
    res = ck.simulate(m, th, times, m.regimen("UPN1"), method="batched", max_steps=40)
    good = ck.simulate(m, th, times, m.regimen("UPN1"), method="batched")
    assert res.status[0] == ck.Status.MAX_STEPS  # 40 steps do not reach day 30
    assert good.status[0] == ck.Status.OK and good.status[1] == ck.Status.OK
    assert good.status[2] in (ck.Status.NONFINITE, ck.Status.SOLVER_FAILED)
    fail = good.failures()
    assert list(fail["index"]) == [(2,)]


def test_method_argument_checked():
    m = Hardiansyah2019()
    import diffrax as dfx

    with pytest.raises(ValueError, match="method must be one of"):
        ck.simulate(m, m.default_theta(), [1.0], m.regimen(), method="fast")
    with pytest.raises(ValueError, match="pass solver=None"):
        ck.simulate(m, m.default_theta(), [1.0], m.regimen(), method="batched", solver=dfx.Tsit5())


class Forced(ODEModel):
    """y' = -k y + sin(t): non-autonomous, so the df/dt terms of the tableau are exercised."""

    parameters: ClassVar = {"k": Param(2.0, "1/d")}
    outputs: ClassVar = {"y": Output("1")}
    states: ClassVar = ("y",)

    def initial_state(self, theta):
        return jnp.ones(1)

    def vector_field(self, t, y, theta):
        return -theta["k"] * y + jnp.sin(t)

    def observe(self, t, y, theta):
        return {"y": y[0]}


def _forced_exact(t, k=2.0):
    # y(0) = 1: y = A e^{-kt} + (k sin t - cos t) / (k^2 + 1)
    a = 1.0 + 1.0 / (k**2 + 1.0)
    return a * np.exp(-k * t) + (k * np.sin(t) - np.cos(t)) / (k**2 + 1.0)


@pytest.mark.parametrize("tab", [_batched.RODAS4, _batched.RODAS5], ids=lambda t: t.name)
def test_tableau_local_order(tab):
    """One step from the exact solution: the error falls as h^(p+1) (p = 4 for Rodas4, 5 Rodas5)."""
    m = Forced()
    assert _batched._depends_on_t(m, 1, m.default_theta())
    step = _batched.make_step(m, tab, 1e-6, 1e-9, True)
    th = {"k": jnp.full(1, 2.0)}
    t0 = 0.3
    errs = []
    hs = np.array([0.2, 0.1, 0.05])
    for h in hs:
        y0 = jnp.full((1, 1), _forced_exact(t0))
        y1, _ = step(jnp.full(1, t0), y0, jnp.full(1, h), th)
        errs.append(abs(float(y1[0, 0]) - _forced_exact(t0 + h)))
    order = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    p = tab.err_order
    assert np.all(order > p + 1 - 0.5), (tab.name, errs, order)


def test_batched_sharded_equals_unsharded():
    code = textwrap.dedent(
        """
        import numpy as np, jax, cartkin as ck
        from cartkin._models import Hardiansyah2019
        from cartkin._population import Population
        assert len(jax.devices()) == 4, jax.devices()
        m = Hardiansyah2019()
        th, _, _ = Population(m, omega={"rE": 0.09, "dE": 0.09}).sample(50, seed=5)
        t = np.array([1.0, 7, 14, 28, 90])
        a = ck.simulate(m, th, t, m.regimen(), chunk_size=8, method="batched").outputs["IL6"]
        b = ck.simulate(m, th, t, m.regimen(), devices=jax.devices()[:1],
                        method="batched").outputs["IL6"]
        np.testing.assert_allclose(a, b, rtol=1e-12)
        print("SHARDED-OK")
        """
    )
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
    assert "SHARDED-OK" in out.stdout, out.stderr[-3000:]


def _ode_models():
    from cartkin._models.registry import available_models, get_model

    out = []
    for name in available_models():
        m = get_model(name)
        if isinstance(m, ODEModel):
            out.append(m)
    return out


@pytest.mark.parametrize("m", _ode_models(), ids=lambda m: m.name)
def test_jacobian_pattern_holds_every_nonzero(m):
    """The structural pattern from the jaxpr covers every nonzero of the Jacobian at random
    states and parameters (a missed entry would make the sparse elimination wrong)."""
    rng = np.random.default_rng(3)
    names = list(m.parameters)
    base = m.default_theta()
    th0 = m.at_segment({k: jnp.asarray(float(base[k])) for k in names}, jnp.asarray(1.0))
    pattern = np.array(_batched.jacobian_pattern(m, th0))
    n = len(m.states)
    assert pattern.shape == (n, n)
    import jax

    for _ in range(5):
        th = {k: jnp.asarray(float(base[k]) * rng.uniform(0.5, 2.0)) for k in names}
        th = m.at_segment(th, jnp.asarray(rng.uniform(0.0, 30.0)))
        y = jnp.asarray(rng.uniform(0.01, 3.0, n))
        J = np.asarray(jax.jacfwd(lambda u: m.vector_field(jnp.asarray(1.3), u, th))(y))
        assert np.all(J[~pattern] == 0.0), (m.name, np.argwhere((J != 0) & ~pattern))
    if isinstance(m, Hardiansyah2019):
        assert pattern.sum() == 24  # cells do not read the cytokines; IL-6/IL-10 read B, E_pb


def test_sparse_elimination_equals_dense():
    """Skipping the structural zeros changes nothing but rounding."""
    m = Hardiansyah2019()
    pop = Population(m, omega={k: np.log1p(0.09) for k in ("rE", "dE", "aE", "KBC", "P_IL6")})
    th, _, _ = pop.sample(32, seed=2)
    from cartkin._regimen import compile_regimen, stack_event_tables

    ev = stack_event_tables([compile_regimen(m.regimen("UPN1"), list(m.parameters), n_events=3)] * 32)
    times = np.linspace(0.0, 60.0, 21)
    args = (m, th, times, ev.time, ev.dose, ev.log_effect)
    kw = dict(rtol=1e-6, atol=1e-9, max_steps=4096)
    _, a, sa = _batched.solve_batch(*args, sparse=True, **kw)
    _, b, sb = _batched.solve_batch(*args, sparse=False, **kw)
    assert np.all(np.asarray(sa) == 0) and np.all(np.asarray(sb) == 0)
    for k in m.outputs:
        np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), rtol=1e-9, atol=1e-12)


def test_rodas5_continuous_extension_order():
    """Inside one step the continuous extension's error falls at least as h^4 (order >= 3)."""
    m = Forced()
    tab = _batched.RODAS5
    step = _batched.make_step(m, tab, 1e-6, 1e-9, True, dense=True)
    th = {"k": jnp.full(1, 2.0)}
    t0 = 0.3
    for x in (0.3, 0.7):
        errs = []
        for h in (0.2, 0.1, 0.05):
            y0 = jnp.full((1, 1), _forced_exact(t0))
            y1, _, Ks = step(jnp.full(1, t0), y0, jnp.full(1, h), th)
            poly = Ks[-1]
            for K in Ks[-2::-1]:
                poly = K + x * poly
            val = (1 - x) * y0 + x * (y1 + (1 - x) * poly)
            errs.append(abs(float(val[0, 0]) - _forced_exact(t0 + x * h)))
        order = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
        assert np.all(order > 3.5), (x, errs, order)


@pytest.mark.parametrize("case", ["hardiansyah_upn1", "hardiansyah_upn1_steroid", "kimmel_two_infusions"])
def test_interpolated_saves_match_scipy(case):
    """interpolate=True at rtol 1e-10: the same 1e-5 bar against scipy as the exact saves."""
    model, theta, regimen, times = SCIPY_CASES[case]
    dense_times = np.unique(np.r_[times, np.linspace(times[0], times[-1], 97)])
    atol = 1e-14 if isinstance(model, Hardiansyah2019) else 1e-16
    res = ck.simulate(model, theta, dense_times, regimen, rtol=1e-10, atol=atol,
                      method="batched", interpolate=True)
    assert res.ok.all(), res.failures()
    ref = scipy_reference(_JitVF(model), theta, dense_times, regimen, rtol=1e-11, atol=atol)
    for name in model.outputs:
        got, want = res.outputs[name][0], ref[name]
        keep = np.abs(want) > FLOOR
        np.testing.assert_allclose(got[keep], want[keep], rtol=1e-5, err_msg=f"{case}: {name}")


def test_interpolated_saves_keep_event_semantics():
    """A saved time on a dose is right-continuous; coincident doses summed; t=0 sample."""
    m = OneCompartment()
    times = np.array([0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0])
    reg = ck.Regimen((ck.Dose(0.0, 10.0), ck.Dose(1.0, 3.0), ck.Dose(1.0, 4.0), ck.Dose(2.0, 5.0)))
    res = ck.simulate(m, m.default_theta(), times, reg, rtol=1e-10, atol=1e-12,
                      method="batched", interpolate=True)
    ref = analytic_one_compartment(times, [(0, 10), (1, 7), (2, 5)], 0.3, 5.0)
    np.testing.assert_allclose(res.outputs["C"][0], ref, rtol=1e-8)
    assert res.outputs["C"][0][0] == pytest.approx(2.0)
