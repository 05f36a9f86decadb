"""The rollback decision and the exit codes, as pure functions (runbook/outcome.py)."""

from __future__ import annotations

import pytest

from runbook.errors import ConfigError, GuardRefused, MigrationError, RollbackError
from runbook.interrupts import Interrupted
from runbook.outcome import NEEDS_PERSON, REFUSED, ROLLED_BACK, USAGE, code_of, rollback_verdict, status_of_error


def verdict(**kw: object) -> tuple[int, str]:
    args = {"start": ("0002",), "current": ("0002",), "unresolved": False, "restored": False, "reverted": False}
    args.update(kw)
    v = rollback_verdict(**args)  # type: ignore[arg-type]
    return v.code, v.how


def test_back_at_the_start_is_exit_1_and_says_how() -> None:
    """Read back at the start revision with nothing unresolved: exit 1, and how it got there."""
    assert verdict() == (ROLLED_BACK, "the failed transaction rolled back")
    assert verdict(reverted=True) == (ROLLED_BACK, "downgraded")
    assert verdict(restored=True, reverted=True) == (ROLLED_BACK, "restored from the backup")
    assert verdict(start=("a", "b"), current=("b", "a")) == (ROLLED_BACK, "the failed transaction rolled back")


@pytest.mark.parametrize("kw, why", [
    ({"current": None}, "could not be read back"),
    ({"current": ("0003",)}, "not back at the start"),
    ({"current": ()}, "not back at the start"),
    ({"unresolved": True}, "a rollback step failed"),
    ({"lock_lost_to_other": True}, "another run took the run lock"),
])
def test_anything_else_needs_a_person(kw: dict[str, object], why: str) -> None:
    """Unreadable, elsewhere, a failed rollback step or another run holding the lock: exit 3, never 1."""
    code, how = verdict(**kw)
    assert code == NEEDS_PERSON and why in how


def test_another_run_holding_the_lock_wins_over_a_matching_read_back() -> None:
    """Even at the start revision, a rollback that did not run because another run took the lock is exit 3."""
    assert verdict(lock_lost_to_other=True, reverted=True)[0] == NEEDS_PERSON


def test_exit_codes_of_errors_that_end_a_run_early() -> None:
    """runbook's errors carry their code; an interrupt before any step is a refusal; a bug needs a person."""
    import signal

    assert code_of(ConfigError("x")) == USAGE
    assert code_of(GuardRefused("x")) == REFUSED
    assert code_of(MigrationError("x")) == 1
    assert code_of(RollbackError("x")) == NEEDS_PERSON
    assert code_of(Interrupted(signal.SIGTERM)) == REFUSED
    assert code_of(ZeroDivisionError()) == NEEDS_PERSON
    assert code_of(KeyError("k")) != ROLLED_BACK
    assert [status_of_error(c) for c in (1, 2, 3, 4)] == ["failed", "refused", "needs_person", "refused"]
