"""``cartkin crs-risk``: probability of CRS (grade >= 2, >= 3) and of response per dose, with
uncertainty, from a CRS scenario (``fits/crs_*.toml``) or a fit's run folder plus a scenario."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "crs-risk",
        help="CRS risk and response per dose, with 90%% intervals",
        description=(
            "Calibrate the CRS link to aggregated rates, simulate virtual patients at every dose "
            "while propagating parameter uncertainty, and write the dose-risk table (CSV), the "
            "dose windows, the calibration fit, plots and an HTML section."
        ),
    )
    p.add_argument(
        "source", help="a CRS scenario (fits/crs_*.toml) or a fit run folder (runs/<name>/)"
    )
    p.add_argument(
        "--scenario",
        default=None,
        help="the CRS scenario to use with a fit run folder (link, cohorts, doses)",
    )
    p.add_argument("--out", required=True, help="output folder (replaced if it exists)")
    p.add_argument("--draws", type=int, default=None, help="uncertainty draws (default: scenario)")
    p.add_argument("--patients", type=int, default=None, help="virtual patients per draw and dose")
    p.add_argument(
        "--calibration-patients",
        type=int,
        default=None,
        help="virtual patients per cohort dose level and draw",
    )
    p.add_argument(
        "--point-patients",
        type=int,
        default=None,
        help="virtual patients per cohort dose level for the reported calibration",
    )
    p.add_argument("--limit", type=float, default=None, help="limit on P(CRS >= 3)")
    p.add_argument("--doses", default=None, help="comma-separated dose grid (scenario's unit)")
    p.add_argument("--burden", default=None, help="comma-separated burden profiles")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--block", type=int, default=None, help="solves per simulation call (memory)")
    p.add_argument("--format", choices=["csv", "parquet"], default="csv")
    p.set_defaults(run=run)


def _floats(text, what):
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{what} must be comma-separated numbers, got {text!r}") from None


def load(args):
    """The scenario (with the run folder's kinetics if ``source`` is one) and overrides."""
    import dataclasses

    from .._crs.scenario import kinetics_from_run, load_scenario

    over = {
        "draws": args.draws,
        "patients": args.patients,
        "limit": args.limit,
        "seed": args.seed,
        "calibration_patients": args.calibration_patients,
        "point_patients": args.point_patients,
    }
    over = {k: v for k, v in over.items() if v is not None}
    if args.doses:
        over["doses"] = _floats(args.doses, "--doses")
    if args.burden is not None:
        over["burden_profiles"] = _floats(args.burden, "--burden")
    src = Path(args.source)
    if src.is_dir():
        if not args.scenario:
            raise ValueError(
                f"{src} is a run folder: name the CRS scenario with --scenario "
                "(e.g. fits/crs_hardiansyah.toml), which gives the link, cohorts and doses"
            )
        cfg = kinetics_from_run(src, load_scenario(args.scenario, **over))
    elif src.suffix == ".toml" or src.exists():
        if args.scenario:
            raise ValueError(
                "--scenario is only for a fit run folder; the TOML source is the scenario"
            )
        cfg = load_scenario(src, **over)
    else:
        raise FileNotFoundError(f"{src} is neither a CRS scenario (.toml) nor a fit run folder")
    if args.block is not None:
        if args.block < 1:
            raise ValueError(f"--block must be positive, got {args.block}")
        cfg = dataclasses.replace(cfg, settings=dataclasses.replace(cfg.settings, block=args.block))
    return cfg


def main_table(result):
    t = result.table
    base = t["scenario"].iloc[0]
    m = t[(t["scenario"] == base) & (t["profile"] == "population")]
    lines = [
        f"{base}, population: mean and 90% interval over {int(m['draws'].iloc[0])} draws "
        f"x {int(m['patients_per_draw'].iloc[0])} patients",
        f"{'dose':>10}  {'P(CRS>=2)':>19}  {'P(CRS>=3)':>19}  {'P(response)':>19}",
    ]
    for _, r in m.iterrows():
        cells = [
            f"{r[c]:.3f} [{r[c + '_lo90']:.3f}, {r[c + '_hi90']:.3f}]"
            for c in ("p_crs2", "p_crs3", "p_response")
        ]
        lines.append(f"{r['dose']:>10.3g}  " + "  ".join(f"{c:>19}" for c in cells))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from .._crs.plots import calibration_figure, dose_risk_figure, exposure_figure, html_section
    from .._crs.risk import run_dose_risk
    from .._output import atomic_directory, write_table
    from .._record import versions

    cfg = load(args)
    t0 = time.perf_counter()
    res = run_dose_risk(cfg.kinetics, cfg.link, cfg.cohorts, cfg.spec, cfg.settings)
    res.info["draws"] = cfg.spec.draws
    wall = time.perf_counter() - t0
    unit = "cells/kg" if cfg.spec.per_kg else "cells"
    with atomic_directory(args.out) as tmp:
        table = write_table(res.table, tmp / "dose_risk", args.format)
        write_table(res.windows, tmp / "dose_windows", args.format)
        write_table(res.fit, tmp / "calibration_fit", args.format)
        write_table(res.exposure, tmp / "exposure", args.format)
        write_table(res.calibration.parameters(), tmp / "link_parameters", args.format)
        names = res.calibration.link.param_names()
        write_table(
            pd.DataFrame(res.link_draws, columns=names).assign(draw=np.arange(len(res.link_draws))),
            tmp / "link_draws",
            args.format,
        )
        label = f"dose (CAR-T {unit})"
        b = cfg.kinetics.burden
        blabel = f"{b} in {cfg.kinetics.model.parameters[b].unit}"
        dose_risk_figure(
            res, cfg.spec, tmp / "dose_risk.png", dose_label=label, burden_label=blabel
        )
        calibration_figure(res.fit, tmp / "calibration.png")
        exposure_figure(res.exposure, tmp / "exposure.png", dose_label=label, burden_label=blabel)
        figs = {
            "dose_risk.png": "risk per dose: mean and 90% interval; limit and dose window",
            "calibration.png": "calibration to aggregated CRS rates",
            "exposure.png": "peak IL-6 by dose and tumour burden",
        }
        (tmp / "crs_risk.html").write_text(html_section(res, cfg, tmp, figs))
        record = {
            "command": "crs-risk",
            "source": str(args.source),
            "scenario": cfg.source,
            "kinetics": cfg.kinetics_source,
            "model": cfg.kinetics.model.name,
            "citation": cfg.kinetics.model.citation,
            "title": cfg.title,
            "cohorts": [
                {
                    "name": c.name,
                    "n": c.n,
                    "events": c.events,
                    "grading": c.grading,
                    "doses": c.doses,
                    "per_kg": c.per_kg,
                    "source": c.source,
                }
                for c in cfg.cohorts
            ],
            "link": res.calibration.link.describe(),
            "link_covariance": res.calibration.covariance.tolist(),
            "spec": {k: v for k, v in cfg.spec.__dict__.items() if k != "tocilizumab"},
            "tocilizumab": [t.__dict__ for t in cfg.spec.tocilizumab],
            "exposure": {
                "window_days": cfg.settings.window,
                "step_days": cfg.settings.step,
                "solver": type(cfg.settings.solver).__name__,
                "rtol": cfg.settings.rtol,
                "atol": cfg.settings.atol,
            },
            "info": res.info,
            "wall_seconds": wall,
            "versions": versions(),
            "config": cfg.raw,
        }
        (tmp / "run.json").write_text(json.dumps(record, indent=2, default=str))
    misfit = int((res.fit["fit"] == "misfit").sum())
    print(main_table(res))
    print(
        f"calibration: {len(res.fit) - misfit} of {len(res.fit)} cohort rates within their "
        f"binomial 95% interval{'' if not misfit else f'; {misfit} misfit (see calibration_fit)'}"
    )
    w = res.windows.iloc[0]
    if np.isfinite(w["window_high"]):
        print(
            f"dose window ({w['scenario']}, population): {w['window_low']:.3g} to "
            f"{w['window_high']:.3g} {unit} (P(CRS >= 3) upper 90% < {cfg.spec.limit:g})"
        )
    else:
        print(
            f"no dose window ({w['scenario']}, population) under P(CRS >= 3) < {cfg.spec.limit:g}"
        )
    print(f"wrote {Path(args.out) / table.name} and plots in {wall:.0f} s")
    return 0
