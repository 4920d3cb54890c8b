"""NUTS on the bundled Stein cohort: 4 chains x (1000 warm-up + 1000 draws), timed.

``python benchmarks/nuts.py [--init-run runs/stein2019] [--warmup 1000 --draws 1000]``

Runs ``fits/stein2019_nuts.toml`` through the same code as ``cartkin bayes`` (run folder written
to ``--out``), warm-started from an ML run folder when given (else a quick ML fit, timed apart).
Before JAX starts it asks XLA for one host device per chain (as the CLI does), so on a CPU the
chains run in parallel (``pmap``); ``--chain-method vectorized`` runs them on one device instead.

Reports wall time and this process's CPU time (the machine may be shared: CPU seconds are less
sensitive to other users' load), the load average before and after, divergences, R-hat, bulk and
tail ESS, and appends one JSON line to ``--results`` (default runs/bench_nuts.jsonl).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "fits" / "stein2019_nuts.toml"))
    ap.add_argument("--init-run", default=None, help="ML run folder for the warm start")
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--chain-method", default="auto", choices=["auto", "parallel", "vectorized"])
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_nuts"))
    ap.add_argument("--results", default=str(ROOT / "runs" / "bench_nuts.jsonl"))
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.chain_method != "vectorized":
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_force_host_platform_device_count={args.chains}"
        ).strip()
    import jax

    import cartkin  # noqa: F401  (float64)
    from cartkin._diagnostics import bayes_run
    from cartkin._estimate import nuts as nuts_mod

    load0 = os.getloadavg()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    if args.chain_method != "auto":
        orig = nuts_mod._chain_method

        def forced(options):
            import dataclasses

            return orig(dataclasses.replace(options, chain_method=args.chain_method))

        nuts_mod._chain_method = forced
    result, idata, verdict = bayes_run.run_bayes(
        args.config,
        args.out,
        warmup=args.warmup,
        draws=args.draws,
        chains=args.chains,
        init_run=args.init_run,
        progress=not args.quiet,
    )
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    load1 = os.getloadavg()
    st = idata.sample_stats
    row = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "n_devices": jax.local_device_count(),
        "chains": args.chains,
        "warmup": args.warmup,
        "draws": args.draws,
        "chain_method": result.chain_method,
        "warm_start": result.start.source,
        "sampling_s": round(result.timings["sampling_s"], 1),
        "total_wall_s": round(wall, 1),
        "process_cpu_s": round(cpu, 1),
        "loadavg_before": [round(x, 2) for x in load0],
        "loadavg_after": [round(x, 2) for x in load1],
        "divergences": verdict["divergences"],
        "max_rhat": round(verdict["max_rhat"], 4),
        "max_rhat_parameter": verdict["max_rhat_parameter"],
        "min_ess_bulk": round(verdict["min_ess_bulk"]),
        "min_ess_bulk_parameter": verdict["min_ess_bulk_parameter"],
        "min_ess_tail": round(verdict["min_ess_tail"]),
        "max_rhat_random_effects": round(verdict["max_rhat_random_effects"], 4),
        "mean_leapfrog_steps": round(float(st["n_steps"].values.mean()), 1),
        "tree_depth_saturated": verdict["tree_depth_saturated"],
        "step_size": [round(float(x), 4) for x in st["step_size"].values[:, -1]],
        "ok": verdict["ok"],
        "messages": verdict["messages"],
    }
    print(json.dumps(row, indent=2))
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as f:
        f.write(json.dumps(row) + "\n")
    return 0 if verdict["ok"] else 3


if __name__ == "__main__":
    sys.exit(main())
