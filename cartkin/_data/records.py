"""NONMEM defaults for absent columns, and interpolation of time-varying covariates.

The dataset keeps the columns as they are in the file; :func:`complete_records` adds the absent
NONMEM items with NONMEM's defaults, which is what the checks and the per-subject arrays use:

* ``EVID`` absent: 1 on records with ``AMT > 0``, else 0 (NM-TRAN's rule);
* ``MDV`` absent: 1 on records with ``EVID != 0``, else 0;
* ``CMT`` absent: 1; ``RATE`` absent: 0 (bolus); ``CENS`` absent: 0; ``OCC`` absent: 0;
* ``DVID`` absent: 1 (a single endpoint); ``AMT`` absent: 0; ``LIMIT``/``LLOQ`` absent: missing.

A missing cell (``.``) in one of these columns takes the same default as an absent column (NONMEM
reads ``.`` as 0, which agrees except for MDV on non-observation records, where 0 would be an
error). A missing DV stays missing: an observation without DV is an error, not a zero.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

DOSE_EVIDS = (1, 4)
RESET_EVIDS = (3, 4)


def complete_records(frame: pd.DataFrame) -> pd.DataFrame:
    """All NONMEM items present, absent columns and missing cells filled with the defaults."""
    df = frame.copy()
    n = len(df)

    def col(name, default):
        v = df[name].to_numpy(float) if name in df else np.full(n, np.nan)
        return np.where(np.isnan(v), default, v)

    df["AMT"] = col("AMT", 0.0)
    df["EVID"] = col("EVID", np.where(df["AMT"] > 0, 1.0, 0.0))
    df["MDV"] = col("MDV", np.where(df["EVID"] != 0, 1.0, 0.0))
    for name, default in (("CMT", 1.0), ("RATE", 0.0), ("CENS", 0.0), ("OCC", 0.0)):
        df[name] = col(name, default)
    df["DVID"] = col("DVID", 1.0) if "DVID" not in frame else frame["DVID"].to_numpy(float)
    for name in ("LIMIT", "LLOQ"):
        if name not in df:
            df[name] = np.full(n, np.nan)
    return df


def is_observation(rec: pd.DataFrame) -> pd.Series:
    """Records used as observations: EVID 0 and MDV 0."""
    return (rec["EVID"] == 0) & (rec["MDV"] == 0)


def interpolate(times, values, at, rule: str) -> np.ndarray:
    """A time-varying covariate recorded ``values`` at ``times``, evaluated ``at`` given times.

    ``locf``: the last recorded value at or before t (the first value before the first record);
    ``nocb``: the next recorded value at or after t (NONMEM's default: a record's covariate
    holds over the interval that ends at it; the last value after the last record);
    ``linear``: linear between records, constant outside. Missing values are skipped.
    """
    times = np.asarray(times, float)
    values = np.asarray(values, float)
    at = np.asarray(at, float)
    ok = np.isfinite(values)
    times, values = times[ok], values[ok]
    if values.size == 0:
        return np.full(at.shape, np.nan)
    if rule == "linear":
        return np.interp(at, times, values)
    if rule == "locf":
        i = np.searchsorted(times, at, side="right") - 1
        return values[np.clip(i, 0, values.size - 1)]
    if rule == "nocb":
        i = np.searchsorted(times, at, side="left")
        return values[np.clip(i, 0, values.size - 1)]
    raise ValueError(f"unknown interpolation rule {rule!r}; use locf, nocb or linear")
