"""Work started in a daemon thread now, its result (or its error) taken later.

For the waits that can overlap on a slow link (the SSH handshake while the plan is validated, the
run lock's session while the shared one opens, a host command while queries run). Daemon threads:
a run that ends early (bad input, an interrupt) never waits for one at exit.
"""

from __future__ import annotations

import threading
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Pending(Generic[T]):
    """``work()`` running in a thread; ``result()`` waits for it and returns or raises what it did."""

    def __init__(self, work: Callable[[], T], name: str) -> None:
        self._work = work
        self._result: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._result = self._work()
        except BaseException as exc:  # noqa: BLE001 - handed to whoever takes the result
            self._error = exc

    def result(self, timeout: float | None = None) -> T:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"{self._thread.name} still running after {timeout:g}s")
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]

    def done(self) -> bool:
        return not self._thread.is_alive()
