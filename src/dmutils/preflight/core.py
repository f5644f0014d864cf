"""What a check returns: an :class:`Outcome` (a summary line and its problems), and the one error that
:func:`dmutils.preflight.preflight` raises with a line per failed check."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dmutils.errors import ParamsError, one_line

Level = Literal["error", "warning", "note"]


class PreflightError(ParamsError):
    """One or more preflight checks failed; each line of the message is one error with its fix."""


@dataclass
class Problem:
    level: Level
    message: str


@dataclass
class Outcome:
    """What one check found: a one-line summary and its problems (none = ok)."""

    summary: str = ""
    problems: list[Problem] = field(default_factory=list)

    def error(self, message: str) -> "Outcome":
        self.problems.append(Problem("error", one_line(message)))
        return self

    def warning(self, message: str) -> "Outcome":
        self.problems.append(Problem("warning", one_line(message)))
        return self

    def note(self, message: str) -> "Outcome":
        self.problems.append(Problem("note", one_line(message)))
        return self

    @property
    def ok(self) -> bool:
        return not any(p.level == "error" for p in self.problems)


def format_outcomes(outcomes: dict[str, Outcome]) -> str:
    """One line per check (ok / FAIL, what it found), then one indented line per problem."""
    width = max(map(len, outcomes))
    lines = []
    for name, o in outcomes.items():
        lines.append(f"{'ok' if o.ok else 'FAIL':<4}  {name:<{width}}  {o.summary}".rstrip())
        lines += [f"      {p.level}: {p.message}" for p in o.problems]
    return "\n".join(lines)


def human_size(n: float) -> str:
    """Bytes as MiB or GiB, for messages."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
