"""Problems found in a dataset, the error that lists them, and records left out of the analysis.

Every check collects :class:`Problem` objects instead of stopping at the first; the reader then
raises one :class:`DataError` listing all of them. Lines are the CSV file's own 1-based line
numbers, the header being line 1 (what an editor shows).
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import pandas as pd

#: at most this many problems are printed in the message (all are kept in ``DataError.problems``)
MAX_SHOWN = 100


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem: where (file, line, column), what was found (value) and what is expected."""

    file: str
    line: int | None
    column: str | None
    value: str | None
    message: str
    expected: str = ""

    def __str__(self) -> str:
        where = [self.file or "<data>"]
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.column is not None:
            where.append(f"column {self.column}")
        if self.value is not None:
            where.append(f"value {self.value!r}")
        text = ", ".join(where) + f": {self.message}"
        if self.expected:
            text += f"; expected {self.expected}"
        return text


class DataError(ValueError):
    """A dataset (or its sidecar) that cannot be used; the message lists every problem found."""

    def __init__(self, problems, summary: str | None = None):
        if isinstance(problems, str):
            problems = [Problem("", None, None, None, problems)]
        # grouped by file, in line order (problems without a line, e.g. sidecar ones, first)
        self.problems: tuple[Problem, ...] = tuple(
            sorted(problems, key=lambda p: (p.file, p.line or 0)))
        super().__init__(summary or _format(self.problems))

    def to_frame(self) -> pd.DataFrame:
        """All problems as a table (file, line, column, value, message, expected)."""
        cols = [f.name for f in dataclasses.fields(Problem)]
        return pd.DataFrame([dataclasses.asdict(p) for p in self.problems], columns=cols)


def _format(problems: tuple[Problem, ...]) -> str:
    if len(problems) == 1 and problems[0].line is None and not problems[0].file:
        return problems[0].message
    files = sorted({p.file for p in problems if p.file})
    head = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
    if files:
        head += " in " + ", ".join(files)
    lines = [head + ":"]
    lines += [f"  {p}" for p in problems[:MAX_SHOWN]]
    if len(problems) > MAX_SHOWN:
        rest = collections.Counter(p.message for p in problems[MAX_SHOWN:])
        lines.append(f"  ... and {len(problems) - MAX_SHOWN} more (all in DataError.problems):")
        lines += [f"    {n} x {msg}" for msg, n in rest.most_common()]
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Excluded:
    """A line of the file that is not used in the analysis, and why (nothing is dropped silently).

    ``text`` holds the raw line for comment and blank lines, so that writing the dataset back
    puts them where they were.
    """

    line: int
    id: float | None
    reason: str
    text: str | None = None


class ProblemList(list):
    """A list of problems with a shorthand to add one."""

    def __init__(self, file: str):
        super().__init__()
        self.file = file

    def add(self, line, column, value, message, expected="", file=None):
        shown = None if value is None else _show(value)
        self.append(Problem(file or self.file, line, column, shown, message, expected))


def _show(value) -> str:
    if isinstance(value, float | np.floating | np.integer):
        value = float(value)
        if value != value:
            return "."
        return str(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(value)
    return str(value)
