"""Fit from a configuration file: the function behind ``cartkin fit``."""

from __future__ import annotations

import time
from pathlib import Path

from ._estimate.config import fitdata_from_dataset, load_config
from ._estimate.fit import FitResult, fit
from ._estimate.rundir import write_fit
from ._estimate.saem import saem_settings
from ._output import atomic_directory
from ._record import file_hash, versions


def load_fit_data(cfg):
    from . import data as cdata

    if cfg.data_name:
        ds = cdata.load(cfg.data_name)
    else:
        ds = cdata.read_nonmem(cfg.data_path)
    return ds, fitdata_from_dataset(ds, cfg.stat)


def run_fit(config: str | Path, out: str | Path | None = None, *, progress: bool = True) -> FitResult:
    """Parse ``config``, fit, and (if ``out``) write the run folder atomically."""
    cfg = load_config(config)
    ds, data = load_fit_data(cfg)
    t0 = time.perf_counter()
    result = fit(cfg.stat, data, init=cfg.init, omega_init=cfg.omega_init, sigma_init=cfg.sigma_init,
                 saem=cfg.saem, importance=cfg.importance, settings=cfg.settings,
                 starts=cfg.starts, progress=progress)
    wall = time.perf_counter() - t0
    if out is not None:
        record = {
            "config_file": str(config), "config": cfg.raw, "seed": cfg.saem.seed,
            "data": cfg.data_name or cfg.data_path,
            "data_sha256": file_hash(ds.source) if ds.source else None,
            "model": cfg.stat.model.name, "citation": cfg.stat.model.citation,
            "solver": {"solver": type(cfg.settings.solver).__name__ if cfg.settings.solver else "default",
                       "rtol": cfg.settings.rtol, "atol": cfg.settings.atol,
                       "max_steps": cfg.settings.max_steps,
                       "saem_rtol": saem_settings(cfg.settings, cfg.saem).rtol},
            "wall_seconds": wall, "versions": versions(),
        }
        with atomic_directory(out) as tmp:
            write_fit(result, tmp, record)
    return result


def load_run(run_dir: str | Path):
    """A finished fit's run folder: ``(config, estimates dict, run record dict)``.

    The configuration is re-parsed from the copy saved in ``run.json``, so the run folder is
    self-contained apart from the dataset it names.
    """
    import json

    from ._estimate.config import config_from_dict

    run_dir = Path(run_dir)
    for f in ("run.json", "estimates.json"):
        if not (run_dir / f).exists():
            raise FileNotFoundError(f"{run_dir} is not a fit run folder: {f} is missing")
    record = json.loads((run_dir / "run.json").read_text())
    cfg = config_from_dict(record["config"], Path(record["config_file"]))
    estimates = json.loads((run_dir / "estimates.json").read_text())
    return cfg, estimates, record
