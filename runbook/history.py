"""``runbook ENV history``: the past runs of an environment from its journal, newest first.

Built in like ``status`` but lighter still: it reads ``.runbook/runs/*.json`` next to the inventory
and nothing else (no host, no database, no password variable, no run lock, no journal of its own),
so it answers at 3 a.m. from the control machine even when the database is down.

Each run: when it started, the playbook, its outcome (a run still ``running`` whose runner is gone is
INCOMPLETE, with where it died; a run a signal stopped is flagged INTERRUPTED), exit code, duration,
the revisions from and to and the backup on each host, who started it (user, sudo user, control
host) and how (terminal, cron, systemd, other), as recorded by the run at its start
(``runner.invocation``). ``--json`` prints one JSON object per line, one line per run.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import click

from . import journal

DEFAULT_LIMIT = 20


def parse_limit(value: str | None) -> int:
    """``--limit N`` for history: a positive whole number (a fleet's ``--limit`` is another thing)."""
    from .errors import ConfigError

    if value is None:
        return DEFAULT_LIMIT
    text = value.strip()
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"--limit '{value}': history takes a positive whole number of runs, e.g. --limit 50")
    return int(text)


def render(inventory_path: Path, env_name: str, options: Any) -> int:
    from . import inventory
    from .errors import ConfigError

    limit = parse_limit(options.limit)
    for flag, given in (("--to", options.to), ("--restore", options.restore)):
        if given is not None:
            raise ConfigError(f"{flag} does not apply to history")
    inv = inventory.load(inventory_path)
    inv.config_of(env_name)  # an unknown environment is an error, as for any command
    rows = [summary(rec) for rec in journal.runs(inv.state_dir, env_name)[:limit]]
    if options.json:
        from .log import machine_line

        for row in rows:
            click.echo(machine_line({"event": "run", **row}))
        return 0
    click.echo(table(env_name, rows))
    return 0


def summary(rec: journal.RunRecord) -> dict[str, Any]:
    """One run as ``history`` shows it (and as ``--json`` prints it)."""
    d = rec.data
    incomplete = rec.incomplete
    interrupted = d.get("interrupted") if isinstance(d.get("interrupted"), dict) else None
    flags = (["INCOMPLETE"] if incomplete else []) + (["INTERRUPTED"] if interrupted else [])
    hosts = []
    for name, h in (d.get("hosts") or {}).items():
        backup = (h.get("backup") or {}).get("backup_path")
        hosts.append({"host": name, "from": h.get("start_revision"), "to": h.get("end_revision"),
                      "backup": backup})
    by = dict(d.get("started_by") or {})
    if not by:  # a run recorded before runs said who started them
        by = {"user": None, "sudo_user": None, "control_host": d.get("control_host"), "how": None}
    last = rec.last_step() or {}
    return {"run_id": d.get("run_id"), "env": d.get("env"), "playbook": d.get("playbook"),
            "started": d.get("started"), "finished": d.get("finished"), "duration_s": _duration(d),
            "outcome": "incomplete" if incomplete else d.get("status"), "status": d.get("status"),
            "flags": flags, "exit_code": d.get("exit_code"), "interrupted": interrupted,
            "stopped": _where_it_stopped(last, interrupted) if incomplete else None,
            "last_step": {k: last.get(k) for k in ("host", "step", "phase", "outcome")} if last else None,
            "hosts": hosts, "started_by": by, "window_ignored": bool(d.get("window_ignored")),
            "argv": d.get("argv")}


def _duration(d: dict[str, Any]) -> float | None:
    try:
        return round((datetime.fromisoformat(d["finished"]) - datetime.fromisoformat(d["started"])).total_seconds(), 3)
    except (KeyError, TypeError, ValueError):
        return None


def _where_it_stopped(last: dict[str, Any], interrupted: dict[str, Any] | None) -> str:
    """'its runner died during the rollback's restore, after SIGTERM during upgrade' and the like."""
    phase = "the rollback's " if last.get("phase") == "rollback" else ""
    where = f"its runner died during {phase}{last.get('step') or 'start-up'}"
    if interrupted and interrupted.get("signal"):
        where += f", after {interrupted['signal']} during {interrupted.get('step') or 'start-up'}"
    return where


# -- the console rendering: one function, so a console library can take its place ---------------

COLUMNS = ("STARTED (UTC)", "PLAYBOOK", "OUTCOME", "EXIT", "DURATION", "REVISIONS", "BACKUP", "WHO", "HOW",
           "RUN ID")


def table(env: str, rows: list[dict[str, Any]]) -> str:
    """The runs as a plain aligned table, then a line for each flagged run."""
    if not rows:
        return f"Environment {env}: no runs recorded"
    cells = [COLUMNS]
    notes: list[str] = []
    for r in rows:
        outcome = str(r["outcome"] or "?")
        if r["flags"] and r["outcome"] != "incomplete":
            outcome += " " + " ".join(r["flags"])
        elif r["outcome"] == "incomplete":
            outcome = " ".join(r["flags"])
        if r["window_ignored"]:
            outcome += " (window ignored)"
        by = r["started_by"]
        who = f"{by.get('user') or '?'}@{by.get('control_host') or '?'}"
        if by.get("sudo_user"):
            who += f" (sudo from {by['sudo_user']})"
        how = str(by.get("how") or "?")
        if by.get("unit"):
            how += f" {by['unit']}"
        revisions = "; ".join(f"{h['host']} {h['from'] or '?'}->{h['to'] or '?'}" for h in r["hosts"]) or "-"
        backups = "; ".join(str(h["backup"]).rsplit("/", 1)[-1] for h in r["hosts"] if h["backup"]) or "-"
        started = str(r["started"] or "?")[:19].replace("T", " ")
        duration = f"{r['duration_s']:.1f}s" if r["duration_s"] is not None else "-"
        exit_code = "-" if r["exit_code"] is None else str(r["exit_code"])
        cells.append((started, str(r["playbook"]), outcome, exit_code, duration, revisions, backups, who, how,
                      str(r["run_id"])))
        if r["stopped"]:
            notes.append(f"  {r['run_id']} INCOMPLETE: {r['stopped']}")
        elif r["interrupted"]:
            sig = r["interrupted"]
            notes.append(f"  {r['run_id']} INTERRUPTED: {sig.get('signal')} during {sig.get('step') or 'start-up'}")
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = [f"Environment {env}: the last {len(rows)} run{'s' if len(rows) != 1 else ''}, newest first"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in cells]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)
