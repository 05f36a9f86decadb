"""Progress on a terminal: a spinner line with the elapsed time and bytes written (rich's Live),
erased at the end; nothing off a terminal or with colour off."""

from __future__ import annotations

import io
import itertools
import re
import threading

import pytest

from runbook.progress import Progress


class FakeTTY(io.StringIO):
    """A stream that says it is a terminal and signals each write."""

    def __init__(self) -> None:
        super().__init__()
        self.wrote = threading.Event()

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        n = super().write(text)
        self.wrote.set()
        return n


@pytest.fixture(autouse=True)
def colour_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")


def _wait_for_lines(progress: Progress, count: int) -> None:
    for _ in range(500):
        if progress.lines >= count:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"only {progress.lines} progress lines drawn")


def test_progress_shows_elapsed_time_and_size_then_clears_the_line() -> None:
    """On a TTY each redraw shows the elapsed time and MB written; the end erases the line."""
    ticks = itertools.count(start=0, step=35)  # each clock reading is 35 s later than the last
    stream = FakeTTY()
    with Progress("pg_dump", stream=stream, interval=0.001, measure=lambda: 3 * 1_048_576,
                  clock=lambda: float(next(ticks))) as progress:
        _wait_for_lines(progress, 3)
    text = stream.getvalue()
    shown = re.findall(r"pg_dump: (\d+m\d\ds|\d+s), 3\.0 MB written", text)
    assert len(shown) >= 2 and all(re.fullmatch(r"\d+m\d\ds|35s", s) for s in shown), text
    assert any(s.endswith("m10s") or s.endswith("m45s") for s in shown), "minutes past 60 s"
    assert text.count("\n") <= 1 and "\r\x1b[2K" in text, "one line, redrawn in place"
    tail = text[text.rindex("written"):]
    assert "\x1b[2K" in tail, "the progress line is erased when the step ends"


def test_progress_survives_a_failing_measure() -> None:
    """A size that cannot be read leaves the elapsed time alone."""
    def broken() -> int:
        raise OSError("stat failed")

    stream = FakeTTY()
    with Progress("pg_restore", stream=stream, interval=0.001, measure=broken) as progress:
        _wait_for_lines(progress, 1)
    assert "pg_restore: 0s" in stream.getvalue() and "MB" not in stream.getvalue()


def test_no_progress_without_a_terminal() -> None:
    """A stream that is not a TTY (cron, pipes) gets nothing, and nothing is drawn."""
    stream = io.StringIO()
    with Progress("pg_dump", stream=stream, interval=0.001) as progress:
        threading.Event().wait(0.05)
    assert stream.getvalue() == "" and progress.lines == 0 and progress._live is None


@pytest.mark.parametrize("env", [{"NO_COLOR": "1"}, {"TERM": "dumb"}])
def test_no_progress_with_colour_off(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """NO_COLOR or TERM=dumb on a terminal: no spinner, so not one escape byte."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    stream = FakeTTY()
    with Progress("pg_dump", stream=stream, interval=0.001) as progress:
        threading.Event().wait(0.05)
    assert stream.getvalue() == "" and progress.lines == 0
