"""``jax.jit`` with the compile options of cartkin's estimation programs.

On the CPU, XLA's fusion emitters (its default in jax 0.10) took twice as long to compile the
batched solver's programs as the older emitters (one 100-subject x 250-draw Stein ODE solve: 1.0
against 0.5 s) and made them 5-9% faster; a fit compiles about ten such programs and runs each a
few dozen times, so without them the Stein ODE fit from an empty compilation cache took 27.9
instead of 33.7 s (benchmarks/README.md, eighth session). Other backends compile with their
defaults.

Where JAX's persistent compilation cache is on (the ``cartkin`` command), the traced programs are
kept too (:mod:`cartkin._traced`), so a later run skips tracing and lowering as well; population
simulation and CRS risk use that with XLA's defaults (``cpu_options=False``: their large runs are
solve-bound, and the option was not measured on them).
"""

from __future__ import annotations

import functools

import jax

from . import _traced

CPU_OPTIONS = {"xla_cpu_use_fusion_emitters": False}


@functools.cache
def _options(backend: str) -> dict | None:
    return CPU_OPTIONS if backend == "cpu" else None


def compile_options() -> dict | None:
    """The compiler options for the default backend (None: XLA's defaults)."""
    return _options(jax.default_backend())


def jit(fun=None, /, *, cpu_options: bool = True, **kwargs):
    """``jax.jit(fun, **kwargs)`` compiled with :func:`compile_options` and traced with
    :func:`sequential_threefry` (XLA's defaults and JAX's configured generator with
    ``cpu_options=False``; usable as a decorator, with or without keyword arguments); its traced
    programs kept across runs (:class:`cartkin._traced.Cached`) where the compilation cache is
    on and no other keyword is given."""
    if fun is None:
        return functools.partial(jit, cpu_options=cpu_options, **kwargs)
    options = compile_options() if cpu_options else None
    if cpu_options:
        fun = sequential_threefry(fun)
    jitted = jax.jit(fun, compiler_options=options, **kwargs)
    if kwargs or _traced.directory() is None:
        return jitted
    return _traced.Cached(fun, jitted, options)


def sequential_threefry(fun):
    """``fun`` traced with JAX's original threefry scheme (``jax_threefry_partitionable`` off;
    JAX's default since 0.5 is on). Estimation programs draw per-subject streams from
    per-subject keys and never split one draw over devices, which is all the partitionable
    scheme is for. On the 2-core CPU one chunk of importance-sampling draws (200 subjects x 250)
    compiled in 0.45-0.47 s against 1.24-1.32 s and drew at 143-147 against 193-212 ns a draw
    (``benchmarks/random_draws.py``). The streams differ from the other scheme's, and are the
    same on every device count."""
    state = getattr(jax, "threefry_partitionable", None)
    if state is None:  # a JAX without the option: its one scheme
        return fun

    @functools.wraps(fun)
    def traced(*args, **kwargs):
        with state(False):
            return fun(*args, **kwargs)

    return traced
