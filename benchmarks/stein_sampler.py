"""The Stein closed-form fit of a simulated cohort, keeping its importance sampler: what the
benchmarks that evaluate the -2LL again at the fit's estimate share (``heavy_subjects.py``,
``m2ll_bias.py``). Import it before JAX computes anything: it sets one host device per core
(read when JAX starts its backend), equinox's error mode and float64."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("EQX_ON_ERROR", "nan")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={os.cpu_count()}")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

sys.path.insert(0, os.path.dirname(__file__))
from fit_ode import FORMS, IIV, INIT  # noqa: E402

import cartkin._estimate.fit as fit_module  # noqa: E402
import cartkin.data as cdata  # noqa: E402
from cartkin._estimate.config import fitdata_from_dataset  # noqa: E402
from cartkin._estimate.saem import SAEMOptions  # noqa: E402
from cartkin._likelihood import Endpoint, StatModel  # noqa: E402
from cartkin._models.registry import get_model  # noqa: E402


def fit_keeping_sampler(n: int, **fit_options):
    """Fit the Stein closed form to ``simulate_cohort(n, seed=2019)`` (the fit_ode.py set-up,
    SAEM seed 1). Returns ``(stat, data, result, sample, again)``: ``sample`` is the fit's
    importance sampler, ``again(sampler)`` makes the fit's last (-2LL) call with a sampler, and
    ``again.sampler(options)`` builds one of the fit's data with other
    :class:`~cartkin._estimate.importance.ISOptions`."""
    stat = StatModel(get_model(FORMS["closed"]), (Endpoint("C", 1, "log_additive"),), iiv=IIV)
    ds = cdata.simulate_cohort(n, seed=2019, omega_reading="variance").dataset
    data = fitdata_from_dataset(ds, stat)
    kept = {}
    make = fit_module.make_importance_sampler

    def keep(*a, **k):
        sample = make(*a, **k)

        def recorded(*aa, **kk):
            kept.update(built=a[:5], sample=sample, call=(aa, kk))
            return sample(*aa, **kk)

        recorded.compile_ahead = sample.compile_ahead
        return recorded

    fit_module.make_importance_sampler = keep
    try:
        res = fit_module.fit(stat, data, init=INIT, omega_init=0.5, sigma_init=0.8,
                             saem=SAEMOptions(seed=1), **fit_options)
    finally:
        fit_module.make_importance_sampler = make
    a, k = kept["call"]

    def again(sample):
        return sample(*a, **k)

    again.sampler = lambda options: make(*kept["built"], options)
    again.call = (a, k)  # the fit's last call's arguments
    return stat, data, res, kept["sample"], again
