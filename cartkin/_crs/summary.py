"""Summaries of a dose-risk run: table rows (mean and 90% interval over draws), exposure
quantiles, and the dose window under the limit."""

from __future__ import annotations

import numpy as np
import pandas as pd


def _summarise(values, q=(0.05, 0.95)):
    v = np.asarray(values, float)
    return float(np.nanmean(v)), *[float(x) for x in np.nanquantile(v, q)]


def group_rows(spec, labels, profile, burden, acc, resp, cnt, peak, n):
    """Rows of one group of solves: per rule (``labels``) and dose, from per-draw sums ``acc[r]``
    (D, S, 4) of P(G >= k), responses ``resp`` (D, S) and good solves ``cnt`` (D, S)."""
    rows = []
    S = cnt.shape[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        p_resp = resp / cnt
        for label, a in zip(labels, acc, strict=True):
            risk = a / cnt[..., None]
            for d, dose in enumerate(spec.doses):
                row = {
                    "scenario": label,
                    "profile": profile,
                    "burden": np.nan if burden is None else burden,
                    "dose": dose,
                    "dose_unit": "cells/kg" if spec.per_kg else "cells",
                }
                for k in (2, 3):
                    est, lo, hi = _summarise(risk[d, :, k - 1])
                    row.update({f"p_crs{k}": est, f"p_crs{k}_lo90": lo, f"p_crs{k}_hi90": hi})
                est, lo, hi = _summarise(p_resp[d])
                row.update({"p_response": est, "p_response_lo90": lo, "p_response_hi90": hi})
                row["p_crs1"] = _summarise(risk[d, :, 0])[0]
                row["p_crs4"] = _summarise(risk[d, :, 3])[0]
                row["median_peak_il6"] = float(np.exp(np.nanmedian(peak[d])))
                row["draws"], row["patients_per_draw"] = S, n
                row["failed_solves"] = int(S * n - cnt[d].sum())
                rows.append(row)
    return rows


def exposure_rows(spec, regimen, profile, peak):
    """Quantiles over all draws and patients of the peak IL-6, per dose."""
    qs = (0.05, 0.25, 0.5, 0.75, 0.95)
    rows = []
    for d, dose in enumerate(spec.doses):
        q = np.exp(np.nanquantile(peak[d], qs))
        rows.append(
            {
                "regimen": regimen,
                "profile": profile,
                "dose": dose,
                **{f"peak_il6_q{int(100 * a):02d}": v for a, v in zip(qs, q, strict=True)},
            }
        )
    return rows


def dose_windows(table: pd.DataFrame, spec) -> pd.DataFrame:
    """Per scenario and profile: the largest dose whose P(CRS >= 3) stays below the limit (by
    the estimate, and by the upper end of its 90% interval, at that dose and every lower dose),
    the smallest dose whose P(response) reaches the target, and the window between them."""
    rows = []
    for (scen, prof), t in table.groupby(["scenario", "profile"], sort=False):
        t = t.sort_values("dose")
        doses = t["dose"].to_numpy()

        def largest_below(col, t=t, doses=doses):
            below = t[col].to_numpy() < spec.limit
            if not below[0]:
                return np.nan
            stop = np.argmin(below) if not below.all() else len(below)
            return doses[stop - 1]

        max_est = largest_below("p_crs3")
        max_safe = largest_below("p_crs3_hi90")
        min_eff = np.nan
        if spec.response_target is not None:
            hit = t["p_response"].to_numpy() >= spec.response_target
            min_eff = doses[np.argmax(hit)] if hit.any() else np.nan
        ok = np.isfinite(max_safe) and (
            spec.response_target is None or (np.isfinite(min_eff) and min_eff <= max_safe)
        )
        rows.append(
            {
                "scenario": scen,
                "profile": prof,
                "limit_p_crs3": spec.limit,
                "max_dose_estimate": max_est,
                "max_dose_upper90": max_safe,
                "response_target": spec.response_target,
                "min_effective_dose": min_eff,
                "window_low": (min_eff if spec.response_target is not None else doses[0])
                if ok
                else np.nan,
                "window_high": max_safe if ok else np.nan,
                "whole_grid_below_limit": bool((t["p_crs3_hi90"] < spec.limit).all()),
            }
        )
    return pd.DataFrame(rows)
