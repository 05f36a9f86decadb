"""How a run ends: the exit codes, and the one place that decides them.

| code | meaning |
| 0 | done, verified |
| 1 | failed, and rolled back: the database was read back and is as it was before the run |
| 2 | bad usage, configuration or input: nothing was touched |
| 3 | failed and the rollback did not complete (or the state is unknown): a person is needed |
| 4 | refused by a guard, or interrupted before anything was touched |
| 5 | ``runbook lint``: findings at or above ``--fail-on`` (no database is ever touched by lint) |

``rollback_verdict`` is the rollback decision as a pure function of what the engine observed, so
its every branch is unit-tested (tests/test_outcome.py) apart from the machinery that observes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

OK, ROLLED_BACK, USAGE, NEEDS_PERSON, REFUSED = 0, 1, 2, 3, 4
LINT_FINDINGS = 5  # runbook lint only: a code of its own, so CI tells "the migration is risky" from a usage error


@dataclass
class Outcome:
    """How a run ended: the exit code, a status word for the journal, and the lines a person reads last."""

    code: int
    status: str
    message: str
    next_command: str | None = None
    summary: dict[str, Any] | None = None  # a fleet's: each host's from, to, outcome, duration, backup


def worst(codes: Sequence[int]) -> int:
    """A fleet's exit code: a person needed (3) outranks everything, then the highest code."""
    return max(codes, key=lambda c: (c == NEEDS_PERSON, c)) if codes else OK


def status_of_error(code: int) -> str:
    """The journal status of a run that ended on an error with exit ``code``."""
    return "refused" if code in (USAGE, REFUSED) else "needs_person" if code == NEEDS_PERSON else "failed"


def code_of(exc: BaseException) -> int:
    """The exit code of an error that ended a run before the engine could judge the database.

    runbook's own errors carry theirs; an interrupt before any step is a refusal (nothing was
    touched); anything else is an internal error: the database was not read back, so a person
    must look (never 1, which promises the database is as it was)."""
    from .errors import RunbookError
    from .interrupts import Interrupted

    if isinstance(exc, RunbookError):
        return int(exc.exit_code)
    if isinstance(exc, Interrupted):
        return REFUSED
    return NEEDS_PERSON


@dataclass(frozen=True)
class Verdict:
    """What the rollback achieved: the exit code and how the database got back (or did not)."""

    code: int
    how: str


def rollback_verdict(*, start: Sequence[str], current: Sequence[str] | None, unresolved: bool,
                     restored: bool, reverted: bool, lock_lost_to_other: bool = False) -> Verdict:
    """Exit 1 only if the database was read back at the start revision with nothing unresolved.

    ``current`` is None when it could not be read back; ``unresolved`` when a rollback step failed
    and no later restore made up for it; ``lock_lost_to_other`` when another run holds the run lock
    (the rollback did not run: whatever the database holds now is not ours to judge).
    """
    if lock_lost_to_other:
        return Verdict(NEEDS_PERSON, "another run took the run lock")
    if current is None:
        return Verdict(NEEDS_PERSON, "the database could not be read back")
    if set(current) != set(start):
        return Verdict(NEEDS_PERSON, "the database is not back at the start revision")
    if unresolved:
        return Verdict(NEEDS_PERSON, "a rollback step failed")
    if restored:
        return Verdict(ROLLED_BACK, "restored from the backup")
    if reverted:
        return Verdict(ROLLED_BACK, "downgraded")
    return Verdict(ROLLED_BACK, "the failed transaction rolled back")
