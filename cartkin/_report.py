"""One self-contained HTML report of a fit run folder (ML or Bayesian).

``make_report(run_dir)`` reads the run folder and the dataset it names, draws the diagnostics
(GOF panel, individual fits, pcVPC with %BLQ, NPDE; for a Bayesian run also trace, rank, pair,
energy and posterior predictive plots) as PNGs beside the report, and writes ``report.html`` with
every image embedded (base64), the parameter table, the convergence verdict, the diagnostics'
tables and the run record. Nothing in the HTML points outside the file.
"""

from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1180px;
  margin:24px auto;padding:0 16px;color:#222;line-height:1.45}
h1{font-size:1.5em;margin-bottom:0.2em}
h2{border-bottom:1px solid #ccc;padding-bottom:3px;margin-top:1.6em}
table{border-collapse:collapse;font-size:0.86em;margin:8px 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right} th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
.ok{background:#e8f5e9;border-left:6px solid #2e7d32;padding:8px 12px}
.bad{background:#ffebee;border-left:6px solid #c62828;padding:8px 12px;font-weight:600}
.note{color:#555;font-size:0.9em} img{max-width:100%;border:1px solid #eee;margin:6px 0}
pre{background:#f7f7f7;padding:8px;font-size:0.8em;overflow-x:auto;max-height:420px}
"""


def _fmt(x):
    if isinstance(x, float | np.floating):
        if not np.isfinite(x):
            return "" if np.isnan(x) else str(x)
        return f"{x:.4g}"
    return html.escape(str(x))


def _table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in r) + "</tr>"
        for r in df.itertuples(index=False)
    )
    return f"<table><tr>{head}</tr>{rows}</table>"


def _img(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        f'<figcaption class="note">{html.escape(caption)} ({path.name})</figcaption></figure>'
    )


def _posterior_params(idata, stat, X, R, seed):
    """R posterior draws as (beta, omega, log_sigma) stacks for simulation."""
    from ._population import to_unconstrained

    post = idata.posterior
    typ = post["typical"].values.reshape(-1, len(stat.iiv))
    rng = np.random.default_rng(seed)
    pick = rng.choice(typ.shape[0], size=R, replace=typ.shape[0] < R)
    colmask = np.any(X != 0, axis=0)
    covmask = colmask.copy()
    covmask[:, 0] = False
    beta = np.zeros((R,) + colmask.shape)
    for j, dom in enumerate(stat.domains):
        beta[:, j, 0] = np.asarray(to_unconstrained(dom, typ[pick, j]))
    if "beta_cov" in post:
        bc = post["beta_cov"].values.reshape(typ.shape[0], -1)[pick]
        for r in range(R):
            beta[r][covmask] = bc[r]
    sd = post["omega_sd"].values.reshape(typ.shape[0], -1)[pick]
    corr = (
        post["omega_corr"].values.reshape(typ.shape[0], len(stat.iiv), len(stat.iiv))[pick]
        if "omega_corr" in post
        else np.tile(np.eye(len(stat.iiv)), (R, 1, 1))
    )
    omega = corr * sd[:, :, None] * sd[:, None, :]
    sig = post["sigma"].values.reshape(typ.shape[0], -1)[pick]
    return {"beta": beta, "omega": omega, "log_sigma": np.log(sig)}


def _crs_section(folder: Path) -> str:
    """The ``<section>`` of a ``cartkin crs-risk`` folder's self-contained crs_risk.html."""
    page = folder / "crs_risk.html"
    if not page.exists():
        raise FileNotFoundError(f"{folder} is not a crs-risk output folder: crs_risk.html is missing")
    text = page.read_text()
    i, j = text.find("<section"), text.rfind("</section>")
    if i < 0 or j < 0:
        raise ValueError(f"{page}: no <section> to include (written by another cartkin version?)")
    return text[i : j + len("</section>")]


def make_report(
    run_dir,
    *,
    out=None,
    n_rep: int = 500,
    n_npde: int = 1000,
    seed: int = 0,
    compare: list | None = None,
    n_individual: int = 20,
    crs=None,
    config=None,
    data=None,
    dataset=None,
) -> Path:
    """Write ``report.html`` (and the PNGs and tables beside it); returns its path.

    ``config`` (a :class:`~cartkin._estimate.config.FitConfig`), ``data`` (its FitData) and
    ``dataset`` replace what the run record names: for fits of models outside the registry, or
    data not on disk. Without them the configuration saved in ``run.json`` is parsed again and its
    dataset loaded. ``crs``: a ``cartkin crs-risk`` output folder whose section
    (``crs_risk.html``) joins the report.
    """
    import warnings

    from ._diagnostics.gof import plot_gof
    from ._diagnostics.individual import plot_individual
    from ._diagnostics.npde import npde, npde_tests, plot_npde
    from ._diagnostics.simulate import Simulator, design_matrix, lloq_per_record
    from ._diagnostics.vpc import nominal_times, plot_vpc, vpc
    from ._population import to_unconstrained
    from ._record import file_hash
    from .api_fit import load_fit_data, load_run

    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    if config is None:
        cfg, est, record = load_run(run_dir)
        ds, data = load_fit_data(cfg)
    else:
        for f in ("run.json", "estimates.json"):
            if not (run_dir / f).exists():
                raise FileNotFoundError(f"{run_dir} is not a fit run folder: {f} is missing")
        cfg, ds = config, dataset
        record = json.loads((run_dir / "run.json").read_text())
        est = json.loads((run_dir / "estimates.json").read_text())
        if data is None:
            raise ValueError("make_report: with config= pass data= (the fit's FitData) as well")
    kind = record.get("kind", "ml")
    out = Path(out) if out else run_dir
    out.mkdir(parents=True, exist_ok=True)
    stat = cfg.stat
    notes = []
    if (
        ds is not None
        and record.get("data_sha256")
        and ds.source
        and file_hash(ds.source) != record["data_sha256"]
    ):
        notes.append(
            "the dataset has changed since the fit (its SHA-256 differs from the run record)"
        )
    summary = json.loads((run_dir / "summary.json").read_text())
    params = pd.read_csv(run_dir / "parameters.csv")
    tab = pd.read_csv(run_dir / "sdtab.csv")
    ebe = pd.read_csv(run_dir / "ebe.csv").set_index("ID")
    ep = {i: e for i, e in enumerate(stat.endpoints)}
    dse = ds.endpoints if ds is not None else {}
    units = {
        i: (dse[e.dvid].unit if e.dvid in dse else stat.model.outputs[e.output].unit) or ""
        for i, e in ep.items()
    }
    names = {i: (dse[e.dvid].name if e.dvid in dse else e.output) for i, e in ep.items()}
    lloq_ep = {i: dse[e.dvid].lloq for i, e in ep.items() if e.dvid in dse and dse[e.dvid].lloq}
    lloq = lloq_per_record(data, lloq_ep or None)
    X = design_matrix(stat, data)
    figs = []
    title = getattr(cfg, "title", "") or stat.model.name
    unit0 = units.get(0, "") or ""

    plot_gof(tab, out / "report_gof.png", title=f"Goodness of fit: {title}", unit=unit0)
    figs.append(
        (
            "report_gof.png",
            "Goodness of fit: DV vs PRED/IPRED, CWRES vs TIME/PRED, IWRES vs "
            "IPRED, CWRES QQ plot; BLQ records in red",
        )
    )
    phi = np.stack(
        [
            np.asarray(to_unconstrained(d, ebe.loc[data.ids, k].to_numpy(float)))
            for k, d in zip(stat.iiv, stat.domains, strict=True)
        ],
        1,
    )
    beta = np.asarray(est["beta"], float)
    mu = np.einsum("njp,jp->nj", X, beta)
    who = "posterior mean" if kind == "nuts" else "EBE (conditional mean)"
    plot_individual(
        stat,
        data,
        phi,
        mu,
        out / "report_individual.png",
        n=n_individual,
        lloq=lloq,
        settings=cfg.settings,
        unit=unit0,
        title=f"Individual fits ({n_individual} subjects spread over the IDs): IPRED at the "
        f"{who}, PRED at the typical values",
    )
    figs.append(("report_individual.png", "Individual fits: observations, IPRED, PRED, LLOQ"))

    idata = None
    if kind == "nuts":
        from ._diagnostics import arviz_bridge as ab

        idata = ab._az().from_netcdf(str(run_dir / "posterior.nc"))
        sim_params = _posterior_params(idata, stat, X, n_rep, seed)
        npde_params = _posterior_params(idata, stat, X, n_npde, seed + 1)
        src = "one posterior draw per replicate"
    else:
        sim_params = {k: np.asarray(est[k], float) for k in ("beta", "omega", "log_sigma")}
        npde_params = sim_params
        src = "the ML estimate"
    nominal, how = nominal_times(data, ds)
    sim = Simulator(stat, data, cfg.settings, lloq)
    chunk = min(n_rep, 250)
    reps = sim.many(sim_params, n_rep, chunk, seed=seed)
    v = vpc(data, reps, nominal, binning=how)
    v.table.to_csv(out / "report_vpc.csv", index=False)
    plot_vpc(
        v,
        out / "report_vpc.png",
        names=names,
        units=units,
        title=f"Prediction-corrected VPC ({n_rep} replicates from {src}); bands: 95% CI of the "
        "simulated 5th, 50th, 95th percentiles",
    )
    figs.append(("report_vpc.png", "pcVPC binned on nominal time with the %BLQ panel"))
    reps_n = sim.many(npde_params, n_npde, chunk, seed=seed + 10_000)
    nt = npde(data, reps_n, seed=seed, dvids=[e.dvid for e in stat.endpoints])
    nt.to_csv(out / "report_npde.csv", index=False)
    tests = npde_tests(nt["NPDE"])
    plot_npde(
        nt,
        out / "report_npde.png",
        title=f"NPDE ({n_npde} simulations per subject from {src}; BLQ imputed as Nguyen 2012)",
    )
    figs.append(("report_npde.png", "NPDE: QQ plot, histogram, against TIME and PRED"))

    loo_tab = None
    if kind == "nuts":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for fn, name, cap in (
                (ab.plot_trace, "report_trace.png", "Trace plots (divergences as ticks)"),
                (ab.plot_rank, "report_rank.png", "Rank plots per chain"),
                (
                    ab.plot_pair,
                    "report_pair.png",
                    "Pair plot of typical values and residual SD (divergent draws in red)",
                ),
                (ab.plot_energy, "report_energy.png", "Energy: marginal vs transition"),
                (ab.plot_ppc, "report_ppc.png", "Posterior predictive check"),
            ):
                fn(idata, out / name)
                figs.append((name, cap))
        if compare:
            runs = {run_dir.name: idata} | {Path(c).name: c for c in compare}
            loo_tab = ab.compare(runs).reset_index().rename(columns={"index": "model"})
    elif (run_dir / "saem_trace.png").exists():
        figs.insert(0, ("saem_trace.png", "SAEM trajectories of the population parameters"))

    # --- HTML ----------------------------------------------------------------------------------
    conv = summary.get("convergence", {})
    method = (
        "Bayesian fit (NUTS)"
        if kind == "nuts"
        else "maximum-likelihood fit (SAEM + importance sampling)"
    )
    n_cens = int(((data.cens != 0) & data.mask).sum())
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='note'>Run folder <code>{html.escape(str(run_dir))}</code>; {method} of "
        f"<b>{html.escape(stat.model.name)}</b> to <b>{html.escape(str(record.get('data')))}</b>: "
        f"{data.n_subjects} subjects, {data.n_obs} records ({n_cens} censored). Report written "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}.</p>",
    ]
    for n in notes:
        parts.append(f"<p class='bad'>{html.escape(n)}</p>")
    parts.append("<h2>Convergence</h2>")
    if kind == "nuts":
        cls = "ok" if conv.get("ok") else "bad"
        head = (
            "Converged" if conv.get("ok") else "NOT CONVERGED: do not use these results as they are"
        )
        msgs = "".join(f"<li>{html.escape(m)}</li>" for m in conv.get("messages", []))
        parts.append(f"<div class='{cls}'>{head}<ul>{msgs}</ul></div>")
        facts = pd.DataFrame(
            [
                (
                    "chains x (warm-up + draws)",
                    f"{summary['chains']} x ({summary['warmup']} + {summary['draws']})",
                ),
                ("chains run", f"{summary['chain_method']} on {summary['devices']} device(s)"),
                ("divergent transitions", conv.get("divergences")),
                (
                    "max R-hat (population parameters)",
                    f"{conv.get('max_rhat', np.nan):.4f} ({conv.get('max_rhat_parameter')})",
                ),
                (
                    "min bulk ESS / min tail ESS",
                    f"{conv.get('min_ess_bulk', np.nan):.0f} / "
                    f"{conv.get('min_ess_tail', np.nan):.0f}",
                ),
                (
                    "max R-hat of the random effects eta",
                    f"{conv.get('max_rhat_random_effects', np.nan):.4f}",
                ),
                ("draws at the maximum tree depth", conv.get("tree_depth_saturated")),
                ("E-BFMI per chain", ", ".join(f"{b:.2f}" for b in conv.get("e_bfmi", []))),
                ("sampling time (s)", f"{summary['timings_s'].get('sampling_s', np.nan):.1f}"),
            ],
            columns=["", "value"],
        )
        parts.append(_table(facts))
    else:
        ok = conv.get("converged")
        cls = "ok" if ok else "bad"
        parts.append(
            f"<div class='{cls}'>{'Converged' if ok else 'NOT CONVERGED'}: Newton decrement "
            f"{_fmt(conv.get('newton_decrement'))} "
            f"({html.escape(str(conv.get('criterion', '')))})</div>"
        )
        facts = pd.DataFrame(
            [
                (
                    "-2LL (importance sampling)",
                    f"{summary.get('m2ll', np.nan):.2f} "
                    f"(MC SE {summary.get('m2ll_mc_se', np.nan):.2f})",
                ),
                (
                    "AIC / BIC",
                    f"{summary.get('aic', np.nan):.2f} / {summary.get('bic', np.nan):.2f}",
                ),
                ("smallest subject ESS (importance sampling)", _fmt(conv.get("min_subject_ess"))),
                (
                    "subjects with Pareto k > 0.7 (importance weights too heavy-tailed to trust)",
                    _fmt(len(conv["pareto_k_above_0.7"])) if "pareto_k_above_0.7" in conv
                    else "",
                ),
                (
                    "subjects that drew again from a wider proposal (Pareto k > 0.7 at first)",
                    _fmt(len(conv["pareto_k_redrawn"])) if "pareto_k_redrawn" in conv else "",
                ),
                (
                    "subjects whose proposal was refitted to their weighted draws (Pareto k > 0.7 "
                    "after the wider draws)",
                    _fmt(len(conv["pareto_k_refit"])) if "pareto_k_refit" in conv else "",
                ),
                (
                    "subjects with several conditional modes (mixture proposal)",
                    _fmt(len(conv["multimodal_subjects"])) if "multimodal_subjects" in conv
                    else "",
                ),
                (
                    "condition number of the information",
                    _fmt(conv.get("information_condition_number")),
                ),
                ("method", conv.get("method", "")),
            ],
            columns=["", "value"],
        )
        parts.append(_table(facts))
    parts.append("<h2>Parameters</h2>")
    if kind == "nuts":
        parts.append(
            "<p class='note'>Posterior mean, SD, median and 90% credible interval (q05-q95); "
            "MCSE of the mean, bulk and tail ESS, rank-normalised split R-hat. Typical values "
            "in natural units; omega_sd: IIV SD on the parameter's log/logit scale.</p>"
        )
    else:
        parts.append(
            "<p class='note'>Estimates, SEs (Louis's formula), RSE% and back-transformed "
            "95% confidence intervals; omega2: IIV variance on the log/logit scale.</p>"
        )
    parts.append(_table(params))
    if kind == "nuts" and (run_dir / "priors.csv").exists():
        parts.append("<h3>Priors</h3>" + _table(pd.read_csv(run_dir / "priors.csv")))
    if kind == "nuts" and "loo" in summary:
        rows = []
        for level, lo in summary["loo"].items():
            if not isinstance(lo, dict):
                continue
            what = (
                "one record at a time, given the subject's random effects"
                if level == "record"
                else "one subject at a time, random effects integrated out"
            )
            rows.append(
                {
                    "left out": what,
                    "elpd_loo": lo["elpd_loo"],
                    "SE": lo["se"],
                    "p_loo": lo["p_loo"],
                    "n": lo.get("n", lo.get("n_records")),
                    "Pareto k > 0.7": lo["pareto_k_above_0.7"],
                }
            )
        parts.append(
            "<h3>PSIS-LOO</h3><p class='note'>Pareto k above 0.7 marks left-out units whose "
            "importance weights are unreliable. Record-wise LOO conditions on the subject's own "
            "random effects, which its records inform strongly; the subject-level LOO is the one "
            "to compare structural models with.</p>" + _table(pd.DataFrame(rows))
        )
    if loo_tab is not None:
        parts.append(
            "<h3>Model comparison (az.compare, leave-one-subject-out LOO)</h3>" + _table(loo_tab)
        )
    parts.append("<h2>Diagnostics</h2>")
    parts.append(
        f"<h3>NPDE tests</h3><p class='note'>{tests['n']} records; under the model NPDE ~ N(0, 1)."
        "</p>" + _table(pd.DataFrame([tests]))
    )
    tv = v.table
    inside = {c: float(tv[c].mean()) for c in tv.columns if c.startswith("inside_")}
    parts.append(
        "<h3>pcVPC</h3><p class='note'>Binning: " + html.escape(how) + ". Fraction of bins whose "
        "observed percentile lies inside the simulated 95% band: "
        + ", ".join(f"{k[7:]} {100 * val:.0f}%" for k, val in inside.items())
        + ".</p>"
    )
    for name, cap in figs:
        p = (out / name) if (out / name).exists() else run_dir / name
        parts.append(_img(p, cap))
    if crs is not None:
        parts.append(_crs_section(Path(crs)))
    parts.append("<h2>Run record</h2><pre>" + html.escape(json.dumps(record, indent=2)) + "</pre>")
    parts.append(
        "<h2>Summary file</h2><pre>" + html.escape(json.dumps(summary, indent=2)) + "</pre>"
    )
    parts.append(f"<p class='note'>Report made in {time.perf_counter() - t0:.1f} s by cartkin.</p>")
    doc = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>"
        + html.escape(title)
        + f"</title><style>{CSS}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>"
    )
    path = out / "report.html"
    path.write_text(doc)
    return path
