"""The ``[bayes]`` section of a fit TOML: sampler settings and priors for :mod:`.nuts`.

Example (``fits/stein2019_nuts.toml``)::

    [bayes]
    chains = 4                  # at least 4 for R-hat
    warmup = 1000
    draws = 1000
    seed = 11
    target_accept = 0.8
    max_tree_depth = 10
    dense_mass = true           # a dense mass-matrix block over the population parameters
                                # (the random effects keep a diagonal one); false: all diagonal
    warm_start = "ml"           # "ml": a quick ML fit first | a run folder of `cartkin fit`
                                # | "config": the initial values of [parameters] / [iiv]
    rhat_max = 1.01             # above it the run is not converged
    rhat_scope = "population"   # whose R-hat decides: "population" parameters, or "all" (the
                                # subjects' random effects too)
    allow_divergences = false   # true: divergent transitions do not fail the run
    ppc_draws = 400             # posterior draws kept for the posterior predictive
    centred = "auto"            # random effects sampled centred: "auto" (those the data pin
                                # down, see nuts.choose_centring), "none", or a list of names

    [bayes.priors]
    # typical values: normal on each parameter's natural scale (log, logit); location = the
    # median below, else the published value, else the [parameters] initial value
    typical_sd = 2.0                          # default prior SD (natural-scale units)
    typical = { Tmax = [9.3, 0.5] }           # per parameter [median, SD]
    published = "stein2019_parameters"        # medians (and SDs from 95% CIs) from data/
    published_sd = 1.0                        # SD where the published set gives no interval
    omega_sd = 1.0                            # half-normal scale of each IIV SD (or a table)
    lkj_eta = 2.0                             # LKJ on the correlations of [iiv] blocks
    sigma = 1.0                               # half-normal scale of residual SDs (or a table
                                              # keyed by output / "<output>_prop")
    covariate_sd = 1.0                        # normal(0, sd) on covariate coefficients

Everything is checked here, once; errors name the file and the key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .._likelihood import StatModel

_BAYES_KEYS = {
    "chains",
    "warmup",
    "draws",
    "seed",
    "target_accept",
    "max_tree_depth",
    "dense_mass",
    "warm_start",
    "rhat_max",
    "allow_divergences",
    "ppc_draws",
    "priors",
    "chain_method",
    "centred",
    "rhat_scope",
}
_PRIOR_KEYS = {
    "typical_sd",
    "typical",
    "published",
    "published_sd",
    "omega_sd",
    "lkj_eta",
    "sigma",
    "covariate_sd",
}


@dataclasses.dataclass(frozen=True)
class Priors:
    """Priors of the population parameters, in the fit's parameter order.

    ``typical_loc``/``typical_scale``: normal prior of each IIV parameter's typical value on its
    natural scale (log, logit, identity); ``omega_scale``: half-normal scale of each IIV SD;
    ``sigma_scale``: half-normal scale of each residual parameter (additive ones first, then
    proportional ones, as :func:`cartkin._estimate.saem.sigma_layout`); ``lkj_eta``: LKJ
    concentration of each correlated block; ``covariate_sd``: normal SD of covariate effects.
    ``sources`` says where each typical-value prior came from.
    """

    typical_loc: tuple[float, ...]
    typical_scale: tuple[float, ...]
    omega_scale: tuple[float, ...]
    sigma_scale: tuple[float, ...]
    lkj_eta: float = 2.0
    covariate_sd: float = 1.0
    sources: tuple[str, ...] = ()

    def table(self, stat: StatModel) -> list[dict]:
        """One row per prior, for the report."""
        from .._population import from_unconstrained

        rows = []
        for j, (k, dom) in enumerate(zip(stat.iiv, stat.domains, strict=True)):
            med = float(from_unconstrained(dom, np.asarray(self.typical_loc[j])))
            scale = {"positive": "log", "unit": "logit", "real": "identity"}[dom]
            rows.append(
                {
                    "parameter": f"typical {k}",
                    "prior": f"Normal({self.typical_loc[j]:.4g}, {self.typical_scale[j]:.3g}) "
                    f"on the {scale} scale (median {med:.4g})",
                    "source": self.sources[j] if self.sources else "",
                }
            )
        for j, k in enumerate(stat.iiv):
            rows.append(
                {
                    "parameter": f"IIV SD {k}",
                    "prior": f"HalfNormal({self.omega_scale[j]:.3g})",
                    "source": "",
                }
            )
        if any(len(b) > 1 for b in stat.omega_blocks):
            rows.append(
                {
                    "parameter": "IIV correlations (blocks)",
                    "prior": f"LKJ({self.lkj_eta:g}) on each block",
                    "source": "",
                }
            )
        for name, s in zip(sigma_names(stat), self.sigma_scale, strict=True):
            rows.append(
                {
                    "parameter": f"residual SD {name}",
                    "prior": f"HalfNormal({s:.3g})",
                    "source": "",
                }
            )
        if stat.covariates:
            rows.append(
                {
                    "parameter": "covariate effects",
                    "prior": f"Normal(0, {self.covariate_sd:g})",
                    "source": "",
                }
            )
        return rows


@dataclasses.dataclass(frozen=True)
class NUTSOptions:
    """Sampler settings (keyword-only, immutable)."""

    chains: int = 4
    warmup: int = 1000
    draws: int = 1000
    seed: int = 1
    target_accept: float = 0.8
    max_tree_depth: int = 10
    dense_mass: bool = (
        True  # one dense block over the population parameters (not the random effects)
    )
    chain_method: str = "auto"  # auto | parallel | vectorized | sequential
    centred: str | tuple[str, ...] = (
        "auto"  # auto | none | parameter names (see nuts.choose_centring)
    )
    rhat_max: float = 1.01
    rhat_scope: str = "population"  # population | all (random effects too): what must mix
    allow_divergences: bool = False
    ppc_draws: int = 400

    def __post_init__(self):
        for k in ("chains", "warmup", "draws", "max_tree_depth", "ppc_draws"):
            if int(getattr(self, k)) < (0 if k == "warmup" else 1):
                raise ValueError(f"[bayes] {k} = {getattr(self, k)} must be a positive integer")
        if not 0 < self.target_accept < 1:
            raise ValueError(f"[bayes] target_accept = {self.target_accept} must be in (0, 1)")
        if self.chain_method not in ("auto", "parallel", "vectorized", "sequential"):
            raise ValueError(
                f"[bayes] chain_method {self.chain_method!r}: choose auto, parallel, "
                "vectorized or sequential"
            )
        if isinstance(self.centred, list):
            object.__setattr__(self, "centred", tuple(self.centred))
        if isinstance(self.centred, str) and self.centred not in ("auto", "none"):
            raise ValueError(
                f"[bayes] centred = {self.centred!r}: a list of parameters, 'auto' or 'none'"
            )
        if self.rhat_scope not in ("population", "all"):
            raise ValueError(f"[bayes] rhat_scope {self.rhat_scope!r}: 'population' or 'all'")
        if self.rhat_max <= 1:
            raise ValueError(f"[bayes] rhat_max = {self.rhat_max} must exceed 1")


@dataclasses.dataclass(frozen=True)
class BayesConfig:
    """The parsed ``[bayes]`` section."""

    options: NUTSOptions
    priors: Priors
    warm_start: str  # "ml" | "config" | a run folder


def _err(path, msg):
    return ValueError(f"{path}: {msg}")


def _per_name(path, key, value, names, default, what):
    """A scalar for all names, or a table keyed by name (others at ``default``)."""
    if isinstance(value, Mapping):
        unknown = set(value) - set(names)
        if unknown:
            raise _err(
                path, f"[bayes.priors] {key} names {sorted(unknown)}, not {what} ({list(names)})"
            )
        out = [float(value.get(n, default)) for n in names]
    else:
        out = [float(value)] * len(names)
    for n, v in zip(names, out, strict=True):
        if not (np.isfinite(v) and v > 0):
            raise _err(path, f"[bayes.priors] {key} for {n} = {v} must be positive")
    return tuple(out)


def sigma_names(stat: StatModel) -> list[str]:
    """Names of the free residual parameters in the fit's order (additive, then proportional)."""
    add = [e.output for e in stat.endpoints if e.error in ("log_additive", "additive", "combined")]
    prop = [e.output + "_prop" for e in stat.endpoints if e.error in ("proportional", "combined")]
    return add + prop


def default_priors(
    stat: StatModel,
    init: Mapping[str, float] | None = None,
    typical_sd: float = 2.0,
    omega_sd: float = 1.0,
    sigma: float = 1.0,
) -> Priors:
    """Weakly informative priors centred on ``init`` (or the model's default values)."""
    from .._population import to_unconstrained

    base = {k: p.default for k, p in stat.model.parameters.items()} | dict(init or {})
    loc = tuple(
        float(to_unconstrained(d, np.asarray(base[k])))
        for k, d in zip(stat.iiv, stat.domains, strict=True)
    )
    return Priors(
        typical_loc=loc,
        typical_scale=(float(typical_sd),) * len(loc),
        omega_scale=(float(omega_sd),) * len(loc),
        sigma_scale=(float(sigma),) * len(sigma_names(stat)),
        sources=("initial value",) * len(loc),
    )


def parse_bayes(cfg, path: str | Path | None = None) -> BayesConfig:
    """The ``[bayes]`` section of a parsed fit configuration (defaults when absent)."""
    from .._population import to_unconstrained

    path = Path(path or cfg.source)
    raw = dict(cfg.raw.get("bayes", {}))
    unknown = set(raw) - _BAYES_KEYS
    if unknown:
        raise _err(
            path, f"unknown key(s) {sorted(unknown)} in [bayes]; allowed: {sorted(_BAYES_KEYS)}"
        )
    pri = dict(raw.pop("priors", {}))
    unknown = set(pri) - _PRIOR_KEYS
    if unknown:
        raise _err(
            path,
            f"unknown key(s) {sorted(unknown)} in [bayes.priors]; allowed: {sorted(_PRIOR_KEYS)}",
        )
    warm = str(raw.pop("warm_start", "ml"))
    try:
        opts = NUTSOptions(
            **{
                k: (bool(v) if k in ("dense_mass", "allow_divergences") else v)
                for k, v in raw.items()
            }
        )
    except (TypeError, ValueError) as e:
        raise _err(path, str(e)) from None
    stat = cfg.stat
    names = list(stat.iiv)
    typical_sd = float(pri.get("typical_sd", 2.0))
    base = {k: p.default for k, p in stat.model.parameters.items()} | dict(cfg.init)
    med = {k: (float(base[k]), typical_sd, "initial value") for k in names}
    omega_default = pri.get("omega_sd", 1.0)
    sigma_default = pri.get("sigma", 1.0)
    if "published" in pri:
        from .. import data as cdata

        name = str(pri["published"])
        try:
            try:  # a parameter set with random effects: read them as variances
                ps = cdata.load(name, omega_reading="variance")
            except (TypeError, ValueError):
                ps = cdata.load(name)
        except (ValueError, KeyError) as e:
            raise _err(path, f"[bayes.priors] published: {e}") from None
        if not hasattr(ps, "typical"):
            raise _err(
                path, f"[bayes.priors] published = {pri['published']!r} is not a parameter set"
            )
        pub_sd = float(pri.get("published_sd", 1.0))
        intervals = getattr(ps, "intervals", {}) or {}
        for k in names:
            if k not in ps.typical:
                continue
            dom = stat.model.parameters[k].domain
            sd = pub_sd
            if k in intervals and all(np.isfinite(intervals[k])):
                lo, hi = (float(to_unconstrained(dom, np.asarray(v))) for v in intervals[k])
                sd = (hi - lo) / (2 * 1.959963984540054)
            med[k] = (
                float(ps.typical[k]),
                sd,
                f"{pri['published']} ({'95% CI' if sd != pub_sd else 'published_sd'})",
            )
        # IIV and residual scales: twice the published SDs (weakly informative around them)
        pub_om = getattr(ps, "omega", {}) or {}
        if "omega_sd" not in pri and pub_om:
            omega_default = {
                k: 2 * float(np.sqrt(pub_om[k])) if k in pub_om else 1.0 for k in names
            }
        pub_res = getattr(ps, "residual", {}) or {}
        if "sigma" not in pri and len(pub_res) == 1 and len(sigma_names(stat)) == 1:
            sigma_default = 2 * float(next(iter(pub_res.values())))
    for k, v in dict(pri.get("typical", {})).items():
        if k not in names:
            raise _err(
                path,
                f"[bayes.priors] typical names {k!r}, which has no IIV "
                f"(parameters with IIV: {names})",
            )
        if not (isinstance(v, list | tuple) and len(v) == 2):
            raise _err(path, f"[bayes.priors] typical {k} must be [median, sd]")
        med[k] = (float(v[0]), float(v[1]), "fit configuration")
    loc, scale, src = [], [], []
    for k, dom in zip(names, stat.domains, strict=True):
        m, s, where = med[k]
        u = float(to_unconstrained(dom, np.asarray(m)))
        if not np.isfinite(u) or not (np.isfinite(s) and s > 0):
            raise _err(
                path,
                f"[bayes.priors] typical {k}: median {m} outside the domain ({dom}) "
                f"or sd {s} not positive",
            )
        loc.append(u)
        scale.append(s)
        src.append(where)
    lkj = float(pri.get("lkj_eta", 2.0))
    if lkj <= 0:
        raise _err(path, f"[bayes.priors] lkj_eta = {lkj} must be positive")
    priors = Priors(
        typical_loc=tuple(loc),
        typical_scale=tuple(scale),
        omega_scale=_per_name(path, "omega_sd", omega_default, names, 1.0, "a parameter with IIV"),
        sigma_scale=_per_name(
            path, "sigma", sigma_default, sigma_names(stat), 1.0, "a residual parameter"
        ),
        lkj_eta=lkj,
        covariate_sd=float(pri.get("covariate_sd", 1.0)),
        sources=tuple(src),
    )
    if warm not in ("ml", "config"):
        wpath = Path(warm)
        if not wpath.is_absolute():
            wpath = (path.parent / wpath) if (path.parent / wpath).exists() else wpath
        warm = str(wpath)
    return BayesConfig(options=opts, priors=priors, warm_start=warm)
