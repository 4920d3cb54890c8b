"""A validated NONMEM-style dataset and the per-subject arrays a population fit needs.

A :class:`Dataset` is what :func:`~cartkin.data.read_nonmem` returns: the records as read (one
row per record, indexed by the CSV line number), the sidecar metadata (column roles and units,
endpoints with unit, LLOQ and scale), the lines excluded from the analysis with the reason, and
notes on what was inferred. It is immutable; conversions return a new dataset. It holds data
only: no statistical model.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from .problems import DataError, Excluded
from .records import DOSE_EVIDS, RESET_EVIDS, complete_records, interpolate, is_observation
from .sidecar import ColumnSpec, Endpoint, Sidecar
from .units import conversion_factor, parse_unit


@dataclasses.dataclass(frozen=True)
class CsvFormat:
    """How the file was written, so that writing it back gives the same text."""

    missing: str = "."
    header_prefix: str = ""


@dataclasses.dataclass(frozen=True)
class Subject:
    """One subject's records as arrays (observations, doses, resets, covariates).

    Observations are the EVID 0, MDV 0 records in file order. On a censored record (``cens`` 1:
    below the LLOQ, -1: above the ULOQ) ``dv`` holds the limit of quantification and ``limit``
    the other end of the censoring interval (NaN: none, i.e. 0 / infinity). ``line`` gives each
    observation's line in the file, for messages.
    """

    id: int
    time: np.ndarray
    dv: np.ndarray
    cens: np.ndarray
    limit: np.ndarray
    dvid: np.ndarray
    occ: np.ndarray
    line: np.ndarray
    dose_time: np.ndarray
    dose_amt: np.ndarray
    dose_rate: np.ndarray
    dose_cmt: np.ndarray
    reset_time: np.ndarray
    covariates: dict[str, float]
    covariates_at_obs: dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class SubjectArrays:
    """All subjects padded to common lengths: shape (N, T) for observations, (N, D) for doses.

    Padded entries have ``mask`` False, the subject's last time, ``dv`` 1, ``cens`` 0, ``limit``
    NaN (no limit) and ``dvid`` of the subject's first observation; padded doses have
    ``dose_mask`` False and amount 0. ``covariates`` are baseline values, shape (N,).
    """

    id: np.ndarray
    time: np.ndarray
    dv: np.ndarray
    cens: np.ndarray
    limit: np.ndarray
    dvid: np.ndarray
    mask: np.ndarray
    n_obs: np.ndarray
    dose_time: np.ndarray
    dose_amt: np.ndarray
    dose_rate: np.ndarray
    dose_mask: np.ndarray
    covariates: dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A validated NONMEM-style dataset (immutable; do not modify ``frame`` in place).

    Attributes:
        frame: the records as in the file, NONMEM items under their standard names (ID, TIME,
            DV, ...), other columns under their header names; index: the CSV line number
            (header = line 1).
        meta: the sidecar, resolved: every column's role, unit and covariate kind, and the
            endpoints.
        excluded: lines not used in the analysis (comments, blank lines, EVID 0 with MDV 1),
            each with its reason.
        notes: what was inferred rather than stated (covariate kinds, endpoints without unit).
        source: the file read, if any.
    """

    frame: pd.DataFrame
    meta: Sidecar
    excluded: tuple[Excluded, ...] = ()
    notes: tuple[str, ...] = ()
    source: str | None = None
    format: CsvFormat = CsvFormat()

    # --- description -----------------------------------------------------------------------
    @property
    def name(self) -> str:
        if self.meta.name:
            return self.meta.name
        return self.source.rsplit("/", 1)[-1].rsplit(".", 1)[0] if self.source else "dataset"

    @property
    def endpoints(self) -> dict[int, Endpoint]:
        return dict(self.meta.endpoints)

    @property
    def covariates(self) -> dict[str, ColumnSpec]:
        """Covariate columns (frame name -> spec with unit, kind and interpolation)."""
        return {h: c for h, c in self.meta.columns.items() if c.role == "covariate"}

    @property
    def ids(self) -> np.ndarray:
        return pd.unique(self.frame["ID"].to_numpy(float)).astype(int)

    def unit(self, column: str) -> str | None:
        """The stated unit of a column (by standard or header name), or None if not stated."""
        for header, spec in self.meta.columns.items():
            if column.upper() in (header.upper(), spec.role.upper()):
                return spec.unit
        raise DataError(f"{self.name} has no column {column!r}; columns: {list(self.frame)}")

    def records(self) -> pd.DataFrame:
        """The records with every NONMEM item present (absent ones at NONMEM's defaults)."""
        return complete_records(self.frame)

    def observations(self) -> pd.DataFrame:
        """The records used as observations (EVID 0, MDV 0)."""
        rec = self.records()
        return rec[is_observation(rec)]

    def summary(self) -> pd.DataFrame:
        """Per endpoint: unit, LLOQ, subjects, observations, fraction below / above the limits."""
        obs = self.observations()
        rows = []
        for k, ep in sorted(self.endpoints.items()):
            o = obs[obs["DVID"] == k]
            rows.append({"DVID": k, "endpoint": ep.name, "unit": ep.unit, "lloq": ep.lloq,
                         "subjects": o["ID"].nunique(), "observations": len(o),
                         "blq_fraction": float(np.mean(o["CENS"] == 1)) if len(o) else np.nan,
                         "aloq_fraction": float(np.mean(o["CENS"] == -1)) if len(o) else np.nan})
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        rec = self.records()
        n_obs = int(is_observation(rec).sum())
        n_dose = int(np.isin(rec["EVID"], DOSE_EVIDS).sum())
        eps = ", ".join(f"DVID {k} {e.name} [{e.unit or 'unit not stated'}]"
                        for k, e in sorted(self.endpoints.items()))
        return (f"Dataset({self.name!r}: {len(self.ids)} subjects, {n_obs} observations, "
                f"{n_dose} doses; endpoints: {eps or 'none'}; {len(self.excluded)} lines "
                f"excluded)")

    def equals(self, other: Dataset) -> bool:
        """Same records, metadata and exclusions (the notes and the file path aside)."""
        return (self.frame.equals(other.frame) and list(self.frame) == list(other.frame)
                and list(self.frame.index) == list(other.frame.index)
                and self.meta == other.meta and self.excluded == other.excluded)

    # --- arrays for the fit ----------------------------------------------------------------
    def subjects(self, dvid: int | None = None) -> tuple[Subject, ...]:
        """One :class:`Subject` per ID, in file order (observations of ``dvid`` only if given)."""
        rec = self.records()
        bound = _censoring_bound(rec, self.meta.endpoints)
        obs_all = is_observation(rec).to_numpy().copy()
        if dvid is not None:
            if dvid not in self.endpoints:
                raise DataError(f"{self.name} has no endpoint DVID {dvid}; endpoints: "
                                f"{sorted(self.endpoints)}")
            obs_all &= rec["DVID"].to_numpy(float) == dvid
        covs = self.covariates
        out = []
        ids = rec["ID"].to_numpy(float)
        for sid in self.ids:
            sel = ids == sid
            r, o = rec[sel], obs_all[sel]
            ro = r[o]
            t_obs = ro["TIME"].to_numpy(float)
            dose = r[np.isin(r["EVID"], DOSE_EVIDS)]
            base, at_obs = {}, {}
            for name, spec in covs.items():
                v = r[name].to_numpy(float)
                finite = v[np.isfinite(v)]
                base[name] = float(finite[0]) if finite.size else np.nan
                if spec.covariate == "time-varying":
                    at_obs[name] = interpolate(r["TIME"], v, t_obs, spec.interpolation)
                else:
                    at_obs[name] = np.full(t_obs.shape, base[name])
            out.append(Subject(
                id=int(sid), time=t_obs, dv=bound[sel][o], cens=ro["CENS"].to_numpy(int),
                limit=ro["LIMIT"].to_numpy(float), dvid=ro["DVID"].to_numpy(int),
                occ=ro["OCC"].to_numpy(int), line=ro.index.to_numpy(int),
                dose_time=dose["TIME"].to_numpy(float), dose_amt=dose["AMT"].to_numpy(float),
                dose_rate=dose["RATE"].to_numpy(float), dose_cmt=dose["CMT"].to_numpy(int),
                reset_time=r.loc[np.isin(r["EVID"], RESET_EVIDS), "TIME"].to_numpy(float),
                covariates=base, covariates_at_obs=at_obs,
            ))
        return tuple(out)

    def to_arrays(self, dvid: int | None = None) -> SubjectArrays:
        """The subjects padded to common lengths (see :class:`SubjectArrays`)."""
        subs = self.subjects(dvid)
        n, T = len(subs), max([len(s.time) for s in subs] + [1])
        D = max([len(s.dose_time) for s in subs] + [1])
        first_ep = min(self.endpoints) if self.endpoints else 1
        a = {k: np.zeros((n, T)) for k in ("time", "limit")}
        a["dv"], a["limit"][:] = np.ones((n, T)), np.nan
        a["cens"], a["dvid"] = np.zeros((n, T), int), np.full((n, T), first_ep, int)
        a["mask"] = np.zeros((n, T), bool)
        d = {k: np.zeros((n, D)) for k in ("dose_time", "dose_amt", "dose_rate")}
        d["dose_mask"] = np.zeros((n, D), bool)
        for i, s in enumerate(subs):
            m, last = len(s.time), (s.time[-1] if len(s.time) else 0.0)
            a["time"][i] = last
            for k in ("time", "dv", "cens", "limit", "dvid"):
                a[k][i, :m] = getattr(s, k)
            if m:
                a["dvid"][i, m:] = s.dvid[0]
            a["mask"][i, :m] = True
            j = len(s.dose_time)
            for k in ("dose_time", "dose_amt", "dose_rate"):
                d[k][i, :j] = getattr(s, k)
            d["dose_mask"][i, :j] = True
        covs = {c: np.array([s.covariates[c] for s in subs]) for c in self.covariates}
        return SubjectArrays(id=np.array([s.id for s in subs]), n_obs=a["mask"].sum(1),
                             covariates=covs, **a, **d)

    # --- explicit unit conversions ---------------------------------------------------------
    def convert_endpoint(self, dvid: int, unit: str, factor: float | None = None) -> Dataset:
        """DV, LIMIT and LLOQ of endpoint ``dvid`` in ``unit``: ``x [unit] = factor * x [old]``.

        Within one dimension (cells/mL -> cells/uL) the factor is known and ``factor`` may be
        left out; across dimensions (copies/ug -> cells/uL) it must be given.
        """
        ep = self.endpoints.get(dvid)
        if ep is None:
            raise DataError(f"{self.name} has no endpoint DVID {dvid}")
        if ep.unit is None:
            raise DataError(f"the unit of endpoint DVID {dvid} is not stated; state it in the "
                            "sidecar before converting")
        f = conversion_factor(ep.unit, unit) if factor is None else float(factor)
        frame = self.frame.copy()
        on = complete_records(frame)["DVID"].to_numpy(float) == dvid
        for col in ("DV", "LIMIT", "LLOQ"):
            if col in frame:
                frame.loc[on, col] = frame.loc[on, col] * f
        new_ep = dataclasses.replace(
            ep, unit=unit, lloq=None if ep.lloq is None else ep.lloq * f,
            uloq=None if ep.uloq is None else ep.uloq * f)
        meta = self.meta.replace(endpoints={**self.meta.endpoints, dvid: new_ep})
        note = f"DVID {dvid} converted from {ep.unit} to {unit} (x {f!r})"
        return dataclasses.replace(self, frame=frame, meta=meta, notes=(*self.notes, note))

    def convert_doses(self, unit: str, weight: str | None = None) -> Dataset:
        """AMT (and RATE) in ``unit``; between per-kg and total doses, ``weight`` names the
        weight covariate (its unit must be stated and a mass), evaluated at each dose time."""
        old = self.unit("AMT")
        if old is None:
            raise DataError("the unit of AMT is not stated; state it in the sidecar "
                            "(e.g. \"cells\" or \"cells/kg\") before converting")
        d_old, d_new = parse_unit(old)[0], parse_unit(unit)[0]
        frame = self.frame.copy()
        rec = complete_records(frame)
        dose = np.isin(rec["EVID"], DOSE_EVIDS)
        if d_old == d_new:
            f = np.full(len(frame), conversion_factor(old, unit))
        elif {d_old, d_new} == {"cells", "cells/kg"}:
            f = self._weight_factor(rec, weight, dose, old, unit)
        else:
            f = np.full(len(frame), conversion_factor(old, unit))  # raises with the route
        for col in ("AMT", "RATE"):
            if col in frame:
                pos = dose & (frame[col].to_numpy(float) > 0)
                frame.loc[pos, col] = frame.loc[pos, col].to_numpy(float) * f[pos]
        cols = {}
        for h, c in self.meta.columns.items():
            if c.role == "AMT":
                c = dataclasses.replace(c, unit=unit)
            elif c.role == "RATE" and c.unit is not None:
                # amount per time: keep the time unit when the rate is written "<AMT unit>/<t>"
                amount, _, per = c.unit.rpartition("/")
                c = dataclasses.replace(c, unit=f"{unit}/{per}" if amount == old else None)
            cols[h] = c
        note = f"AMT converted from {old} to {unit}" + (f" with weight {weight}" if weight else "")
        return dataclasses.replace(self, frame=frame, meta=self.meta.replace(columns=cols),
                                   notes=(*self.notes, note))

    def _weight_factor(self, rec, weight, dose, old, unit):
        if weight is None or weight not in self.covariates:
            raise DataError(f"converting AMT between {old} and {unit} needs each subject's "
                            f"weight: pass weight=<covariate in kg>; covariates: "
                            f"{list(self.covariates) or 'none'}")
        spec = self.covariates[weight]
        if spec.unit is None or parse_unit(spec.unit)[0] != "mass":
            raise DataError(f"covariate {weight} must have a mass unit stated (kg), got "
                            f"{spec.unit!r}")
        kg = np.full(len(rec), np.nan)
        ids = rec["ID"].to_numpy(float)
        for sid in pd.unique(ids):
            sel = ids == sid
            r = rec[sel]
            rule = spec.interpolation or "locf"
            kg[sel] = interpolate(r["TIME"], r[weight], r["TIME"], rule)
        kg *= conversion_factor(spec.unit, "kg")
        missing = sorted({int(i) for i in ids[dose & ~np.isfinite(kg)]})
        if missing:
            raise DataError(f"weight {weight} is missing for ID(s) {missing} with doses")
        scale = conversion_factor(old.replace("/kg", ""), unit.replace("/kg", ""))
        return kg * scale if parse_unit(old)[0] == "cells/kg" else scale / kg


def _censoring_bound(rec: pd.DataFrame, endpoints) -> np.ndarray:
    """DV, or on a censored record with DV missing, the LLOQ column or the endpoint's limit."""
    dv = rec["DV"].to_numpy(float).copy()
    cens, lloq = rec["CENS"].to_numpy(float), rec["LLOQ"].to_numpy(float)
    dvid = rec["DVID"].to_numpy(float)
    for i in np.flatnonzero(np.isnan(dv) & (cens != 0)):
        ep = endpoints.get(int(dvid[i])) if np.isfinite(dvid[i]) else None
        if cens[i] == 1:
            stated = ep.lloq if ep is not None and ep.lloq is not None else np.nan
            dv[i] = lloq[i] if np.isfinite(lloq[i]) else stated
        else:
            dv[i] = ep.uloq if ep is not None and ep.uloq is not None else np.nan
    return dv
