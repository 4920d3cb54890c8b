"""Dose-risk prediction on the shipped Hardiansyah scenario, scaled down: what the model implies
(risk rises with burden; with dose where exposure does), tocilizumab, windows, and the same table
for any batch size. One small run is shared by the tests of this module."""

import dataclasses
import json
from pathlib import Path

import diffrax as dfx
import jax
import numpy as np
import pandas as pd
import pytest

from cartkin._crs import load_scenario, run_dose_risk
from cartkin._crs.kinetics import BlockSampler

SHIPPED = Path(__file__).parents[1] / "fits" / "crs_hardiansyah.toml"
SMALL = dict(
    draws=3,
    patients=8,
    calibration_patients=8,
    point_patients=16,
    fractionated=None,
    doses=(1e7, 1e8, 1e9),
    burden_profiles=(0.5, 2.0, 8.0),
)


def small_config(**over):
    cfg = load_scenario(SHIPPED, **{**SMALL, **over})
    # a 14-day window on a 0.5-day grid, small fixed chunks and Tsit5 (the shipped batched solver
    # takes longer to compile than these few solves take) keep the test short
    settings = dataclasses.replace(
        cfg.settings,
        window=14.0,
        step=0.5,
        chunk_size=8,
        solver=dfx.Tsit5(),
        method="auto",
        rtol=1e-5,
        atol=1e-8,
    )
    return dataclasses.replace(cfg, settings=settings)


@pytest.fixture(scope="module")
def small():
    cfg = small_config()
    return cfg, run_dose_risk(
        cfg.kinetics, cfg.link, cfg.cohorts, cfg.spec, cfg.settings, log=lambda *a: None
    )


def test_shipped_scenario_parses_to_verified_lee_rows():
    cfg = load_scenario(SHIPPED)
    names = [c.name for c in cfg.cohorts]
    assert len(names) == 3 and all(c.grading == "Lee 2014" for c in cfg.cohorts)
    hay = cfg.cohorts[0]
    # Hay 2017: any 70%, >= 2 44.1%, >= 3 12%, >= 4 7.6% of 133
    assert hay.events == {1: 93, 2: 59, 3: 16, 4: 10} and hay.per_kg
    assert cfg.cohorts[1].events == {3: 5} and cfg.cohorts[2].events == {3: 3}
    assert cfg.kinetics.has_uncertainty and cfg.spec.draws * cfg.spec.patients >= 4000


def test_table_columns_and_tocilizumab(small):
    cfg, res = small
    t = res.table
    for col in (
        "p_crs2",
        "p_crs2_lo90",
        "p_crs2_hi90",
        "p_crs3",
        "p_crs3_lo90",
        "p_crs3_hi90",
        "p_response",
        "p_response_lo90",
        "p_response_hi90",
    ):
        assert t[col].between(0, 1).all(), col
    assert (t["p_crs3_lo90"] <= t["p_crs3"] + 1e-12).all() and (
        t["p_crs3"] <= t["p_crs3_hi90"] + 1e-12
    ).all()
    assert (t["p_crs3"] <= t["p_crs2"]).all()
    base = t[t["scenario"] == "single infusion"].set_index(["profile", "dose"])
    g2 = t[t["scenario"].str.contains("grade >= 2")].set_index(["profile", "dose"])
    pro = t[t["scenario"].str.contains("prophylactic")].set_index(["profile", "dose"])
    # a rule at grade 2 leaves P(CRS >= 2) as it is and can only lower P(CRS >= 3)
    np.testing.assert_allclose(g2["p_crs2"], base.loc[g2.index, "p_crs2"], rtol=1e-12)
    assert (g2["p_crs3"] <= base.loc[g2.index, "p_crs3"] + 1e-12).all()
    assert (pro["p_crs3"] < base.loc[pro.index, "p_crs3"]).all()
    assert (t["failed_solves"] == 0).all()
    assert set(res.fit["fit"]) <= {"ok", "misfit"}


def test_risk_rises_with_burden_and_with_dose_where_exposure_does(small):
    cfg, res = small
    t = res.table[res.table["scenario"] == "single infusion"]
    for dose, d in t.groupby("dose"):
        d = d[d["profile"] != "population"].sort_values("burden")
        # common random numbers: the same patients at each burden
        assert np.all(np.diff(d["p_crs3"]) > 0), (dose, d["p_crs3"].tolist())
        assert np.all(np.diff(d["p_crs2"]) > 0)
    # at low burden the model's IL-6 exposure rises with dose, and so does the risk
    e = res.exposure[(res.exposure["profile"] == "burden 0.5")].sort_values("dose")
    low = t[t["profile"] == "burden 0.5"].sort_values("dose")
    assert np.all(np.diff(e["peak_il6_q50"]) > 0)
    assert np.all(np.diff(low["p_crs3"]) > 0) and np.all(np.diff(low["p_crs2"]) > 0)
    # at high burden the dose barely moves the peak (the paper's central finding)
    hi = res.exposure[(res.exposure["profile"] == "burden 8")]
    assert hi["peak_il6_q50"].max() / hi["peak_il6_q50"].min() < 1.5


def test_windows_follow_the_table(small):
    cfg, res = small
    for _, w in res.windows.iterrows():
        t = res.table[
            (res.table["scenario"] == w["scenario"]) & (res.table["profile"] == w["profile"])
        ]
        t = t.sort_values("dose")
        below = (t["p_crs3_hi90"] < cfg.spec.limit).to_numpy()
        if not below[0]:
            assert np.isnan(w["max_dose_upper90"])
        else:
            n_ok = len(below) if below.all() else int(np.argmin(below))
            assert w["max_dose_upper90"] == t["dose"].iloc[n_ok - 1]


def test_same_seed_same_table_for_any_block_size(small):
    cfg, res = small
    other = dataclasses.replace(cfg.settings, block=5)
    res2 = run_dose_risk(cfg.kinetics, cfg.link, cfg.cohorts, cfg.spec, other, log=lambda *a: None)
    # per-patient keys: the same patients, solved in other batches; equal to rounding
    pd.testing.assert_frame_equal(res.table, res2.table, rtol=1e-9)
    pd.testing.assert_frame_equal(res.fit, res2.fit, rtol=1e-9)


def test_block_sampler_is_population_sample():
    cfg = small_config()
    kin = cfg.kinetics
    typ = kin.draw_typical(jax.random.PRNGKey(0), 3)
    key = jax.random.PRNGKey(9)
    th, w, d = BlockSampler(kin, typ, key).block(10, 5, 27)  # rows of draws 0, 1 and 2
    for s in (1,):  # one Population.sample call (each compiles)
        ref, cov, _ = kin.population(typ[s]).sample(10, seed=jax.random.fold_in(key, s))
        m = d == s
        idx = np.arange(5, 27)[m] - 10 * s
        for k in ref:
            # the same random numbers; constants folded differently: equal to 1 ulp
            np.testing.assert_allclose(th[k][m], ref[k][idx], rtol=4e-16, atol=0)
        np.testing.assert_allclose(w[m], cov["WT"][idx], rtol=4e-16)


def _fake_run(folder: Path, model: str, output: str, iiv: dict):
    folder.mkdir()
    config = {
        "data": {"name": "stein2019_sim200"},
        "model": {"name": model},
        "endpoints": [{"dvid": 1, "output": output}],
        "parameters": {"estimate": {k: v for k, v in iiv.items()}},
        "iiv": {"omega": {k: 0.1 for k in iiv}},
    }
    (folder / "run.json").write_text(
        json.dumps({"config": config, "config_file": str(folder / "fit.toml")})
    )
    names = list(iiv)
    est = {
        "iiv": names,
        "domains": ["positive"] * len(names),
        "beta": [[float(np.log(v))] for v in iiv.values()],
        "omega": np.diag([0.09] * len(names)).tolist(),
        "fixed": {},
        "log_sigma": [0.0],
    }
    (folder / "estimates.json").write_text(json.dumps(est))
    rows = [f"theta:{k}" for k in names] + [f"omega_diag:omega2({k})" for k in names]
    cov = np.diag([0.01] * len(names) + [0.001] * len(names))
    pd.DataFrame(cov, index=rows, columns=rows).to_csv(folder / "covariance.csv")


def test_fit_run_folder(tmp_path):
    from cartkin._crs.scenario import kinetics_from_run

    cfg = small_config()
    _fake_run(tmp_path / "stein", "stein2019", "C", {"Cmax": 24000.0, "Tmax": 9.3})
    with pytest.raises(ValueError, match="lacks the output.*il6 .output 'IL6'"):
        kinetics_from_run(tmp_path / "stein", cfg)
    _fake_run(tmp_path / "hard", "hardiansyah2019", "IL6", {"rE": 15.0, "dE": 6.0})
    new = kinetics_from_run(tmp_path / "hard", cfg)
    kin = new.kinetics
    assert kin.typical["rE"] == pytest.approx(15.0) and kin.typical["dE"] == pytest.approx(6.0)
    names, omega = kin.omega
    # the fit gives B0 no variability: the scenario's burden distribution is added
    assert names == ("rE", "dE", "B0") and omega[2, 2] == 1.0 and omega[0, 0] == pytest.approx(0.09)
    assert kin.uncertainty[0] == ("rE", "dE") and np.allclose(
        kin.uncertainty[1], np.diag([0.01, 0.01])
    )
    assert new.kinetics_source.startswith("fit run")


def test_tocilizumab_with_a_kinetic_effect_resimulates(small):
    from cartkin._crs import Tocilizumab

    base_cfg, base_res = small
    tocis = (
        Tocilizumab("il6", il6_threshold=300.0, kinetic_effects={"rE": 0.5}),
        Tocilizumab("prophylactic", kinetic_effects={"rE": 0.5}),
    )
    cfg = small_config(tocilizumab=tocis, burden_profiles=())
    res = run_dose_risk(
        cfg.kinetics, cfg.link, cfg.cohorts, cfg.spec, cfg.settings, log=lambda *a: None
    )
    t = res.table
    base = t[t["scenario"] == "single infusion"].set_index("dose")
    for label in ("tocilizumab at IL-6 > 300 pg/mL", "prophylactic tocilizumab"):
        r = t[t["scenario"] == f"single infusion + {label}"].set_index("dose")
        assert len(r) == len(cfg.spec.doses) and (r["failed_solves"] == 0).all()
        # blocking IL-6 signalling and halving expansion cannot raise the risk
        assert (r["p_crs3"] <= base["p_crs3"] + 1e-12).all()
    # the untreated rows are those of the run without these rules
    ref = base_res.table[
        (base_res.table["scenario"] == "single infusion")
        & (base_res.table["profile"] == "population")
    ]
    np.testing.assert_allclose(base["p_crs3"].to_numpy(), ref["p_crs3"].to_numpy(), rtol=1e-9)
