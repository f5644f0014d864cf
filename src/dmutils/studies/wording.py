"""The words of a study's conclusions: one number format, one verdict rule, and the check that every number is a
table cell.

Every study module has a ``conclusions(...)`` that turns the tables its notebook saved into sentences
(``ctx.conclude`` shows and records them). The rules they share:

- **Numbers are table cells, rounded.** A score, fraction or difference is printed with 3 decimals (:func:`num`,
  :func:`signed`), a threshold or a value the table already rounds with ``:g`` (:func:`short`); nothing is computed
  from two cells. The check (:func:`unsupported`) reads every number out of the sentences and the tables' CSV text
  with the same pattern (:data:`NUMBER`) and accepts a number printed with d decimals when some table number lies
  within half a unit of its last digit of it.
- **Intervals are the tables' own** 95% intervals (bootstrap), printed as ``[lo, hi]``; a difference whose interval
  holds 0 (or is missing) is **within noise** (:func:`verdict`), whatever its sign.
- A difference below a stated size (:data:`NEGLIGIBLE`, where a study uses it) is within noise too.
- A number that is not a table cell (a count, a level) is kept out of the sentences.
"""
from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterable
from pathlib import Path

# A number not glued to a word (``toy-sd3``, ``cross@16`` -> 16, ``steps 1-7`` -> 1 and 7), a sentence's full stop not
# taken for a decimal point.
NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?!\w)(?!\.\d)")
NOISE = "within noise"
NEGLIGIBLE = 0.005  # half a point of IoU or of mass share: smaller differences are not called either way


def num(x: float, digits: int = 3) -> str:
    return f"{float(x):.{digits}f}"


def signed(x: float, digits: int = 3) -> str:
    return f"{float(x):+.{digits}f}"


def short(x: float) -> str:
    """A threshold or an already rounded cell (0.4, 24.12) as the table shows it."""
    return f"{float(x):g}"


def interval(lo: float, hi: float, digits: int = 3, sign: bool = True) -> str:
    f = signed if sign else num
    return f"[{f(lo, digits)}, {f(hi, digits)}]"


def missing(*values) -> bool:
    return any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values)


def verdict(lo: float, hi: float, above: str = "better", below: str = "worse", value: float | None = None,
            negligible: float = 0.0) -> str:
    """``above`` when the interval of a difference lies above 0, ``below`` when below, else ``within noise``; also
    ``within noise`` when ``value`` (the difference) is smaller than ``negligible`` (a tight interval around a
    difference too small to print is no finding)."""
    if missing(lo, hi) or (value is not None and not missing(value) and abs(value) < negligible):
        return NOISE
    return above if lo > 0 else below if hi < 0 else NOISE


def numbers(text: str) -> list[str]:
    return NUMBER.findall(text)


def table_numbers(paths: Iterable[str | Path]) -> list[float]:
    """Every number in the text of the given CSV files (cells, names and headers alike)."""
    return [float(x) for p in paths for x in numbers(Path(p).read_text())]


def unsupported(sentences: Iterable[str], values: Iterable[float]) -> list[str]:
    """The numbers of ``sentences`` that are no table value rounded: ``x`` printed with d decimals needs a value
    within half a unit of its last digit (an empty list: every number is a table's)."""
    values = sorted(set(values))
    bad = []
    for s in sentences:
        for text in numbers(s):
            x = float(text)
            digits = len(text.split(".")[1]) if "." in text else 0
            tol = 0.5 * 10 ** -digits + 1e-9
            k = bisect.bisect_left(values, x - tol)
            if not (k < len(values) and values[k] <= x + tol):
                bad.append(f"{text} (in: {s})")
    return bad


def run_conclusions(run_dir: str | Path) -> list[list[str]]:
    """The sentences of every ``ctx.conclude`` of a run, in order (one list per notebook that concluded)."""
    from dmutils import nb

    return [a["sentences"] for a in nb.read_artifacts(Path(run_dir)) if a.get("kind") == "conclusions"]


def unsupported_in_run(run_dir: str | Path) -> list[str]:
    """The numbers of a run's recorded conclusions that are no cell of its ``tables/*.csv`` (see :func:`unsupported`)."""
    from dmutils import nb

    values = table_numbers(sorted((Path(run_dir) / nb.TABLES).glob("*.csv")))
    return unsupported([s for sentences in run_conclusions(run_dir) for s in sentences], values)
