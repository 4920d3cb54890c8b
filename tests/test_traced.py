"""Traced programs kept across runs (cartkin._traced): keys that change with everything a program
closes over, and kept programs that give what tracing gives."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from helpers import child_results, spawn, wait_all

from cartkin._likelihood import SolverSettings
from cartkin._traced import Unkeyable, digest


def _make(scale, offset=0.0):
    """A cartkin-like factory: the program closes over an array and a float."""
    def inner(x):
        return x * scale + offset

    def program(x):
        return jnp.sum(inner(x))

    return program


# functions of this module stand for cartkin's: the walk accepts a test module's functions only
# when told to (they are not in the key's source digest)
@pytest.fixture(autouse=True)
def _known_tests(monkeypatch):
    import cartkin._traced as tr

    monkeypatch.setattr(tr, "_KNOWN", tr._KNOWN + (__name__.split(".")[0],))


def test_digest_follows_what_a_program_closes_over():
    a = _make(np.array([1.0, 2.0]))
    assert digest(a) == digest(_make(np.array([1.0, 2.0])))
    assert digest(a) != digest(_make(np.array([1.0, 2.0 + 1e-15])))  # last bit of an array
    assert digest(a) != digest(_make(np.array([1.0, 2.0], np.float32)))  # its dtype
    assert digest(a) != digest(_make(np.array([[1.0, 2.0]])))  # its shape
    assert digest(a) != digest(_make(np.array([1.0, 2.0]), 1e-300))  # a float two levels down
    assert digest(_make(1.0)) != digest(_make(True))  # type, not only value
    # objects by their fields (a dataclass of cartkin)
    s = SolverSettings()
    assert digest(s) == digest(SolverSettings())
    assert digest(s) != digest(dataclasses.replace(s, rtol=s.rtol * 1.0000001))
    # dict order is part of a trace
    assert digest({"a": 1, "b": 2}) != digest({"b": 2, "a": 1})


def test_digest_keeps_shared_and_cyclic_parts_apart():
    """A shared object hashes as a reference to its first place; temporaries made during the
    walk are kept alive so that their ids are not reused for other objects."""
    x = [1.0]
    assert digest([x, x]) != digest([x, [1.0]])
    cyc = []
    cyc.append(cyc)
    digest(cyc)  # terminates
    fs = [_make(np.full(3, float(i))) for i in range(50)]
    assert len({digest(f) for f in fs}) == 50


def test_digest_of_a_layout_is_its_mesh_spec_and_memory_kind():
    """A NamedSharding caches attributes as it is used (is_fully_replicated): the key of an
    argument's layout must not follow them, or an array and the example read from its program's
    compiled form (the same layout) give different keys."""
    import jax

    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("d",))
    layout = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
    before = digest(layout)
    assert layout.is_fully_replicated is not None and layout.shard_shape((4,)) == (4,)
    assert digest(layout) == before
    assert digest(jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())) != before


def test_unknown_objects_are_unkeyable(monkeypatch):
    import cartkin._traced as tr

    monkeypatch.setattr(tr, "_KNOWN", tuple(k for k in tr._KNOWN if k != __name__.split(".")[0]))
    with pytest.raises(Unkeyable, match="function"):
        digest(_make(1.0))  # a user's function: its code is not in the key

    class Opaque:
        __slots__ = ()

    with pytest.raises(Unkeyable, match="Opaque"):
        digest(Opaque())


def test_digest_is_the_same_in_every_process():
    """A program's key may not change with the interpreter's string hashing (the order of a
    set of strings, in a closure or as a code constant)."""
    code = textwrap.dedent(
        """
        import cartkin._traced as tr
        tr._KNOWN += ("__main__",)
        def make(names):
            def f(x):
                return x if x in {"alpha", "beta", "gamma", "delta"} else names
            return f
        print(tr.digest(make(frozenset({"foldx", "Tmax", "Cmax"}))))
        """
    )
    keys = set(wait_all([spawn([sys.executable, "-c", code],
                               dict(os.environ, PYTHONHASHSEED=seed))
                         for seed in ("1", "2", "3")], timeout=60))
    assert len(keys) == 1


CHILD = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_compilation_cache_dir", sys.argv[1])
    import cartkin._compile as cc
    import cartkin._traced as tr
    from cartkin._devices import over_subjects, subject_devices

    tr._KNOWN += ("__main__",)  # this script stands for a cartkin module
    traces = []

    def make(scale):
        def program(x, s):
            traces.append(1)  # runs only while tracing
            def local(xi, s):
                return jnp.sin(xi) * s * scale
            return over_subjects(local, (x,), (s,), subject_devices())
        return program

    program = make(float(sys.argv[2]))
    f = cc.jit(program)
    x = np.linspace(0.0, 3.0, 8)
    y = np.asarray(f(x, 2.0))
    # a new signature: s not weakly typed; on two devices x arrives split over them
    y2 = np.asarray(f(f(x, 2.0), np.float64(0.5)))
    print("RESULT " + json.dumps({"y": y.tolist(), "y2": y2.tolist(), "traces": len(traces),
                                  "devices": len(jax.devices())}))
    """
)


def _child(cache, scale, devices, **extra_env):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **extra_env)
    out = subprocess.run([sys.executable, "-c", CHILD, str(cache), repr(scale)], env=env,
                         capture_output=True, text=True, timeout=120)
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    assert out.returncode == 0 and line, out.stderr[-3000:]
    return json.loads(line[-1][len("RESULT "):])


@pytest.mark.parametrize("devices", [1, 2])
def test_kept_program_is_loaded_and_gives_what_tracing_gives(tmp_path, devices):
    """A second run loads both programs (no trace) and gets the same numbers; a changed
    closed-over constant is a new key (traced again, one more kept program each)."""
    first = _child(tmp_path, 1.5, devices)
    assert first["devices"] == devices and first["traces"] == 2
    kept = sorted(p.name for p in (tmp_path / "cartkin-traced").iterdir())
    assert len(kept) == 2
    second = _child(tmp_path, 1.5, devices)
    assert second["traces"] == 0
    x = np.linspace(0.0, 3.0, 8)
    y = np.sin(x) * 2.0 * 1.5
    np.testing.assert_allclose(first["y"], y, rtol=1e-15)
    np.testing.assert_array_equal(second["y"], first["y"])
    np.testing.assert_array_equal(second["y2"], first["y2"])
    np.testing.assert_allclose(second["y2"], np.sin(y) * 0.5 * 1.5, rtol=1e-15)
    third = _child(tmp_path, 1.25, devices)
    assert third["traces"] == 2
    assert len(list((tmp_path / "cartkin-traced").iterdir())) == 4
    np.testing.assert_allclose(third["y"], np.sin(x) * 2.0 * 1.25, rtol=1e-15)


def test_damaged_entry_is_exported_again_and_the_switch_turns_it_off(tmp_path):
    """A kept program that cannot be read is traced and kept again (same numbers);
    ``CARTKIN_TRACED=off`` keeps nothing and traces every run."""
    first = _child(tmp_path, 1.5, 1)
    kept = sorted((tmp_path / "cartkin-traced").iterdir())
    kept[0].write_bytes(b"not a program")
    again = _child(tmp_path, 1.5, 1)
    assert again["traces"] == 1  # the damaged one only
    assert again["y"] == first["y"] and again["y2"] == first["y2"]
    assert kept[0].read_bytes() != b"not a program"
    off = tmp_path / "off"
    res = _child(off, 1.5, 1, CARTKIN_TRACED="off")
    assert res["traces"] == 2 and not (off / "cartkin-traced").exists()
    np.testing.assert_allclose(res["y"], first["y"], rtol=1e-15)


FIT = textwrap.dedent(
    """
    import json, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    if sys.argv[1] != "off":
        jax.config.update("jax_compilation_cache_dir", sys.argv[1])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    import cartkin.data as cdata
    import cartkin._traced as tr
    from cartkin._estimate.config import fitdata_from_dataset
    from cartkin._estimate.fit import fit
    from cartkin._estimate.importance import ISOptions
    from cartkin._estimate.saem import SAEMOptions
    from cartkin._likelihood import Endpoint, StatModel
    from cartkin._models.registry import get_model

    ds = cdata.simulate_cohort(21, seed=7, omega_reading="variance").dataset
    stat = StatModel(get_model("stein2019"), (Endpoint("C", 1, "log_additive"),),
                     iiv=("foldx", "Tmax", "Cmax", "alpha"))
    res = fit(stat, fitdata_from_dataset(ds, stat), saem=SAEMOptions(k1=30, k2=20, block=10),
              importance=ISOptions(min_draws=250, max_draws=500, louis_draws=250),
              polish=1, progress=False)
    print("RESULT " + json.dumps({"beta": res.estimates["beta"].tolist(),
                                  "omega": res.estimates["omega"].tolist(), "m2ll": res.m2ll,
                                  "counts": tr.COUNTS}))
    """
)


def _fit_start(cache) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu", EQX_ON_ERROR="nan",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    return spawn([sys.executable, "-c", FIT, str(cache)], env)


def test_fit_from_kept_programs_matches_a_traced_fit(tmp_path):
    """A population fit (SAEM, mode search, importance sampling, sdtab; two host devices) run
    twice with the cache: the second run traces none of the estimation programs and gives the
    first run's estimates and -2LL, which are those of a run without the cache (to rounding:
    an exported program may be compiled with other fusions)."""
    # the run without the cache and the cold run at once (mostly compiling), then the warm run
    plain, cold = child_results([_fit_start("off"), _fit_start(tmp_path)])
    (warm,) = child_results([_fit_start(tmp_path)])
    assert plain["counts"]["exported"] == 0 and plain["counts"]["loaded"] == 0
    assert cold["counts"]["exported"] >= 6 and cold["counts"]["loaded"] == 0
    assert warm["counts"]["exported"] == 0
    assert warm["counts"]["loaded"] == cold["counts"]["exported"]
    assert cold["counts"]["untraceable"] == warm["counts"]["untraceable"] == 0
    for k in ("beta", "omega", "m2ll"):
        np.testing.assert_array_equal(warm[k], cold[k])
        np.testing.assert_allclose(cold[k], plain[k], rtol=1e-9, atol=1e-9)


def test_simulate_command_from_kept_programs(tmp_path):
    """``cartkin simulate`` (the batched solver split over two host devices) with the cache on,
    twice, and with it off: the second run loads the solver's program instead of tracing it,
    and all three tables agree."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")

    def start(run, cache):
        cmd = [sys.executable, "-m", "cartkin.cli", "simulate", "--model", "stein2019ode",
               "--n", "64", "--days", "60", "--points", "13", "--out", str(tmp_path / run)]
        return spawn(cmd, dict(env, CARTKIN_CACHE=str(cache)))

    # the run without the cache beside the cold run, then the warm run
    wait_all([start("off", "off"), start("cold", tmp_path / "cache")], timeout=300)
    kept = {p.name for p in (tmp_path / "cache" / "cartkin-traced").iterdir()}
    assert any(name.startswith("body-") for name in kept)
    wait_all([start("warm", tmp_path / "cache")], timeout=300)
    tables = {run: pd.read_csv(tmp_path / run / "simulation.csv")
              for run in ("off", "cold", "warm")}
    # the warm run kept nothing new: it found every program it needed
    assert {p.name for p in (tmp_path / "cache" / "cartkin-traced").iterdir()} == kept
    num = tables["off"].select_dtypes("number").columns
    assert len(tables["off"]) == 64 * 13 and len(num) >= 3
    pd.testing.assert_frame_equal(tables["warm"], tables["cold"])
    pd.testing.assert_frame_equal(tables["cold"][num], tables["off"][num], rtol=1e-9)
