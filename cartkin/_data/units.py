"""Units of CAR-T data and the conversions between them, all explicit.

Within one dimension a conversion is a fixed factor (``cells/mL`` -> ``cells/uL`` divides by 1000;
``1e6 cells`` -> ``cells`` multiplies by 1e6) and is done on request. Across dimensions nothing is
ever assumed:

* ``cells/kg`` <-> ``cells`` needs each patient's body weight (kg);
* transgene ``copies/ug`` (qPCR, per ug genomic DNA) <-> ``cells/uL`` (flow cytometry) needs a
  product- and assay-specific factor in copies/ug per cell/uL, given by the user. (For example
  Singh et al. 2021 used about 2,000 copies/ug per CAR-T cell/uL for ide-cel; it is not a
  constant of nature.)
"""

from __future__ import annotations

import re

from .problems import DataError

# dimension, factor to the dimension's base unit
_UNITS: dict[str, tuple[str, float]] = {
    "d": ("time", 1.0), "day": ("time", 1.0), "days": ("time", 1.0),
    "h": ("time", 1 / 24), "hour": ("time", 1 / 24), "hours": ("time", 1 / 24),
    "min": ("time", 1 / 1440), "wk": ("time", 7.0), "week": ("time", 7.0),
    "cells": ("cells", 1.0), "cell": ("cells", 1.0),
    "cells/kg": ("cells/kg", 1.0),
    "cells/ul": ("cells/volume", 1.0), "cells/ml": ("cells/volume", 1e-3),
    "cells/l": ("cells/volume", 1e-6),
    "copies/ug": ("copies/DNA", 1.0), "copies/ng": ("copies/DNA", 1e3),
    "pg/ml": ("mass/volume", 1.0), "ng/l": ("mass/volume", 1.0), "ng/ml": ("mass/volume", 1e3),
    "ug/l": ("mass/volume", 1e3), "mg/l": ("mass/volume", 1e6),
    "kg": ("mass", 1.0), "g": ("mass", 1e-3),
    "1": ("dimensionless", 1.0), "%": ("dimensionless", 0.01),
}
_SCALE = re.compile(r"^\s*(1e[+-]?\d+|10\^[+-]?\d+)\s*(\S.*)$", re.IGNORECASE)


def parse_unit(unit: str) -> tuple[str, float]:
    """``(dimension, factor)`` of a unit string, e.g. ``"1e6 cells/kg"`` -> ``("cells/kg", 1e6)``.

    ``u`` and ``µ`` are the same; ``copies/ug gDNA`` is ``copies/ug``.
    """
    s = unit.strip().replace("µ", "u").replace("μ", "u")
    scale = 1.0
    m = _SCALE.match(s)
    if m:
        scale = float(m.group(1).replace("10^", "1e"))
        s = m.group(2)
    key = re.sub(r"\s*gdna$", "", s.strip().lower().replace(" ", ""))
    if key not in _UNITS:
        raise DataError(f"unknown unit {unit!r}; known units: {', '.join(sorted(_UNITS))} "
                        "(optionally preceded by a scale such as '1e6 ')")
    dim, f = _UNITS[key]
    return dim, scale * f


def conversion_factor(from_unit: str, to_unit: str) -> float:
    """The factor ``x [to_unit] = factor * x [from_unit]`` within one dimension.

    Raises :class:`DataError` across dimensions, naming the explicit route instead.
    """
    d1, f1 = parse_unit(from_unit)
    d2, f2 = parse_unit(to_unit)
    if d1 != d2:
        raise DataError(f"cannot convert {from_unit!r} to {to_unit!r}: {_route(d1, d2)}")
    return f1 / f2


def same_unit(a: str | None, b: str | None) -> bool:
    """Whether two unit strings mean the same unit (False when either is unknown)."""
    if a is None or b is None:
        return False
    try:
        return parse_unit(a)[0] == parse_unit(b)[0] and conversion_factor(a, b) == 1.0
    except DataError:
        return a.strip() == b.strip()


def _route(d1: str, d2: str) -> str:
    pair = {d1, d2}
    if pair == {"cells", "cells/kg"}:
        return ("doses per kg and total doses differ by each patient's weight; use "
                "Dataset.convert_doses(unit, weight='WT') with a weight covariate in kg")
    if pair == {"copies/DNA", "cells/volume"}:
        return ("transgene copies/ug and CAR+ cells/uL are different assays; the factor "
                "(copies/ug per cell/uL) is product- and assay-specific and is never assumed: "
                "pass it as Dataset.convert_endpoint(dvid, unit, factor=...)")
    return f"{d1} and {d2} are different dimensions"
