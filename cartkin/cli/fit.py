"""``cartkin fit fits/<name>.toml``: a population fit, written as a run folder."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("fit", help="fit a population model (TOML configuration)",
                       description="Fit a population model described by a TOML file in fits/.")
    p.add_argument("config", help="fit configuration, e.g. fits/stein2019.toml")
    p.add_argument("--out", default=None, help="run folder (default runs/<config name>)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..api_fit import run_fit

    out = Path(args.out or Path("runs") / Path(args.config).stem)
    from .._estimate.aggregate_run import cli_run_aggregate, has_aggregate_section

    if has_aggregate_section(args.config):  # a fit to published summaries
        return cli_run_aggregate(args.config, out, progress=not args.quiet)
    t0 = time.perf_counter()
    result = run_fit(args.config, out, progress=not args.quiet)
    tv = result.parameters
    print(tv[["kind", "parameter", "estimate", "se", "rse_pct", "ci_low", "ci_high"]].to_string(
        index=False, float_format=lambda x: f"{x:.4g}"))
    conv = result.convergence
    fails = result.failures
    if len(fails):
        print(f"{len(fails)} subject(s) had failed solves among their importance-sampling draws "
              "(excluded from the weights; failures.csv):")
        for r in fails.head(10).itertuples():
            print(f"  ID {r.ID}: {r.failed_draws} of {r.draws} draws: {r.cause}")
    print(f"-2LL {result.m2ll:.2f} (MC SE {result.m2ll_se:.2f}), AIC {result.aic:.2f}, "
          f"BIC {result.bic:.2f}; Newton decrement {conv['newton_decrement']:.3f} "
          f"({'converged' if conv['converged'] else 'NOT converged'}); "
          f"{time.perf_counter() - t0:.1f} s; results in {out}/")
    return 0 if conv["converged"] else 3
