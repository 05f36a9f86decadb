"""Progress lines on a terminal: elapsed time and bytes written, cleared at the end; silent otherwise."""

from __future__ import annotations

import io
import itertools
import threading

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


def _wait_for_lines(progress: Progress, stream: FakeTTY, count: int) -> None:
    for _ in range(500):
        if progress.lines >= count:
            return
        stream.wrote.wait(0.01)
        stream.wrote.clear()
    raise AssertionError(f"only {progress.lines} progress lines written")


def test_progress_shows_elapsed_time_and_size_then_clears_the_line() -> None:
    """On a TTY each tick rewrites one line with the elapsed time and MB written; exit erases it."""
    ticks = itertools.count(start=0, step=35)  # each clock reading is 35 s later than the last
    stream = FakeTTY()
    with Progress("pg_dump", stream=stream, interval=0.001, measure=lambda: 3 * 1_048_576,
                  clock=lambda: float(next(ticks))) as progress:
        _wait_for_lines(progress, stream, 3)
    text = stream.getvalue()
    frames = [f for f in text.split("\r") if f]
    assert frames[0] == "  pg_dump: 35s, 3.0 MB written\033[K"
    assert frames[1] == "  pg_dump: 1m10s, 3.0 MB written\033[K"
    assert all(f.endswith("\033[K") and "\n" not in f for f in frames)
    assert text.endswith("\r\033[K"), "the progress line is erased when the step ends"
    assert progress.lines == len(frames) - 1


def test_progress_survives_a_failing_measure() -> None:
    """A size that cannot be read leaves the elapsed time alone."""
    def broken() -> int:
        raise OSError("stat failed")

    stream = FakeTTY()
    with Progress("pg_restore", stream=stream, interval=0.001, measure=broken) as progress:
        _wait_for_lines(progress, stream, 1)
    first = stream.getvalue().split("\r")[1]
    assert first.startswith("  pg_restore: 0s") and "MB" not in first


def test_no_progress_without_a_terminal() -> None:
    """A stream that is not a TTY (cron, pipes) gets nothing, and no thread is started."""
    stream = io.StringIO()
    with Progress("pg_dump", stream=stream, interval=0.001) as progress:
        threading.Event().wait(0.02)
    assert stream.getvalue() == "" and progress.lines == 0 and progress._thread is None
