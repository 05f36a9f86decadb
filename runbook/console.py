"""The console a person reads at 3 a.m.: one line per step, per revision and per finding.

structlog's last processor when there is neither ``--json`` nor ``-v`` (see log.configure): each
event, already redacted and written whole to the run log, becomes at most one short line on stderr,
or nothing (the run log keeps everything). A step's line says its outcome, duration and key fact;
a revision applied is a line of its own, as Flyway, Atlas and Sqitch print them; every warning and
error the console has no special line for still gets a short generic one, so nothing that went
wrong is hidden. The recap after the run is recap.py.

Rendered with rich (well kept, no dependency of its own beyond pygments/markdown-it): it wraps on
words at the terminal's width, lines up columns, animates only on a terminal and writes no escape
sequence at all when colour is off (``NO_COLOR``, ``--no-color``, ``TERM=dumb``). ``-v`` keeps
structlog's ConsoleRenderer (today's full event stream), printed through the same rich console so a
progress spinner and the lines never overwrite each other.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Callable, MutableMapping, TextIO

import structlog
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .log import REDACTOR

_LOCK = threading.Lock()
_CONSOLE: Console | None = None
_PLAIN = False
_HOSTS = False  # a fleet: every line starts with its host (log.prefix_hosts)
_NAMES: Callable[[str], str | None] = lambda rev: None  # noqa: E731 - revision id -> its message


def colour_off(flag: bool = False) -> bool:
    """``--no-color``, ``NO_COLOR`` set to anything non-empty (no-color.org) or ``TERM=dumb``."""
    return flag or bool(os.environ.get("NO_COLOR")) or os.environ.get("TERM") == "dumb"


def make(stream: TextIO | None = None, *, no_color: bool = False, tty: bool | None = None) -> Console:
    """A rich console on ``stream`` (stderr). Without colour: no style and no animation, so not a
    single escape byte. Off a terminal (cron's mail, a file, a pipe) lines are never wrapped, even
    with COLUMNS in the environment (pytest-xdist and some shells export it): one event, one line,
    for grep."""
    stream = stream or sys.stderr
    try:
        tty = stream.isatty() if tty is None else tty
    except (AttributeError, ValueError):
        tty = False
    plain = colour_off(no_color)
    width = None if tty else 4096
    return Console(file=stream, force_terminal=tty and not plain, color_system=None if plain else "auto",
                   no_color=plain, width=width, highlight=False, markup=False, emoji=False,
                   soft_wrap=False, force_jupyter=False, force_interactive=tty and not plain)


def setup(stream: TextIO | None = None, *, no_color: bool = False, tty: bool | None = None) -> Console:
    """The process's console (log.configure calls this once per run)."""
    global _CONSOLE, _PLAIN
    with _LOCK:
        _CONSOLE = make(stream, no_color=no_color, tty=tty)
        _PLAIN = colour_off(no_color)
    return _CONSOLE


def get() -> Console:
    return _CONSOLE if _CONSOLE is not None else setup()


def animated() -> bool:
    """A spinner may run: a terminal, colour on, not a dumb one."""
    con = get()
    return con.is_terminal and not con.is_dumb_terminal and not _PLAIN


def prefix_hosts(on: bool) -> None:
    global _HOSTS
    _HOSTS = on


def revision_names(lookup: Callable[[str], str | None]) -> None:
    """How a revision id becomes its message for the ``applied`` lines (the run's Alembic project)."""
    global _NAMES
    _NAMES = lookup


def say(*renderables: Any) -> None:
    """Print through the console, secrets removed (every line a person sees passes REDACTOR)."""
    get().print(*(_scrub(r) for r in renderables))


def clean(text: Any) -> str:
    """``text`` without any secret REDACTOR knows: for the cells of tables and grids."""
    return str(REDACTOR.scrub(str(text)))


def _scrub(r: Any) -> Any:
    if isinstance(r, str):
        return Text(str(REDACTOR.scrub(r)))
    if isinstance(r, Text):
        clean = str(REDACTOR.scrub(r.plain))
        return r if clean == r.plain else Text(clean, style=r.style)
    return r


# -- sizes and times, as a person reads them -----------------------------------------------------

def size(n: Any) -> str:
    from .backups import human_size

    return human_size(float(n)) if isinstance(n, (int, float)) else "size unknown"


def duration_ms(ms: Any) -> str:
    if not isinstance(ms, (int, float)):
        return ""
    if ms < 1000:
        return f"{int(ms)} ms"
    s = ms / 1000
    return f"{s:.1f} s" if s < 60 else f"{int(s // 60)}m{int(s % 60):02d}s"


# -- the lines -----------------------------------------------------------------------------------

OK, FAIL, WARN, INFO = "green", "bold red", "yellow", "cyan"
NARROW = 80  # columns: below this a line is one wrapped text, not fixed columns


def row(tag: str, style: str, name: str = "", took: str = "", fact: str = "", host: str | None = None) -> Any:
    """One line in fixed columns (tag, name, duration, fact); the fact wraps on words inside its column."""
    if get().width < NARROW:  # fixed columns would leave the fact too little room: one wrapped line
        line = Text.assemble(*([(clean(f"[{host}] "), "dim")] if host is not None else []), (tag, style),
                             " " if tag else "", (clean(name), "bold"), " " if name else "", (took, "dim"),
                             " " if took else "", clean(fact))
        return line
    grid = Table.grid(padding=(0, 1))
    if host is not None:
        grid.add_column(no_wrap=True)
    grid.add_column(min_width=7, no_wrap=True)
    grid.add_column(min_width=11, no_wrap=True)
    grid.add_column(min_width=6, justify="right", no_wrap=True)
    grid.add_column(overflow="fold")
    cells = [Text(tag, style=style), Text(clean(name), style="bold"), Text(took, style="dim"), Text(clean(fact))]
    if host is not None:
        cells.insert(0, Text(clean(f"[{host}]"), style="dim"))
    grid.add_row(*cells)
    return grid


def step_fact(step: str, e: MutableMapping[str, Any]) -> str:
    """The one fact of a finished step a person wants first."""
    if step == "backup" and e.get("backup_path"):
        folder, _, name = str(e["backup_path"]).rpartition("/")
        return f"{name} ({size(e.get('backup_size'))})" + (f" in {folder}" if folder else "")
    if step == "check_locks":
        blockers = e.get("blockers") or []
        told = f"blockers: {len(blockers)}" if blockers else "blockers: none"
        if e.get("terminated"):
            told += f", terminated {len(e['terminated'])}"
        tables = e.get("tables") or []
        return told + (f" (tables {', '.join(map(str, tables))})" if tables else "")
    if step == "upgrade":
        if not e.get("applied"):
            return f"nothing to migrate (at {e.get('from')})"
        return f"{e.get('from')} -> {e.get('to')}"
    if step == "downgrade":
        if "reverted" not in e:
            return f"nothing to downgrade (at {e.get('from')})"
        return f"{e.get('from')} -> {e.get('to')}"
    if step == "rollback":
        if e.get("restored"):
            return f"{e.get('from')} -> restored {e.get('restored')}"
        return f"{e.get('from')} -> {e.get('to')}" if e.get("undo") else f"nothing to roll back (at {e.get('from')})"
    if step == "verify":
        checks, failed = e.get("checks", 0), e.get("failed", 0)
        return f"{checks} checks passed" + (f", {failed} failed" if failed else "") + f" at {e.get('revision')}"
    if step == "prune":
        pruned = e.get("pruned") or []
        return f"kept {e.get('kept', 0)} (keep {e.get('keep')}), pruned {len(pruned)}" + (
            f": {', '.join(map(str, pruned))}" if pruned else "")
    if step == "restore" and e.get("restored"):
        return f"restored {e['restored']}" + (f"; the state it replaced saved as {e['saved_current_state']}"
                                              if e.get("saved_current_state") else "")
    if step == "rehearse":
        return str(e.get("summary") or ("rehearsed" if e.get("rehearsed") else "nothing to rehearse"))
    return ""


class Human:
    """The renderer without ``-v``: prints its line itself (through rich), then drops the event."""

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}  # host -> when its last revision (or attempt) began

    def __call__(self, logger: Any, name: str, event: MutableMapping[str, Any]) -> Any:
        try:
            line = self.line(event)
        except Exception:  # noqa: BLE001 - the console never stops a run; the run log has the event
            line = None
        if line is not None:
            say(line)
        raise structlog.DropEvent

    def line(self, e: MutableMapping[str, Any]) -> Any:
        ev = str(e.get("event"))
        host = str(e["host"]) if _HOSTS and e.get("host") else None
        key = str(e.get("host") or "")
        step = str(e.get("step") or "")
        if ev == "run_started":
            heads = e.get("heads")
            return row("start", INFO, str(e.get("playbook") or ""), "",
                       f"at {e.get('revision')}" + (f", head {heads}" if heads else ""), host)
        if ev == "step_finished":
            return row("ok", OK, step, duration_ms(e.get("duration_ms")), step_fact(step, e), host)
        if ev == "step_failed":
            return row("FAILED", FAIL, step, duration_ms(e.get("duration_ms")), _first(e.get("error")), host)
        if ev == "step_interrupted":
            return row("STOP", FAIL, step, duration_ms(e.get("duration_ms")), f"interrupted by {e.get('signal')}", host)
        if ev == "migration_attempt":
            self.marks[key] = time.monotonic()
            n = e.get("attempt")
            return None if n == 1 else row("retry", WARN, step, "", f"attempt {n} of the {e.get('direction')}", host)
        if ev in ("revision_applied", "revision_reverted"):
            now = time.monotonic()
            took = duration_ms((now - self.marks.get(key, now)) * 1000)
            self.marks[key] = now
            rev = str(e.get("revision"))
            doc = _doc(rev)
            word = "applied" if ev == "revision_applied" else "reverted"
            return row("", "", "", "", f"{word} {rev}" + (f" {doc}" if doc else "") + (f" ({took})" if took else ""),
                       host)
        if ev == "lint_finding":
            where = f"{os.path.basename(str(e.get('path') or ''))}:{e.get('line')}" if e.get("path") else ""
            level = str(e.get("severity") or "")
            return row(level or "lint", WARN if level != "error" else FAIL, "lint", "",
                       f"{e.get('rule')}: {_clause(e.get('message'))}" + (f" ({where})" if where else ""), host)
        if ev == "check_failed":
            return row("FAILED", FAIL, "check", "", f"{e.get('check')}: {_first(e.get('problem'))}", host)
        if ev == "sample_data_loaded":
            return row("", "", "", "", f"sample data loaded at {e.get('revision')}", host)
        if ev == "rollback_started":
            return row("undo", WARN, "rollback", "", f"back to {e.get('start_revision')}", host)
        if ev == "rollback_finished":
            return row("ok", OK, "rollback", "", f"at {e.get('revision')} again ({e.get('how')})", host)
        if ev == "rollback_incomplete":
            return row("FAILED", FAIL, "rollback", "", f"the database is {e.get('state')}", host)
        if ev == "step_skipped" and e.get("reason"):  # a run's step with nothing to do (not a rollback's)
            return row("skip", "dim", step, "", _first(e.get("reason")), host)
        if ev == "database_swapped":
            return row("swap", OK, step, "", f"{e.get('database')} is now the restored copy; the database it replaced "
                       f"is kept as {e.get('kept_as')}", host)
        if ev == "lock_timeout_retry":
            return row("retry", WARN, step, "", f"lock timeout, try {e.get('attempt')} in {e.get('sleep_s')} s", host)
        if ev == "lock_wait":
            return row("wait", WARN, step, "", f"{len(e.get('sessions') or [])} blocking session(s); waiting, "
                       f"{e.get('remaining_s')} s left", host)
        if ev == "blocker_terminated":
            return row("kill", WARN, step, "", f"terminated blocker pid {e.get('pid')} ({e.get('user')}, "
                       f"{e.get('application') or '-'})", host)
        if ev in ("host_finished",):
            return row("done" if e.get("exit_code") == 0 else "FAILED", OK if e.get("exit_code") == 0 else FAIL,
                       str(e.get("outcome") or ""), f"{e.get('duration_s')} s", "", host)
        if ev in _QUIET or e.get("level") not in ("warning", "error", "critical"):
            return None
        level = str(e.get("level"))
        return row("warn" if level == "warning" else "error", WARN if level == "warning" else FAIL, ev, "",
                   _generic(e), host)


# Warnings and errors whose content another line already says (the step's line, the recap).
_QUIET = {"run_finished", "internal_error", "signal_after_run"}
_SKIP = {"event", "level", "timestamp", "host", "step", "run_id", "env", "phase", "exception", "console"}


def _generic(e: MutableMapping[str, Any]) -> str:
    """The fields of an event without a line of its own, short: the error or reason first."""
    for key in ("error", "reason", "problem", "action", "message"):
        if e.get(key):
            return _first(e[key])
    parts = [f"{k}={v}" for k, v in e.items() if k not in _SKIP and v not in (None, "", [], {})]
    return ", ".join(parts)[:300]


def _first(text: Any) -> str:
    lines = [part.strip() for part in str(text or "").splitlines() if part.strip()]
    return " / ".join(lines)[:500]


def _clause(text: Any) -> str:
    """A finding's first clause ("sets NOT NULL on t.c"): the why is in the run log and ``runbook lint``."""
    return _first(text).split(": ", 1)[0]


def _doc(rev: str) -> str:
    """A revision's message: its docstring's first line, up to the first colon; Alembic's slug
    (``require_collection_description``) in words."""
    try:
        doc = (_NAMES(rev) or "").strip()
    except Exception:  # noqa: BLE001 - a revision the project cannot name: its id is enough
        return ""
    if not doc:
        return ""
    head = doc.splitlines()[0].split(": ", 1)[0].rstrip(".")
    return head.replace("_", " ") if " " not in head else head


class Verbose:
    """``-v``: structlog's ConsoleRenderer (today's full stream), printed through the rich console."""

    def __init__(self, colors: bool) -> None:
        self.renderer = structlog.dev.ConsoleRenderer(colors=colors,
                                                      exception_formatter=structlog.dev.plain_traceback)

    def __call__(self, logger: Any, name: str, event: MutableMapping[str, Any]) -> Any:
        text = self.renderer(logger, name, event)
        get().print(Text.from_ansi(str(text)) if not _PLAIN else Text(str(text)))
        raise structlog.DropEvent


# -- tables (history, status, a fleet's summary) --------------------------------------------------

def table(columns: tuple[str, ...], rows: list[tuple[Any, ...]], *, title: str | None = None,
          headers: bool = True) -> Table:
    """Columns lined up by rich: headers bold, no box (copy-pasteable), cells free of secrets, never
    wrapped (see ``show``)."""
    out = Table(title=clean(title) if title else None, title_justify="left", title_style="bold", box=None,
                padding=(0, 2, 0, 0), show_edge=False, header_style="bold", pad_edge=False, show_header=headers)
    for name in columns:
        out.add_column(name, no_wrap=True)
    for cells in rows:
        out.add_row(*(c if isinstance(c, Text) else Text(clean(c)) for c in cells))
    return out


def stdout(no_color: bool = False) -> Console:
    """A console on stdout (status, history, dry-run: what a command answers, not how a run goes)."""
    return make(sys.stdout, no_color=no_color)


def show(con: Console, renderable: Any) -> None:
    """Print a table at its natural width: rows are never cut, and no cell is folded inside a word
    (a file name, a run id); on a terminal narrower than the table, the terminal wraps its lines and
    copying still gives them whole."""
    if isinstance(renderable, Table):
        from rich.measure import Measurement

        natural = Measurement.get(con, con.options.update_width(10_000), renderable).maximum
        if natural > con.width:  # rich never prints wider than its console: a wider one, same file and colours
            wide = Console(file=con.file, width=natural, force_terminal=con.is_terminal,
                           color_system=con.color_system,  # type: ignore[arg-type] # a name it gave
                           no_color=con.no_color, highlight=False, markup=False, emoji=False, force_jupyter=False)
            wide.print(renderable, crop=False)
            return
    con.print(renderable)
