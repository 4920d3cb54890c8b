"""``cartkin simulate``: a virtual population of a model, as a table and one plot per output."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def add_parser(sub) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate a virtual population",
        description="Simulate a virtual population and write a tidy table and one PNG per output.",
    )
    p.add_argument("--model", required=True, help="model name, e.g. stein2019ode, hardiansyah2019")
    p.add_argument("--n", type=int, default=1000, help="number of virtual patients (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cv", type=float, default=30.0, help="IIV as CV%% on each --iiv parameter")
    p.add_argument("--iiv", default=None, help="comma-separated parameters with IIV (default: all positive)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="override a typical value")
    p.add_argument("--dose", action="append", type=float, default=[], help="cells (repeat for dose levels)")
    p.add_argument("--per-kg", action="store_true", help="--dose is in cells/kg")
    p.add_argument("--weight", type=float, default=70.0, help="median body weight in kg (CV 20%%)")
    p.add_argument("--fractions", default=None, help="split each dose, e.g. 0.1,0.3,0.6")
    p.add_argument("--fraction-times", default=None, help="days of the fractions, e.g. 0,1,2")
    p.add_argument("--days", type=float, default=90.0, help="simulation horizon in days")
    p.add_argument("--points", type=int, default=91, help="number of saved times")
    p.add_argument("--solver", default=None, help="tsit5 (default) or kvaerno5")
    p.add_argument("--method", choices=["auto", "diffrax", "batched", "kernel"], default="auto",
                   help="auto (default), diffrax, batched (cartkin's Rosenbrock solver) or kernel "
                        "(the same as one GPU kernel: for large populations on a GPU)")
    p.add_argument("--rtol", type=float, default=1e-6)
    p.add_argument("--atol", type=float, default=1e-9)
    p.add_argument("--format", choices=["csv", "parquet"], default="csv")
    p.add_argument("--out", required=True, help="output folder (replaced if it exists)")
    p.set_defaults(run=run)


def _parse_floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated numbers, got {text!r}") from None


def build_regimens(args):
    from .. import Dose, Regimen

    if not args.dose:
        return None
    if any(d <= 0 for d in args.dose):
        raise ValueError(f"--dose must be positive, got {args.dose}")
    if args.fractions:
        fr = _parse_floats(args.fractions, "--fractions")
        ft = _parse_floats(args.fraction_times or "", "--fraction-times")
        base = Regimen.fractionated(1.0, fr, ft, per_kg=args.per_kg)
        regs = [base.scaled(d) for d in args.dose]
    else:
        regs = [Regimen((Dose(0.0, d, args.per_kg),)) for d in args.dose]
    return regs


def run(args: argparse.Namespace) -> int:
    import diffrax as dfx

    from .. import simulate
    from .._models.registry import get_model
    from .._output import atomic_directory, plot_band, summary_bands, write_table
    from .._population import LogNormalCovariate, Population

    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    if args.days <= 0 or args.points < 2:
        raise ValueError("--days must be positive and --points at least 2")
    model = get_model(args.model)
    overrides = {}
    for item in args.param:
        name, _, value = item.partition("=")
        try:
            overrides[name] = float(value)
        except ValueError:
            raise ValueError(f"--param expects NAME=VALUE, got {item!r}") from None
    theta = model.default_theta(**overrides)
    if args.iiv:
        iiv = [s.strip() for s in args.iiv.split(",") if s.strip()]
    else:
        iiv = [k for k, p in model.parameters.items() if p.domain == "positive"]
    var = float(np.log1p((args.cv / 100.0) ** 2))
    pop = Population(
        model, theta, omega={k: var for k in iiv}, covariates={"WT": LogNormalCovariate(args.weight, 0.2)}
    )
    th, covs, _ = pop.sample(args.n, seed=args.seed)
    regs = build_regimens(args)
    times = np.linspace(0.0, args.days, args.points)
    solvers = {"tsit5": dfx.Tsit5, "kvaerno5": dfx.Kvaerno5, "dopri5": dfx.Dopri5}
    if args.solver and args.solver.lower() not in solvers:
        raise ValueError(f"unknown --solver {args.solver!r}; choose from {list(solvers)}")
    solver = solvers[args.solver.lower()]() if args.solver else None
    t0 = time.perf_counter()
    res = simulate(
        model, th, times, regs, weight=covs["WT"], solver=solver, rtol=args.rtol, atol=args.atol,
        progress=args.n >= 5000 or None, method=args.method,
    )
    wall = time.perf_counter() - t0

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with atomic_directory(args.out) as tmp:
        table = write_table(res.to_frame(), tmp / "simulation", args.format)
        rows = []
        for name, val in res.outputs.items():
            levels = val if val.ndim == 3 else val[None]
            dose_vals = res.doses if res.doses is not None else [np.nan]
            fig, ax = plt.subplots(figsize=(6.4, 4.2))
            for j, d in enumerate(dose_vals):
                ok = res.ok if res.status.ndim == 1 else res.ok[j]
                v = levels[j][ok]
                q = summary_bands(v)
                for ti, t in enumerate(times):
                    rows.append({"output": name, "dose": d, "time": t, "p05": q[0, ti], "median": q[1, ti], "p95": q[2, ti]})
                label = None if np.isnan(d) else f"dose {d:.3g}"
                plot_band(ax, times, np.maximum(v, 1e-300), label=label, log=bool(np.all(v > 0)))
            out = model.outputs[name]
            ax.set_xlabel("time (days)")
            ax.set_ylabel(f"{name} ({out.unit})")
            ax.set_title(f"{model.name}: {name}, median and 5-95% (N={args.n})")
            if res.doses is not None:
                ax.legend(fontsize="small")
            fig.tight_layout()
            fig.savefig(tmp / f"{name}.png", dpi=120)
            plt.close(fig)
        import pandas as pd

        summ = pd.DataFrame(rows)
        if res.doses is None:
            summ = summ.drop(columns="dose")
        write_table(summ, tmp / "summary", args.format)
        fails = res.failures()
        record = {
            "command": "simulate",
            "model": model.name,
            "citation": model.citation,
            "n": args.n,
            "seed": args.seed,
            "doses": args.dose,
            "iiv_cv_percent": args.cv,
            "iiv": iiv,
            "typical_values": {k: float(v) for k, v in theta.items()},
            "solver": type(solver).__name__ if solver else "default",
            "rtol": args.rtol,
            "atol": args.atol,
            "wall_seconds": wall,
            "failed_solves": len(fails),
            "failures": fails.astype(str).to_dict("records")[:100],
        }
        from .._record import versions

        record["versions"] = versions()
        (tmp / "run.json").write_text(json.dumps(record, indent=2))
    print(f"simulated {args.n} patients x {len(regs or [None])} dose level(s) in {wall:.1f} s; "
          f"{len(fails)} failed solve(s); wrote {Path(args.out) / table.name} and "
          f"{len(res.outputs)} plot(s)")
    return 0
