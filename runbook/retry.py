"""Retry policies, named and bounded (tenacity).

``lock_retries`` follows GitLab's ``with_lock_retries``: each try runs with a short ``lock_timeout``
that grows towards the configured one, with growing sleeps between tries, bounded in total by
``max_wait``. Application queries therefore never queue behind the migration for longer than the
lock_timeout of the current try. Only a lock timeout is retried: nothing else is known to be safe.
"""

from __future__ import annotations

import time
from typing import Any, Callable, TypeVar

from tenacity import (RetryCallState, RetryError, Retrying, retry_if_exception, stop_after_attempt,
                      wait_exponential, wait_random)
from tenacity.stop import stop_base

from .migrations import LOCK_NOT_AVAILABLE, sqlstate

T = TypeVar("T")


def is_lock_timeout(exc: BaseException) -> bool:
    return sqlstate(exc) == LOCK_NOT_AVAILABLE


def lock_timeout_for(attempt: int, lock_timeout: float) -> float:
    """Short first: lock_timeout/8, doubling each try, never above lock_timeout."""
    return min(lock_timeout, max(0.05, lock_timeout / 8 * 2 ** (attempt - 1)))


def lock_retries(fn: Callable[[float, int], T], *, lock_timeout: float, max_wait: float,
                 sleep: Callable[[float], None], on_retry: Callable[[int, float, BaseException | None], None],
                 max_attempts: int = 1000, clock: Callable[[], float] = time.monotonic) -> T:
    """Call ``fn(timeout, attempt)`` until it does not fail on a lock timeout, bounded by max_wait.

    ``clock`` measures the total (tenacity's ``stop_after_delay`` reads ``time.monotonic`` itself,
    which a test with an injected ``sleep`` cannot advance). No sleep is started that would end past
    ``max_wait``: the last try then starts at most ``max_wait`` after the first.
    """
    retrying = Retrying(
        retry=retry_if_exception(is_lock_timeout),
        stop=stop_after_attempt(max_attempts) | _Deadline(max_wait, clock),
        # wait_exponential_jitter's 'initial' is deprecated in tenacity 9 and 'multiplier' absent in 8.2
        wait=wait_exponential(multiplier=0.2, max=min(10.0, max(0.5, max_wait / 10))) + wait_random(0, 0.2),
        sleep=sleep,
        before_sleep=lambda rs: on_retry(rs.attempt_number, rs.upcoming_sleep,
                                         rs.outcome.exception() if rs.outcome else None),
        reraise=False,
    )
    try:
        for attempt in retrying:
            n = attempt.retry_state.attempt_number
            with attempt:
                result = fn(lock_timeout_for(n, lock_timeout), n)
    except RetryError as exc:
        last: Any = exc.last_attempt
        raise LockRetriesExhausted(last.attempt_number, last.exception()) from last.exception()
    return result


class _Deadline(stop_base):
    """Stop when the next sleep would end more than ``max_wait`` after the first try started."""

    def __init__(self, max_wait: float, clock: Callable[[], float]) -> None:
        self.max_wait = max_wait
        self.clock = clock
        self.started = clock()

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.clock() - self.started + (retry_state.upcoming_sleep or 0.0) > self.max_wait


class LockRetriesExhausted(Exception):
    def __init__(self, attempts: int, last: BaseException | None) -> None:
        super().__init__(f"{attempts} tries")
        self.attempts = attempts
        self.last = last
