"""Progress on long steps (backup, restore) for a person at a terminal.

A spinner line (rich's Live) with the elapsed time and, where it can be measured cheaply, the bytes
written so far. Nothing is shown without a TTY, with ``--json`` or with colour off: cron logs and
machines get the structured events only; nor while a fleet runs several hosts at once
(``several_at_once``): their lines would overwrite each other's.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, Callable, TextIO


_SEVERAL = False


def several_at_once(on: bool) -> None:
    """A ``--parallel`` fleet: no progress line (several hosts would share one)."""
    global _SEVERAL
    _SEVERAL = on


class Progress:
    """A context manager that keeps one spinner line (label, elapsed time, MB written) up to date
    while its block runs, then clears it.

    Drawn by rich's Live on the run's console (console.py), so the step and event lines printed
    meanwhile appear above it instead of overwriting it; never drawn off a terminal, with colour off
    (``NO_COLOR``, ``--no-color``, ``TERM=dumb``: not one escape byte) or while several hosts run."""

    def __init__(self, label: str, *, measure: Callable[[], int | None] | None = None,
                 stream: TextIO | None = None, enabled: bool | None = None, interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.clock = clock
        self.measure = measure
        self.stream = stream  # None: the run's console on stderr
        self.enabled = (stream or sys.stderr).isatty() if enabled is None else enabled
        self.interval = interval
        self._live: Any = None
        self._spinner: Any = None
        self._lock = threading.Lock()
        self._due = 0.0
        self.started = 0.0  # read on entering
        self.lines = 0  # how many times the line was measured and redrawn

    def line(self) -> str:
        elapsed = int(max(0.0, self.clock() - self.started))
        text = f"{self.label}: " + (f"{elapsed // 60}m{elapsed % 60:02d}s" if elapsed >= 60 else f"{elapsed}s")
        if self.measure is not None:
            try:
                size = self.measure()
            except Exception:
                size = None
            if size is not None:
                text += f", {size / 1_048_576:,.1f} MB written"
        return text

    def _frame(self) -> Any:
        """Called by Live's refresh thread several times a second: the spinner turns each time, the
        text (and its measure, a command on the host) is renewed once per ``interval``."""
        from rich.text import Text

        with self._lock:
            now = time.monotonic()
            if now >= self._due:
                self._due = now + self.interval
                self._spinner.update(text=Text(self.line()))
                self.lines += 1
            return self._spinner

    def __enter__(self) -> "Progress":
        from . import console

        self.started = self.clock()
        if not self.enabled or _SEVERAL:
            return self
        con = console.get() if self.stream is None else console.make(self.stream, tty=self.stream.isatty())
        if not con.is_terminal or con.is_dumb_terminal or con.color_system is None:
            return self
        from rich.live import Live
        from rich.spinner import Spinner

        self._spinner = Spinner("dots", text=self.label, style="cyan")
        self._live = Live(console=con, get_renderable=self._frame, transient=True, refresh_per_second=8,
                          redirect_stdout=False, redirect_stderr=False)
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()  # transient: the line is erased
            self._live = None
