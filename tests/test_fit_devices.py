"""SAEM and importance sampling split over several host devices give what one device gives."""

import os
import subprocess
import sys
import textwrap

import numpy as np
from helpers import child_results, spawn

CHILD = textwrap.dedent(
    """
    import json
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    import cartkin.data as cdata
    from cartkin._estimate.config import fitdata_from_dataset
    from cartkin._estimate.importance import ISOptions, importance_sample
    from cartkin._likelihood import (Endpoint, StatModel, data_arrays, kind_codes,
                                     make_draws_predictor)
    from cartkin._models.registry import get_model

    out = {"devices": len(jax.devices())}
    # 21 subjects: not a multiple of the device count (padding); BLQ records (M3)
    ds = cdata.simulate_cohort(21, seed=7, omega_reading="variance").dataset
    for form in ("stein2019", "stein2019ode"):
        model = get_model(form)
        fixed = {"Fexp": 1.0} if "Fexp" in model.parameters else {}
        stat = StatModel(model, (Endpoint("C", 1, "log_additive"),),
                         iiv=("foldx", "Tmax", "Cmax", "alpha"), fixed=fixed)
        data = fitdata_from_dataset(ds, stat)
        X = stat.design_matrix(data)
        phi0 = np.asarray(stat.phi_from_theta({k: p.default for k, p in model.parameters.items()}))
        beta = np.zeros((4, X.shape[2]))
        beta[:, 0] = phi0
        params = {"beta": beta, "omega": np.diag([0.5, 0.05, 0.5, 0.3]),
                  "log_sigma": np.log([0.5])}
        n = data.n_subjects
        res = importance_sample(
            stat, make_draws_predictor(stat), data_arrays(data), X, params,
            np.tile(phi0, (n, 1)), np.tile(np.diag([0.3, 0.03, 0.3, 0.2]), (n, 1, 1)),
            kind_codes(stat.endpoints),
            # (at these parameters, far from the cohort's, most subjects' weights are heavy-
            # tailed: the SE target is one the pass meets before max_draws, so that the rows
            # beyond the catch-ups go to the subjects in turn)
            ISOptions(draws_per_chunk=100, min_draws=200, max_draws=1000, louis_draws=200,
                      target_se=8.0))
        out[form] = {"m2ll": res["m2ll"], "loglik_i": res["loglik_i"].tolist(),
                     "info": res["info"].tolist(), "ebe": res["ebe"].tolist(),
                     "draws_i": res["draws_i"].tolist()}
    # a whole fit of the ODE form (SAEM's E-step is split too), short schedules
    from cartkin._estimate.fit import fit
    from cartkin._estimate.saem import SAEMOptions
    stat = StatModel(get_model("stein2019ode"), (Endpoint("C", 1, "log_additive"),),
                     iiv=("foldx", "Tmax", "Cmax", "alpha"), fixed={"Fexp": 1.0})
    res = fit(stat, fitdata_from_dataset(ds, stat), saem=SAEMOptions(k1=30, k2=20, block=10),
              importance=ISOptions(min_draws=250, max_draws=500, louis_draws=250),
              polish=1, progress=False)
    out["fit"] = {"beta": res.estimates["beta"].tolist(), "omega": res.estimates["omega"].tolist(),
                  "m2ll": res.m2ll}
    print("RESULT " + json.dumps(out))
    """
)


def _start(devices: int) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu", EQX_ON_ERROR="nan",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return spawn([sys.executable, "-c", CHILD], env)


def test_fit_split_over_devices_matches_one_device():
    """Per-subject random streams: the same draws whatever the device count, so the -2LL, each
    subject's log-likelihood, the Louis information and the EBEs agree to rounding (1e-8), and
    so do a whole fit's estimates (SAEM chains, polishing step, -2LL); the run
    finishing within the timeout guards against the host-device deadlock of LAPACK calls
    inside sharded programs."""
    # both processes at once: most of each is compiling, one core each
    one, two = child_results([_start(1), _start(2)])
    assert one["devices"] == 1 and two["devices"] == 2
    for form in ("stein2019", "stein2019ode"):
        a, b = one[form], two[form]
        assert np.isfinite(a["m2ll"])
        # (the mode search's end points differ in their last bits between batch shapes: the
        # proposal's components, hence the weights, agree to about 1e-10)
        np.testing.assert_allclose(b["loglik_i"], a["loglik_i"], rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(b["info"], a["info"], rtol=1e-7, atol=1e-7)
        np.testing.assert_allclose(b["ebe"], a["ebe"], rtol=1e-8, atol=1e-8)
        # the -2LL pass gave a chunk's rows beyond its catch-ups to the subjects in turn
        # (subjects ended with two draw counts), the same on both device counts
        assert a["draws_i"] == b["draws_i"] and len(set(a["draws_i"])) == 2
    for k in ("beta", "omega", "m2ll"):
        np.testing.assert_allclose(two["fit"][k], one["fit"][k], rtol=1e-8, atol=1e-8)
