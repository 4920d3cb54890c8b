"""The construct models (issue 7): agreement with scipy, limiting cases, single vs dual target.

References are independent of cartkin's solver: scipy LSODA at rtol 1e-11 (tests/helpers.py) and
the published parent models, which the constructions must reproduce exactly in their limits.
Tolerances: 1e-5 relative (our solve at rtol 1e-10 against LSODA at 1e-11), with an absolute floor
of 1e-9 x the output's largest value so that states passing through 0 (X = 0, extinct cells) do
not turn rounding into a relative error.
"""

from __future__ import annotations

import importlib

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import scipy_reference

import cartkin as ck
from cartkin._models import (
    AntigenEscapeBALL,
    ArmoredCAR,
    BCellAplasia,
    LeonTriana2021BALL,
    LeonTriana2021Solid,
    MDSCSuppression,
    Stein2019ODE,
)
from cartkin._regimen import Regimen

TIMES = np.array([0.0, 3.0, 7.0, 14.0, 21.0, 30.0])
SOLID = Regimen.single(2.5e8)
BALL = Regimen.single(1e7)

CASES = [
    (LeonTriana2021BALL(), {}, BALL),
    (AntigenEscapeBALL(), {"fneg": 1e-4, "mu": 1e-3, "mu2": 1e-3}, BALL),
    (AntigenEscapeBALL(), {"fneg": 1e-4, "mu": 1e-3, "mu2": 1e-3, "dual": 1.0}, BALL),
    (LeonTriana2021Solid(), {"C0": 0.0}, SOLID),
    (ArmoredCAR(), {"C0": 0.0, "a1": 0.1}, SOLID),
    (
        MDSCSuppression(),
        {"C0": 0.0, "drug": 1.0, "e_rec": 0.5, "e_sup": 0.3, "e_car": -0.2, "e_il6": 0.1},
        SOLID,
    ),
    (BCellAplasia(), {}, None),
]
IDS = [
    "leontriana_ball",
    "escape_single",
    "escape_dual",
    "leontriana_solid",
    "armored",
    "mdsc",
    "bcell_aplasia",
]


def _sim(model, theta, regimen):
    res = ck.simulate(
        model, theta, TIMES, regimen, rtol=1e-10, atol=1e-8, max_steps=200_000, method="diffrax"
    )
    assert bool(res.ok.all())
    return {k: v[0] for k, v in res.outputs.items()}


def _close(a, b, rtol=1e-5):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-9 * np.max(np.abs(b)))


@pytest.mark.parametrize("model,over,regimen", CASES, ids=IDS)
def test_against_scipy(model, over, regimen):
    theta = model.default_theta(**over)
    got = _sim(model, theta, regimen)
    ref = scipy_reference(model, theta, TIMES, regimen)
    for name in model.outputs:
        _close(got[name], ref[name])


MODELS = [
    LeonTriana2021BALL(),
    AntigenEscapeBALL(),
    LeonTriana2021Solid(),
    ArmoredCAR(),
    MDSCSuppression(),
    BCellAplasia(),
]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.name)
def test_metadata_marks_published_and_assumed(model):
    assert model.citation and "doi" in model.citation.lower()
    assert model.provenance in ("published", "constructed")
    assumed = set(getattr(model, "assumed_parameters", ()))
    assert assumed <= set(model.parameters)
    if model.provenance == "constructed":
        assert assumed
        for k in assumed:
            assert "ASSUMED" in model.parameters[k].description, k
        doc = importlib.import_module(type(model).__module__).__doc__
        assert "CONSTRUCTION" in doc and "ASSUMED" in doc
    else:
        assert not assumed
    for p in model.parameters.values():
        assert p.unit and p.description


def test_escape_without_antigen_loss_is_the_base_model():
    """mu = mu2 = fneg = 0: C, L+, B are exactly León-Triana's C, L, B (either CAR setting)."""
    base = _sim(LeonTriana2021BALL(), LeonTriana2021BALL().default_theta(), BALL)
    for dual in (0.0, 1.0):
        esc = AntigenEscapeBALL()
        got = _sim(esc, esc.default_theta(mu=0.0, mu2=0.0, fneg=0.0, dual=dual), BALL)
        _close(got["CART"], base["CART"], rtol=1e-7)
        _close(got["Lpos"], base["leukaemia"], rtol=1e-7)
        _close(got["Bcells"], base["Bcells"], rtol=1e-7)
        assert np.all(got["Lneg"] == 0) and np.all(got["Lnegneg"] == 0)


def test_dual_target_kills_antigen_negative_cells():
    esc = AntigenEscapeBALL()
    over = {"fneg": 1e-3, "mu": 1e-4, "mu2": 1e-4}
    single = _sim(esc, esc.default_theta(**over, dual=0.0), BALL)
    dual = _sim(esc, esc.default_theta(**over, dual=1.0), BALL)
    # the antigen-negative population grows unchecked under a single-target CAR ...
    assert np.all(np.diff(single["Lneg"]) > 0)
    # ... and is killed by the dual-target CAR, which is also stimulated by it
    assert dual["Lneg"][-1] < 1e-3 * single["Lneg"][-1]
    assert np.all(dual["CART"][1:] >= single["CART"][1:])
    # only the loss of both antigens escapes the dual CAR: fewer double negatives than single
    assert dual["Lnegneg"][-1] < single["Lnegneg"][-1]
    assert dual["IL6"].max() >= single["IL6"].max()


@pytest.mark.parametrize(
    "model,over",
    [(ArmoredCAR(), {"pX": 0.0}), (MDSCSuppression(), {"M0": 0.0, "sM": 0.0, "a": 0.0})],
    ids=["armored_pX0", "mdsc_none"],
)
def test_constructions_reduce_to_the_solid_parent(model, over):
    parent = LeonTriana2021Solid()
    ref = _sim(parent, parent.default_theta(C0=0.0), SOLID)
    got = _sim(model, model.default_theta(C0=0.0, **over), SOLID)
    for name in parent.outputs:
        _close(got[name], ref[name], rtol=1e-7)


def test_armoring_raises_expansion_and_il6():
    m = ArmoredCAR()
    conv = _sim(m, m.default_theta(C0=0.0, pX=0.0, a1=0.1), SOLID)
    arm = _sim(m, m.default_theta(C0=0.0, a1=0.1), SOLID)
    assert arm["CART"].max() > conv["CART"].max()
    assert arm["IL6"].max() > conv["IL6"].max()
    assert arm["tumour"][-1] < conv["tumour"][-1]


def test_bcell_aplasia_kinetics_are_stein_and_h_is_analytic_without_killing():
    m = BCellAplasia()
    th = m.default_theta(kH=0.0, H0=50.0)
    got = _sim(m, th, None)
    stein = _sim(Stein2019ODE(), Stein2019ODE().default_theta(), None)
    _close(got["C"], stein["C"], rtol=1e-7)
    # kH = 0: dH/dt = (Hss - H)/tauH, H = Hss + (H0 - Hss) exp(-t/tauH)
    _close(got["H"], 200.0 + (50.0 - 200.0) * np.exp(-TIMES / 60.0), rtol=1e-7)
    assert float(jnp.asarray(m.default_theta()["kappa"])) == 2000.0
