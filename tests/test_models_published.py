"""The published models: metadata, solver agreement with scipy, analytic limits, published values.

References used here are independent of cartkin's solver: scipy ``solve_ivp`` (tests/helpers.py),
closed-form solutions of limiting cases, and numbers printed or digitised from the papers.
Hardiansyah & Ng 2019 digitised values live in ``test_hardiansyah2019_digitised.py``.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import scipy_reference

import cartkin
from cartkin._models import (
    Barros2021,
    ClosedFormModel,
    Hardiansyah2019,
    Kimmel2021,
    LisoCel,
    LisoCelODE,
    ODEModel,
)
from cartkin._regimen import Dose, Intervention, Regimen

ALL_MODELS = [Hardiansyah2019(), Kimmel2021(), Barros2021(), LisoCel(), LisoCelODE()]


def _ids(models):
    return [m.name for m in models]


# --------------------------------------------------------------------------------------------
# metadata


@pytest.mark.parametrize("model", ALL_MODELS, ids=_ids(ALL_MODELS))
def test_metadata_consistent(model):
    theta = model.default_theta()
    assert list(theta) == list(model.parameters)
    for name, p in model.parameters.items():
        assert p.unit and p.description, name
        assert np.isfinite(p.default), name
        if p.domain == "positive":
            assert p.default > 0, name
        elif p.domain == "unit":
            assert 0 < p.default < 1, name
    assert model.citation and "doi" in model.citation.lower()
    assert model.provenance in ("published", "constructed")
    assert set(getattr(model, "assumed_parameters", ())) <= set(model.parameters)
    assert type(model).__doc__ and type(model).__module__
    assert all(o.unit for o in model.outputs.values())

    if isinstance(model, ODEModel):
        n = len(model.states)
        y0 = model.initial_state(theta)
        assert y0.shape == (n,)
        th = model.at_segment(theta, jnp.asarray(1.0))
        dy = model.vector_field(jnp.asarray(0.0), y0, th)
        assert dy.shape == (n,) and bool(jnp.all(jnp.isfinite(dy)))
        out = model.observe(jnp.asarray(0.0), y0, theta)
        if model.dose_state is not None:
            assert model.dose_state in model.states
            i = model.states.index(model.dose_state)
            inc = model.dose_vector(jnp.asarray(3e8))
            expected = np.zeros(n)
            expected[i] = 3e8 / model.cells_per_unit
            np.testing.assert_allclose(np.asarray(inc), expected, rtol=1e-15)
            y1 = y0 + inc
            assert bool(jnp.all(jnp.isfinite(model.vector_field(jnp.asarray(0.0), y1, th))))
    else:
        assert isinstance(model, ClosedFormModel)
        out = model.solution(jnp.array([0.0, 5.0, 30.0]), theta)
    assert set(out) == set(model.outputs)


def test_theta_errors_name_the_problem():
    with pytest.raises(ValueError, match="published ones are"):
        Hardiansyah2019.patient("UPN2")
    with pytest.raises(ValueError, match="published ones are"):
        Barros2021.cell_line("K562")
    with pytest.raises(ValueError, match="has no parameter"):
        Kimmel2021().default_theta(rC=1.0)


def test_published_parameter_sets():
    # Table S1/S2 of Hardiansyah & Ng 2019 and the Barros 2021 Raji set, as printed.
    th1 = {k: float(v) for k, v in Hardiansyah2019.patient("UPN1").items()}
    assert th1 == {k: float(v) for k, v in Hardiansyah2019().default_theta().items()}
    th3 = Hardiansyah2019.patient("UPN3")
    assert float(th3["dE"]) == 1.44 and float(th3["KBC"]) == 2.21 and float(th3["B0"]) == 0.93
    assert float(th3["kin"]) == 76.78  # Table S1 values are shared
    raji = Barros2021.raji()
    assert float(raji["phi"]) == 0.83 and float(raji["b"]) == 0.0 and float(raji["T0"]) == 3e6
    hdlm2 = {k: float(v) for k, v in Barros2021.cell_line("HDLM-2").items()}
    assert hdlm2 == {k: float(v) for k, v in Barros2021().default_theta().items()}
    assert hdlm2["phi"] == 0.265 and hdlm2["b"] == 1.40e-12 and hdlm2["T0"] == 2e6
    r1, r3 = Hardiansyah2019.regimen("UPN1"), Hardiansyah2019.regimen("UPN3")
    assert [d.time for d in r1.doses] == [0.0, 1.0, 2.0]
    np.testing.assert_allclose([d.amount for d in r1.doses], [0.11e9, 0.33e9, 0.66e9])
    assert r1.total == pytest.approx(1.1e9) and r3.total == pytest.approx(1.4e7)
    assert Kimmel2021.regimen().total == 1.8e8


# --------------------------------------------------------------------------------------------
# agreement with scipy


class _JitVF:
    """The same model with a jitted vector field, so that scipy's many calls stay cheap."""

    def __init__(self, model):
        self.model = model

    def vector_field(self, t, y, theta):
        return _jit_vf(self.model, t, y, theta)

    def __getattr__(self, name):
        return getattr(self.model, name)


@eqx.filter_jit
def _jit_vf(model, t, y, theta):
    return model.vector_field(t, y, theta)


T_H = np.array(
    [
        0.0,
        0.5,
        1.0,
        1.5,
        2.0,
        2.5,
        3.0,
        3.5,
        4.0,
        5.0,
        7.0,
        10.0,
        14.0,
        20.0,
        27.0,
        40.0,
        60.0,
        75.0,
        100.0,
        150.0,
        250.0,
        400.0,
    ]
)
T_K = np.array([0.0, 1.0, 3.0, 5.0, 7.0, 10.0, 14.0, 21.0, 28.0, 45.0, 60.0, 90.0, 180.0, 365.0])
T_B = np.array([0.0, 0.5, 1.0, 2.0, 4.0, 7.0, 10.0, 14.0, 21.0, 28.0, 35.0, 50.0, 70.0, 100.0])
T_L = np.array([0.0, 1.0, 3.27, 5.0, 8.0, 9.29, 10.0, 14.0, 28.0, 90.0, 180.0, 365.0, 730.0])

_h = Hardiansyah2019()
# (model, theta, regimen, times); each model's default theta is among them (UPN1, HDLM-2).
SCIPY_CASES = {
    "hardiansyah_upn1": (_h, _h.patient("UPN1"), _h.regimen("UPN1"), T_H),
    "hardiansyah_upn3": (_h, _h.patient("UPN3"), _h.regimen("UPN3"), T_H),
    # a corticosteroid-like damping of expansion from day 3 on (an Intervention at an event)
    "hardiansyah_upn1_steroid": (
        _h,
        _h.patient("UPN1"),
        _h.regimen("UPN1").with_intervention(Intervention(3.0, {"rE": 0.5}, "steroid")),
        T_H,
    ),
    "kimmel_published": (Kimmel2021(), Kimmel2021().default_theta(), Kimmel2021.regimen(), T_K),
    "kimmel_two_infusions": (
        Kimmel2021(),
        Kimmel2021().default_theta(rB=0.05),
        Regimen((Dose(0.0, 1.8e8), Dose(60.0, 5e8))),
        T_K,
    ),
    "barros_hdlm2": (Barros2021(), Barros2021.cell_line("HDLM-2"), Regimen.single(1e6), T_B),
    "barros_raji": (Barros2021(), Barros2021.raji(), Regimen.single(1e6, time=1.0), T_B),
    "lisocel_ode": (LisoCelODE(), LisoCelODE().default_theta(), None, T_L),
}


FLOOR = 1e-6


@pytest.mark.parametrize("case", list(SCIPY_CASES))
def test_ode_models_match_scipy(case):
    """cartkin (rtol 1e-10) vs scipy LSODA (rtol 1e-11), segment by segment, to 1e-5 relative.

    Both integrators run about 1e5 times tighter than the check, so a failure means a different
    solution (dose, event or switch handling), not solver noise. LSODA because Hardiansyah is
    stiff. atol 1e-16 keeps the error control relative down to ~1e-6 in state units (1e-14 for
    Hardiansyah, whose tissue effector pool decays to ~1e-10 units, where Kvaerno5 at atol 1e-16
    runs out of steps; a value at the floor then still has a per-step tolerance of 1e-8). Values
    below FLOOR = 1e-6 (output units: cells, 1e9 cells, pg/mL, copies/ug) are not compared: they are
    well below one cell (an eradicated tumour, a not-yet-formed memory pool) and there both
    solutions are set by the absolute tolerances, not by the dynamics.
    """
    model, theta, regimen, times = SCIPY_CASES[case]
    atol = 1e-14 if isinstance(model, Hardiansyah2019) else 1e-16
    res = cartkin.simulate(model, theta, times, regimen, rtol=1e-10, atol=atol)
    assert res.ok.all(), res.failures()
    assert set(res.outputs) == set(model.outputs)
    assert all(v.shape == (1, times.size) for v in res.outputs.values())
    ref = scipy_reference(_JitVF(model), theta, times, regimen, rtol=1e-11, atol=atol)
    for name in model.outputs:
        got, want = res.outputs[name][0], ref[name]
        keep = np.abs(want) > FLOOR
        assert keep.sum() >= 3, f"{case}: {name} is compared at fewer than 3 times"
        np.testing.assert_allclose(got[keep], want[keep], rtol=1e-5, err_msg=f"{case}: {name}")


# --------------------------------------------------------------------------------------------
# liso-cel: closed form against published numbers, ODE against closed form


def test_lisocel_closed_form_reproduces_published_kinetics():
    """Doubling time 0.755 d, Tmax 9.29 d, lag 3.27 d, half-lives 5.00 d and 352 d (PMC8613160)."""
    model = LisoCel()
    th = model.default_theta()
    c = lambda t: float(model.solution(jnp.array([t]), th)["C"][0])  # noqa: E731
    cmax = float(th["Cmax"])
    assert c(9.29) == pytest.approx(cmax, rel=1e-12)
    # flat during the lag, doubling every 0.755 d after it, peak at Tmax
    assert c(0.0) == pytest.approx(c(3.27), rel=1e-12)
    assert c(4.0 + 0.755) / c(4.0) == pytest.approx(2.0, rel=1e-12)
    assert c(9.29) / c(3.27) == pytest.approx(2.0 ** ((9.29 - 3.27) / 0.755), rel=1e-12)
    ts = np.linspace(0.0, 60.0, 6001)
    assert ts[np.argmax(np.asarray(model.solution(jnp.asarray(ts), th)["C"]))] == pytest.approx(
        9.29, abs=0.01
    )
    # early decline: the fast phase (99% of the peak) halves in 5.00 d
    f = float(th["F"])
    fast = lambda t: c(t) - f * cmax * 2.0 ** (-(t - 9.29) / 352.0)  # noqa: E731
    assert fast(9.29 + 5.0) / fast(9.29) == pytest.approx(0.5, rel=1e-10)
    # terminal phase: half-life 352 d
    assert c(1000.0 + 352.0) / c(1000.0) == pytest.approx(0.5, rel=1e-6)


def test_lisocel_ode_matches_closed_form():
    """Exact switch times make the ODE equal the closed form to solver tolerance (rtol 1e-10)."""
    times = np.unique(np.r_[np.linspace(0.0, 730.0, 366), 3.27, 9.29, 3.2699, 9.2901])
    closed = cartkin.simulate(LisoCel(), LisoCel().default_theta(), times)
    ode = cartkin.simulate(
        LisoCelODE(), LisoCelODE().default_theta(), times, rtol=1e-10, atol=1e-12
    )
    assert ode.ok.all(), ode.failures()
    assert set(closed.outputs) == set(ode.outputs) == {"C"}
    np.testing.assert_allclose(ode.outputs["C"], closed.outputs["C"], rtol=1e-7)


def test_lisocel_gradients_finite():
    th = LisoCel().default_theta()
    g = jax.grad(lambda th: jnp.sum(LisoCel().log_solution(jnp.linspace(0, 60, 61), th)))(th)
    assert all(bool(jnp.isfinite(v)) for v in g.values())


# --------------------------------------------------------------------------------------------
# analytic limiting cases (closed-form references)


def test_kimmel_without_car_t_is_gompertz_and_exponential():
    """No infusion: N follows the Gompertz law, the tumour grows at exp(rB t)."""
    model = Kimmel2021()
    th = model.default_theta()
    t = np.array([0.0, 1.0, 5.0, 20.0, 60.0, 120.0])
    res = cartkin.simulate(model, th, t, None, rtol=1e-10, atol=1e-6)
    kn, n0, rn, rb, b0 = (float(th[k]) for k in ("KN", "N0", "rN", "rB", "B0"))
    np.testing.assert_allclose(
        res.outputs["N"][0], kn * np.exp(np.log(n0 / kn) * np.exp(-rn * t)), rtol=1e-7
    )
    np.testing.assert_allclose(res.outputs["tumour"][0], b0 * np.exp(rb * t), rtol=1e-7)
    np.testing.assert_array_equal(res.outputs["CART"][0], 0.0)


def test_kimmel_blood_conversion_matches_paper():
    """Table 1 C(0) = 1.8e8 cells is the Fig. 2b initial condition 0.36 CAR+ cells/uL."""
    model = Kimmel2021()
    res = cartkin.simulate(model, model.default_theta(), np.array([0.0]), Kimmel2021.regimen())
    assert res.outputs["CART_conc"][0, 0] == pytest.approx(0.36, rel=1e-12)
    assert res.outputs["N_conc"][0, 0] == pytest.approx(6.0, rel=1e-12)
    assert float(model.default_theta()["KN"]) / 5e8 == pytest.approx(500.0)


@pytest.mark.parametrize("line", ["HDLM-2", "Raji"])
def test_barros_without_car_t_is_logistic(line):
    """No infusion: T(t) = 1 / (b + (1/T0 - b) exp(-r t)) (exponential for Raji, b = 0)."""
    model = Barros2021()
    th = Barros2021.cell_line(line)
    t = np.array([0.0, 2.0, 10.0, 30.0])
    res = cartkin.simulate(model, th, t, None, rtol=1e-10, atol=1e-6)
    r, b, t0 = float(th["r"]), float(th["b"]), float(th["T0"])
    np.testing.assert_allclose(
        res.outputs["tumour"][0], 1.0 / (b + (1.0 / t0 - b) * np.exp(-r * t)), rtol=1e-7
    )
    np.testing.assert_array_equal(res.outputs["CART"][0], 0.0)


def test_hardiansyah_structure():
    """Transfers conserve CAR-T cells; without CAR-T, cytokines rest at baseline and B grows."""
    model = Hardiansyah2019()
    th = model.patient("UPN1")
    y = jnp.array([2.0, 0.3, 5.0, 0.01, 0.2, 40.0, 30.0, 20.0])
    # with growth and death switched off, d/dt of the four CAR-T pools sums to zero
    closed = {**th, **{k: jnp.asarray(0.0) for k in ("rE", "dE", "rM", "dM")}}
    for h in (1e5, 1.0):  # also where f(B) is not ~0, so that the a_M term is exercised
        dy = model.vector_field(0.0, y, {**closed, "h": jnp.asarray(h)})
        assert float(dy[1] + dy[2] + dy[3] + dy[4]) == pytest.approx(0.0, abs=1e-13)
    y0 = model.initial_state(th)
    dy0 = model.vector_field(0.0, y0, th)
    np.testing.assert_array_equal(np.asarray(dy0[1:]), 0.0)
    assert float(dy0[0]) == pytest.approx((9.3e-3 - 7.6e-3) * 4.14, rel=1e-12)
    assert math.isclose(model.cells_per_unit, 1e9)


def test_elementwise_closed_forms_give_the_same_draws_with_the_draws_last():
    """A closed form that declares ``elementwise`` is computed for a batch of draws with the draws
    on the last axis (importance sampling's draws): the same predictions and statuses as the
    solution mapped over the draws, for both switch forms of Stein and for liso-cel, with a
    draw whose prediction overflows (status NONFINITE)."""
    from cartkin._likelihood import (
        Endpoint,
        SolverSettings,
        StatModel,
        make_draws_predictor,
        make_predictor,
    )
    from cartkin._models.base import ClosedFormModel
    from cartkin._models.registry import available_models, get_model

    names = [k for k, c in available_models().items()
             if issubclass(c, ClosedFormModel) and c.elementwise]
    assert {"stein2019", "lisocel"} <= set(names)
    rng = np.random.default_rng(4)
    T, M = 13, 7
    data_i = {"time": jnp.asarray(np.r_[0.0, np.sort(rng.uniform(0.5, 400.0, T - 1))]),
              "endpoint": jnp.zeros(T, int), "ev_time": jnp.zeros(1), "ev_dose": jnp.zeros(1),
              "ev_log_effect": jnp.zeros((1, 1))}
    for model in [get_model(k) for k in names] + [get_model("stein2019", switch="softmin")]:
        stat = StatModel(model, (Endpoint("C"),), iiv=tuple(model.parameters))
        phi0 = stat.phi_from_theta({k: p.default for k, p in model.parameters.items()})
        phi = jnp.asarray(phi0 + rng.normal(0.0, 0.3, (M, len(phi0))))
        phi = phi.at[0, stat.iiv.index("Cmax")].set(800.0)  # a peak of e^800: not finite
        last = make_draws_predictor(stat, SolverSettings()).draws_last
        f, status = last(phi, data_i)
        f_ref, status_ref = jax.vmap(make_predictor(stat, status=True), in_axes=(0, None))(
            phi, data_i)
        assert f.shape == (T, M)
        np.testing.assert_array_equal(status, status_ref)
        assert status[0] != 0 and np.all(np.asarray(status[1:]) == 0)
        np.testing.assert_allclose(f[:, 1:], np.asarray(f_ref).T[:, 1:], rtol=1e-13)
        # a column of times per draw (SAEM's subjects, one chain each)
        times = np.sort(rng.uniform(0.0, 400.0, (M, T)), axis=1)
        f_col, _ = last(phi, {"time": jnp.asarray(times.T), "endpoint": jnp.zeros((T, M), int)})
        for j in range(1, M):
            f_j, _ = make_predictor(stat, status=True)(phi[j], dict(data_i, time=times[j]))
            np.testing.assert_allclose(f_col[:, j], f_j, rtol=1e-13)
