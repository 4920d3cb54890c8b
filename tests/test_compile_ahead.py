"""Programs compiled ahead in a background thread (cartkin._compile.Ahead, compile_ahead): a call
runs the program compiled ahead where its arguments have the example's types and layout, gives
what the program compiled at its first call gives, and falls back to that program otherwise."""

import json
import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np

from cartkin._compile import Ahead, compile_ahead, jit


def _program():
    @jit
    def f(x, y):
        return {"scaled": 2.0 * x + y, "total": jnp.sum(jnp.log1p(x**2), axis=1)}

    return f


def test_compiled_ahead_gives_what_the_first_call_compiles():
    plain, ahead = _program(), Ahead(_program())
    consumer = Ahead(jit(lambda s: s["scaled"] - s["total"][:, None]))
    x, y = np.arange(12.0).reshape(4, 3), np.linspace(0.0, 1.0, 3)
    thread = compile_ahead([
        (ahead, lambda: (np.zeros((4, 3)), np.zeros(3))),
        # an example built from the earlier job's outputs (their types and layout)
        (consumer, lambda: (ahead.compiled.out_info,)),
    ])
    out = ahead(x, y)  # waits for its compilation
    thread.join()
    assert ahead.compiled is not None and consumer.compiled is not None
    ref = plain(x, y)
    for k in ref:
        np.testing.assert_array_equal(out[k], ref[k])
    # the consumer runs its compiled program on the first program's outputs
    np.testing.assert_array_equal(consumer.compiled(out), ref["scaled"] - ref["total"][:, None])
    np.testing.assert_array_equal(consumer(out), ref["scaled"] - ref["total"][:, None])
    # other shapes: the program as jit compiles it
    x2 = np.ones((5, 3))
    np.testing.assert_array_equal(ahead(x2, y)["scaled"], plain(x2, y)["scaled"])


def test_a_failed_job_leaves_the_program_to_its_first_call():
    ahead, later = Ahead(_program()), Ahead(_program())

    def broken():
        raise RuntimeError("no example")

    compile_ahead([(ahead, broken), (later, lambda: (np.zeros((2, 3)), np.zeros(3)))]).join()
    assert ahead.compiled is None and later.compiled is not None
    x, y = np.ones((2, 3)), np.ones(3)
    np.testing.assert_array_equal(ahead(x, y)["total"], later(x, y)["total"])


SHARDED = textwrap.dedent(
    """
    import json, sys
    import jax
    import numpy as np
    jax.config.update("jax_enable_x64", True)
    if sys.argv[1] != "off":
        jax.config.update("jax_compilation_cache_dir", sys.argv[1])
    import jax.numpy as jnp
    from cartkin._compile import Ahead, compile_ahead, jit
    from cartkin._devices import over_subjects
    from cartkin._traced import _signature

    devices = jax.devices()[:2]

    def local(x, w):
        return x * w, jnp.sum(x, axis=1)

    def combine(a, b, w):
        return jnp.sum(a, axis=1) + b * w

    produce = Ahead(jit(lambda x, w: over_subjects(local, (x,), (w,), devices)))
    consume = Ahead(jit(lambda ab, w: over_subjects(combine, ab, (w,), devices)))
    x, w = np.arange(24.0).reshape(8, 3), np.float64(1.5)
    compile_ahead([(produce, lambda: (np.zeros((8, 3)), np.float64(0.0))),
                   (consume, lambda: (produce.compiled.out_info, np.float64(0.0)))]).join()
    ab = produce.compiled(x, w)
    out = consume.compiled(ab, w)  # raises if the layouts of ab are not the example's
    spec = jax.tree.flatten(produce.compiled.out_info)
    real = jax.tree.flatten(ab)
    print("RESULT " + json.dumps({
        "out": np.asarray(out).tolist(),
        "ref": (np.sum(x * w, axis=1) + np.sum(x, axis=1) * w).tolist(),
        "split": len(ab[0].sharding.device_set),
        "same_key": _signature(*spec)[0] == _signature(*real)[0],
    }))
    """
)


def test_sharded_outputs_feed_a_program_compiled_ahead(tmp_path):
    """Two host devices: a program split over them, and one compiled ahead from its outputs'
    example types and layout, run on its real outputs without compiling again; with the
    traced-program cache on, the example's key is the real outputs' key."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    for cache in ("off", str(tmp_path)):
        run = subprocess.run([sys.executable, "-c", SHARDED, cache], env=env,
                             capture_output=True, text=True, timeout=300)
        line = [x for x in run.stdout.splitlines() if x.startswith("RESULT ")]
        assert run.returncode == 0 and line, run.stderr[-3000:]
        res = json.loads(line[-1][len("RESULT "):])
        assert res["split"] == 2 and res["same_key"]
        np.testing.assert_allclose(res["out"], res["ref"], rtol=1e-15)
