"""``jax.jit`` with the compile options of cartkin's estimation programs.

On the CPU, XLA's fusion emitters (its default in jax 0.10) took twice as long to compile the
batched solver's programs as the older emitters (one 100-subject x 250-draw Stein ODE solve: 1.0
against 0.5 s) and made them 5-9% faster; a fit compiles about ten such programs and runs each a
few dozen times, so without them the Stein ODE fit from an empty compilation cache took 27.9
instead of 33.7 s (benchmarks/README.md, eighth session). Other backends compile with their
defaults.
"""

from __future__ import annotations

import functools

import jax

CPU_OPTIONS = {"xla_cpu_use_fusion_emitters": False}


@functools.cache
def _options(backend: str) -> dict | None:
    return CPU_OPTIONS if backend == "cpu" else None


def compile_options() -> dict | None:
    """The compiler options for the default backend (None: XLA's defaults)."""
    return _options(jax.default_backend())


def jit(fun=None, /, **kwargs):
    """``jax.jit(fun, **kwargs)`` compiled with :func:`compile_options` (usable as a decorator,
    with or without keyword arguments)."""
    if fun is None:
        return functools.partial(jit, **kwargs)
    return jax.jit(fun, compiler_options=compile_options(), **kwargs)
