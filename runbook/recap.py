"""The last lines of a run, for a person: what happened, where the backup is, what to do next.

Built from the journal (the run's record: every step with its facts, each host's start and end
revision and backup), so it says the same with or without ``-v``. One host: the outcome line, then
from -> to, the backup and its size, the checks passed, the duration, and on failure what failed,
what was rolled back and to what; then ``next:`` and the run log. A fleet: its summary as a rich
table, then each host that did not end ok. Success goes to stdout, failure to stderr (cron mails
stderr); the ``runbook:`` lines keep their words so scripts grepping them still work.
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any

from rich.table import Table
from rich.text import Text

from . import console
from .console import FAIL, OK, WARN, clean, duration_ms, size


def render(options: Any, outcome: Any, jr: Any) -> None:
    """Print the recap of a finished run (not for ``--json``)."""
    failed = outcome.code != 0
    con = console.make(sys.stderr if failed else sys.stdout, no_color=getattr(options, "no_color", False))
    record = jr.record
    summary = getattr(outcome, "summary", None)
    out: list[Any] = []
    style = OK if not failed else FAIL if outcome.code in (1, 3) else WARN
    if summary is not None:
        from .fleet import report_lines

        out.extend(fleet_table(summary))
        out.extend(Text(f"runbook: {line}", style=style if i == len(report_lines(summary)) - 1 else "")
                   for i, line in enumerate(report_lines(summary)))
    else:  # the facts first: the verdict, next and the run log are the last lines (cron mails, tail -3)
        out.extend(facts_of(record, outcome.message))
        for name, host in (record.get("hosts") or {}).items():
            taken = host.get("backup") or {}
            if taken.get("backup_path"):
                who = f" of {name}" if len(record.get("hosts") or {}) > 1 else ""
                out.append(Text(f"runbook: backup{who} {taken['backup_path']} ({size(taken.get('backup_size'))})"))
        out.append(Text(f"runbook: {_one_line(outcome.message)}", style=style))
    nxt = outcome.next_command or default_next(outcome.code, record)
    if nxt:
        out.append(Text(f"runbook: next: {nxt}", style="bold"))
    out.append(Text(f"runbook: run log {jr.log_path}"))
    for item in out:
        if isinstance(item, Table) and item.show_header:  # the fleet's summary
            console.show(con, item)
        else:  # a runbook: line holds a path or a command to copy: never a newline inside it
            con.print(console._scrub(item), soft_wrap=isinstance(item, Text))


def facts_of(record: dict[str, Any], message: str = "") -> list[Any]:
    """The recap of a run's hosts, one labelled line each (a fleet's hosts are named)."""
    rows: list[tuple[str, str]] = []
    hosts = record.get("hosts") or {}
    steps = record.get("steps") or []
    several = len(hosts) > 1
    for name, host in hosts.items():
        mine = [s for s in steps if s.get("host") == name]
        who = f"{name}: " if several else ""
        start, end = host.get("start_revision"), host.get("end_revision")
        undone = [s for s in mine if s.get("phase") == "rollback"]
        if start is not None:
            up = next(((s.get("facts") or {}) for s in mine if s.get("step") == "upgrade"
                       and s.get("phase") == "run" and s.get("outcome") == "ok"), {})
            applied = up.get("applied") or []
            moved = f"{start} -> {end}" if end is not None and end != start else f"at {end or start}"
            if applied and undone:
                moved = f"{start} -> {up.get('to')}, back to {end or '?'}"
            rows.append((f"{who}revisions", moved + (f" (applied {', '.join(applied)})" if applied else "")))
        failure = next((s for s in mine if s.get("outcome") in ("failed", "interrupted")
                        and s.get("phase") == "run"), None)
        if failure is not None:
            why = _one_line(str((failure.get("facts") or {}).get("error")
                                or (failure.get("facts") or {}).get("signal") or ""))
            told = str(failure.get("step")) + (f": {why}" if why and why not in message else " (above)")
            rows.append((f"{who}failed", told))
        if undone:
            told = ", ".join(f"{s.get('step')} {s.get('outcome')}" for s in undone)
            rows.append((f"{who}rolled back", f"to {start}: {told}" if start else told))
        checks = [(s.get("facts") or {}) for s in mine if s.get("step") == "verify" and s.get("outcome") == "ok"]
        if checks:
            last = checks[-1]
            rows.append((f"{who}checks", f"{last.get('checks', 0)} passed at {last.get('revision')}"))
    took = seconds(record)
    if took is not None:
        rows.append(("duration", duration_ms(took * 1000)))
    width = max((len(label) for label, _ in rows), default=0)
    out = []
    for label, value in rows:  # a grid per line: the label column lined up, no padding after the value
        grid = Table.grid(padding=(0, 2))
        grid.add_column(no_wrap=True, style="dim", min_width=width)
        grid.add_column(overflow="fold")
        grid.add_row(label, clean(value))
        out.append(grid)
    return out


def seconds(record: dict[str, Any]) -> float | None:
    try:
        return (datetime.fromisoformat(str(record["finished"]))
                - datetime.fromisoformat(str(record["started"]))).total_seconds()
    except (KeyError, TypeError, ValueError):
        return None


def default_next(code: int, record: dict[str, Any]) -> str | None:
    """The next command when the outcome names none: after a rollback (exit 1) the database is as it
    was; once the cause (the ``failed`` line) is fixed, the dry run shows what the next attempt does."""
    if code == 1:
        return f"runbook {record.get('env')} {record.get('playbook')} --dry-run"
    return None


def fleet_table(summary: dict[str, Any]) -> list[Any]:
    """A fleet's summary: its head line, then one row per host (and per host not run), lined up by rich."""
    from .outcome import OK as DONE

    head = f"Fleet {summary['env']} ({summary['playbook']}"
    head += f", --parallel {summary['parallel']}" if summary["parallel"] > 1 else ""
    head += ", --canary" if summary["canary"] else ""
    head += ", --rollback-all" if summary["rollback_all"] else ""
    head += f", {summary['selection']}" if summary.get("selection") else ""
    head += f"): exit {summary['exit_code']}"
    if summary["stopped"]:
        head += f"; stopped: {summary['stopped']}"
    rows: list[tuple[Any, ...]] = []
    for r in summary["hosts"]:
        backup = str(r["backup"]).rsplit("/", 1)[-1] if r["backup"] else "-"
        mark = OK if r["exit_code"] == DONE else FAIL
        rows.append((r["host"], str(r["from"] or "-"), str(r["to"] or "-"), Text(str(r["outcome"]), style=mark),
                     str(r["exit_code"]), f"{r['duration_s']:.1f}s", backup))
    for name in summary["not_run"]:
        rows.append((name, "-", "-", "not run", "-", "-", "-"))
    return [Text(head, style="bold"), console.table(("HOST", "FROM", "TO", "OUTCOME", "EXIT", "DURATION", "BACKUP"), rows)]


def _one_line(text: str) -> str:
    return " / ".join(part.strip() for part in str(text).splitlines() if part.strip())
