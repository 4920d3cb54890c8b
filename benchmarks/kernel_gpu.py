"""The batched Rosenbrock solve on a GPU: XLA's loop (``method="batched"``) against the Pallas
kernel (``method="kernel"``), side by side in one process on the Hardiansyah workload of
``benchmarks/simulate.py`` (same population, times, tolerances).

1. Agreement: both solves of the same patients; largest relative difference of the outputs
   (values above 1e-6), equal status codes and step counts.
2. The solve alone (inputs on the device, one jitted call, no ``simulate`` around it) at
   ``--probe-n`` patients: compile time and warm time of ``_batched.solve_batch`` and of the
   kernel for each block size (patients per program, with one warp per 32 patients).
3. ``cartkin.simulate(..., on_device=True)`` for each method at ``--sizes`` patients, after
   timing the copy of the largest population to the device (part of every ``simulate`` call).
4. With ``--profile METHOD``: one more warm call of that method at the largest size and chunk
   under cProfile (where the host's time goes besides the solve: its checks, the gathers, the
   joins), the functions with the most time of their own, then by cumulative time.

Run on a GPU: ``python benchmarks/kernel_gpu.py``. On a CPU the kernel runs in Pallas's
interpreter, so only ``--check-n 64 --probe-n 0 --sizes`` (no sizes) makes sense there.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from simulate import ATOL, FLOOR, RTOL, TIMES, workload  # noqa: E402

import cartkin  # noqa: E402
from cartkin import _batched, _kernel  # noqa: E402
from cartkin._regimen import compile_regimen, stack_event_tables  # noqa: E402

BATCHED_CHUNK = 262144  # patients per call of the batched solver in simulate (3. and 4.)


def say(*a):
    print(*a, flush=True)


def rel_diff(a, b):
    a, b = np.asarray(a), np.asarray(b)
    keep = (np.abs(a) > FLOOR) & np.isfinite(a)
    return float(np.max(np.abs(a[keep] - b[keep]) / np.abs(a[keep]))) if keep.any() else 0.0


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    return out, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check-n", type=int, default=4096)
    ap.add_argument("--probe-n", type=int, default=262144)
    ap.add_argument("--blocks", type=int, nargs="*", default=[32, 64, 128])
    ap.add_argument("--sizes", type=int, nargs="*", default=[1_000_000, 10_000_000])
    ap.add_argument("--chunks", type=int, nargs="*", default=[262144, 1048576])
    ap.add_argument("--profile", choices=("batched", "kernel"), default=None)
    args = ap.parse_args()
    say(f"# jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
    wl = workload("hardiansyah")
    model = wl["model"]
    n_max = max([args.check_n, args.probe_n] + list(args.sizes))
    theta, _, _ = wl["pop"].sample(n_max, seed=0)

    # 1. agreement
    n = args.check_n
    th = {k: v[:n] for k, v in theta.items()}
    res = {}
    for method in ("batched", "kernel"):
        r, dt = timed(lambda m=method: cartkin.simulate(
            model, th, TIMES, wl["regimen"], rtol=RTOL, atol=ATOL, method=m, progress=False,
            on_device=True).outputs)
        res[method] = r
        say(f"agreement: {method} N={n}: {dt:.1f} s (compile included)")
    worst = max(rel_diff(res["batched"][k], res["kernel"][k]) for k in model.outputs)
    say(f"agreement: largest relative difference batched vs kernel: {worst:.2e}")
    regs = stack_event_tables(
        [compile_regimen(wl["regimen"], list(model.parameters), n_events=3)] * n)
    args_s = (th, TIMES, regs.time, regs.dose, regs.log_effect)
    kw = dict(rtol=RTOL, atol=ATOL, max_steps=16384)
    batched = functools.partial(_batched.solve_batch, model, stats=True, **kw)
    _, _, sa, st = jax.jit(batched)(*args_s)
    _, _, sb, stb = jax.jit(functools.partial(_kernel.solve_batch_kernel, model, **kw))(*args_s)
    same_status = bool(np.all(np.asarray(sa) == np.asarray(sb)))
    same_steps = bool(np.all(np.asarray(st["accepted"]) == np.asarray(stb["accepted"]))
                      and np.all(np.asarray(st["rejected"]) == np.asarray(stb["rejected"])))
    say(f"agreement: same status {same_status}, same accepted/rejected steps {same_steps}; "
        f"mean steps {np.mean(np.asarray(stb['accepted']) + np.asarray(stb['rejected'])):.1f}")

    # 2. the solve alone
    if args.probe_n:
        n = args.probe_n
        dev = jax.devices()[0]
        th = jax.device_put({k: v[:n] for k, v in theta.items()}, dev)
        regs = stack_event_tables(
            [compile_regimen(wl["regimen"], list(model.parameters), n_events=3)] * n)
        ins = jax.device_put((jnp.asarray(TIMES), regs.time, regs.dose, regs.log_effect), dev)
        f = jax.jit(functools.partial(_batched.solve_batch, model, **kw))
        _, t_first = timed(lambda: f(th, *ins)[1])
        _, t_warm = timed(lambda: f(th, *ins)[1])
        base = t_warm
        say(f"probe N={n}: batched solve {t_warm:.3f} s warm ({n / t_warm:,.0f} patients/s), "
            f"compile {t_first - t_warm:.1f} s")
        for b in args.blocks:
            g = jax.jit(functools.partial(_kernel.solve_batch_kernel, model, block=b,
                                          num_warps=max(1, b // 32), **kw))
            try:
                _, t_first = timed(lambda g=g: g(th, *ins)[1])
                _, t_warm = timed(lambda g=g: g(th, *ins)[1])
            except Exception as e:  # noqa: BLE001 - a failing block size is a result
                say(f"probe N={n}: kernel block {b} FAILED: {type(e).__name__}: {str(e)[:300]}")
                continue
            say(f"probe N={n}: kernel block {b}: {t_warm:.3f} s warm ({n / t_warm:,.0f} "
                f"patients/s, {base / t_warm:.1f}x batched), compile {t_first - t_warm:.1f} s")

    # where simulate's time goes besides the solve: the copy of the population to the device
    # (simulate does it once per call) and the solve of one chunk of the largest size
    if args.sizes:
        n = max(args.sizes)
        pop = {k: np.ascontiguousarray(v[:n]) for k, v in theta.items()}
        _, t_put = timed(lambda: jax.device_put(pop, jax.devices()[0]))
        say(f"parts: population of {n:,} to the device: {t_put:.3f} s "
            f"({sum(v.nbytes for v in pop.values()) / 1e9:.2f} GB)")

    # 3. simulate, outputs on the device
    for n in args.sizes:
        th = {k: v[:n] for k, v in theta.items()}
        for method, chunks in (("batched", [BATCHED_CHUNK]), ("kernel", args.chunks)):
            for c in chunks:
                def call(m=method, c=c):
                    r = cartkin.simulate(model, th, TIMES, wl["regimen"], rtol=RTOL, atol=ATOL,
                                         method=m, progress=False, on_device=True, chunk_size=c)
                    return r.outputs, r.status
                (_, status), t_first = timed(call)
                (_, status), t_warm = timed(call)
                ok = float(np.mean(np.asarray(status) == 0))
                say(f"simulate N={n:,} {method} chunk {c}: {n / t_warm:,.0f} patients/s warm "
                    f"({t_warm:.2f} s; first call {t_first:.2f} s); ok {ok:.4f}")

    # 4. the host's time in one warm simulate call
    if args.profile and args.sizes:
        import cProfile
        import pstats

        n = max(args.sizes)
        c = BATCHED_CHUNK if args.profile == "batched" else max(args.chunks)
        th = {k: v[:n] for k, v in theta.items()}
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        r = cartkin.simulate(model, th, TIMES, wl["regimen"], rtol=RTOL, atol=ATOL,
                             method=args.profile, progress=False, on_device=True, chunk_size=c)
        jax.block_until_ready((r.outputs, r.status))
        prof.disable()
        say(f"profile: simulate N={n:,} {args.profile} chunk {c}: {time.perf_counter() - t0:.2f} s")
        for key in ("tottime", "cumulative"):
            pstats.Stats(prof, stream=sys.stdout).sort_stats(key).print_stats(20)


if __name__ == "__main__":
    main()
