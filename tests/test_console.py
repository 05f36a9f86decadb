"""The console a person reads, under a real pseudo-terminal: the step lines, the recap, colour or none.

Each test runs the real ``runbook`` command with its stdin, stdout and stderr on the slave side of a
pty (``os.openpty``) sized by TIOCSWINSZ, against the test PostgreSQL database (local transport),
and reads everything the terminal would have shown from the master side.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from tests.fixtures.project import PASSWORD_ENV, Project

ESC = b"\x1b"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
FAILING_CHECK = [{"name": "every collection has a slug",
                  "sql": "SELECT count(*) FROM collections WHERE slug IS NULL", "expect": 0}]


def on_terminal(project: Project, *args: str, columns: int = 120, env: dict[str, str] | None = None,
                timeout: float = 180) -> tuple[int, bytes]:
    """``runbook --inventory INV --yes ARGS`` on a pty of ``columns`` columns: (exit code, what it showed)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    full = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOK_") and k not in ("NO_COLOR", "COLUMNS")}
    full.update({"TERM": "xterm-256color", PASSWORD_ENV: project.db.password, **(env or {})})
    argv = [sys.executable, "-m", "runbook", "--inventory", str(project.inventory), "--yes", *args]
    proc = subprocess.Popen(argv, cwd=project.dir, env=full, stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True, close_fds=True)
    os.close(slave)
    shown = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every slave side is closed, the run is over
                    break
                if not chunk:
                    break
                shown += chunk
            elif proc.poll() is not None and not select.select([master], [], [], 0.2)[0]:
                break
        else:
            proc.kill()
            pytest.fail(f"runbook {' '.join(args)} did not finish within {timeout}s:\n{shown.decode(errors='replace')}")
        code = proc.wait(timeout=30)
    finally:
        os.close(master)
    return code, bytes(shown)


def text(shown: bytes) -> str:
    """What a person sees: escape sequences removed, the terminal's CRLF as LF."""
    return ANSI.sub("", shown.decode("utf-8", "replace")).replace("\r\n", "\n").replace("\r", "\n")


def words(shown: bytes) -> str:
    """The text with every run of whitespace (line breaks too) as one space: a phrase wrapped on
    words is still found whole; a word broken across lines is not."""
    return " ".join(text(shown).split())


def at_0001(project: Project) -> Project:
    project.own_migrations()
    project.upgrade_to("0001")
    return project


def test_migrate_on_a_terminal_shows_steps_revisions_and_the_recap(local_project: Project) -> None:
    """Colour on a terminal; one line per step with its fact, one per revision applied, the recap
    (from -> to, checks, duration, backup path and size, run log), and no event stream."""
    project = at_0001(local_project)
    code, shown = on_terminal(project, "prod", "migrate")
    seen = text(shown)
    assert code == 0, seen
    assert ESC in shown, "colour on a terminal"
    assert b"pg_dump: 0s" in shown, "a spinner with the elapsed time while pg_dump runs"
    lines = seen.splitlines()
    backup = project.backups()[-1]
    log = project.run_logs()[-1]
    for step, fact in (("backup", f"{backup.name} ("), ("check_locks", "blockers: none"),
                       ("upgrade", "0001 -> 0002"), ("verify", "checks passed at 0002"), ("prune", "kept 1")):
        assert any(re.match(rf"ok\s+{step}\s+\d+(\.\d)? m?s\s+", line) and fact in line for line in lines), \
            f"no line 'ok {step} <duration> {fact}':\n{seen}"
    assert re.search(r"applied 0002 require collection description \(\d+ ms\)", seen), seen
    assert re.search(r"warning lint adding-not-nullable-field: sets NOT NULL on collections.description "
                     r"\(0002_require_collection_description.py:\d+\)", words(shown)), seen
    assert "runbook: prod/db1: " in seen and "at 0002, verified" in seen
    assert re.search(r"revisions\s+0001 -> 0002 \(applied 0002\)", seen), seen
    checks = [e for e in project.events() if e["event"] == "step_finished" and e["step"] == "verify"][0]["checks"]
    assert re.search(rf"checks\s+{checks} passed at 0002", seen), seen
    assert re.search(r"duration\s+\d", seen), seen
    size = [e for e in project.events() if e["event"] == "step_finished" and e["step"] == "backup"][0]["backup_size"]
    assert f"runbook: backup {backup} ({size / 1024:.1f} KB)" in seen
    assert f"runbook: run log {log}" in seen
    assert "step_started" not in seen and "params=" not in seen, "no event stream without -v"
    assert "Traceback" not in seen


@pytest.mark.parametrize("how", ["NO_COLOR", "--no-color", "TERM=dumb"])
def test_no_colour_means_no_escape_byte_at_all(local_project: Project, how: str) -> None:
    """NO_COLOR (any non-empty value), --no-color and TERM=dumb: the same lines, not one ESC byte."""
    project = at_0001(local_project)
    env = {"NO_COLOR": "yes"} if how == "NO_COLOR" else {"TERM": "dumb"} if how == "TERM=dumb" else {}
    flags = ["--no-color"] if how == "--no-color" else []
    code, shown = on_terminal(project, *flags, "prod", "migrate", env=env)
    seen = shown.decode("utf-8", "replace")
    assert code == 0, seen
    assert ESC not in shown, f"an escape sequence with {how}: {shown[max(0, shown.find(ESC) - 40):][:120]!r}"
    assert b"pg_dump: " not in shown, "nothing animated without colour"
    assert f"runbook: backup {project.backups()[-1]}" in seen
    assert f"runbook: run log {project.run_logs()[-1]}" in seen
    assert re.search(r"revisions\s+0001 -> 0002", seen), seen


def test_a_failed_run_says_what_failed_what_was_undone_the_backup_and_next(local_project: Project) -> None:
    """A verification check fails after the upgrade: the failed check and step, the rollback and to
    where, the backup's path, and the exact next command, on the terminal."""
    project = local_project
    project.start_at_0002()
    project.add_revision("0003", "0002", 'op.add_column("collections", sa.Column("slug", sa.Text()))',
                         'op.drop_column("collections", "slug")', doc="add collection slugs", verify=FAILING_CHECK)
    code, shown = on_terminal(project, "--no-color", "prod", "migrate")
    seen = text(shown)
    flat = words(shown)
    assert code == 1, seen
    assert "FAILED check every collection has a slug" in flat, seen
    assert re.search(r"FAILED\s+verify\s+\d+ m?s", seen), seen
    assert "applied 0003 add collection slugs" in flat and "reverted 0003 add collection slugs" in flat, seen
    assert "undo rollback back to 0002" in flat, seen
    assert re.search(r"ok\s+rollback\s+at 0002 again \(downgraded\)", seen), seen
    assert "runbook: failed and rolled back" in flat
    assert re.search(r"revisions\s+0002 -> 0003, back to 0002 \(applied 0003\)", seen), seen
    assert re.search(r"failed\s+verify \(above\)", seen), seen
    assert re.search(r"rolled back\s+to 0002: downgrade ok, verify ok", seen), seen
    backup = project.backups()[-1]
    assert f"runbook: backup {backup} (" in seen, "the backup's whole path, on one line"
    assert "runbook: next: runbook prod migrate --dry-run" in seen
    assert f"runbook: run log {project.run_logs()[-1]}" in seen


def test_verbose_shows_the_event_stream(local_project: Project) -> None:
    """-v: every event as structlog's key=value line (today's stream), then the same recap."""
    project = at_0001(local_project)
    code, shown = on_terminal(project, "-v", "--no-color", "prod", "migrate")
    seen = text(shown)
    assert code == 0, seen
    for event in ("run_requested", "step_started", "step_finished", "revision_applied", "check_passed",
                  "run_finished"):
        assert event in seen, f"{event} missing from -v:\n{seen}"
    assert "backup_path=" in seen and "params=backup" in seen
    assert f"runbook: run log {project.run_logs()[-1]}" in seen


def test_a_narrow_terminal_wraps_on_words(local_project: Project) -> None:
    """60 columns: no line is wider, and no word is split across two lines."""
    project = at_0001(local_project)
    code, shown = on_terminal(project, "--no-color", "prod", "migrate", columns=60, env={"COLUMNS": "60"})
    seen = text(shown)
    assert code == 0, seen
    flat = words(shown)
    prose = [line for line in seen.splitlines() if not line.startswith("runbook: ")]  # paths: soft-wrapped
    assert max(len(line.rstrip()) for line in prose) <= 60, seen
    for phrase in ("adding-not-nullable-field: sets NOT NULL on collections.description",
                   "constraint-missing-not-valid: adds constraint description_not_empty on collections "
                   "without NOT VALID", "applied 0002 require collection description",
                   "blockers: none (tables collections)", "(0002_require_collection_description.py:"):
        assert phrase in flat, f"{phrase!r} broken inside a word:\n{seen}"
    assert f"runbook: backup {project.backups()[-1]}" in seen, "a path is never broken by the console"


def test_without_a_terminal_one_event_one_line(local_project: Project) -> None:
    """Under cron (no TTY): the same short lines, unwrapped and without escape sequences."""
    project = at_0001(local_project)
    result = project.run("prod", "migrate")
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stderr + result.stdout
    backup = project.backups()[-1]
    assert re.search(rf"^ok\s+backup\s+\d+ m?s\s+{re.escape(backup.name)} \(.*\) in {re.escape(str(backup.parent))}$",
                     result.stderr, re.M), result.stderr
    assert re.search(r"^\s+applied 0002 require collection description \(\d+ ms\)$", result.stderr, re.M)
    assert f"runbook: backup {backup}" in result.stdout
    assert "step_started" not in result.stderr


def test_the_run_log_keeps_every_event(local_project: Project) -> None:
    """The console shows less; the JSON run log still has every event and field."""
    project = at_0001(local_project)
    code, shown = on_terminal(project, "prod", "migrate")
    assert code == 0, text(shown)
    events = project.events()
    names = [e["event"] for e in events]
    for event in ("run_requested", "connecting", "run_started", "lint_finding", "step_started", "step_finished",
                  "migration_attempt", "revision_applied", "check_passed", "run_finished"):
        assert event in names
    backup = [e for e in events if e["event"] == "step_finished" and e["step"] == "backup"][0]
    assert {"backup_path", "backup_size", "backup_sha256", "duration_ms", "round_trips"} <= set(backup)
