"""Population fits of ODE models against the closed form (issue: ODE fits).

Side by side in one run, each fit in its own process: the Stein closed-form fit and the Stein
ODE-form fit of the same simulated cohort (200 subjects, about 12 samples each, BLQ), each cold
(empty persistent compilation cache) and warm (the cache the cold run filled). Reported per fit:
wall time, the part of it spent compiling (JAX's own compile-time events: tracing, lowering, XLA),
SAEM, importance sampling (information passes, Newton polishing, -2LL) and the final -2LL pass
alone, -2LL with its Monte Carlo SE, the smallest per-subject ESS and the Newton decrement; then
the agreement of the two forms (typical values, IIV SDs, -2LL).

    python benchmarks/fit_ode.py                          # 200 subjects, cold and warm
    python benchmarks/fit_ode.py --scale 50,200,1000,5000 --scale-se per-subject --no-cold
                                                          # cost against N (warm cache)
    python benchmarks/fit_ode.py --seeds 4                # -2LL spread over SAEM seeds
    python benchmarks/fit_ode.py --forms ode --scale 1000,10000,100000   # on a GPU
    python benchmarks/fit_ode.py --forms ode --saem-rtol 0,1e-4  # SAEM's solve tolerance
                                                          # (0: the fit's own), side by side

Results: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

FORMS = {"closed": "stein2019", "ode": "stein2019ode"}
IIV = ("foldx", "Tmax", "Cmax", "alpha", "FB", "beta")
INIT = {"foldx": 2000.0, "Tmax": 8.0, "Cmax": 15000.0, "alpha": 0.2, "FB": 0.01, "beta": 0.005}


def child(form: str, n: int, seed: int, cache: str, target_se: float = 0.5,
          saem_rtol: float | None = None) -> dict:
    """One fit in this process; returns its figures."""
    import jax

    jax.config.update("jax_enable_x64", True)
    if cache != "off":
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    compile_s = {"t": 0.0}
    names = ("jaxpr_trace_duration", "jaxpr_to_mlir_module_duration", "backend_compile_duration")

    def listen(name, dur, **_):
        if name.rsplit("/", 1)[-1] in names:
            compile_s["t"] += dur

    jax.monitoring.register_event_duration_secs_listener(listen)
    t0 = time.perf_counter()
    import cartkin.data as cdata
    from cartkin._estimate.config import fitdata_from_dataset
    from cartkin._estimate.fit import fit
    from cartkin._estimate.importance import ISOptions
    from cartkin._estimate.saem import SAEMOptions
    from cartkin._likelihood import Endpoint, StatModel
    from cartkin._models.registry import get_model

    if form == "hardiansyah":  # the shipped fit of a stiff model (its cohort is fixed: n unused)
        from pathlib import Path

        from cartkin.api_fit import load_fit_data
        from cartkin._estimate.config import load_config

        cfg = load_config(Path(__file__).resolve().parents[1] / "fits" / "hardiansyah2019_sim40.toml")
        _, data = load_fit_data(cfg)
        n = data.n_subjects
        t_fit = time.perf_counter()
        saem = cfg.saem if saem_rtol is None else dataclasses.replace(cfg.saem, rtol=saem_rtol)
        res = fit(cfg.stat, data, init=cfg.init, omega_init=cfg.omega_init,
                  sigma_init=cfg.sigma_init, saem=saem, importance=cfg.importance,
                  settings=cfg.settings, progress=False)
    else:
        model = get_model(FORMS[form])
        fixed = {"Fexp": 1.0} if "Fexp" in model.parameters else {}
        stat = StatModel(model, (Endpoint("C", 1, "log_additive"),), iiv=IIV, fixed=fixed)
        ds = cdata.simulate_cohort(n, seed=2019, omega_reading="variance").dataset
        data = fitdata_from_dataset(ds, stat)
        t_fit = time.perf_counter()
        res = fit(stat, data, init=INIT, omega_init=0.5, sigma_init=0.8,
                  saem=SAEMOptions(seed=seed, **({} if saem_rtol is None else {"rtol": saem_rtol})),
                  importance=ISOptions(target_se=target_se),
                  progress=False)
    wall = time.perf_counter() - t_fit
    return {
        "form": form, "n": n, "seed": seed, "saem_rtol": saem_rtol, "wall_s": wall, "compile_s": compile_s["t"],
        "setup_s": t_fit - t0, **{k: v for k, v in res.timings.items() if k != "total_s"},
        "m2ll": res.m2ll, "m2ll_se": res.m2ll_se, "min_ess": float(res.subject_ess.min()),
        "draws": int(res.convergence["m2ll_draws_per_subject"]),
        "decrement": res.convergence["newton_decrement"], "typical": res.typical(),
        "omega_sd": res.omega_sd(), "backend": jax.default_backend(),
        "devices": len(jax.devices()),
        "failed_subjects": int(len(res.failures)),
        "passes": [{k: v for k, v in h.items() if k in ("step", "draws", "seconds", "decrement")}
                   for h in res.convergence["polishing"]],
    }


DEVICES = os.cpu_count() or 1  # host devices of a child (--devices): as the cartkin command


def run_child(form, n, seed, cache, target_se=0.5, saem_rtol=None) -> dict:
    env = dict(os.environ, EQX_ON_ERROR="nan")
    flags = env.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={DEVICES}".strip()
    cmd = [sys.executable, __file__, "--child", form, str(n), str(seed), cache, str(target_se),
           "default" if saem_rtol is None else str(saem_rtol)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def line(tag, r):
    return (f"{tag:6s} {r['form']:6s} N={r['n']:<6d} dev {r['devices']} wall {r['wall_s']:7.1f} s (compile "
            f"{r['compile_s']:5.1f}) | SAEM {r['saem_s']:6.1f} | IS {r['importance_s']:6.1f} "
            f"(final -2LL pass {r['m2ll_step_s']:5.1f}, {r['draws']} draws) | sdtab "
            f"{r['sdtab_s']:4.1f} | -2LL {r['m2ll']:9.2f} (SE {r['m2ll_se']:.2f}, min ESS "
            f"{r['min_ess']:.0f}) | decrement {r['decrement']:.3f} | load {os.getloadavg()[0]:.1f}"
            + "\n       IS passes: " + ", ".join(
                f"{p['step']} {p.get('draws', 'new')} {p['seconds']:.1f} s" for p in r["passes"]))


def main():
    global DEVICES
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", nargs=6, metavar=("FORM", "N", "SEED", "CACHE", "TARGET_SE", "SAEM_RTOL"))
    ap.add_argument("--forms", default="closed,ode,hardiansyah")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--scale", default="", help="comma-separated subject counts (warm cache)")
    ap.add_argument("--scale-se", choices=("fixed", "per-subject"), default="fixed",
                    help="-2LL Monte Carlo SE target of the --scale fits: 0.5 whatever N "
                         "(draws per subject grow with N), or 0.5 x sqrt(N / 200) (the same "
                         "precision per subject as at N = 200)")
    ap.add_argument("--seeds", type=int, default=0, help="SAEM seeds for the -2LL spread")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold/warm comparison")
    ap.add_argument("--saem-rtol", default="",
                    help="comma-separated relative tolerances of SAEM's ODE solves, each fitted "
                         "cold and warm side by side (0: the fit's own; default: SAEMOptions')")
    ap.add_argument("--json", default="", help="write every record to this file")
    ap.add_argument("--devices", type=int, default=DEVICES,
                    help="host devices of each fit (the subjects are split over them; default: "
                         "one per core, as the cartkin command sets)")
    args = ap.parse_args()
    DEVICES = args.devices
    if args.child:
        form, n, seed, cache, se, rt = args.child
        print(json.dumps(child(form, int(n), int(seed), cache, float(se),
                               None if rt == "default" else float(rt))))
        return
    cpu = subprocess.run(["bash", "-c", "lscpu | grep 'Model name' | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip()
    print(f"machine: {platform.machine()} {cpu}, {os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    forms = args.forms.split(",")
    records = []

    def keep(r):
        records.append(r)
        if args.json:  # after every fit, so that a run stopped at a time limit keeps its figures
            with open(args.json, "w") as f:
                json.dump(records, f, indent=1)
    with tempfile.TemporaryDirectory() as cache:
        if not args.no_cold:
            best = {}
            rtols = [float(x) for x in args.saem_rtol.split(",") if x] or [None]
            for form in forms:
                for rt in rtols:
                    for tag in ("cold", "warm"):
                        r = run_child(form, args.n, 1, cache, saem_rtol=rt)
                        r["cache"] = tag
                        keep(r)
                        best[form] = r
                        print(line(tag if rt is None else f"{tag} SAEM rtol {rt:g}", r), flush=True)
            if {"closed", "ode"} <= set(best):
                c, o = best["closed"], best["ode"]
                tv = {k: o["typical"][k] / c["typical"][k] - 1 for k in IIV}
                sd = {k: o["omega_sd"][k] / c["omega_sd"][k] - 1 for k in IIV}
                print("ODE vs closed form, typical values (relative difference): "
                      + ", ".join(f"{k} {100 * v:+.3f}%" for k, v in tv.items()))
                print("ODE vs closed form, IIV SDs (relative difference): "
                      + ", ".join(f"{k} {100 * v:+.3f}%" for k, v in sd.items()))
                print(f"ODE vs closed form, -2LL difference {o['m2ll'] - c['m2ll']:+.3f}", flush=True)
        for n in [int(x) for x in args.scale.split(",") if x]:
            for form in [f for f in forms if f != "hardiansyah"]:
                se = 0.5 if args.scale_se == "fixed" else 0.5 * (n / 200) ** 0.5
                r = run_child(form, n, 1, cache, se)
                r["cache"] = "warm"
                r["target_se"] = se
                keep(r)
                print(line("scale", r), flush=True)
        for form in [f for f in forms if f != "hardiansyah"]:
            vals = []
            for seed in range(1, args.seeds + 1):
                r = run_child(form, args.n, seed, cache)
                r["cache"] = "warm"
                keep(r)
                vals.append(r["m2ll"])
                print(line(f"seed{seed}", r), flush=True)
            if vals:
                print(f"{form}: -2LL over {len(vals)} SAEM seeds: min {min(vals):.2f}, max "
                      f"{max(vals):.2f}, spread {max(vals) - min(vals):.2f}", flush=True)


if __name__ == "__main__":
    main()
