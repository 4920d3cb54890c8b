"""Population simulation speed: a Python loop over scipy ``solve_ivp`` against ``cartkin.simulate``.

One process runs, side by side, the same virtual population through

* a plain Python loop over ``scipy.integrate.solve_ivp(method="LSODA")`` with a numpy vector field
  written out by hand (what a user without cartkin would write), segment by segment between doses;
* ``cartkin.simulate`` in each variant named on the command line (default: every variant).

Workloads (float64, rtol 1e-6, atol 1e-9 for every solver):

* Hardiansyah 2019, UPN1 typical values with log-normal IIV of 30% CV on rE, dE, aE, KBC and
  P_IL6, the published UPN1 regimen (1.1e9 cells split 10/30/60% on days 0, 1, 2), 31 saved times
  every 3 days from day 0 to day 90;
* Stein 2019 ODE (reference; non-stiff, no dose), IIV on Tmax, Cmax, alpha, beta, same times.

Speed is patients per second of a warm call, by wall clock and per CPU-second of this process (the
machine is shared: the CPU rate is less sensitive to other users' load; with two host devices it
counts both cores' work). Compile time is reported apart (first call minus warm call; zero when an
earlier row already compiled the same chunk shape). The scipy loop runs on a subset (``--scipy-n``)
and its rate is applied to every N (a loop's cost is linear in N). Accuracy: largest relative error
at the saved times against scipy LSODA at rtol 1e-10, atol 1e-14 on ``--ref-n`` patients, over
values above 1e-6.

Run ``python benchmarks/simulate.py`` (one host device) and, as the CLI does,
``XLA_FLAGS=--xla_force_host_platform_device_count=2 python benchmarks/simulate.py``.

On a GPU (``--sizes`` up to 10^7; the scipy loop still runs on the host CPU)::

    python benchmarks/simulate.py --workloads hardiansyah --variants default \
        --sizes 10000 100000 1000000 10000000 --scipy-n 100 --repeats 1

After each workload's table the script prints the targets of issue 2 (Hardiansyah at N = 10,000:
>= 100x the scipy loop on a 2-core CPU, stretch 300x; on a GPU >= 10^7 patients per second) with
the measured value and MET / NOT MET.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import time

import jax

jax.config.update("jax_enable_x64", True)

import diffrax as dfx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402

import cartkin  # noqa: E402
from cartkin._models import Hardiansyah2019  # noqa: E402
from cartkin._population import Population  # noqa: E402

RTOL, ATOL = 1e-6, 1e-9
TIMES = np.linspace(0.0, 90.0, 31)
FLOOR = 1e-6
CV = 0.3


# ---------------------------------------------------------------------------------------------
# workloads


def hardiansyah_rhs(t, y, p):
    B, Epb, Et, Mpb, Mt, il6, il10, ifng = y
    f = B / (B + p["h"])
    kin, kout = p["kin"], p["kout"]
    to_mem = p["aE"] * Epb * (1.0 - f)
    to_eff = p["aM"] * Mpb * f
    contact = 1e6 * B * Epb
    inhib = p["aG"] + (1.0 - p["aG"]) * p["bG"] / (il10 + p["bG"])
    return [
        (p["rB"] - p["dB"]) * B - p["KBC"] * Epb * B,
        (p["rE"] * B - p["dE"] - kin) * Epb + kout * Et - to_mem + to_eff,
        kin * Epb - kout * Et,
        (p["rM"] - p["dM"] - kin) * Mpb + kout * Mt + to_mem - to_eff,
        kin * Mpb - kout * Mt,
        p["dIL6"] * (p["IL6_0"] - il6) + p["P_IL6"] * contact,
        p["dIL10"] * (p["IL10_0"] - il10) + p["P_IL10"] * contact,
        p["dIFNg"] * (p["IFNg_0"] - ifng) + p["P_IFNg"] * contact * inhib,
    ]


def hardiansyah_segments(p):
    """(t_a, t_b, state increment at t_a) for the published UPN1 regimen, 1e9-cell units."""
    total, fractions, days = 1.1e9, (0.1, 0.3, 0.6), (0.0, 1.0, 2.0)
    bounds = list(days) + [TIMES[-1]]
    return [
        (bounds[i], bounds[i + 1], {1: total * fractions[i] / 1e9}) for i in range(len(days))
    ]


def hardiansyah_y0(p):
    return np.array([p["B0"], 0, 0, 0, 0, p["IL6_0"], p["IL10_0"], p["IFNg_0"]], float)


def hardiansyah_observe(y, p):
    return {"CART_pb": y[1] + y[3], "B": y[0], "IL6": y[5], "IL10": y[6], "IFNg": y[7]}


def stein_rhs(t, y, p):
    E, M = y
    if p["_decline"]:
        return [-p["alpha"] * E, p["FB"] * (p["alpha"] - p["beta"]) * E - p["beta"] * M]
    return [p["Fexp"] * np.log(p["foldx"]) / p["Tmax"] * E, -p["beta"] * M]


def stein_segments(p):
    tm = min(p["Tmax"], TIMES[-1])
    return [(0.0, tm, {"_decline": 0.0}), (tm, TIMES[-1], {"_decline": 1.0})]


def stein_y0(p):
    return np.array([p["Cmax"] / p["foldx"], 0.0])


def stein_observe(y, p):
    return {"C": y[0] + y[1]}


def workload(name):
    w = np.log1p(CV**2)
    if name == "hardiansyah":
        model = Hardiansyah2019()
        pop = Population(model, omega={k: w for k in ("rE", "dE", "aE", "KBC", "P_IL6")})
        return dict(
            model=model, pop=pop, regimen=model.regimen("UPN1"), rhs=hardiansyah_rhs,
            segments=hardiansyah_segments, y0=hardiansyah_y0, observe=hardiansyah_observe,
        )
    if name == "stein":
        model = cartkin.Stein2019ODE()
        pop = Population(model, omega={"Tmax": 0.1, "Cmax": 0.4, "alpha": 0.3, "beta": 0.3})
        return dict(
            model=model, pop=pop, regimen=None, rhs=stein_rhs, segments=stein_segments,
            y0=stein_y0, observe=stein_observe,
        )
    raise ValueError(f"unknown workload {name!r}; use hardiansyah or stein")


def check_rhs(wl, theta):
    """The hand-written numpy vector field is the model's (checked at random states)."""
    model = wl["model"]
    rng = np.random.default_rng(0)
    p = {k: float(v[0]) for k, v in theta.items()}
    for extra in (s[2] for s in wl["segments"](p)):
        q = {**p, **{k: v for k, v in extra.items() if isinstance(k, str)}}
        y = rng.uniform(0.1, 2.0, len(model.states))
        th = {k: jnp.asarray(v) for k, v in q.items()}
        want = np.asarray(model.vector_field(jnp.asarray(0.5), jnp.asarray(y), th))
        np.testing.assert_allclose(wl["rhs"](0.5, y, q), want, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# the scipy loop


def scipy_one(wl, p, rtol, atol):
    y = wl["y0"](p)
    ys = np.full((TIMES.size, y.size), np.nan)
    for ta, tb, extra in wl["segments"](p):
        q = dict(p)
        for k, v in extra.items():
            if isinstance(k, int):
                y = y.copy()
                y[k] += v
            else:
                q[k] = v
        last = tb >= TIMES[-1]
        inside = (TIMES >= ta) & ((TIMES <= tb) if last else (TIMES < tb))
        if tb > ta:
            sol = solve_ivp(
                wl["rhs"], (ta, tb), y, method="LSODA", rtol=rtol, atol=atol,
                t_eval=np.unique(np.r_[TIMES[inside], tb]), args=(q,),
            )
            if not sol.success:
                return None
            ys[inside] = sol.y[:, : inside.sum()].T
            y = sol.y[:, -1]
        else:
            ys[inside] = y
    return {k: np.asarray(v) for k, v in wl["observe"](ys.T, p).items()}


def scipy_loop(wl, theta, idx, rtol=RTOL, atol=ATOL):
    out = []
    for i in idx:
        out.append(scipy_one(wl, {k: float(v[i]) for k, v in theta.items()}, rtol, atol))
    return out


# ---------------------------------------------------------------------------------------------
# cartkin variants


def _kernel_cap():
    return None if jax.default_backend() == "gpu" else 100


def variants():
    """label -> (keyword arguments of cartkin.simulate, largest N to run it at)."""
    return {
        "default": ({}, None),
        # the same solves with the outputs left on the device (what a JAX computation that
        # consumes them, such as the CRS prediction, pays); on the CPU the two are alike
        "default, outputs on device": ({"on_device": True}, None),
        "batched (Rodas5)": ({"method": "batched"}, None),
        # the same solver as one GPU kernel per block of patients (cartkin/_kernel.py); on a CPU
        # it runs in Pallas's interpreter, so it is run there at small N only
        "kernel, outputs on device": ({"method": "kernel", "on_device": True}, _kernel_cap()),
        "kernel": ({"method": "kernel"}, _kernel_cap()),
        "diffrax Tsit5": ({"solver": dfx.Tsit5()}, None),
        # the default for stiff models before the batched solver; slow, so not at N = 10,000
        "diffrax Kvaerno5": ({"solver": dfx.Kvaerno5()}, 1000),
    }


def max_rel_error(got, ref_list, idx):
    worst = 0.0
    for j, i in enumerate(idx):
        ref = ref_list[j]
        if ref is None:
            continue
        for k, want in ref.items():
            g = np.asarray(got[k][i])
            keep = np.abs(want) > FLOOR
            worst = max(worst, float(np.max(np.abs(g[keep] - want[keep]) / np.abs(want[keep]))))
    return worst


def load():
    return os.getloadavg()[0]


def timed(fn):
    """(result, wall seconds, CPU seconds of this process, load average)."""
    l0 = load()
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0, max(l0, load())


def run_workload(name, ns, names, scipy_n, ref_n, repeats):
    wl = workload(name)
    model = wl["model"]
    n_max = max(ns)
    theta, _, _ = wl["pop"].sample(n_max, seed=0)
    check_rhs(wl, theta)
    rows = []
    ref_idx = np.linspace(0, n_max - 1, ref_n).astype(int)
    ref = scipy_loop(wl, theta, ref_idx, rtol=1e-10, atol=1e-14)

    idx = np.arange(scipy_n)
    scipy_out, dt, cpu, ld = timed(lambda: scipy_loop(wl, theta, idx))
    sp_rate, sp_cpu = scipy_n / dt, scipy_n / cpu
    got = {k: np.stack([o[k] for o in scipy_out]) for k in scipy_out[0]}
    sp_err = max_rel_error(got, [ref[j] for j, i in enumerate(ref_idx) if i < scipy_n],
                           [i for i in ref_idx if i < scipy_n])
    rows.append(dict(variant=f"scipy LSODA loop ({scipy_n} patients)", n="all",
                     rate=sp_rate, cpu_rate=sp_cpu, compile=0.0, err=sp_err, load=ld, ok=1.0))

    for label in names:
        kw, cap = variants()[label]
        for n in ns:
            if cap is not None and n > cap:
                continue
            th = {k: v[:n] for k, v in theta.items()}

            def call(th=th, kw=kw):
                res = cartkin.simulate(model, th, TIMES, wl["regimen"], rtol=RTOL, atol=ATOL,
                                       progress=False, chunk_size=CHUNK, **kw)
                jax.block_until_ready((res.outputs, res.status))
                return res

            try:
                res, t_first, _, ld = timed(call)
            except Exception as e:  # noqa: BLE001 - a failing variant is a result to report
                msg = str(e).splitlines()[0][:60]
                rows.append(dict(variant=f"{label} FAILED: {type(e).__name__}: {msg}", n=n,
                                 rate=float("nan"), cpu_rate=float("nan"), compile=float("nan"),
                                 err=float("nan"), load=load(), ok=0.0))
                break
            warm, warm_cpu = [], []
            for _ in range(repeats if n < n_max else 1):
                res, t, c, ld2 = timed(call)
                warm.append(t)
                warm_cpu.append(c)
                ld = max(ld, ld2)
            t_warm, c_warm = min(warm), min(warm_cpu)
            err = max_rel_error(res.outputs, [ref[j] for j, i in enumerate(ref_idx) if i < n],
                                [i for i in ref_idx if i < n])
            rows.append(dict(variant=label, n=n, rate=n / t_warm, cpu_rate=n / c_warm,
                             compile=max(0.0, t_first - t_warm), err=err, load=ld,
                             ok=float(res.ok.mean())))
    return rows


def machine():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        lines = out.splitlines()
        model_name = next(x.split(":", 1)[1].strip() for x in lines if x.startswith("Model name"))
    except (OSError, StopIteration):
        model_name = platform.processor() or "unknown"
    return model_name


CHUNK = None


def print_targets(name, rows):
    """The issue-2 targets against the default variant's rows."""
    sp = rows[0]
    default = [r for r in rows[1:] if r["variant"] == "default" and r["ok"] > 0]
    gpu = jax.default_backend() != "cpu"
    print()
    if name == "hardiansyah" and not gpu:
        at = [r for r in default if r["n"] == 10000]
        if at:
            r = at[0]
            wall, cpu = r["rate"] / sp["rate"], r["cpu_rate"] / sp["cpu_rate"]
            verdict = "MET" if wall >= 100 else "NOT MET"
            stretch = "MET" if wall >= 300 else "NOT MET"
            print(f"TARGET hardiansyah N=10,000 on CPU: {wall:.0f}x the scipy loop by wall clock "
                  f"({cpu:.0f}x per CPU-second); >= 100x: {verdict}; stretch >= 300x: {stretch} "
                  f"(load {r['load']:.2f})")
    for label in ("default", "default, outputs on device", "kernel", "kernel, outputs on device"):
        rows_v = [r for r in rows[1:] if r["variant"] == label and r["ok"] > 0]
        if not rows_v:
            continue
        big = max(rows_v, key=lambda r: r["n"])
        line = (f"RATE {name} {label} at N={big['n']:,}: {big['rate']:,.0f} patients/s "
                f"({big['rate'] / sp['rate']:.0f}x the scipy loop) on {jax.default_backend()}")
        if gpu:
            line += f"; target >= 1e7 patients/s: {'MET' if big['rate'] >= 1e7 else 'NOT MET'}"
        print(line, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", "--sizes", dest="n", type=int, nargs="+", default=[100, 1000, 10000],
                    help="population sizes (GPU: up to 10000000)")
    ap.add_argument("--chunk-size", type=int, default=None,
                    help="cartkin.simulate chunk_size (default: its own, 256 CPU / 262144 GPU)")
    ap.add_argument("--workloads", nargs="+", default=["hardiansyah", "stein"])
    ap.add_argument("--variants", nargs="+", default=list(variants()), choices=list(variants()))
    ap.add_argument("--scipy-n", type=int, default=300)
    ap.add_argument("--ref-n", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    global CHUNK
    CHUNK = args.chunk_size
    devs = jax.devices()
    print(f"# {datetime.date.today()}  {machine()}, {os.cpu_count()} cores, "
          f"{len(devs)} device(s) {[str(d) for d in devs]} (backend {jax.default_backend()}); "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    dfx_version = getattr(dfx, "__version__", "?")
    print(f"# jax {jax.__version__}, diffrax {dfx_version}, "
          f"scipy {scipy.__version__}, numpy {np.__version__}, cartkin {cartkin.__version__}; "
          f"rtol {RTOL:g} atol {ATOL:g}; load at start {load():.2f}")
    for name in args.workloads:
        rows = run_workload(name, args.n, args.variants, args.scipy_n, args.ref_n, args.repeats)
        sp = rows[0]
        print(f"\n## {name}\n")
        print("| variant | N | patients/s (wall) | x scipy (wall) | patients per CPU-s | "
              "x scipy (CPU) | compile s | max rel err | ok | load |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['variant']} | {r['n']} | {r['rate']:,.0f} | "
                  f"{r['rate'] / sp['rate']:.1f} | "
                  f"{r['cpu_rate']:,.0f} | {r['cpu_rate'] / sp['cpu_rate']:.1f} | "
                  f"{r['compile']:.1f} | {r['err']:.1e} | {r['ok']:.3f} | {r['load']:.2f} |",
                  flush=True)
        print_targets(name, rows)


if __name__ == "__main__":
    main()
