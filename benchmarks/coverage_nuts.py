"""Coverage of NUTS credible intervals on cohorts simulated with known truth.

``python benchmarks/coverage_nuts.py --reps 20 --n 60 [--warmup 500 --draws 500]``

Each replicate r simulates a Stein 2019 cohort with ``cartkin.data.simulate_cohort(n, seed=1000 +
r)`` (published typical values and variances, ln-scale residual SD 0.56, LLOQ 50, visit windows;
the pre-dose visit left out, since the generator marks it BLQ whatever the model says), fits it
by NUTS exactly as ``cartkin bayes`` does (quick ML warm start, automatic centring, priors of
``fits/stein2019_nuts.toml``), and records for each of the 13 population parameters (6 typical
values, 6 IIV SDs, the residual SD) whether the central 90% posterior interval covers the truth.

Under a correctly specified model the 90% intervals cover at about 90% (exactly so on average
over truths drawn from the prior; here the truth is fixed and the priors weak, so approximately).
With R replicates one parameter's coverage has a binomial SE of sqrt(0.09 / R); the pooled
coverage over the 13 parameters is less noisy (the parameters' misses are not independent).

Writes one JSON line per replicate to ``--results`` and prints the coverage table (Markdown).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRUE = {"foldx": 3900.0, "Tmax": 9.3, "Cmax": 24000.0, "alpha": 0.16, "FB": 0.0079, "beta": 0.0032}
OMEGA = {"foldx": 2.4, "Tmax": 0.38, "Cmax": 0.65, "alpha": 0.91, "FB": 0.8, "beta": 0.86}
SIGMA = 0.56


def one_replicate(r, args):
    import dataclasses

    import numpy as np

    import cartkin.data as cdata
    from cartkin._data.cohort import STEIN_SCHEDULE
    from cartkin._diagnostics.arviz_bridge import convergence, to_inference_data
    from cartkin._diagnostics.bayes_run import warm_start
    from cartkin._estimate.bayes_config import parse_bayes
    from cartkin._estimate.config import fitdata_from_dataset, load_config
    from cartkin._estimate.nuts import nuts

    cfg = load_config(args.config)
    bayes = parse_bayes(cfg)
    co = cdata.simulate_cohort(
        args.n, seed=1000 + r, omega_reading="variance", schedule=STEIN_SCHEDULE[1:]
    )
    data = fitdata_from_dataset(co.dataset, cfg.stat)
    t0 = time.perf_counter()
    start = warm_start(cfg, bayes, data, progress=False)
    opts = dataclasses.replace(
        bayes.options, warmup=args.warmup, draws=args.draws, seed=r, ppc_draws=40
    )
    res = nuts(
        cfg.stat,
        data,
        priors=bayes.priors,
        options=opts,
        start=start,
        settings=cfg.settings,
        progress=False,
    )
    wall = time.perf_counter() - t0
    pop = res.population()
    out = {
        "rep": r,
        "n": args.n,
        "warmup": args.warmup,
        "draws": args.draws,
        "seconds": round(wall, 1),
        "centred": list(res.model.centred),
    }
    lo_q, hi_q = (1 - args.level) / 2, 1 - (1 - args.level) / 2
    cover = {}
    for j, k in enumerate(cfg.stat.iiv):
        for name, draws, truth in (
            (f"typical {k}", pop["typical"][..., j], TRUE[k]),
            (f"IIV SD {k}", pop["omega_sd"][..., j], np.sqrt(OMEGA[k])),
        ):
            lo, hi = np.quantile(draws, [lo_q, hi_q])
            cover[name] = bool(lo <= truth <= hi)
    lo, hi = np.quantile(pop["sigma"][..., 0], [lo_q, hi_q])
    cover["residual SD"] = bool(lo <= SIGMA <= hi)
    idata = to_inference_data(res, ppc_draws=40)
    v = convergence(idata)
    out.update(
        cover=cover,
        max_rhat=round(v["max_rhat"], 4),
        divergences=v["divergences"],
        min_ess_bulk=round(v["min_ess_bulk"]),
    )
    return out


def table(rows, level):
    import numpy as np

    names = list(rows[0]["cover"])
    lines = [
        f"| parameter | covered / replicates | coverage of the {round(100 * level)}% interval |",
        "| --- | --- | --- |",
    ]
    for k in names:
        c = [r["cover"][k] for r in rows]
        lines.append(f"| {k} | {sum(c)} / {len(c)} | {100 * np.mean(c):.0f}% |")
    allc = [v for r in rows for v in r["cover"].values()]
    lines.append(
        f"| all 13 pooled | {sum(allc)} / {len(allc)} | {100 * np.mean(allc):.1f}% "
        f"(binomial SE if independent {100 * np.sqrt(level * (1 - level) / len(allc)):.1f}%) |"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "fits" / "stein2019_nuts.toml"))
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--first", type=int, default=0, help="first replicate index (to resume)")
    ap.add_argument("--n", type=int, default=60, help="subjects per cohort")
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--draws", type=int, default=500)
    ap.add_argument("--level", type=float, default=0.9)
    ap.add_argument("--results", default=str(ROOT / "runs" / "coverage_nuts.jsonl"))
    args = ap.parse_args(argv)
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()
    import cartkin  # noqa: F401

    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    for r in range(args.first, args.first + args.reps):
        row = one_replicate(r, args)
        print(json.dumps(row), flush=True)
        with open(args.results, "a") as f:
            f.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in open(args.results)]
    rows = [r for r in rows if r["n"] == args.n and r.get("draws", args.draws) == args.draws]
    print(table(rows, args.level))
    return 0


if __name__ == "__main__":
    sys.exit(main())
