"""Figures and the HTML section of a dose-risk result."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

_COLORS = {"p_crs2": "#e69f00", "p_crs3": "#d55e00", "p_response": "#0072b2"}
_LABELS = {
    "p_crs2": "P(CRS grade >= 2)",
    "p_crs3": "P(CRS grade >= 3)",
    "p_response": "P(response)",
}


def _band(ax, t, col, color, label, ls="-"):
    ax.fill_between(t["dose"], t[f"{col}_lo90"], t[f"{col}_hi90"], color=color, alpha=0.18, lw=0)
    ax.plot(t["dose"], t[col], color=color, lw=2, ls=ls, label=label, marker="o", ms=3)


_PROFILE_COLORS = ["#56b4e9", "#009e73", "#cc79a7", "#e69f00", "#0072b2", "#d55e00"]
_SCENARIO_STYLES = [
    ("#d55e00", "-", "o"),
    ("#cc79a7", "-", "s"),
    ("#56b4e9", "-", "^"),
    ("#009e73", "--", "D"),
    ("#999999", ":", "v"),
    ("#e69f00", "-.", "x"),
]


def _legend_below(ax, ncol=2):
    ax.legend(
        fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol, frameon=False
    )


def dose_risk_figure(
    result, spec, path: Path, *, dose_label="dose (CAR-T cells)", burden_label="burden"
):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table, windows = result.table, result.windows
    base = table["scenario"].iloc[0]
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.4))

    ax = axes[0]
    t = table[(table["scenario"] == base) & (table["profile"] == "population")]
    for col in ("p_response", "p_crs2", "p_crs3"):
        _band(ax, t, col, _COLORS[col], _LABELS[col])
    ax.axhline(spec.limit, color="k", ls="--", lw=1, label=f"limit on P(CRS >= 3): {spec.limit:g}")
    w = windows[(windows["scenario"] == base) & (windows["profile"] == "population")].iloc[0]
    if np.isfinite(w["window_low"]) and np.isfinite(w["window_high"]):
        lo, hi = w["window_low"], w["window_high"]
        ax.axvspan(
            lo / 1.15,
            hi * 1.15,
            ymin=0.955,
            ymax=1.0,
            color="#009e73",
            alpha=0.8,
            lw=0,
            label="dose window: P(response) >= "
            f"{spec.response_target:g}\nand upper 90% P(CRS >= 3) < limit",
        )
        ax.axvline(lo, color="#009e73", lw=1, alpha=0.6)
        ax.axvline(hi, color="#009e73", lw=1, alpha=0.6)
    else:
        ax.text(
            0.5,
            0.97,
            "no dose window under the limit",
            transform=ax.transAxes,
            ha="center",
            va="top",
            color="#d55e00",
            fontsize=9,
        )
    ax.set_ylim(0, 1)
    ax.set_title(f"Risk and response per dose\n(population, {base})", fontsize=10)
    ax.set_ylabel("probability: mean and 90% interval over draws")
    _legend_below(ax)

    ax = axes[1]
    profs = list(table["profile"].unique())
    ymax = spec.limit
    k = 0
    for prof in profs:
        t = table[(table["scenario"] == base) & (table["profile"] == prof)]
        if prof == "population":
            color, ls, label = "k", "--", "population (burden distribution)"
        else:
            color, ls, label = _PROFILE_COLORS[k % len(_PROFILE_COLORS)], "-", prof
            k += 1
        _band(ax, t, "p_crs3", color, label, ls=ls)
        ymax = max(ymax, t["p_crs3_hi90"].max())
    ax.axhline(spec.limit, color="k", ls=":", lw=1, label=f"limit {spec.limit:g}")
    ax.set_ylim(0, min(1.0, 1.15 * ymax))
    ax.set_title(f"P(CRS >= 3) by baseline tumour burden, {burden_label}\n({base})", fontsize=10)
    _legend_below(ax)

    ax = axes[2]
    ymax = spec.limit
    for i, s in enumerate(table["scenario"].unique()):
        t = table[(table["scenario"] == s) & (table["profile"] == "population")]
        color, ls, mk = _SCENARIO_STYLES[i % len(_SCENARIO_STYLES)]
        ax.fill_between(
            t["dose"], t["p_crs3_lo90"], t["p_crs3_hi90"], color=color, alpha=0.12, lw=0
        )
        ax.plot(t["dose"], t["p_crs3"], color=color, lw=2, ls=ls, marker=mk, ms=4, label=s)
        ymax = max(ymax, t["p_crs3_hi90"].max())
    ax.axhline(spec.limit, color="k", ls=":", lw=1, label=f"limit {spec.limit:g}")
    ax.set_ylim(0, min(1.0, 1.15 * ymax))
    ax.set_title("P(CRS >= 3) by regimen and tocilizumab\n(population)", fontsize=10)
    _legend_below(ax, ncol=1)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel(dose_label)
        ax.grid(alpha=0.3, which="major")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def calibration_figure(fit: pd.DataFrame, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(fit)
    fig, ax = plt.subplots(figsize=(9.5, 0.7 * n + 1.6))
    y = np.arange(n)[::-1]
    ax.errorbar(
        fit["observed_rate"],
        y + 0.12,
        xerr=[
            fit["observed_rate"] - fit["observed_lo95"],
            fit["observed_hi95"] - fit["observed_rate"],
        ],
        fmt="o",
        color="k",
        capsize=3,
        label="observed (exact binomial 95% CI)",
    )
    colors = np.where(fit["fit"] == "ok", "#0072b2", "#d55e00")
    for yi, (_, r), c in zip(y, fit.iterrows(), colors, strict=True):
        ax.errorbar(
            r["predicted_rate"],
            yi - 0.12,
            xerr=[
                [r["predicted_rate"] - r["predicted_lo95"]],
                [r["predicted_hi95"] - r["predicted_rate"]],
            ],
            fmt="s",
            color=c,
            capsize=3,
        )
    ax.plot([], [], "s", color="#0072b2", label="predicted, inside the observed CI")
    ax.plot([], [], "s", color="#d55e00", label="predicted, misfit")
    import textwrap

    labels = [
        textwrap.fill(str(r["cohort"]), 28) + f"\nCRS >= {r['grade_at_least']} "
        f"({r['observed_events']}/{r['n']}, {r['grading']})"
        for _, r in fit.iterrows()
    ]
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=7.5)
    ax.set_xlabel("rate")
    ax.set_xlim(0, min(1.0, 1.1 * max(fit["observed_hi95"].max(), fit["predicted_hi95"].max())))
    ax.set_title("Calibration of the CRS link to aggregated rates", fontsize=10)
    ax.legend(fontsize=7.5, loc="lower right")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def exposure_figure(
    exposure: pd.DataFrame, path: Path, *, dose_label="dose (CAR-T cells)", burden_label="burden"
):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.0, 4.6))
    reg = exposure["regimen"].iloc[0]
    e = exposure[exposure["regimen"] == reg]
    k = 0
    for prof in e["profile"].unique():
        t = e[e["profile"] == prof]
        if prof == "population":
            color, ls, alpha, label = "k", "--", 0.06, "population (burden distribution)"
        else:
            color, ls, alpha, label = _PROFILE_COLORS[k % len(_PROFILE_COLORS)], "-", 0.15, prof
            k += 1
        ax.fill_between(
            t["dose"], t["peak_il6_q05"], t["peak_il6_q95"], color=color, alpha=alpha, lw=0
        )
        ax.plot(
            t["dose"], t["peak_il6_q50"], color=color, lw=2, marker="o", ms=3, ls=ls, label=label
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(dose_label)
    ax.set_ylabel("peak IL-6 over the window (pg/mL)")
    ax.set_title(f"Peak IL-6 per dose: median and 5-95% of patients ({reg})", fontsize=10)
    ax.legend(
        fontsize=8,
        title=f"profile ({burden_label})",
        title_fontsize=8,
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        frameon=False,
    )
    ax.grid(alpha=0.3, which="major")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt_table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:.3g}", border=0, classes="tbl")


def html_section(result, cfg, folder: Path, files: dict[str, str]) -> str:
    """A self-contained HTML page (the CRS section of a report): tables, and the figures
    ``files`` ({PNG name in ``folder``: caption}) embedded, so nothing points outside the file."""
    t = result.table
    base = t["scenario"].iloc[0]
    main = t[(t["scenario"] == base) & (t["profile"] == "population")][
        [
            "dose",
            "p_crs2",
            "p_crs2_lo90",
            "p_crs2_hi90",
            "p_crs3",
            "p_crs3_lo90",
            "p_crs3_hi90",
            "p_response",
            "p_response_lo90",
            "p_response_hi90",
            "median_peak_il6",
        ]
    ]
    notes = []
    for sec in ("population", "link", "calibration"):
        note = cfg.raw.get(sec, {}).get("note")
        if note:
            notes.append(f"<h3>{sec}</h3><pre>{html.escape(note.strip())}</pre>")
    import base64

    def img(name, caption):
        data = base64.b64encode((folder / name).read_bytes()).decode()
        return (
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}" '
            f'style="max-width:100%"><figcaption>{html.escape(caption)} ({html.escape(name)})'
            "</figcaption></figure>"
        )

    imgs = "".join(img(f, c) for f, c in files.items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>CRS risk</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:auto}} .tbl td,.tbl th{{padding:2px 8px;
text-align:right}} pre{{white-space:pre-wrap;background:#f6f6f6;padding:6px}}</style></head><body>
<section id="crs-risk"><h2>CRS risk per dose</h2><p>{html.escape(cfg.title)}</p>
<p>Source: {html.escape(cfg.source)} (kinetics: {html.escape(cfg.kinetics_source)}).
Mean over uncertainty draws and 90% interval ({result.info.get("draws", "")} draws).</p>
<h3>{html.escape(base)}, population</h3>{_fmt_table(main)}
<h3>Dose windows</h3>{_fmt_table(result.windows)}
<h3>Calibration: observed vs predicted</h3>{_fmt_table(result.fit)}
{imgs}<h3>Assumptions</h3>{"".join(notes)}</section></body></html>"""
