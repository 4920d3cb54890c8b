"""``cartkin pipeline``: the main job on the bundled data (README's first command)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "pipeline",
        help="run the main job on the bundled data",
        description="Simulate a published model's virtual population (more steps as cartkin grows).",
    )
    p.add_argument("--out", default="runs/main", help="output folder (default runs/main)")
    p.add_argument("--n", type=int, default=2000, help="virtual patients per simulation")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from . import main

    out = Path(args.out)
    steps = [
        ["simulate", "--model", "stein2019ode", "--n", str(args.n), "--days", "365",
         "--points", "121", "--out", str(out / "simulate_stein2019")],
    ]
    for step in steps:
        print("cartkin " + " ".join(step))
        rc = main(step)
        if rc:
            return rc
    print(f"done: results in {out}/")
    return 0
