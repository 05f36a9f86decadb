"""Progress on long steps (backup, restore) for a person at a terminal.

A background thread rewrites one stderr line with the elapsed time and, where it can be measured
cheaply, the bytes written so far. Nothing is shown without a TTY or with ``--json``: cron logs and
machines get the structured events only; nor while a fleet runs several hosts at once
(``several_at_once``): their lines would overwrite each other's.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable, TextIO


_SEVERAL = False


def several_at_once(on: bool) -> None:
    """A ``--parallel`` fleet: no progress line (several hosts would share one)."""
    global _SEVERAL
    _SEVERAL = on


class Progress:
    """A context manager that keeps one status line up to date while its block runs, then clears it."""

    def __init__(self, label: str, *, measure: Callable[[], int | None] | None = None,
                 stream: TextIO | None = None, enabled: bool | None = None, interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.clock = clock
        self.measure = measure
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started = clock()
        self.lines = 0

    def line(self) -> str:
        elapsed = int(max(0.0, self.clock() - self.started))
        text = f"  {self.label}: " + (f"{elapsed // 60}m{elapsed % 60:02d}s" if elapsed >= 60 else f"{elapsed}s")
        if self.measure is not None:
            try:
                size = self.measure()
            except Exception:
                size = None
            if size is not None:
                text += f", {size / 1_048_576:,.1f} MB written"
        return text

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.stream.write("\r" + self.line() + "\033[K")
            self.stream.flush()
            self.lines += 1

    def __enter__(self) -> "Progress":
        self.started = self.clock()
        if self.enabled and not _SEVERAL:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            if self.lines:
                self.stream.write("\r\033[K")
                self.stream.flush()
