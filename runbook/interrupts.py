"""SIGINT, SIGTERM and SIGHUP during a run: a failure of the current step, never an abandoned rollback.

While a run is in progress, the first of these signals raises ``Interrupted`` in the main thread,
wherever it waits (a host command, a query, a lock wait): the step fails like any other and the
engine runs the playbook's ``on_failure`` steps. ``Interrupted`` is a ``KeyboardInterrupt``, which is
what psycopg (it cancels the running query on the server) and click (a prompt answers "not
confirmed") already handle as an interrupt. Every later signal, and any signal while ``shielded``
(the rollback, the last journal writes), is only recorded and logged: SIGKILL is the only way to
abandon a rollback, and ``status`` then says where it stopped.
"""

from __future__ import annotations

import contextlib
import signal
from types import FrameType
from typing import Any, Callable, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A signal stopped the run; ``name`` is SIGINT, SIGTERM or SIGHUP."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(self.name)

    def __str__(self) -> str:
        return f"interrupted by {self.name}"


class Interrupts:
    """The run's signal handlers (installed with ``with``; the previous ones are put back after)."""

    def __init__(self, on_ignored: Callable[[str, str], None] | None = None) -> None:
        self.received: list[str] = []
        self.on_ignored = on_ignored
        self._shield = 0
        self._raised = False
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> "Interrupts":
        for sig in SIGNALS:
            self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._saved.items():
            signal.signal(sig, old)
        self._saved.clear()

    @property
    def first(self) -> str | None:
        return self.received[0] if self.received else None

    @contextlib.contextmanager
    def shielded(self) -> Iterator[None]:
        """Signals inside the block are recorded and reported, never raised."""
        self._shield += 1
        try:
            yield
        finally:
            self._shield -= 1

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        self.received.append(name)
        if self._shield or self._raised:
            if self.on_ignored is not None:
                why = "the rollback goes on" if self._shield else "already stopping"
                self.on_ignored(name, why)
            return
        self._raised = True
        raise Interrupted(signum)


# The run's handlers, for the code that must not be interrupted half-way (see ``shielded``).
_current: Interrupts | None = None


def current() -> Interrupts | None:
    return _current


@contextlib.contextmanager
def installed(on_ignored: Callable[[str, str], None] | None = None) -> Iterator[Interrupts]:
    """Install the run's handlers for the block; ``current()`` returns them meanwhile."""
    global _current
    with Interrupts(on_ignored) as handlers:
        previous, _current = _current, handlers
        try:
            yield handlers
        finally:
            _current = previous


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """``Interrupts.shielded`` of the run's handlers, or nothing when none are installed."""
    handlers = _current
    if handlers is None:
        yield
        return
    with handlers.shielded():
        yield
