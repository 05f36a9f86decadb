"""The run lock and the journal: runs that overlap, and a run killed half-way, against the real services."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from runbook import runner

from tests.fixtures.project import Project, held_until_removed

LOCK_SQL = ("SELECT a.pid, a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.classid = x'72756E62'::int AND l.objid = 1 "
            "AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())")

SLOW_0003 = """
op.add_column("collections", sa.Column("slug", sa.Text(), nullable=True))
op.execute("SELECT pg_sleep(3)")
"""


def _lock_holder(project: Project) -> tuple[int, str] | None:
    with project.db.admin() as conn:
        row = conn.execute(LOCK_SQL).fetchone()
    return (int(row[0]), str(row[1])) if row else None


def _runbook_sessions(project: Project) -> list[tuple[int, str, str, str]]:
    with project.db.admin() as conn:
        rows = conn.execute(
            "SELECT pid, application_name, state, query FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name LIKE 'runbook:%'").fetchall()
    return [(int(p), str(a), str(s), str(q)) for p, a, s, q in rows]


def _wait_for_upgrade(project: Project, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    """Until the run's migration session is inside the revision's pg_sleep."""
    deadline = time.monotonic() + timeout
    while not any(app.startswith("runbook:upgrade ") and state == "active" and "pg_sleep" in query
                  for _, app, state, query in _runbook_sessions(project)):
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (exit {proc.returncode}) before its upgrade:\n{out}\n{err}")
        assert time.monotonic() < deadline, "the run never reached its upgrade"
        time.sleep(0.02)


def test_second_run_is_refused_while_the_first_runs(project: Project) -> None:
    """While one run migrates, a second exits 4 naming the first (run id, host, pid, start) and takes no backup."""
    project.start_at_0002()
    # The upgrade lasts until the second run has ended (a fixed sleep could end first on a busy machine).
    marker = project.dir / "hold"
    marker.touch()
    project.add_revision("0003", "0002",
                         'op.add_column("collections", sa.Column("slug", sa.Text(), nullable=True))\n'
                         + textwrap.dedent(held_until_removed(marker)),
                         'op.drop_column("collections", "slug")')
    first = project.start("prod", "migrate")
    try:
        _wait_for_upgrade(project, first)
        started = project.wait_event("run_started", proc=first)
        logs_before = set(project.run_logs())

        second = project.run("prod", "migrate")
        marker.unlink()

        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert second.returncode == 4, second.stdout + second.stderr
    refusal = second.stderr
    assert "another runbook run is in progress" in refusal
    assert started["run_id"] in refusal and f":{first.pid} " in refusal and "since " in refusal
    # The second run touched nothing: no backup, no step at all.
    second_log, = set(project.run_logs()) - logs_before
    assert refusal.strip().splitlines()[-1] == f"runbook: run log {second_log}"  # where to read why
    events = project.events(second_log)
    assert not [e for e in events if e["event"] == "step_started"]
    assert events[-1]["event"] == "run_finished" and events[-1]["exit_code"] == 4
    assert len(project.backups()) == 1
    # ... and the first one was not disturbed by it.
    assert first.returncode == 0, out + err
    assert project.db.alembic_version() == {"0003"}


def test_killed_run_is_reported_and_the_next_run_migrates(project: Project) -> None:
    """SIGKILL mid-upgrade: the database stays at the start, the journal shows where it stopped, the next run says so and migrates."""
    project.start_at_0002()
    # Slow (8 s) only while the marker exists, so that the run after the kill is quick.
    marker = project.dir / "slow"
    marker.touch()
    project.add_revision("0003", "0002", f"""
        import os
        op.add_column("collections", sa.Column("slug", sa.Text(), nullable=True))
        if os.path.exists({str(marker)!r}):
            op.execute("SELECT pg_sleep(8)")
        """, 'op.drop_column("collections", "slug")')
    before = project.state()
    proc = project.start("prod", "migrate")
    try:
        _wait_for_upgrade(project, proc)
        killed_id = project.wait_event("run_started", proc=proc)["run_id"]
        assert _lock_holder(project) is not None
        os.kill(proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    # PostgreSQL drops the killed runner's sessions: the run lock at once (an idle session sees
    # its client go), the migration's when the server's client check cancels its statement (it
    # would otherwise sleep on for 8 s with its locks held); its transaction dies with it.
    lock_released = sessions_gone = None
    while time.monotonic() - killed_at < 20 and sessions_gone is None:
        now = time.monotonic() - killed_at
        if lock_released is None and _lock_holder(project) is None:
            lock_released = now
        if lock_released is not None and not _runbook_sessions(project):
            sessions_gone = now
        time.sleep(0.02)
    assert lock_released is not None and sessions_gone is not None, _runbook_sessions(project)
    print(f"after SIGKILL: run lock released in {lock_released:.2f}s, "
          f"every runbook session gone in {sessions_gone:.2f}s")
    assert lock_released < 2.0 and sessions_gone < 2.5
    assert project.state() == before  # the transaction died with its session
    marker.unlink()

    record = json.loads((project.dir / ".runbook" / "runs" / f"{killed_id}.json").read_text())
    assert record["status"] == "running" and record["exit_code"] is None
    assert record["steps"][-1]["step"] == "upgrade" and record["steps"][-1]["outcome"] == "running"

    status = project.run("prod", "status")
    assert killed_id in status.stdout + status.stderr

    # A run refused in between (another control host holds the run lock) does not hide the killed one.
    _, conns = _fake_run(project, "0ddba11c", 4242)
    try:
        assert project.run("prod", "migrate").returncode == 4
    finally:
        for conn in conns:
            conn.close()

    # Had it been killed during pg_dump, its password file would still be on the host.
    assert project.ssh is not None
    home = Path(project.ssh.home)
    leftover = home / f".runbook-pgpass-{killed_id}-0badc0de"
    leftover.write_text("*:5432:*:*:secret\n")
    os.chown(leftover, home.stat().st_uid, home.stat().st_gid)

    logs_before = set(project.run_logs())
    again = project.run("prod", "migrate")
    assert again.returncode == 0, again.stdout + again.stderr
    assert not leftover.exists()
    assert "previous_run_incomplete" in again.stderr and killed_id in again.stderr
    events = project.events(next(iter(set(project.run_logs()) - logs_before)))
    names = [e["event"] for e in events]
    warning = events[names.index("previous_run_incomplete")]
    assert warning["previous_run"] == killed_id and warning["last_step"] == "upgrade"
    assert names.index("previous_run_incomplete") < names.index("step_started")
    assert events[names.index("stale_password_file_removed")]["files"] == 1
    assert project.db.alembic_version() == {"0003"}


def _fake_run(project: Project, machine: str, pid: int, start: int = 0) -> tuple[str, list[psycopg.Connection[Any]]]:
    """What a runner cut off from the database leaves: its lock session and an open migration."""
    run_id = "20260101T000000Z-" + uuid.uuid4().hex[:6]
    lock = project.db.connect(autocommit=True, application_name=f"runbook:lock {run_id} {machine[:8]}:{pid}:{start}")
    lock.execute("SELECT pg_advisory_lock(x'72756E62'::int, 1)")
    migration = project.db.connect(application_name=f"runbook:upgrade {run_id}")
    migration.execute("LOCK TABLE collections IN ACCESS EXCLUSIVE MODE")
    return run_id, [lock, migration]


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_run_lock_of_a_dead_runner_on_this_host_is_taken_over(project: Project) -> None:
    """A run lock whose runner is dead on this control host (sessions left open, as after a cut link) is taken over: its sessions end, the run migrates."""
    project.upgrade_to("0001")
    dead = _dead_pid()
    run_id, conns = _fake_run(project, runner.machine_id(), dead)
    journal = project.dir / ".runbook" / "runs" / f"{run_id}.json"
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.write_text(json.dumps({
        "run_id": run_id, "env": "prod", "playbook": "migrate", "status": "running", "exit_code": None,
        "started": "2026-01-01T00:00:00.000+00:00", "pid": dead, "control_host": socket.gethostname(),
        "machine_id": runner.machine_id(), "boot_id": runner.boot_id(), "pid_start": 12345,
        "steps": [{"host": "db1", "step": "upgrade", "phase": "run", "outcome": "running"}], "hosts": {}}))
    try:
        result = project.run("prod", "migrate")
        for conn in conns:
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
    finally:
        for conn in conns:
            conn.close()
    assert result.returncode == 0, result.stdout + result.stderr
    assert project.db.alembic_version() == {"0002"}
    events = project.events()
    taken, = [e for e in events if e["event"] == "stale_run_lock_taken_over"]
    assert taken["previous_run"] == run_id
    assert sorted(s["application"].split()[0] for s in taken["sessions"]) == ["runbook:lock", "runbook:upgrade"]
    assert any(e["event"] == "previous_run_incomplete" and e["previous_run"] == run_id for e in events)


def test_run_lock_of_a_reused_pid_is_taken_over(project: Project) -> None:
    """A holder whose pid now belongs to another process (same machine, other start time) is dead: taken over."""
    project.upgrade_to("0001")
    run_id, conns = _fake_run(project, runner.machine_id(), os.getpid(), (runner.start_time(os.getpid()) or 0) + 7)
    conns[1].rollback()
    try:
        result = project.run("prod", "migrate")
    finally:
        for conn in conns:
            conn.close()
    assert result.returncode == 0, result.stdout + result.stderr
    taken, = [e for e in project.events() if e["event"] == "stale_run_lock_taken_over"]
    assert taken["previous_run"] == run_id


@pytest.mark.parametrize("where", ["another host", "a live process", "same host name, another machine"])
def test_run_lock_of_a_runner_not_known_dead_is_respected(project: Project, where: str) -> None:
    """A run lock held for a runner on another control machine, or one still running, is a refusal (exit 4): nothing is terminated."""
    project.upgrade_to("0001")
    before = project.state()
    machine, pid, start = {"another host": ("0ddba11c", 4242, 1),
                           "a live process": (runner.machine_id(), os.getpid(), runner.start_time(os.getpid())),
                           # the dead pid of a clone of this machine: hostname and pid alone would misjudge it
                           "same host name, another machine": ("c10ec10e", _dead_pid(), 1)}[where]
    run_id, conns = _fake_run(project, machine, pid, start or 0)
    conns[1].rollback()  # only the lock stays: the state must be readable for the comparison
    try:
        result = project.run("prod", "migrate")
        for conn in conns:
            conn.execute("SELECT 1")  # still there
    finally:
        for conn in conns:
            conn.close()
    assert result.returncode == 4, result.stdout + result.stderr
    assert f"{run_id} on machine {machine[:8]}:{pid} " in result.stderr
    assert project.state() == before and len(project.backups()) == 0
