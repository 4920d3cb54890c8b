"""``cartkin report <run-dir>``: one self-contained HTML report of a fit run folder."""

from __future__ import annotations

import argparse
import time


def add_parser(sub) -> None:
    p = sub.add_parser(
        "report",
        help="HTML report of a fit run folder (ML or Bayesian)",
        description="Write report.html (plots embedded, PNGs beside it) for a run "
        "folder of `cartkin fit` or `cartkin bayes`.",
    )
    p.add_argument("run_dir", help="run folder, e.g. runs/stein2019")
    p.add_argument(
        "--out", default=None, help="folder for report.html and the PNGs (default: the run folder)"
    )
    p.add_argument("--replicates", type=int, default=500, help="simulated replicates for the VPC")
    p.add_argument(
        "--npde-replicates", type=int, default=1000, help="simulations per subject for NPDE"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--compare",
        nargs="*",
        default=None,
        help="other Bayesian run folders fitted to the same data (az.compare by LOO)",
    )
    p.add_argument(
        "--crs", default=None, help="a `cartkin crs-risk` output folder to include (its table, "
        "plots and assumptions)"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .._report import make_report

    t0 = time.perf_counter()
    path = make_report(
        args.run_dir,
        out=args.out,
        n_rep=args.replicates,
        n_npde=args.npde_replicates,
        seed=args.seed,
        compare=args.compare,
        crs=args.crs,
    )
    print(f"report: {path} ({time.perf_counter() - t0:.1f} s)")
    return 0
