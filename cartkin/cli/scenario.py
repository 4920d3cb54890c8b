"""``cartkin scenario``: run a virtual trial of the construct models (``scenarios/*.toml``)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "scenario",
        help="run a virtual trial (scenarios/*.toml)",
        description=(
            "Run a virtual trial of the construct models (antigen escape, armored CAR, MDSC "
            "combination, B-cell aplasia, solid-tumour CAR) and write its table (CSV), plot (PNG) "
            "and run.json."
        ),
    )
    p.add_argument("file", help="a scenario file, e.g. scenarios/escape_dual_target.toml")
    p.add_argument("--out", required=True, help="output folder (replaced if it exists)")
    p.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    p.add_argument("--patients", type=int, default=None, help="override virtual patients per arm")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .._output import atomic_directory
    from .._record import file_hash, versions
    from .._scenarios import KINDS, run_scenario
    from .._scenarios.config import load_scenario

    if args.patients is not None and args.patients < 10:
        raise ValueError(f"--patients must be at least 10, got {args.patients}")
    cfg = load_scenario(args.file, seed=args.seed, patients=args.patients)
    t0 = time.perf_counter()
    res = run_scenario(cfg, progress=cfg.patients >= 5000)
    wall = time.perf_counter() - t0
    model = KINDS[cfg.kind].MODEL
    with atomic_directory(args.out) as tmp:
        res.table.to_csv(tmp / "table.csv", index=False)
        for name, df in res.extra_tables.items():
            df.to_csv(tmp / f"{name}.csv", index=False)
        res.plot(tmp / "plot.png")
        lines = [cfg.title, ""]
        if res.notice:
            lines += [res.notice, ""]
        lines += list(res.summary)
        (tmp / "summary.txt").write_text("\n".join(lines) + "\n")
        record = {
            "command": "scenario",
            "scenario": cfg.source,
            "scenario_sha256": file_hash(cfg.source),
            "kind": cfg.kind,
            "title": cfg.title,
            "notice": res.notice,
            "model": model.name,
            "provenance": model.provenance,
            "assumed_parameters": list(getattr(model, "assumed_parameters", ())),
            "citation": model.citation,
            "seed": cfg.seed,
            "patients": cfg.patients,
            "summary": list(res.summary),
            **dict(res.record),
            "wall_seconds": wall,
            "versions": versions(),
            "config": cfg.raw,
        }
        (tmp / "run.json").write_text(json.dumps(record, indent=2, default=str))
    if res.notice:
        print(res.notice)
    for line in res.summary:
        print(line)
    print(f"wrote {Path(args.out) / 'table.csv'} and plot.png in {wall:.0f} s")
    return 0
