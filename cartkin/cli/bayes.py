"""``cartkin bayes fits/<name>.toml``: a Bayesian population fit (NUTS), written as a run folder.

Exit status: 0 when the chains converged (no divergences, every R-hat of the population
parameters at most ``rhat_max``), 3 when they did not (``--allow-divergences`` or
``allow_divergences = true`` in ``[bayes]`` accepts divergences), 2 on a user error.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bayes",
        help="Bayesian population fit with NUTS (TOML configuration)",
        description="Sample the posterior of a population model described by a TOML "
        "file in fits/ (its [bayes] section: priors and sampler).",
    )
    p.add_argument("config", help="fit configuration, e.g. fits/stein2019_nuts.toml")
    p.add_argument("--out", default=None, help="run folder (default runs/<config name>)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up iterations per chain")
    p.add_argument("--draws", type=int, default=None, help="draws kept per chain")
    p.add_argument(
        "--chains", type=int, default=None, help="number of chains (at least 4 for R-hat)"
    )
    p.add_argument("--seed", type=int, default=None, help="random seed of the sampler")
    p.add_argument(
        "--init-run",
        default=None,
        help="warm start from this ML run folder (of `cartkin fit`) instead of [bayes] warm_start",
    )
    p.add_argument(
        "--allow-divergences",
        action="store_true",
        default=None,
        help="divergent transitions do not fail the run (exit status)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(run=run)


def _host_devices(chains: int) -> str:
    """On the CPU, chains run in parallel over host devices: ask XLA for at least ``chains``
    devices, if JAX has not started its backends yet. Returns a note for the user."""
    import jax._src.xla_bridge as xb

    if xb.backends_are_initialized():
        return ""
    flags = os.environ.get("XLA_FLAGS", "")
    m = re.search(r"--xla_force_host_platform_device_count=(\d+)", flags)
    have = int(m.group(1)) if m else 1
    if have >= chains:
        return ""
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", flags)
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={chains}".strip()
    return f"{chains} host devices for {chains} parallel chains"


def run(args: argparse.Namespace) -> int:
    import tomllib

    chains = args.chains
    if chains is None:
        try:
            chains = int(
                tomllib.loads(Path(args.config).read_text()).get("bayes", {}).get("chains", 4)
            )
        except (OSError, tomllib.TOMLDecodeError, TypeError, ValueError):
            chains = 4  # the configuration's own errors are reported when it is parsed
    _host_devices(chains)
    from .._diagnostics.bayes_run import run_bayes

    out = Path(args.out or Path("runs") / Path(args.config).stem)
    t0 = time.perf_counter()
    result, idata, verdict = run_bayes(
        args.config,
        out,
        warmup=args.warmup,
        draws=args.draws,
        chains=args.chains,
        seed=args.seed,
        init_run=args.init_run,
        allow_divergences=args.allow_divergences,
        progress=not args.quiet,
    )
    import pandas as pd

    tab = pd.read_csv(out / "parameters.csv")
    print(
        tab[["kind", "parameter", "mean", "sd", "q05", "q95", "ess_bulk", "r_hat"]].to_string(
            index=False, float_format=lambda x: f"{x:.4g}"
        )
    )
    print(
        f"{result.options.chains} chains x ({result.options.warmup} warm-up + "
        f"{result.options.draws} draws), {result.chain_method} on {result.n_devices} device(s); "
        f"sampling {result.timings['sampling_s']:.1f} s, total {time.perf_counter() - t0:.1f} s; "
        f"results in {out}/"
    )
    for m in verdict["messages"]:
        print(("" if verdict["ok"] else "WARNING: ") + m)
    if not verdict["ok"]:
        print("NOT CONVERGED (exit status 3)")
    return 0 if verdict["ok"] else 3
