"""Simulation engine: analytic references, batching, seeds, events, errors."""

import os
import subprocess
import sys
import textwrap
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cartkin as ck
from cartkin._models.base import ODEModel, Output, Param
from cartkin._population import Population

TIMES = np.array([0.0, 1, 4, 7, 9.3, 10, 14, 21, 28, 60, 90, 180, 270, 365])


class OneCompartment(ODEModel):
    """dA/dt = -k A, doses into A: the superposition of exponentials is the exact answer."""

    parameters: ClassVar = {"k": Param(0.3, "1/d"), "V": Param(5.0, "L")}
    outputs: ClassVar = {"C": Output("cells/L")}
    states: ClassVar = ("A",)
    dose_state: ClassVar = "A"

    def initial_state(self, theta):
        return jnp.zeros(1)

    def vector_field(self, t, y, theta):
        return -theta["k"] * y

    def observe(self, t, y, theta):
        return {"C": y[0] / theta["V"]}


def analytic_one_compartment(times, doses, k, V):
    c = np.zeros_like(times)
    for td, amt in doses:
        c += np.where(times >= td, amt / V * np.exp(-k * (times - td)), 0.0)
    return c


def stein_reference(t, foldx, Tmax, Cmax, alpha, FB, beta):
    """Stein 2019 written out independently: exponential growth, then biexponential decline."""
    rho = np.log(foldx) / Tmax
    grow = Cmax / foldx * np.exp(rho * t)
    s = t - Tmax
    decline = Cmax * ((1 - FB) * np.exp(-alpha * s) + FB * np.exp(-beta * s))
    return np.where(t < Tmax, grow, decline)


def test_stein_closed_form_matches_analytic():
    m = ck.Stein2019()
    th = m.default_theta()
    res = ck.simulate(m, th, TIMES)
    ref = stein_reference(TIMES, *(float(th[k]) for k in ("foldx", "Tmax", "Cmax", "alpha", "FB", "beta")))
    np.testing.assert_allclose(res.outputs["C"][0], ref, rtol=1e-12)


def test_stein_ode_matches_closed_form_batched():
    # 1e-6 relative is the bar; rtol 1e-10 leaves a margin of 10^3 for accumulation.
    pop = Population(ck.Stein2019ODE(), omega={"Tmax": 0.1, "Cmax": 0.4, "alpha": 0.3, "beta": 0.3})
    th, _, _ = pop.sample(64, seed=3)
    ode = ck.simulate(ck.Stein2019ODE(), th, TIMES, rtol=1e-10, atol=1e-12)
    th_cf = {k: v for k, v in th.items() if k != "Fexp"}
    cf = ck.simulate(ck.Stein2019(), th_cf, TIMES)
    assert ode.ok.all()
    np.testing.assert_allclose(ode.outputs["C"], cf.outputs["C"], rtol=1e-6)


def test_softmin_and_sigmoid_variants_are_close_and_smooth():
    th = ck.Stein2019().default_theta()
    exact = ck.simulate(ck.Stein2019(), th, TIMES).outputs["C"][0]
    soft = ck.simulate(ck.Stein2019(switch="softmin", width=0.03), th, TIMES).outputs["C"][0]
    # softmin bias is at most width * ln 2 in log units, and only near Tmax
    assert np.max(np.abs(np.log(soft / exact))) <= 0.03 * np.log(2) + 1e-12
    far = np.abs(TIMES - 9.3) > 2
    np.testing.assert_allclose(soft[far], exact[far], rtol=1e-9)


def test_batched_equals_looped():
    m = ck.Stein2019ODE()
    th, _, _ = Population(m, omega={"Cmax": 0.4, "alpha": 0.3}).sample(5, seed=0)
    batch = ck.simulate(m, th, TIMES).outputs["C"]
    for i in range(5):
        one = ck.simulate(m, {k: v[i] for k, v in th.items()}, TIMES).outputs["C"][0]
        np.testing.assert_allclose(batch[i], one, rtol=1e-12)


def test_one_value_parameters_equal_their_arrays():
    """A parameter given as one value (kept as one value, broadcast per chunk) gives what the same
    value repeated per patient gives; several chunks, host and device gathers, two devices."""
    m = ck.Stein2019ODE()
    th, _, _ = Population(m, omega={"Cmax": 0.4}).sample(20, seed=5)
    one = {k: (v if k == "Cmax" else float(v[0])) for k, v in th.items()}
    assert all(np.all(v == v[0]) for k, v in th.items() if k != "Cmax")
    for kw in ({"chunk_size": 8}, {"chunk_size": 8, "devices": jax.devices()[:1]}):
        a = ck.simulate(m, one, TIMES, progress=False, **kw).outputs["C"]
        b = ck.simulate(m, th, TIMES, progress=False, **kw).outputs["C"]
        np.testing.assert_array_equal(a, b)


def test_same_seed_same_patients_across_batch_and_chunk_sizes():
    m = ck.Stein2019ODE()
    pop = Population(m, omega={"Cmax": 0.4, "Tmax": 0.1})
    th_small, _, _ = pop.sample(7, seed=11)
    th_big, _, _ = pop.sample(300, seed=11)
    np.testing.assert_array_equal(th_small["Cmax"], th_big["Cmax"][:7])
    a = ck.simulate(m, th_big, TIMES, chunk_size=64, progress=False).outputs["C"]
    b = ck.simulate(m, th_big, TIMES, chunk_size=256).outputs["C"]
    np.testing.assert_allclose(a, b, rtol=1e-12)
    np.testing.assert_allclose(a[:7], ck.simulate(m, th_small, TIMES).outputs["C"], rtol=1e-12)


def test_on_device_outputs_equal_host_outputs_across_chunks():
    # several chunks (each chunk's copy overlaps the next solve) and several dose levels; the
    # device result is a JAX array with the same numbers as the host result
    m = ck.Hardiansyah2019()
    th, _, _ = Population(m, omega={"rE": 0.09, "KBC": 0.09}).sample(20, seed=3)
    regs = [ck.Regimen.single(1e8), ck.Regimen.single(1e9)]
    t = np.array([0.0, 1.0, 7.0, 14.0, 28.0])
    host = ck.simulate(m, th, t, regs, chunk_size=8, outputs=["IL6", "B"])
    dev = ck.simulate(m, th, t, regs, chunk_size=8, outputs=["IL6", "B"], on_device=True)
    one = ck.simulate(m, th, t, regs, chunk_size=64, outputs=["IL6", "B"])
    assert isinstance(dev.outputs["IL6"], jax.Array) and isinstance(dev.status, jax.Array)
    assert isinstance(host.outputs["IL6"], np.ndarray) and host.outputs["IL6"].shape == (2, 20, 5)
    for k in ("IL6", "B"):
        np.testing.assert_array_equal(np.asarray(dev.outputs[k]), host.outputs[k])
        np.testing.assert_allclose(host.outputs[k], one.outputs[k], rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(dev.status), host.status)
    assert host.ok.all() and bool(dev.ok.all())
    # the first dose level is the single-regimen simulation of the same patients
    lone = ck.simulate(m, th, t, regs[0], chunk_size=8, outputs=["IL6"])
    np.testing.assert_allclose(lone.outputs["IL6"], host.outputs["IL6"][0], rtol=1e-12)


def test_order_by_changes_chunks_not_results():
    # patients ordered by burden into chunks of 8; every result row is its own patient's, in the
    # input order, on the host and on the device
    m = ck.Hardiansyah2019()
    th, _, _ = Population(m, omega={"B0": 1.0, "rE": 0.09}).sample(21, seed=4)
    regs = [ck.Regimen.single(1e8), ck.Regimen.single(1e9)]
    t = np.array([0.0, 0.5, 3.0, 14.0, 28.0])
    plain = ck.simulate(m, th, t, regs, chunk_size=8, outputs=["IL6"])
    ordered = ck.simulate(m, th, t, regs, chunk_size=8, outputs=["IL6"], order_by="B0")
    dev = ck.simulate(m, th, t, regs, chunk_size=8, outputs=["IL6"], order_by="B0",
                      on_device=True)
    assert not np.all(np.diff(th["B0"]) > 0)  # the input is not already in order
    np.testing.assert_allclose(ordered.outputs["IL6"], plain.outputs["IL6"], rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(dev.outputs["IL6"]), ordered.outputs["IL6"])
    np.testing.assert_array_equal(ordered.status, plain.status)
    # the row of the patient with the largest burden is that patient's own solve
    i = int(np.argmax(th["B0"]))
    lone = ck.simulate(m, {k: v[i] for k, v in th.items()}, t, regs, outputs=["IL6"])
    np.testing.assert_allclose(ordered.outputs["IL6"][:, i], lone.outputs["IL6"][:, 0], rtol=1e-12)
    with pytest.raises(ValueError, match="order_by='WT' is not a parameter"):
        ck.simulate(m, th, t, regs, order_by="WT")


def test_dose_events_exact():
    m = OneCompartment()
    th = m.default_theta()
    times = np.array([0.0, 0.5, 1.0, 2.0, 3.0, 5.0])
    # a dose at t=0 with a time-zero sample, coincident doses at t=1 (summed), a dose at an
    # observation time (t=2: the sample sees the dose once, just after it)
    reg = ck.Regimen((ck.Dose(0.0, 10.0), ck.Dose(1.0, 3.0), ck.Dose(1.0, 4.0), ck.Dose(2.0, 5.0)))
    res = ck.simulate(m, th, times, reg, rtol=1e-10, atol=1e-12)
    ref = analytic_one_compartment(times, [(0, 10), (1, 7), (2, 5)], 0.3, 5.0)
    np.testing.assert_allclose(res.outputs["C"][0], ref, rtol=1e-8)
    assert res.outputs["C"][0][0] == pytest.approx(2.0)  # t=0 sample sees the t=0 dose


def test_fractionated_and_per_kg_dose_levels():
    m = OneCompartment()
    times = np.array([0.5, 1.5, 2.5, 4.0])
    base = ck.Regimen.fractionated(1.0, [0.1, 0.3, 0.6], [0, 1, 2], per_kg=True)
    levels = [base.scaled(f) for f in (1.0, 2.0, 5.0)]
    res = ck.simulate(m, m.default_theta(), times, levels, weight=np.array([50.0]), rtol=1e-10)
    assert res.outputs["C"].shape == (3, 1, 4)
    for j, f in enumerate((1.0, 2.0, 5.0)):
        ref = analytic_one_compartment(times, [(0, 5 * f), (1, 15 * f), (2, 30 * f)], 0.3, 5.0)
        np.testing.assert_allclose(res.outputs["C"][j, 0], ref, rtol=1e-8)
    np.testing.assert_allclose(res.doses, [1.0, 2.0, 5.0])
    df = res.to_frame()
    assert set(df.columns) == {"patient", "dose", "time", "output", "value", "unit", "status"}
    assert len(df) == 3 * 4


def test_intervention_multiplies_parameter_from_its_time():
    # tocilizumab-like: rho x 1.2 from day 5 on. Before Tmax the curve is exp(rho t) then exp(1.2 rho).
    m = ck.Stein2019ODE()
    th = m.default_theta()
    reg = ck.Regimen(interventions=(ck.Intervention(5.0, {"Fexp": 1.2}, "tocilizumab"),))
    times = np.array([2.0, 5.0, 8.0])
    res = ck.simulate(m, th, times, reg, rtol=1e-10, atol=1e-12)
    rho = np.log(3900) / 9.3
    r0 = 24000 / 3900
    ref = np.where(times < 5, r0 * np.exp(rho * times), r0 * np.exp(rho * 5 + 1.2 * rho * (times - 5)))
    np.testing.assert_allclose(res.outputs["C"][0], ref, rtol=1e-8)


def test_failed_patient_is_flagged_not_fatal():
    m = OneCompartment()
    th = {"k": np.array([0.3, 3e4, 0.2]), "V": np.array([5.0, 5.0, 5.0])}
    res = ck.simulate(m, th, np.array([1.0, 10.0]), ck.Regimen.single(10.0), max_steps=64)
    assert list(res.status) == [ck.Status.OK, ck.Status.MAX_STEPS, ck.Status.OK]
    fail = res.failures()
    assert list(fail["index"]) == [(1,)] and "max_steps" in fail["reason"][0]
    np.testing.assert_allclose(res.outputs["C"][2], analytic_one_compartment(np.array([1.0, 10.0]), [(0, 10)], 0.2, 5.0), rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(theta={"Cmax": 1.0}), "missing"),
        (dict(theta={**ck.Stein2019().default_theta(), "CL": 1.0}), "unknown \\['CL'\\]"),
        (dict(times=[0.0, 5.0, 5.0]), "strictly increasing: times\\[1\\]=5.0"),
        (dict(times=[[1.0, 2.0]]), "1-D"),
        (dict(theta={**ck.Stein2019().default_theta(), "Cmax": np.ones((2, 2))}), "1-D arrays"),
        (dict(theta={**ck.Stein2019().default_theta(), "Cmax": np.array([1.0, np.nan])}), "'Cmax' has NaN"),
        (dict(regimen=ck.Regimen.single(1e8)), "takes no dose"),
    ],
)
def test_bad_input_names_the_problem(kwargs, match):
    args = dict(theta=ck.Stein2019().default_theta(), times=TIMES, regimen=None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ck.simulate(ck.Stein2019(), args["theta"], args["times"], args["regimen"])


def test_bad_regimen():
    with pytest.raises(ValueError, match="dose 0: amount -5"):
        ck.Regimen.single(-5.0)
    with pytest.raises(ValueError, match="sum to 1"):
        ck.Regimen.fractionated(1e9, [0.1, 0.3], [0, 1])
    with pytest.raises(ValueError, match="unknown parameter 'rX'"):
        ck.simulate(OneCompartment(), OneCompartment().default_theta(), [1.0],
                    ck.Regimen((ck.Dose(0, 1.0),), (ck.Intervention(1.0, {"rX": 2.0}),)))
    with pytest.raises(ValueError, match="weight="):
        ck.simulate(OneCompartment(), OneCompartment().default_theta(), [1.0],
                    ck.Regimen.single(1e6, per_kg=True))


def test_sharded_equals_unsharded():
    code = textwrap.dedent(
        """
        import numpy as np, jax, cartkin as ck
        from cartkin._population import Population
        assert len(jax.devices()) == 4, jax.devices()
        m = ck.Stein2019ODE()
        th, _, _ = Population(m, omega={"Cmax": 0.4, "alpha": 0.3}).sample(50, seed=5)
        t = np.array([1.0, 7, 14, 28, 90])
        a = ck.simulate(m, th, t, chunk_size=8).outputs["C"]
        b = ck.simulate(m, th, t, devices=jax.devices()[:1]).outputs["C"]
        np.testing.assert_allclose(a, b, rtol=1e-12)
        # one device that is not the default one: the solve runs there
        c = ck.simulate(m, th, t, devices=jax.devices()[2:3], on_device=True).outputs["C"]
        assert c.devices() == {jax.devices()[2]}, c.devices()
        np.testing.assert_allclose(np.asarray(c), b, rtol=1e-12)
        print("SHARDED-OK")
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "SHARDED-OK" in out.stdout, out.stderr[-3000:]


def test_parameter_transforms_on_the_host_equal_the_device_ones():
    """A numpy value is transformed with numpy (host-side set-up makes no device program): the
    same numbers as the jax transform, in every domain, both ways."""
    from cartkin._population import from_unconstrained, interval_domain, to_unconstrained

    u = np.linspace(-8.0, 8.0, 17)
    for dom in ("positive", "unit", interval_domain(1.0, 40.0), "real"):
        x = from_unconstrained(dom, u)
        assert isinstance(x, np.ndarray)
        np.testing.assert_allclose(x, np.asarray(from_unconstrained(dom, jnp.asarray(u))),
                                   rtol=1e-14)
        back = to_unconstrained(dom, x)
        assert isinstance(back, np.ndarray)
        np.testing.assert_allclose(back, np.asarray(to_unconstrained(dom, jnp.asarray(x))),
                                   rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(back, u, atol=1e-9)
        assert isinstance(to_unconstrained(dom, float(x[3])), (float, np.floating))
