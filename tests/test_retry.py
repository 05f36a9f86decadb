"""lock_retries: only lock timeouts are retried, with a growing lock_timeout, bounded by max_wait."""

from __future__ import annotations

from typing import Any

import psycopg.errors
import pytest
import sqlalchemy.exc

from runbook.retry import LockRetriesExhausted, is_lock_timeout, lock_retries, lock_timeout_for


class FakeClock:
    """A monotonic clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def lock_timeout_error() -> Exception:
    """What SQLAlchemy raises when PostgreSQL cancels a statement on lock_timeout (SQLSTATE 55P03)."""
    orig = psycopg.errors.LockNotAvailable("canceling statement due to lock timeout")
    return sqlalchemy.exc.OperationalError("ALTER TABLE collections ...", {}, orig)


class Flaky:
    """Fails with ``errors`` in turn, then returns 'done'; records each (timeout, attempt)."""

    def __init__(self, *errors: BaseException, clock: FakeClock | None = None) -> None:
        self.errors = list(errors)
        self.calls: list[tuple[float, int]] = []
        self.clock = clock

    def __call__(self, timeout: float, attempt: int) -> str:
        self.calls.append((timeout, attempt))
        if self.clock is not None:
            self.clock.now += timeout  # a try that times out waits its whole lock_timeout
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def run(fn: Any, clock: FakeClock, retries: list[tuple[int, float, BaseException | None]] | None = None,
        **kw: Any) -> Any:
    kw.setdefault("lock_timeout", 5.0)
    kw.setdefault("max_wait", 120.0)
    seen = retries if retries is not None else []
    return lock_retries(fn, sleep=clock.sleep, clock=clock,
                        on_retry=lambda n, pause, exc: seen.append((n, pause, exc)), **kw)


def test_lock_timeout_is_recognised_through_sqlalchemy() -> None:
    """SQLSTATE 55P03 is found behind SQLAlchemy's wrapper; other errors are not lock timeouts."""
    assert is_lock_timeout(lock_timeout_error())
    assert is_lock_timeout(psycopg.errors.LockNotAvailable("x"))
    assert not is_lock_timeout(psycopg.errors.CheckViolation("x"))
    assert not is_lock_timeout(psycopg.errors.QueryCanceled("statement timeout"))
    assert not is_lock_timeout(RuntimeError("boom"))


def test_succeeds_at_once_without_sleeping() -> None:
    """A first try that works is the only try, with the shortest lock_timeout."""
    clock = FakeClock()
    fn = Flaky()
    assert run(fn, clock) == "done"
    assert fn.calls == [(0.625, 1)] and clock.sleeps == []


def test_retries_lock_timeouts_with_growing_timeout_and_sleeps() -> None:
    """Each retry gets a longer lock_timeout (capped at lock_timeout) and a longer sleep before it."""
    clock = FakeClock()
    errors = [lock_timeout_error() for _ in range(5)]
    fn = Flaky(*errors)
    retries: list[tuple[int, float, BaseException | None]] = []
    assert run(fn, clock, retries, lock_timeout=4.0) == "done"
    assert [t for t, _ in fn.calls] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert [n for _, n in fn.calls] == [1, 2, 3, 4, 5, 6]
    assert len(clock.sleeps) == 5
    assert all(b >= a for a, b in zip(clock.sleeps, clock.sleeps[1:]))
    assert clock.sleeps[-1] > clock.sleeps[0]
    assert [n for n, _, _ in retries] == [1, 2, 3, 4, 5]
    assert [p for _, p, _ in retries] == clock.sleeps
    assert all(exc is e for (_, _, exc), e in zip(retries, errors))


def test_lock_timeout_schedule() -> None:
    """lock_timeout/8 first, doubling, never above lock_timeout, never below 50ms."""
    assert [lock_timeout_for(n, 5.0) for n in range(1, 6)] == [0.625, 1.25, 2.5, 5.0, 5.0]
    assert lock_timeout_for(1, 0.1) == 0.05
    assert lock_timeout_for(30, 2.0) == 2.0


@pytest.mark.parametrize("error", [psycopg.errors.CheckViolation("bad row"), RuntimeError("bug"),
                                   psycopg.errors.QueryCanceled("canceling statement due to statement timeout")])
def test_other_errors_are_not_retried(error: BaseException) -> None:
    """Anything but a lock timeout propagates at once, unchanged, without a sleep."""
    clock = FakeClock()
    fn = Flaky(error)
    with pytest.raises(type(error)) as caught:
        run(fn, clock)
    assert caught.value is error and len(fn.calls) == 1 and clock.sleeps == []


def test_non_lock_error_after_lock_timeouts_propagates() -> None:
    """A real failure on a retry is raised as itself, not as exhausted retries."""
    clock = FakeClock()
    fn = Flaky(lock_timeout_error(), psycopg.errors.UndefinedTable("no such table"))
    with pytest.raises(psycopg.errors.UndefinedTable):
        run(fn, clock)
    assert len(fn.calls) == 2


def test_stops_after_max_wait() -> None:
    """Lock timeouts forever: it gives up within max_wait of the first try, with the last error."""
    clock = FakeClock()
    fn = Flaky(*[lock_timeout_error() for _ in range(1000)], clock=clock)
    with pytest.raises(LockRetriesExhausted) as caught:
        run(fn, clock, lock_timeout=2.0, max_wait=30.0)
    exhausted = caught.value
    assert exhausted.attempts == len(fn.calls) >= 3
    assert is_lock_timeout(exhausted.last) and exhausted.last is exhausted.__cause__
    # the last try started before max_wait ran out; it waited at most one lock_timeout more
    assert clock.now - 1000.0 <= 30.0 + 2.0
    assert sum(clock.sleeps) < 30.0
    assert max(clock.sleeps) <= 10.0


def test_max_attempts_bounds_the_number_of_tries() -> None:
    """max_attempts is a second bound, whatever the clock says."""
    clock = FakeClock()
    fn = Flaky(*[lock_timeout_error() for _ in range(10)])
    with pytest.raises(LockRetriesExhausted) as caught:
        run(fn, clock, max_wait=3600.0, max_attempts=3)
    assert caught.value.attempts == 3 and len(clock.sleeps) == 2


def test_zero_max_wait_means_a_single_try() -> None:
    """With no time to wait, the first lock timeout is final."""
    clock = FakeClock()
    fn = Flaky(lock_timeout_error(), lock_timeout_error())
    with pytest.raises(LockRetriesExhausted) as caught:
        run(fn, clock, max_wait=0.0)
    assert caught.value.attempts == 1 and clock.sleeps == []
