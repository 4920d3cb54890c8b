"""Writing results: atomic run directories, tidy tables, plots."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, overwrite: bool = True):
    """Yield a temporary folder that replaces ``path`` only if the block completes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ValueError(f"{path} exists; choose another output folder")
        shutil.rmtree(path)
    tmp.rename(path)


def write_table(df: pd.DataFrame, path: Path, fmt: str) -> Path:
    """Write ``df`` as CSV or Parquet; returns the file written."""
    if fmt == "csv":
        out = path.with_suffix(".csv")
        df.to_csv(out, index=False)
    elif fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as err:
            raise ValueError("Parquet output needs pyarrow: pip install 'cartkin[parquet]'") from err
        out = path.with_suffix(".parquet")
        df.to_parquet(out, index=False)
    else:
        raise ValueError(f"unknown table format {fmt!r}; use 'csv' or 'parquet'")
    return out


def summary_bands(values: np.ndarray, q=(0.05, 0.5, 0.95)) -> np.ndarray:
    """Quantiles over patients (axis 0) of values (N, T), ignoring non-finite entries."""
    v = np.where(np.isfinite(values), values, np.nan)
    return np.nanquantile(v, q, axis=0)


def plot_band(ax, times, values, *, label=None, color=None, log=True):
    """Median and 5-95% band of values (N, T) over time."""
    lo, med, hi = summary_bands(values)
    line = ax.plot(times, med, color=color, label=label)[0]
    ax.fill_between(times, lo, hi, color=line.get_color(), alpha=0.25, linewidth=0)
    if log:
        ax.set_yscale("log")
    return line
