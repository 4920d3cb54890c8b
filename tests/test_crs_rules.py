"""Exposure metrics and tocilizumab rules: against brute-force numpy, a Monte Carlo of the latent
CRS propensity, and per-patient solves with the intervention."""

import jax.numpy as jnp
import numpy as np
import pytest

from cartkin._crs.metrics import ExposureOutputs, blocked_after, final_metrics, running_metrics
from cartkin._crs.rules import (
    Tocilizumab,
    probs_grade_rule,
    probs_il6_rule,
    probs_prophylactic,
    probs_untreated,
)

ROLES = ExposureOutputs("IL6", "CART", "B")
NAMES = ("log_peak_il6",)


def _synthetic(P=6, seed=0):
    """IL-6 bumps of different heights and times on a 0.25-day grid (no ODE involved)."""
    rng = np.random.default_rng(seed)
    t = np.arange(0, 28.25, 0.25)
    amp = np.exp(rng.uniform(1, 9, P))
    tp = rng.uniform(2, 15, P)
    il6 = 2.0 + amp[:, None] * np.exp(-0.5 * ((t - tp[:, None]) / 1.5) ** 2)
    cart = 10 * np.exp(-0.5 * ((t - tp[:, None] - 1) / 3.0) ** 2) + 0.1
    b = np.exp(-0.1 * t)[None].repeat(P, 0) * rng.uniform(1, 5, (P, 1))
    return t, {"IL6": il6, "CART": cart, "B": b}


def _params(P):
    center, scale = np.array([4.0]), np.array([2.0])
    beta = np.full((P, 1), 1.5)
    cuts = np.tile([-1.0, 0.0, 1.2, 2.0], (P, 1))
    return beta, cuts, center, scale


def test_metrics_against_numpy():
    t, out = _synthetic()
    names = ("log_peak_il6", "tpeak_il6", "log_cmax_cart", "log_auc_cart", "log_burden")
    x = np.asarray(
        final_metrics(jnp.asarray(t), {k: jnp.asarray(v) for k, v in out.items()}, names, ROLES)
    )
    np.testing.assert_allclose(x[:, 0], np.log(out["IL6"].max(1)), rtol=1e-13)
    np.testing.assert_allclose(x[:, 1], t[out["IL6"].argmax(1)])
    np.testing.assert_allclose(x[:, 2], np.log(out["CART"].max(1)), rtol=1e-13)
    np.testing.assert_allclose(x[:, 3], np.log(np.trapezoid(out["CART"], t, axis=1)), rtol=1e-12)
    np.testing.assert_allclose(x[:, 4], np.log(out["B"][:, 0]), rtol=1e-13)
    run = np.asarray(running_metrics(t, out, ("log_peak_il6", "log_auc_cart"), ROLES))
    for j in (0, 17, 60, len(t) - 1):
        np.testing.assert_allclose(run[:, j, 0], np.log(out["IL6"][:, : j + 1].max(1)), rtol=1e-13)
    with pytest.raises(ValueError, match="not defined up to a time"):
        running_metrics(t, out, ("tpeak_il6",), ROLES)


def test_blocked_after_is_brute_force():
    t, out = _synthetic()
    b = 0.9
    got = np.asarray(blocked_after(t, out, NAMES, ROLES, b))[..., 0]
    for j in range(0, len(t), 7):
        scale = np.where(np.arange(len(t)) > j, 1 - b, 1.0)
        np.testing.assert_allclose(got[:, j], np.log((out["IL6"] * scale).max(1)), rtol=1e-13)


def test_grade_rule_matches_monte_carlo_of_the_latent_propensity():
    t, out = _synthetic(P=6, seed=1)
    beta, cuts, center, scale = _params(6)
    b, grade = 0.9, 2
    exact = np.asarray(
        probs_grade_rule(
            t, out, NAMES, ROLES, jnp.asarray(beta), jnp.asarray(cuts), center, scale, b, grade
        )
    )
    # Monte Carlo: latent eps; the grade at t_j is #{k: eta(t_j) + eps > c_k} with eta from the
    # peak IL-6 so far; tocilizumab at the first t_j with grade >= 2 blocks IL-6 after t_j
    rng = np.random.default_rng(5)
    M = 200_000
    for p in range(6):
        il6 = out["IL6"][p]
        eta_run = beta[p, 0] * (np.log(np.maximum.accumulate(il6)) - center[0]) / scale[0]
        eps = rng.logistic(size=M)
        reached = eta_run[None, :] + eps[:, None] > cuts[p, grade - 1]
        trig = np.where(reached.any(1), reached.argmax(1), -1)
        peak = np.empty(M)
        for j in np.unique(trig):
            sel = trig == j
            if j < 0:
                peak[sel] = il6.max()
            else:
                peak[sel] = max(il6[: j + 1].max(), (1 - b) * il6[j + 1 :].max(initial=0.0))
        eta = beta[p, 0] * (np.log(peak) - center[0]) / scale[0]
        g = (eta[:, None] + eps[:, None] > cuts[p][None]).sum(1)
        mc = np.array([(g >= k).mean() for k in range(1, 5)])
        se = np.sqrt(mc * (1 - mc) / M)
        assert np.all(np.abs(exact[p] - mc) < 4 * se + 1e-4), (p, exact[p], mc)
    # below the trigger grade the rule changes nothing; above it, it can only lower the risk
    untreated = np.asarray(probs_untreated(t, out, NAMES, ROLES, beta, cuts, center, scale))
    np.testing.assert_allclose(exact[:, :grade], untreated[:, :grade], rtol=1e-12)
    assert np.all(exact[:, grade:] <= untreated[:, grade:] + 1e-12)


def test_prophylactic_and_il6_rules():
    t, out = _synthetic(P=6, seed=2)
    beta, cuts, center, scale = _params(6)
    b = 0.8
    pro = np.asarray(probs_prophylactic(t, out, NAMES, ROLES, beta, cuts, center, scale, b))
    ref = np.asarray(
        probs_untreated(
            t, {**out, "IL6": out["IL6"] * (1 - b)}, NAMES, ROLES, beta, cuts, center, scale
        )
    )
    np.testing.assert_allclose(pro, ref, rtol=1e-12)
    thr = 200.0
    il6r = np.asarray(probs_il6_rule(t, out, NAMES, ROLES, beta, cuts, center, scale, b, thr))
    for p in range(6):
        il6 = out["IL6"][p]
        above = np.nonzero(il6 > thr)[0]
        peak = (
            il6.max()
            if not above.size
            else max(il6[: above[0] + 1].max(), (1 - b) * il6[above[0] + 1 :].max())
        )
        eta = beta[p, 0] * (np.log(peak) - center[0]) / scale[0]
        np.testing.assert_allclose(il6r[p], 1 / (1 + np.exp(-(eta - cuts[p]))), rtol=1e-12)


def test_tocilizumab_checks():
    with pytest.raises(ValueError, match="unknown tocilizumab rule"):
        Tocilizumab(rule="always")
    with pytest.raises(ValueError, match="il6_threshold"):
        Tocilizumab(rule="il6")
    with pytest.raises(ValueError, match="kinetic effects is not supported"):
        Tocilizumab(rule="grade", kinetic_effects={"rE": 0.5})
    with pytest.raises(ValueError, match="blockade"):
        Tocilizumab(rule="prophylactic", blockade=1.5)


def test_resimulation_after_an_il6_trigger_matches_per_patient_solves():
    import diffrax as dfx

    import cartkin as ck
    from cartkin._crs.rules import il6_trigger_index, resimulate_after_trigger
    from cartkin._models.hardiansyah2019 import Hardiansyah2019

    model = Hardiansyah2019()
    theta = {k: np.asarray(v) for k, v in model.default_theta(dE=5.76, KBC=0.65).items()}
    theta["B0"] = np.array([0.3, 2.0, 4.0, 8.0])
    theta = {k: np.broadcast_to(v, (4,)).copy() for k, v in theta.items()}
    times = np.arange(0, 10.5, 0.5)
    regs = [ck.Regimen.single(1e8)]
    kw = dict(solver=dfx.Tsit5(), rtol=1e-6, atol=1e-9, progress=False, chunk_size=8)
    base = ck.simulate(model, theta, times, regs, **kw)
    j = np.asarray(il6_trigger_index({"IL6": jnp.asarray(base.outputs["IL6"])}, ROLES, 500.0))
    t_trig = np.where(j < len(times), times[np.minimum(j, len(times) - 1)], np.inf)
    assert np.isinf(t_trig[0, 0]) and np.isfinite(t_trig[0, 2:]).all()  # low burden: never

    def sim(idx, regimens):
        return ck.simulate(model, {k: v[idx] for k, v in theta.items()}, times, regimens, **kw)

    new, status = resimulate_after_trigger(sim, regs, t_trig, {"rE": 0.5}, name="tocilizumab")
    assert (status == 0).all()
    for i in range(4):
        reg = regs[0]
        if np.isfinite(t_trig[0, i]):
            reg = reg.with_intervention(ck.Intervention(float(t_trig[0, i]), {"rE": 0.5}))
        one = ck.simulate(model, {k: v[i : i + 1] for k, v in theta.items()}, times, reg, **kw)
        np.testing.assert_allclose(new["IL6"][0, i], one.outputs["IL6"][0], rtol=1e-9)
        # the same up to the trigger (to the solver tolerance: the event splits the solve),
        # different after it
        k = int(j[0, i])
        np.testing.assert_allclose(
            new["B"][0, i, : k + 1], base.outputs["B"][0, i, : k + 1], rtol=1e-5
        )
        if k + 2 < len(times):
            assert not np.allclose(
                new["B"][0, i, k + 2 :], base.outputs["B"][0, i, k + 2 :], rtol=1e-6
            )
