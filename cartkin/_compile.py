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

The estimation programs also trace their random numbers with JAX's original threefry scheme
(:func:`sequential_threefry`), and a fit compiles its importance-sampling programs in a background
thread while SAEM runs (:class:`Ahead`, :func:`compile_ahead`).
"""

from __future__ import annotations

import functools
import logging
import threading

import jax

from . import _traced

log = logging.getLogger(__name__)

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


class Ahead:
    """A program of :func:`jit` that :func:`compile_ahead` may compile in the background before
    its first call. A call waits for that compilation, then runs the compiled program where the
    arguments have its types and layout, else the program as :func:`jit` runs it."""

    def __init__(self, fn):
        self.fn = fn
        self.compiled = None
        self._ready = threading.Event()
        self._ready.set()
        functools.update_wrapper(self, fn)

    def __call__(self, *args):
        self._ready.wait()
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except (TypeError, ValueError):  # other argument types or layouts (checked first)
                pass
        return self.fn(*args)


def compile_ahead(jobs) -> threading.Thread:
    """Compile ``jobs``, ``[(Ahead, make_args), ...]``, one after the other in a background
    thread; ``make_args()`` gives example arguments (arrays or ``jax.ShapeDtypeStruct``, their
    values unused) and may read the ``compiled`` of an earlier job (its ``out_info``: the
    outputs' types and layout). XLA compiles without the interpreter lock, so a fit's
    importance-sampling programs compile on the second core while its SAEM runs. A job that
    fails leaves its program to be compiled at its first call."""
    for ahead, _ in jobs:
        ahead._ready.clear()

    def work():
        for ahead, make_args in jobs:
            try:
                ahead.compiled = ahead.fn.lower(*make_args()).compile()
            except Exception as e:  # noqa: BLE001 - compiled at its first call instead
                log.debug("%s not compiled ahead (%s)", getattr(ahead, "__qualname__", ahead), e)
            finally:
                ahead._ready.set()

    thread = threading.Thread(target=work, name="cartkin-compile-ahead", daemon=True)
    thread.start()
    return thread
