"""The run's signal handlers: the first signal raises Interrupted, later ones and shielded ones are only recorded."""

from __future__ import annotations

import os
import signal
import time

import pytest

from runbook import interrupts
from runbook.interrupts import Interrupted


def _signal_self(sig: signal.Signals) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(0.05)  # the handler runs in the main thread at the next bytecode


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_first_signal_raises_interrupted_naming_it(sig: signal.Signals) -> None:
    """SIGINT, SIGTERM and SIGHUP each raise Interrupted (a KeyboardInterrupt, as psycopg and click expect)."""
    with interrupts.installed() as handlers:
        with pytest.raises(Interrupted) as info:
            _signal_self(sig)
    assert info.value.name == sig.name and str(info.value) == f"interrupted by {sig.name}"
    assert isinstance(info.value, KeyboardInterrupt)
    assert handlers.received == [sig.name]


def test_signals_while_shielded_or_after_the_first_are_recorded_not_raised() -> None:
    """A signal during the rollback (shielded), or a second one while stopping, never raises: it is reported."""
    ignored: list[tuple[str, str]] = []
    with interrupts.installed(on_ignored=lambda name, why: ignored.append((name, why))) as handlers:
        with interrupts.shielded():
            _signal_self(signal.SIGTERM)
        with pytest.raises(Interrupted):
            _signal_self(signal.SIGINT)
        _signal_self(signal.SIGHUP)  # already stopping: not raised again
    assert handlers.received == ["SIGTERM", "SIGINT", "SIGHUP"]
    assert ignored == [("SIGTERM", "the rollback goes on"), ("SIGHUP", "already stopping")]


def test_previous_handlers_are_put_back() -> None:
    """Outside a run, signals behave as before (the handlers are the run's only)."""
    before = {s: signal.getsignal(s) for s in interrupts.SIGNALS}
    with interrupts.installed():
        assert interrupts.current() is not None
    assert {s: signal.getsignal(s) for s in interrupts.SIGNALS} == before
    assert interrupts.current() is None
    with interrupts.shielded():  # no handlers installed: a no-op
        pass
