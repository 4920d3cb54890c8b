"""A population fit: SAEM, then importance sampling at the estimate (-2LL, SEs, EBEs).

:func:`fit` returns a :class:`FitResult` holding the parameter table, the per-subject empirical
Bayes estimates, the sdtab, the convergence report and the run record; ``FitResult.save(dir)``
writes them as a run folder.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping

import jax
import numpy as np
import pandas as pd

from .._likelihood import (
    FitData, SolverSettings, StatModel, data_arrays, kind_codes, make_draws_predictor,
)
from .._models.base import ClosedFormModel
from .._population import from_unconstrained, natural_per_unconstrained, scale_name
from .._progress import progress_bar
from .importance import ISOptions, make_importance_sampler
from .residuals import sdtab
from .saem import SAEMOptions, make_saem, saem_settings, sigma_layout


@dataclasses.dataclass(frozen=True)
class FitResult:
    """Everything a fit produced (numbers as numpy/pandas)."""

    stat: StatModel
    data: FitData
    parameters: pd.DataFrame
    covariance: np.ndarray
    correlation: np.ndarray
    m2ll: float
    m2ll_se: float
    aic: float
    bic: float
    n_estimated: int
    convergence: dict
    ebe: pd.DataFrame
    sdtab: pd.DataFrame
    trace: pd.DataFrame
    subject_ess: np.ndarray
    estimates: dict  # beta, omega, log_sigma (natural-scale arrays)
    timings: dict
    failures: pd.DataFrame

    def typical(self) -> dict[str, float]:
        """Typical values of the estimated parameters (natural units)."""
        tv = self.parameters[self.parameters["kind"] == "theta"]
        return dict(zip(tv["parameter"], tv["estimate"]))

    def omega_sd(self) -> dict[str, float]:
        """IIV SDs on the natural (log/logit) scale."""
        names = self.stat.iiv
        return {k: float(np.sqrt(self.estimates["omega"][i, i])) for i, k in enumerate(names)}


def _initial_beta(stat: StatModel, init: Mapping[str, float], X: np.ndarray) -> np.ndarray:
    phi0 = stat.phi_from_theta({**{k: p.default for k, p in stat.model.parameters.items()}, **init})
    beta = np.zeros((len(stat.iiv), X.shape[2]))
    beta[:, 0] = phi0
    return beta


def fit(
    stat: StatModel,
    data: FitData,
    *,
    init: Mapping[str, float] | None = None,
    omega_init: float | Mapping[str, float] = 0.25,
    sigma_init: float | Mapping[str, float] = 0.5,
    saem: SAEMOptions = SAEMOptions(),
    importance: ISOptions = ISOptions(),
    settings: SolverSettings = SolverSettings(),
    polish: int = 3,
    starts: int = 1,
    progress: bool = True,
) -> FitResult:
    """Fit ``stat`` to ``data`` by SAEM; -2LL, SEs and EBEs by importance sampling.

    Args:
        init: initial typical values (natural units) of the parameters with IIV.
        omega_init: initial IIV variance(s) on the natural scale (one value or per parameter).
        sigma_init: initial residual SD(s), one value or per ``"<output>"`` / ``"<output>_prop"``.
        starts: SAEM runs from this many starting points (the first at ``init``, the others at
            typical values drawn log-normally around it, SD 0.5, each with its own chain seed);
            the fit goes on from the one with the lowest -2LL of a first importance-sampling
            pass, and reports them all.
    """
    init = dict(init or {})
    timings = {}
    t_start = time.perf_counter()
    X = stat.design_matrix(data)
    d = len(stat.iiv)
    arrays = data_arrays(data)
    predict_draws = make_draws_predictor(stat, settings)
    codes = kind_codes(stat.endpoints)
    om = np.array([omega_init.get(k, 0.25) if isinstance(omega_init, Mapping) else omega_init for k in stat.iiv])
    add, prop = sigma_layout(stat.endpoints)
    sig0 = []
    for e, a in zip(stat.endpoints, add):
        if a:
            sig0.append(sigma_init.get(e.output, 0.5) if isinstance(sigma_init, Mapping) else sigma_init)
    for e, p in zip(stat.endpoints, prop):
        if p:
            sig0.append(sigma_init.get(e.output + "_prop", 0.2) if isinstance(sigma_init, Mapping) else 0.2)
    predict_saem = predict_draws
    loose = saem_settings(settings, saem)
    if not isinstance(stat.model, ClosedFormModel) and loose != settings:
        predict_saem = make_draws_predictor(stat, loose)
    init_fn, run_block, _ = make_saem(stat, predict_saem, arrays, X, codes=codes, options=saem)
    # the information passes (first pass, polishing, information) solve at SAEM's tolerance:
    # their score and information need no more accurate predictions than SAEM's chains; the
    # -2LL passes solve at the fit's
    sample = make_importance_sampler(stat, predict_draws, arrays, X, codes, importance,
                                     info_rtol=loose.rtol)
    # importance sampling's programs compile on the second core while SAEM runs
    sample.compile_ahead()
    n_iter = saem.k1 + saem.k2
    runs = []
    t_is = 0.0
    for s_idx in range(starts):
        beta0 = _initial_beta(stat, init, X)
        if s_idx > 0:
            beta0[:, 0] += np.random.default_rng(saem.seed + s_idx).normal(0.0, 0.5, d)
        state = init_fn(beta0, np.diag(om), np.log(np.asarray(sig0, float)))
        state["key"] = jax.random.fold_in(state["key"], s_idx)
        state["sub"] = jax.random.fold_in(state["sub"], s_idx)
        bad = ~np.asarray(state["ok"])[: data.n_subjects]
        if bad.any():
            ids = data.ids[bad][:10].tolist()
            where = "the initial values" if s_idx == 0 else f"start {s_idx + 1}'s initial values"
            raise ValueError(
                f"the model cannot be solved, or gives a non-finite log-likelihood, at {where} "
                f"for subject(s) {ids}: check the initial values and the data"
            )
        traces = []
        label = "SAEM iterations" + (f" (start {s_idx + 1}/{starts})" if starts > 1 else "")
        with progress_bar(n_iter, label, progress) as adv:
            k = 0
            while k < n_iter:
                state, tr = run_block(state, np.arange(k, k + saem.block))
                traces.append(jax.tree.map(np.asarray, tr))
                k += saem.block
                adv(saem.block)
        params = jax.tree.map(np.asarray, state["params"])
        pm = np.asarray(state["post_m"])
        pc = np.asarray(state["post_s"]) - pm[:, :, None] * pm[:, None, :]
        # information, score and EBEs at SAEM's estimate (first pass only)
        t0 = time.perf_counter()
        res = sample(params, pm, pc, progress and starts == 1, m2ll=False)
        t_is += time.perf_counter() - t0
        runs.append({"start": s_idx + 1, "init": dict(zip(stat.iiv, beta0[:, 0].tolist())),
                     "m2ll_first_pass": res["m2ll"], "params": params, "res": res,
                     "traces": traces})
    best = min(runs, key=lambda r: r["m2ll_first_pass"] if np.isfinite(r["m2ll_first_pass"])
               else np.inf)
    params, res, traces = best["params"], best["res"], best["traces"]
    timings["saem_s"] = time.perf_counter() - t_start - t_is
    t1 = time.perf_counter() - t_is
    cov, cond, decrement, step_cov = _newton(res)
    history = [{"step": 0, "decrement": decrement, "seconds": t_is}]
    # Newton polishing with the importance-sampled score and information: SAEM's estimate
    # carries Monte Carlo error; a step psi + I^-1 g removes most of what is left. Where the
    # information is not positive definite (no decrement), the step is saddle-free. A step is
    # kept unless the -2LL rose: at all on the same draws reweighted, by more than twice its
    # Monte Carlo SE on fresh ones (_step_better).
    for step in range(1, polish + 1):
        if decrement < 0.05 or not np.all(np.isfinite(step_cov)):
            break
        concave = np.isfinite(decrement)
        # the first pass's draws and solves, weighed at the new parameters, give the step's score
        # and information (no new solves); fresh draws if that leaves some subject with less than
        # half its effective sample size. A step that is not kept is halved (up to 3 times; once
        # where it took fresh draws) before giving up
        t_step = time.perf_counter()
        better, t, fresh_tries = False, 1.0, 0
        for _ in range(4):
            new = _polished_params(res, step_cov, t)
            if new is None:
                break
            # (a long step, from a decrement above 2, gets fresh draws at once)
            reused = res["drawn"] is not None and (decrement < 2.0 or not concave)
            res_new = sample(new, res["ebe"], res["ebe_cov"], progress, m2ll=False,
                             reuse=res if reused else None, modes=res["modes"])
            if reused and res_new["ess"].min() < 0.5 * res["ess"].min():
                res_new = sample(new, res["ebe"], res["ebe_cov"], progress, m2ll=False,
                                 modes=res["modes"])
                reused = False
            cov_new, cond_new, dec_new, step_new = _newton(res_new)
            better = _step_better(res, res_new, reused)
            fresh_tries += not reused
            if better or fresh_tries >= 2:
                break
            t /= 2
        if new is None:
            break
        history.append({"step": step, "decrement": dec_new, "accepted": bool(better),
                        "m2ll_pass1": res_new["m2ll"],
                        "step_length": t, "draws": "reweighted" if reused else "new",
                        "information": "positive definite" if concave else "indefinite (saddle-free step)",
                        "seconds": time.perf_counter() - t_step})
        if not better:
            break
        res, params, cov, cond, decrement, step_cov = res_new, new, cov_new, cond_new, dec_new, step_new
    # the final evaluation: -2LL to the requested Monte Carlo SE, information, EBEs
    t_final = time.perf_counter()
    # after a step computed from reweighted draws, those draws' score says nothing about it:
    # the -2LL pass's own draws then give the information and score (the convergence check)
    accepted = [h for h in history if h.get("accepted")]
    last_reweighted = bool(accepted) and accepted[-1]["draws"] == "reweighted"
    res = sample(params, res["ebe"], res["ebe_cov"], progress, first_pass=res,
                 fresh_information=last_reweighted, modes=res["modes"])
    timings["m2ll_step_s"] = time.perf_counter() - t_final
    cov, cond, decrement, step_cov = _newton(res)
    history.append({"step": "final", "m2ll": res["m2ll"], "m2ll_se": res["m2ll_se"],
                    "decrement": decrement, "seconds": timings["m2ll_step_s"]})
    # reweighted steps stop at the maximum of the first pass's draws, which carries their Monte
    # Carlo error, and a step can be refused on a noisy comparison: when the independent check
    # finds the fit unconverged, one more step from it and a new evaluation (fresh draws
    # throughout), kept as a polishing step is (_step_better); up to ``polish`` such steps while
    # the check still fails
    for _ in range(polish if last_reweighted or decrement < np.inf else 0):
        if not 0.5 <= decrement or not np.all(np.isfinite(step_cov)):
            break
        new = _polished_params(res, step_cov)
        if new is None:
            break
        t_extra = time.perf_counter()
        res_new = sample(new, res["ebe"], res["ebe_cov"], progress, fresh_information=True,
                         modes=res["modes"])
        cov_new, cond_new, dec_new, step_new = _newton(res_new)
        better = _step_better(res, res_new, False)
        history.append({"step": "after check", "m2ll": res_new["m2ll"],
                        "m2ll_se": res_new["m2ll_se"], "decrement": dec_new,
                        "accepted": bool(better), "draws": "new",
                        "seconds": time.perf_counter() - t_extra})
        if not better:
            break
        res, params, cov, cond, decrement, step_cov = (res_new, new, cov_new, cond_new, dec_new,
                                                       step_new)
    # an information that is not positive definite gives no SEs; where a variance is weakly
    # identified that is often Monte Carlo error (Louis's formula subtracts two large, nearly
    # equal terms): the information pass is then repeated once with 4x the draws
    info_draws = importance.louis_draws
    if not np.isfinite(decrement):
        t_info = time.perf_counter()
        res_info = sample(params, res["ebe"], res["ebe_cov"], progress, m2ll=False,
                          modes=res["modes"], louis_factor=4)
        info_draws *= 4
        res = dict(res, info=res_info["info"], score=res_info["score"])
        cov, cond, decrement, _ = _newton(res)
        history.append({"step": "information with 4x draws", "decrement": decrement,
                        "seconds": time.perf_counter() - t_info})
    timings["importance_s"] = time.perf_counter() - t1

    layout = res["layout"]
    var = np.where(np.diag(cov) > 0, np.diag(cov), np.nan)  # NaN where the information is not
    se = np.sqrt(var)  # positive definite (the fit then reports it; see _newton)
    sd = np.sqrt(np.outer(var, var))
    corr = np.where(sd > 0, cov / np.where(sd > 0, sd, 1), np.nan)
    score = res["score"]

    table = parameter_table(stat, params, layout, se, res["ebe"], X, data, res)
    n_est = layout.size
    m2ll = res["m2ll"]
    tr = {k: np.concatenate([t[k] for t in traces]) for k in traces[0]}
    trace = pd.DataFrame({"iteration": np.arange(n_iter)})
    for j, k in enumerate(stat.iiv):
        trace[f"mu_{k}"] = tr["beta0"][:, j]
        trace[f"omega_{k}"] = tr["omega_diag"][:, j]
    for j in range(tr["log_sigma"].shape[1]):
        trace[f"sigma_{j + 1}"] = np.exp(tr["log_sigma"][:, j])
    trace["cond_loglik"] = tr["ll"]
    # the last K2/2 iterations of the SA-averaged parameters: how much they still moved
    tail = trace.iloc[-max(2, saem.k2 // 2):]
    drift = {c: float(tail[c].iloc[-1] - tail[c].iloc[0]) for c in trace.columns if c.startswith("mu_")}
    se_mu = dict(zip([f"mu_{k}" for k in stat.iiv], se[: len(stat.iiv)]))
    convergence = {
        "method": "SAEM (MH E-step, closed-form M-step), then importance sampling",
        "iterations": {"k1 (gamma=1)": saem.k1, "k2 (gamma=1/k)": saem.k2},
        "newton_decrement": decrement,
        "criterion": "Newton decrement g' I^-1 g / 2 of the importance-sampled score at the "
                     "estimate (log-likelihood still to gain); converged if < 0.5",
        "converged": bool(decrement < 0.5),
        "score": score.tolist(),
        "polishing": history,
        "drift_last_half_of_k2_in_SE": {k: drift[k] / se_mu[k] for k in drift if np.isfinite(se_mu[k])},
        "information_condition_number": cond,
        "se_method": "Louis's formula on importance-sampling draws at the estimate "
                     "(observed information; no derivative through the model solver)",
        "m2ll_draws_per_subject": res["draws"],
        "m2ll_allocation": importance.allocation,
        "information_draws_per_subject": info_draws,
        "starts": [{"start": r["start"], "initial_phi": r["init"],
                    "m2ll_first_pass": r["m2ll_first_pass"], "chosen": r is best} for r in runs],
        "min_subject_ess": float(res["ess"].min()),
        "multimodal_subjects": data.ids[res["multimodal"]].tolist(),
        "pareto_k_above_0.7": data.ids[res["pareto_k"] > 0.7].tolist(),
        # subjects whose first proposal gave k-hat above 0.7 and that drew again, wider
        "pareto_k_redrawn": data.ids[res["widened"] > 0].tolist(),
        # subjects still above 0.7 after those draws, whose proposal was refitted to their
        # weighted draws (importance.refit_mixture)
        "pareto_k_refit": data.ids[res["refit"] > 0].tolist(),
    }
    fails = failure_table(data.ids, np.asarray(res["failed_draws"]), np.asarray(res["draws_i"]))
    ebe = ebe_frame(stat, data, res, X, params)
    t2 = time.perf_counter()
    tab = sdtab(stat, None, arrays, data, X, params, res["ebe"], predict_draws=predict_draws)
    timings["sdtab_s"] = time.perf_counter() - t2
    timings["total_s"] = time.perf_counter() - t_start
    eta_hat = res["ebe"] - np.einsum("njp,jp->nj", X, params["beta"])
    shrink = 1 - eta_hat.std(0, ddof=1) / np.sqrt(np.diag(params["omega"]))
    table.loc[table["kind"] == "omega_diag", "shrinkage_pct"] = 100 * shrink
    iw = tab.loc[(tab["CENS"] == 0), "IWRES"].to_numpy()
    table.loc[table["kind"] == "sigma", "shrinkage_pct"] = 100 * (1 - np.std(iw, ddof=1))
    return FitResult(
        stat=stat, data=data, parameters=table, covariance=cov, correlation=corr,
        m2ll=m2ll, m2ll_se=res["m2ll_se"], aic=m2ll + 2 * n_est,
        bic=m2ll + n_est * np.log(data.n_obs), n_estimated=n_est, convergence=convergence,
        ebe=ebe, sdtab=tab, trace=trace, subject_ess=res["ess"],
        estimates={"beta": params["beta"], "omega": params["omega"], "log_sigma": params["log_sigma"]},
        timings=timings, failures=fails,
    )


def failure_table(ids, failed, draws) -> pd.DataFrame:
    """Subjects with failed solves among their importance-sampling draws: ID, how many and the
    most frequent cause. ``failed``: (N, 3) counts per Status code 1-3."""
    from .._solve import Status

    total = failed.sum(1)
    bad = np.flatnonzero(total > 0)
    return pd.DataFrame({
        "ID": ids[bad],
        "failed_draws": total[bad],
        "draws": np.broadcast_to(draws, total.shape)[bad],
        "cause": [Status(int(np.argmax(failed[i])) + 1).reason for i in bad],
    })


def _newton(res):
    """Covariance (I^-1), condition number of I, the Newton decrement at ``res``, and the
    matrix a polishing step uses: I^-1 where I is positive definite, else the inverse of I with
    each eigenvalue replaced by its absolute value (floored at 1e-6 of the largest): a
    saddle-free Newton step, still an ascent direction where the log-likelihood is not concave
    (a weakly identified IIV variance that SAEM left near zero)."""
    info = res["info"]
    try:
        evals, evecs = np.linalg.eigh(info)
        cov = np.linalg.inv(info)
    except np.linalg.LinAlgError:
        nan = np.full_like(info, np.nan)
        return nan, np.inf, np.inf, nan
    cond = float(evals.max() / evals.min()) if evals.min() > 0 else np.inf
    g = res["score"]
    dec = float(g @ cov @ g / 2) if evals.min() > 0 else np.inf
    if evals.min() > 0:
        return cov, cond, dec, cov
    lam = np.maximum(np.abs(evals), 1e-6 * np.abs(evals).max())
    return cov, cond, dec, (evecs / lam) @ evecs.T


def _step_better(res, res_new, reused: bool) -> bool:
    """Whether a polishing step from ``res`` to ``res_new`` is kept: the -2LL fell on the same
    draws weighed at both points (``reused``: the difference is precise), or did not rise by more
    than twice the Monte Carlo SE of the difference on fresh draws.

    Not the Newton decrement: measured on 20 replicates of the recovery study, a step that gained
    likelihood was refused where the information at its end was not positive definite (Louis's
    formula is a difference of two noisy terms) or its decrement, another noisy estimate, larger.
    """
    gain = res["m2ll"] - res_new["m2ll"]
    if reused:
        return bool(gain > 0)
    return bool(gain >= -2 * float(np.hypot(res["m2ll_se"], res_new["m2ll_se"])))


def _polished_params(res, cov, t=1.0):
    """psi + t I^-1 g, shortened so that no IIV variance more than doubles or halves and Omega
    stays positive definite; None if impossible. (A weakly identified variance with a noisy
    score would otherwise jump: one measured step took omega2(beta) from 1.05 to 0.06.)"""
    layout = res["layout"]
    psi = res["psi"]
    step = t * (cov @ res["score"])
    _, o0, _ = (np.asarray(x) for x in layout.unpack(np.asarray(psi, float)))
    _, do, _ = (np.asarray(x) for x in layout.unpack(np.asarray(step, float)))
    ratio = np.diag(do) / np.diag(o0)
    worst = max(np.max(ratio, initial=0.0), np.max(-2 * ratio, initial=0.0))
    if worst > 1.0:
        step = step / worst
    for _ in range(6):
        b, o, ls = (np.asarray(x) for x in layout.unpack(np.asarray(psi + step, float)))
        if np.all(np.linalg.eigvalsh(o) > 1e-10):
            return {"beta": b, "omega": o, "log_sigma": ls}
        step = step / 2
    return None


def parameter_table(stat, params, layout, se, ebe, X, data, res) -> pd.DataFrame:
    """Estimate, SE, RSE%, back-transformed 95% CI, IIV CV%, per population parameter."""
    rows = []
    i = 0
    z = 1.959963984540054
    colmask = layout.colmask
    cov_names = _covariate_column_names(stat)
    for j, (name, dom) in enumerate(zip(stat.iiv, stat.domains)):
        for p in range(colmask.shape[1]):
            if not colmask[j, p]:
                continue
            b, s = float(params["beta"][j, p]), se[i]
            i += 1
            if p == 0:
                est = float(from_unconstrained(dom, b))
                lo, hi = (float(from_unconstrained(dom, b + sgn * z * s)) for sgn in (-1, 1))
                d_est = float(natural_per_unconstrained(dom, est))
                rows.append({"kind": "theta", "parameter": name, "unit": stat.model.parameters[name].unit,
                             "estimate": est, "se": d_est * s, "rse_pct": 100 * d_est * s / abs(est),
                             "ci_low": lo, "ci_high": hi, "scale": scale_name(dom)})
            else:
                rows.append({"kind": "covariate", "parameter": f"{name}~{cov_names[j][p - 1]}", "unit": "",
                             "estimate": b, "se": s, "rse_pct": 100 * s / abs(b) if b else np.nan,
                             "ci_low": b - z * s, "ci_high": b + z * s, "scale": "linear"})
    om = params["omega"]
    lower = layout.omask_lower
    for a in range(om.shape[0]):
        for b in range(a + 1):
            if not lower[a, b]:
                continue
            v, s = float(om[a, b]), se[i]
            i += 1
            if a == b:
                dom = stat.domains[a]
                cv = np.sqrt(np.expm1(v)) * 100 if dom == "positive" else np.nan
                # the CI of a variance on the log scale (delta method), back-transformed: in the
                # recovery study (docs/recovery.md) it covered the poorly identified variances
                # far better than the Wald interval (omega2(foldx) 88% vs 54%, all six 90% vs 83%)
                f = np.exp(z * s / v) if v > 0 else np.nan
                rows.append({"kind": "omega_diag", "parameter": f"omega2({stat.iiv[a]})", "unit": "",
                             "estimate": v, "se": s, "rse_pct": 100 * s / v, "ci_low": v / f,
                             "ci_high": v * f, "scale": "variance (CI on log scale)",
                             "iiv_cv_pct": cv, "iiv_sd": np.sqrt(v)})
            else:
                r = v / np.sqrt(om[a, a] * om[b, b])
                rows.append({"kind": "omega_offdiag", "parameter": f"omega({stat.iiv[a]},{stat.iiv[b]})",
                             "unit": "", "estimate": v, "se": s, "rse_pct": 100 * s / abs(v),
                             "ci_low": v - z * s, "ci_high": v + z * s, "scale": "covariance",
                             "correlation": r})
    add, prop = sigma_layout(stat.endpoints)
    names = [f"sigma({e.output}, {e.error})" for e, a in zip(stat.endpoints, add) if a]
    names += [f"sigma_prop({e.output})" for e, p in zip(stat.endpoints, prop) if p]
    for k, nm in enumerate(names):
        ls, s = float(params["log_sigma"][k]), se[i]
        i += 1
        est = float(np.exp(ls))
        rows.append({"kind": "sigma", "parameter": nm, "unit": "", "estimate": est, "se": est * s,
                     "rse_pct": 100 * s, "ci_low": float(np.exp(ls - z * s)),
                     "ci_high": float(np.exp(ls + z * s)), "scale": "log"})
    return pd.DataFrame(rows)


def _covariate_column_names(stat):
    out = []
    for name in stat.iiv:
        cols = []
        for e in stat.covariates:
            if e.parameter != name:
                continue
            if hasattr(e, "coefs"):
                cols += [f"{e.covariate}=={lev}" for lev in range(1, len(e.coefs) + 1)]
            else:
                cols.append(e.covariate)
        out.append(cols)
    return out


def ebe_frame(stat, data, res, X, params) -> pd.DataFrame:
    """Per subject: conditional-mean individual parameters, their SD, the ETAs and the ESS."""
    mu = np.einsum("njp,jp->nj", X, params["beta"])
    df = pd.DataFrame({"ID": data.ids})
    for j, (k, dom) in enumerate(zip(stat.iiv, stat.domains)):
        df[k] = from_unconstrained(dom, np.asarray(res["ebe"][:, j]))
        df[f"ETA{j + 1}"] = res["ebe"][:, j] - mu[:, j]
        df[f"ETA{j + 1}_sd"] = res["ebe_sd"][:, j]
    df["ess"] = res["ess"]
    # a second conditional mode found by the mode search (the proposal is then a mixture)
    df["multimodal"] = res["multimodal"]
    # PSIS's k-hat of the subject's weights in the -2LL pass (above 0.7: its estimate unreliable)
    df["pareto_k"] = res["pareto_k"]
    df["loglik"] = res["loglik_i"]
    return df
