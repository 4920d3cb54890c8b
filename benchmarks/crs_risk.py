"""Benchmark: CRS dose-risk prediction, 10 doses x 10^5 virtual patients per dose.

The shipped scenario (fits/crs_hardiansyah.toml: Hardiansyah 2019 kinetics, the link calibrated
to aggregated CRS rates) at 10 doses from 1e6 to 3e9 cells, ``--draws`` uncertainty draws x
``--patients`` patients per draw (default 200 x 500 = 10^5 per dose, 10^6 solves over a 28-day
window), with the tocilizumab rules of the scenario evaluated on the same solves (no burden
profiles, no fractionated regimen). A warm-up run of one block compiles the prediction first, so
the prediction time is warm; the calibration (cohort solves for every draw, one batched optax
fit) is timed separately and includes its compilation.

    python benchmarks/crs_risk.py                       # full size (CPU: about a minute)
    python benchmarks/crs_risk.py --draws 20            # a tenth of it
    python benchmarks/crs_risk.py --patients-per-dose 100000   # GPU (detected: --per 100000)

Prints one JSON record (timings, solves per second, machine load, devices, a few risk rows), then
a TARGET line: the prediction's wall time against issue 6's targets (at most 60 s on a 2-core
CPU, at most 2 s on a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--draws", type=int, default=200)
    p.add_argument("--patients", type=int, default=500)
    p.add_argument(
        "--patients-per-dose",
        type=int,
        default=None,
        help="virtual patients per dose (sets --draws to this / --patients)",
    )
    p.add_argument("--doses", type=int, default=10)
    p.add_argument(
        "--per",
        type=int,
        default=None,
        help="patients per simulation call, each at every dose (default 1000 on CPU, "
        "100000 on GPU); must divide draws x patients",
    )
    p.add_argument("--chunk-size", type=int, default=None, help="cartkin.simulate chunk_size")
    p.add_argument(
        "--solver",
        default=None,
        help="tsit5 or batched (cartkin's Rosenbrock solver); default: the scenario's",
    )
    p.add_argument("--calibration-patients", type=int, default=100)
    p.add_argument("--point-patients", type=int, default=1000)
    p.add_argument("--json", default=None, help="also write the record here")
    args = p.parse_args(argv)
    if args.patients_per_dose is not None:
        if args.patients_per_dose % args.patients:
            raise SystemExit("--patients-per-dose must be a multiple of --patients")
        args.draws = args.patients_per_dose // args.patients

    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = (
            f"{flags} --xla_force_host_platform_device_count={os.cpu_count() or 1}".strip()
        )
    import dataclasses

    import jax
    import numpy as np

    from cartkin._crs import load_scenario, run_dose_risk

    gpu = jax.default_backend() != "cpu"
    per = args.per or (100_000 if gpu else 1000)
    total = args.draws * args.patients
    if total % per:
        raise SystemExit(f"--per {per} must divide draws x patients = {total}")
    doses = tuple(float(d) for d in np.geomspace(1e6, 3e9, args.doses))
    root = Path(__file__).parents[1]
    over = dict(
        doses=doses,
        burden_profiles=(),
        fractionated=None,
        calibration_patients=args.calibration_patients,
        point_patients=args.point_patients,
    )
    cfg = load_scenario(root / "fits" / "crs_hardiansyah.toml", **over)
    settings = dataclasses.replace(cfg.settings, block=per * len(doses), chunk_size=args.chunk_size)
    if args.solver == "batched":
        settings = dataclasses.replace(settings, solver=None, method="batched")
    elif args.solver == "tsit5":
        import diffrax as dfx

        settings = dataclasses.replace(settings, solver=dfx.Tsit5(), method="auto")
    elif args.solver is not None:
        raise SystemExit(f"--solver must be tsit5 or batched, got {args.solver!r}")
    quiet = dict(log=lambda *a: None)
    load0 = os.getloadavg()

    # warm-up: one full block (same shapes as the timed run), small calibration
    t0 = time.perf_counter()
    w_spec = dataclasses.replace(
        cfg.spec,
        draws=max(1, per // args.patients),
        patients=args.patients,
        calibration_patients=2,
        point_patients=2,
    )
    run_dose_risk(cfg.kinetics, cfg.link, cfg.cohorts, w_spec, settings, **quiet)
    warm = time.perf_counter() - t0

    spec = dataclasses.replace(cfg.spec, draws=args.draws, patients=args.patients)
    t0 = time.perf_counter()
    res = run_dose_risk(cfg.kinetics, cfg.link, cfg.cohorts, spec, settings, **quiet)
    wall = time.perf_counter() - t0
    tim = res.info["timings_s"]
    solves = res.info["prediction_solves"]
    base = res.table[res.table["scenario"] == res.table["scenario"].iloc[0]]
    record = {
        "benchmark": "crs_risk",
        "doses": len(doses),
        "draws": args.draws,
        "patients_per_draw": args.patients,
        "patients_per_dose": total,
        "prediction_solves": solves,
        "prediction_s": round(tim["prediction"], 2),
        "prediction_us_per_solve": round(1e6 * tim["prediction"] / solves, 1),
        "cohort_simulation_s": round(tim["cohort_simulation"], 2),
        "calibration_s": round(tim["calibration"], 2),
        "total_s": round(wall, 2),
        "warmup_s": round(warm, 2),
        "failed_solves": int(res.table["failed_solves"].sum()),
        "per_call_patients": per,
        "solves_per_call": per * len(doses),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "loadavg_start": load0,
        "loadavg_end": os.getloadavg(),
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "risk": base[["dose", "p_crs2", "p_crs3", "p_crs3_lo90", "p_crs3_hi90", "p_response"]]
        .round(4)
        .to_dict("records"),
    }
    text = json.dumps(record, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    limit = 2.0 if gpu else 60.0
    where = f"GPU ({jax.devices()[0].device_kind})" if gpu else f"CPU ({os.cpu_count()} cores)"
    print(
        f"TARGET crs_risk {len(doses)} doses x {total:,} patients per dose on {where}: prediction "
        f"{tim['prediction']:.1f} s (target <= {limit:g} s: "
        f"{'MET' if tim['prediction'] <= limit else 'NOT MET'}); with cohort solves and "
        f"calibration {wall:.1f} s; load {record['loadavg_start'][0]:.2f} -> "
        f"{record['loadavg_end'][0]:.2f}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
