"""SIGINT, SIGTERM and SIGHUP during a run: a failure of the current step, never an abandoned rollback.

While a run is in progress, the first of these signals raises ``Interrupted`` in the main thread,
wherever it waits (a host command, a query, a lock wait): the step fails like any other and the
engine runs the playbook's ``on_failure`` steps. ``Interrupted`` is a ``KeyboardInterrupt``, which is
what psycopg (it cancels the running query on the server) and click (a prompt answers "not
confirmed") already handle as an interrupt. Every later signal, and any signal while ``shielded``
(the rollback, the last journal writes), is only recorded and logged: SIGKILL is the only way to
abandon a rollback, and ``status`` then says where it stopped.

A fleet run with ``--parallel`` runs its hosts in worker threads, where no signal is ever raised.
There the main thread turns the signal into a stop (``request_stop``) and each worker sees it at its
next ``checkpoint``: between steps, in every wait for a host command, in every ``sleep`` (lock waits,
retries), while waiting for the in-process Alembic lock. It raises ``Interrupted`` there, once per
worker, so the host's step fails and its rollback runs as it would in the main thread. Shielding is
per thread: a worker's rollback is shielded from the stop, and only the main thread's own shield
holds back a signal (a worker rolling back never makes the main thread ignore a signal).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
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
        self._local = threading.local()  # per thread: its shield depth, whether its stop was raised
        self._raised = False
        self._saved: dict[int, Any] = {}
        self.stop_signal: int | None = None  # the signal a fleet's workers stop for (``request_stop``)
        self.stopped = threading.Event()     # set with it: wakes the workers' ``sleep``

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

    @property
    def _shield(self) -> int:
        """The calling thread's shield depth (the handler runs in the main thread: the main thread's)."""
        return int(getattr(self._local, "depth", 0))

    @contextlib.contextmanager
    def shielded(self) -> Iterator[None]:
        """Signals inside the block are recorded and reported, never raised (a worker's stop too)."""
        self._local.depth = self._shield + 1
        try:
            yield
        finally:
            self._local.depth = self._shield - 1

    def request_stop(self, signum: int) -> None:
        """The fleet stops: every worker raises ``Interrupted(signum)`` at its next checkpoint."""
        if self.stop_signal is None:
            self.stop_signal = signum
        self.stopped.set()

    def pending(self) -> Interrupted | None:
        """The stop this worker thread has to obey now (once), or None: no stop requested, the main
        thread (signals reach it directly), shielded, or already told."""
        if self.stop_signal is None or threading.current_thread() is threading.main_thread():
            return None
        if self._shield or getattr(self._local, "told", False):
            return None
        self._local.told = True
        return Interrupted(self.stop_signal)

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


def checkpoint() -> None:
    """In a fleet's worker thread: raise ``Interrupted`` once a stop was requested (see the module)."""
    handlers = _current
    if handlers is not None and handlers.stop_signal is not None:
        stop = handlers.pending()
        if stop is not None:
            raise stop


def new_task() -> None:
    """A worker thread starts another host: the stop it was told about belongs to the last one."""
    handlers = _current
    if handlers is not None:
        handlers._local.told = False


def pending() -> Interrupted | None:
    """The stop this worker must obey now, if any (``Interrupts.pending``)."""
    handlers = _current
    return handlers.pending() if handlers is not None else None


def stop_requested() -> bool:
    handlers = _current
    return handlers is not None and handlers.stop_signal is not None


def sleep(seconds: float) -> None:
    """``time.sleep`` that a fleet's stop cuts short in a worker thread (then raises ``Interrupted``)."""
    handlers = _current
    if handlers is None or threading.current_thread() is threading.main_thread():
        time.sleep(seconds)
        return
    if handlers._shield or getattr(handlers._local, "told", False):
        time.sleep(seconds)  # a rollback's waits are never cut short
        return
    handlers.stopped.wait(seconds)
    checkpoint()


def acquire(lock: Any) -> None:
    """Take ``lock``; a worker waiting for it stops waiting when the fleet stops (unless shielded)."""
    while not lock.acquire(timeout=0.2):
        checkpoint()
