"""``cartkin pipeline``: the main job on the bundled data (README's first command).

Steps: simulate a published model's virtual population; fit the bundled simulated cohort; the
CRS-risk table; the HTML report.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "pipeline",
        help="run the main job on the bundled data",
        description="Simulation, population fit, CRS-risk table and report on the bundled data.",
    )
    p.add_argument("--out", default="runs/main", help="output folder (default runs/main)")
    p.add_argument("--n", type=int, default=2000, help="virtual patients per simulation")
    p.set_defaults(run=run)


def _steps(out: Path, n: int) -> list[list[str]]:
    fits = Path(__file__).resolve().parents[2] / "fits"
    if not fits.is_dir():
        fits = Path("fits")
    steps = [
        ["simulate", "--model", "stein2019ode", "--n", str(n), "--days", "365", "--points", "121",
         "--out", str(out / "simulate_stein2019")],
        ["fit", str(fits / "stein2019.toml"), "--out", str(out / "fit_stein2019")],
    ]
    here = Path(__file__).parent
    crs = fits / "crs_hardiansyah.toml"
    if crs.exists() and (here / "crs_risk.py").exists():
        steps.append(["crs-risk", str(crs), "--out", str(out / "crs_risk")])
    if (here / "report.py").exists():
        report = ["report", str(out / "fit_stein2019")]
        if steps[-1][0] == "crs-risk":
            report += ["--crs", str(out / "crs_risk")]
        steps.append(report)
    return steps


def run(args: argparse.Namespace) -> int:
    import subprocess
    import sys

    out = Path(args.out)
    worst = 0
    for step in _steps(out, args.n):
        print("\n$ cartkin " + " ".join(step), flush=True)
        # each step in its own process: a fresh JAX (one compilation cache per step is cheap)
        rc = subprocess.call([sys.executable, "-m", "cartkin.cli", *step])
        if rc not in (0, 3):  # 3: a fit that ran but did not meet its convergence criterion
            return rc
        worst = max(worst, rc)
    print(f"\ndone: results in {out}/")
    return worst
