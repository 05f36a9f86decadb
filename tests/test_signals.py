"""Signals during a run are failures of the current step: the rollback runs, the exit code tells the truth.

Each case starts a real run (real sshd, real PostgreSQL), signals the runner at a chosen point, then
checks the database (schema, rows, alembic_version), the journal, the exit code, and that no
password file, host process or database session of the run is left.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.fixtures.faults import (assert_nothing_left, finish, journal, newest_run_id, wait_for_host_process,
                                   wait_for_session)
from tests.fixtures.project import PASSWORD_ENV, Project

SLOW_0003 = """
op.add_column("collections", sa.Column("slug", sa.Text(), nullable=True))
op.execute("SELECT pg_sleep(30)")
"""
SLUG_0003 = 'op.add_column("collections", sa.Column("slug", sa.Text(), nullable=True))'
DROP_SLUG = 'op.drop_column("collections", "slug")'
# A verification query that takes long enough to be interrupted half-way (it would pass).
SLOW_CHECK = [{"name": "a slow check", "sql": "SELECT count(*) FROM (SELECT pg_sleep(20)) s", "expect": 1}]
BIG_TABLE = "CREATE TABLE big AS SELECT g, repeat('x', 500) AS pad FROM generate_series(1, 300000) g"


def _big_table(project: Project) -> None:
    """A table big enough that pg_dump and the restore's replay take seconds, owned by the
    application's user (so its pg_dump can read it: psql here runs as the superuser)."""
    project.db.psql(f'{BIG_TABLE}; ALTER TABLE big OWNER TO "{project.db.user}"')


# pg_dump itself (not the shell script that runs it) dumping a test's own database (it writes to
# a pipe, tee into the backup folder: its command line names the database, not the file)
DUMP_PATTERN = r"^\S*pg_dump -Fc .*dbname={} "
ALL_SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]


# -- helpers ----------------------------------------------------------------------------------



def _reap(proc: subprocess.Popen[str]) -> None:
    """A run a failed assertion left running is killed (never left to the next test)."""
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def _names(project: Project) -> list[str]:
    return [e["event"] for e in project.events()]


def _outcomes(record: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(phase, step, outcome) of every step in the journal."""
    return [(s.get("phase"), s.get("step"), s.get("outcome")) for s in record["steps"]]


def _assert_interrupted(project: Project, proc: subprocess.Popen[str], out: str, err: str,
                        sig: signal.Signals, step: str, *, code: int, status: str) -> dict[str, Any]:
    """The exit code, the journal's interrupt record and the step's outcome; returns the journal."""
    assert proc.returncode == code, out + err
    assert "Traceback" not in out + err, out + err
    assert f"interrupted by {sig.name}" in err
    record = journal(project, newest_run_id(project))
    assert record["status"] == status and record["exit_code"] == code, record
    assert record["interrupted"] == {"signal": sig.name, "step": step, "phase": "run"}
    assert ("run", step, "interrupted") in _outcomes(record), record["steps"]
    interrupted = [e for e in project.events() if e["event"] == "step_interrupted"]
    assert [(e["step"], e["signal"]) for e in interrupted] == [(step, sig.name)]
    assert "run_interrupted" in _names(project)
    return record


def _dump_processes(database: str) -> list[str]:
    """pg_dump processes dumping ``database`` (a database of this test alone)."""
    found = subprocess.run(["pgrep", "-af", DUMP_PATTERN.format(database)], capture_output=True, text=True)
    return [line for line in found.stdout.splitlines() if line.strip()]


def _leftover_files(backup_dir: Path) -> list[str]:
    return sorted(p.name for p in backup_dir.glob("*")) if backup_dir.exists() else []


# -- 1. a signal during each step of migrate ----------------------------------------------------


@pytest.mark.parametrize("sig", ALL_SIGNALS, ids=lambda s: s.name)
def test_signal_during_the_backup_stops_pg_dump_on_the_host(project: Project, sig: signal.Signals) -> None:
    """A signal while pg_dump runs on the host: pg_dump stopped, no partial or unrecorded dump, nothing changed, exit 1."""
    project.start_at_0002()
    project.add_revision("0003", "0002", SLUG_0003, DROP_SLUG)
    _big_table(project)
    before = project.state()
    proc = project.start("prod", "migrate")
    try:
        wait_for_host_process(DUMP_PATTERN.format(project.db.name), proc)
        proc.send_signal(sig)
        out, err = finish(proc)
    finally:
        _reap(proc)
    # Nothing had changed: nothing to roll back, the run failed with the database as it was.
    _assert_interrupted(project, proc, out, err, sig, "backup", code=1, status="failed")
    assert project.state() == before
    names = _names(project)
    assert "rollback_not_needed" in names and "rollback_started" not in names
    assert not _dump_processes(project.db.name), "pg_dump outlived the run"
    assert not [f for f in _leftover_files(project.backup_dir) if f.endswith((".partial", ".dump", ".sha256"))]
    assert_nothing_left(project, newest_run_id(project))


@pytest.mark.parametrize("sig", ALL_SIGNALS, ids=lambda s: s.name)
def test_signal_while_check_locks_waits_for_a_blocker(project: Project, sig: signal.Signals) -> None:
    """A signal while check_locks waits for a lock holder on a table 0003 alters: exit 1, nothing changed, blocker untouched."""
    project.start_at_0002()
    project.write_inventory(locks={"lock_timeout": "1s", "max_wait": "120s", "blockers": "wait"})
    project.add_revision("0003", "0002", SLUG_0003, DROP_SLUG)
    before = project.state()
    blocker = project.db.connect(application_name="rag-report")
    blocker.execute("SELECT count(*) FROM collections").fetchone()  # ACCESS SHARE until the end of the transaction
    try:
        proc = project.start("prod", "migrate")
        try:
            waited = project.wait_event("lock_wait", proc=proc)
            assert blocker.info.backend_pid in [s["pid"] for s in waited["sessions"]]
            proc.send_signal(sig)
            out, err = finish(proc)
        finally:
            _reap(proc)
        assert blocker.info.transaction_status.name == "INTRANS"  # waited for, never terminated
    finally:
        blocker.close()
    record = _assert_interrupted(project, proc, out, err, sig, "check_locks", code=1, status="failed")
    assert project.state() == before
    assert ("run", "backup", "ok") in _outcomes(record)
    assert not [s for s in _outcomes(record) if s[1] == "upgrade"], "the upgrade must not start"
    assert "rollback_not_needed" in _names(project)
    assert_nothing_left(project, newest_run_id(project))


@pytest.mark.parametrize("sig", ALL_SIGNALS, ids=lambda s: s.name)
def test_signal_during_a_slow_upgrade_rolls_back(project: Project, sig: signal.Signals) -> None:
    """A signal inside a revision: the statement is cancelled, the transaction rolls back, exit 1."""
    project.start_at_0002()
    project.add_revision("0003", "0002", SLOW_0003, DROP_SLUG)
    before = project.state()
    proc = project.start("prod", "migrate")
    try:
        wait_for_session(project, "runbook:upgrade ", "pg_sleep", proc)
        proc.send_signal(sig)
        out, err = finish(proc)
    finally:
        _reap(proc)
    _assert_interrupted(project, proc, out, err, sig, "upgrade", code=1, status="rolled_back")
    assert project.state() == before
    names = _names(project)
    assert names.index("step_interrupted") < names.index("rollback_started") < names.index("rollback_finished")
    assert_nothing_left(project, newest_run_id(project))


@pytest.mark.parametrize("sig", ALL_SIGNALS, ids=lambda s: s.name)
def test_signal_during_verify_downgrades_the_committed_upgrade(project: Project, sig: signal.Signals) -> None:
    """A signal while 0003's verification query runs (0003 committed): downgraded to 0002, verified, exit 1, state as before."""
    project.start_at_0002()
    project.add_revision("0003", "0002", SLUG_0003, DROP_SLUG, verify=SLOW_CHECK)
    before = project.state()
    proc = project.start("prod", "migrate")
    try:
        wait_for_session(project, "runbook:verify ", "pg_sleep", proc)
        assert project.db.alembic_version() == {"0003"}  # the upgrade is committed: there is something to undo
        proc.send_signal(sig)
        out, err = finish(proc)
    finally:
        _reap(proc)
    record = _assert_interrupted(project, proc, out, err, sig, "verify", code=1, status="rolled_back")
    assert project.state() == before
    assert _outcomes(record)[-2:] == [("rollback", "downgrade", "ok"), ("rollback", "verify", "ok")]
    names = _names(project)
    assert names.index("step_interrupted") < names.index("rollback_started") < names.index("rollback_finished")
    assert "downgraded" in err
    assert_nothing_left(project, newest_run_id(project))


# -- 2. a second signal does not abandon the rollback ---------------------------------------------


def test_second_signal_during_the_rollback_is_ignored(project: Project) -> None:
    """SIGTERM in verify, then SIGTERM and SIGINT during the slow downgrade: logged, ignored, the rollback completes, exit 1."""
    project.start_at_0002()
    project.add_revision("0003", "0002", SLUG_0003, f'op.execute("SELECT pg_sleep(3)")\n{DROP_SLUG}',
                         verify=SLOW_CHECK)
    before = project.state()
    proc = project.start("prod", "migrate")
    try:
        wait_for_session(project, "runbook:verify ", "pg_sleep", proc)
        proc.send_signal(signal.SIGTERM)
        wait_for_session(project, "runbook:downgrade ", "pg_sleep", proc)
        proc.send_signal(signal.SIGTERM)
        project.wait_event("signal_received", proc=proc)
        proc.send_signal(signal.SIGINT)
        out, err = finish(proc)
    finally:
        _reap(proc)
    record = _assert_interrupted(project, proc, out, err, signal.SIGTERM, "verify", code=1, status="rolled_back")
    assert project.state() == before
    assert _outcomes(record)[-2:] == [("rollback", "downgrade", "ok"), ("rollback", "verify", "ok")]
    received = [e for e in project.events() if e["event"] == "signal_received"]
    assert [(e["signal"], e["action"]) for e in received] == [
        ("SIGTERM", "ignored: the rollback goes on"), ("SIGINT", "ignored: the rollback goes on")]
    names = _names(project)
    assert names.index("rollback_started") < names.index("signal_received") < names.index("rollback_finished")
    assert_nothing_left(project, newest_run_id(project))


# -- 3. Ctrl-C at the confirmation prompt -------------------------------------------------------


def _start_on_a_terminal(project: Project, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    """The CLI without --yes in a session of its own whose controlling terminal is a new pty
    (so the terminal's ^C is a real SIGINT to its foreground process group); returns the master."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOK_")}
    env[PASSWORD_ENV] = project.db.password
    master, slave = pty.openpty()

    def controlling_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([sys.executable, "-m", "runbook", "--inventory", str(project.inventory), *args],
                            cwd=project.dir, env=env, stdin=slave, stdout=slave, stderr=slave,
                            preexec_fn=controlling_terminal)
    os.close(slave)
    return proc, master


def _read_until(master: int, proc: subprocess.Popen[bytes], text: str | None, timeout: float = 60) -> str:
    """What the terminal shows until ``text`` appears (None: until the program closes it)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while text is None or text.encode() not in seen:
        assert time.monotonic() < deadline, f"{text!r} never shown:\n{seen.decode(errors='replace')}"
        ready, _, _ = select.select([master], [], [], 0.2)
        if not ready:
            continue
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: every holder of the slave side is gone
            chunk = b""
        if not chunk:
            assert text is None, f"the program ended before showing {text!r}:\n{seen.decode(errors='replace')}"
            break
        seen += chunk
    return seen.decode(errors="replace")


# The number of read(2) on this machine's architecture (for /proc/PID/syscall).
READ_SYSCALL = {"x86_64": "0", "aarch64": "63"}[os.uname().machine]


def _wait_until_reading_the_terminal(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Until the program's main thread is blocked in read(0): at the prompt, waiting for a key.

    (A signal that lands between the prompt's write and that read is only acted on at the next
    key or signal: CPython runs handlers between bytecodes or on EINTR, and that read has not
    started yet. A person never types that fast; a test does.)"""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{proc.pid}/syscall").read_text().split()[:2] != [READ_SYSCALL, "0x0"]:
        assert proc.poll() is None, "the program ended at its prompt"
        assert time.monotonic() < deadline, "the program never waited for input"
        time.sleep(0.01)


def test_ctrl_c_at_the_rollback_prompt_is_not_confirmed(project: Project) -> None:
    """^C at the rollback's "type its name" prompt on a terminal: "not confirmed", exit 2, no traceback, no backup, no change."""
    project.upgrade_to("0001")
    assert project.run("prod", "migrate").returncode == 0
    before = project.state()
    backups = project.backups()
    proc, master = _start_on_a_terminal(project, "prod", "rollback")
    try:
        shown = _read_until(master, proc, "Type its name")
        _wait_until_reading_the_terminal(proc)
        os.write(master, b"\x03")  # the terminal's interrupt character: SIGINT to the foreground group
        shown += _read_until(master, proc, None)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert proc.returncode == 2, shown
    assert "not confirmed" in shown and "Traceback" not in shown, shown
    assert project.state() == before
    assert project.backups() == backups, "a pre-rollback backup was taken although nothing was confirmed"
    run_id = newest_run_id(project)
    record = journal(project, run_id)
    assert record["exit_code"] == 2 and record["status"] == "refused", record
    assert ("run", "rollback", "failed") in _outcomes(record)
    assert "rollback_started" not in _names(project)
    assert_nothing_left(project, run_id)


# -- 4. a signal before any step ----------------------------------------------------------------


@pytest.fixture
def silent_port() -> Iterator[tuple[int, list[socket.socket]]]:
    """A TCP port on loopback that accepts connections and never says a word (no SSH banner)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            accepted.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], accepted
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
        for conn in accepted:
            conn.close()


def test_sigterm_while_connecting_touches_nothing(project: Project,
                                                  silent_port: tuple[int, list[socket.socket]]) -> None:
    """SIGTERM while the SSH login waits for a banner that never comes: exit 4, nothing touched, no traceback."""
    port, accepted = silent_port
    project.start_at_0002()
    project.add_revision("0003", "0002", SLUG_0003, DROP_SLUG)
    assert project.ssh is not None
    ssh = {**project.ssh.inventory_ssh(), "port": port, "connect_timeout": "120s"}
    project.write_inventory(hosts=[{"name": "db1", "ssh": ssh}])
    before = project.state()
    proc = project.start("prod", "migrate")
    try:
        deadline = time.monotonic() + 30
        while not accepted:  # the runner is connected and waits for a banner that never comes
            assert proc.poll() is None, finish(proc)
            assert time.monotonic() < deadline, "the runner never connected"
            time.sleep(0.02)
        # (the handshake starts while the plan is validated: wait until the run itself waits for it)
        project.wait_event("connecting", proc=proc)
        proc.send_signal(signal.SIGTERM)
        out, err = finish(proc, 60)
    finally:
        _reap(proc)
    assert proc.returncode == 4, out + err
    assert "Traceback" not in out + err
    assert "interrupted by SIGTERM before anything was touched" in err, err
    assert project.state() == before
    assert not project.backups()
    run_id = newest_run_id(project)
    record = journal(project, run_id)
    assert record["exit_code"] == 4 and record["status"] == "interrupted", record
    assert record["interrupted"]["signal"] == "SIGTERM" and not record["steps"]
    assert_nothing_left(project, run_id)


def test_sigterm_while_planning_touches_nothing(project: Project) -> None:
    """SIGTERM while planning (the inventory is a FIFO nobody writes to): exit 4, "before anything was touched", no run."""
    project.start_at_0002()
    before = project.state()
    fifo = project.dir / "inventory-fifo.yaml"
    os.mkfifo(fifo)
    env = {**os.environ, PASSWORD_ENV: project.db.password}
    proc = subprocess.Popen([sys.executable, "-m", "runbook", "--inventory", str(fifo), "--yes", "prod", "migrate"],
                            cwd=project.dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Blocked opening the FIFO: the run's handlers are installed, nothing is connected yet.
        deadline = time.monotonic() + 30
        while Path(f"/proc/{proc.pid}/wchan").read_text().strip() != "wait_for_partner":
            assert proc.poll() is None, finish(proc)
            assert time.monotonic() < deadline, "the runner never opened the inventory"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        out, err = finish(proc, 60)
    finally:
        _reap(proc)
    assert proc.returncode == 4, out + err
    assert "Traceback" not in out + err
    assert "interrupted by SIGTERM before anything was touched" in err, err
    assert project.state() == before
    assert not project.run_logs(), "no run may start"
    assert not project.backups()


# -- 5. the local transport ----------------------------------------------------------------------


def test_sigterm_during_a_local_pg_dump(local_project: Project) -> None:
    """Local transport (no ssh): SIGTERM during pg_dump leaves no pg_dump process, no partial file, no change; exit 1."""
    project = local_project
    project.start_at_0002()
    project.add_revision("0003", "0002", SLUG_0003, DROP_SLUG)
    _big_table(project)
    before = project.state()
    proc = project.start("prod", "migrate")
    try:
        wait_for_host_process(DUMP_PATTERN.format(project.db.name), proc)
        proc.send_signal(signal.SIGTERM)
        out, err = finish(proc)
    finally:
        _reap(proc)
    assert not _dump_processes(project.db.name), "pg_dump outlived the run"
    _assert_interrupted(project, proc, out, err, signal.SIGTERM, "backup", code=1, status="failed")
    assert project.state() == before
    assert not [f for f in _leftover_files(project.backup_dir) if f.endswith((".partial", ".dump", ".sha256"))]
    assert_nothing_left(project, newest_run_id(project))


# -- 6. a signal during the incident rollback -----------------------------------------------------


def test_sigterm_during_the_incident_downgrade_restores_its_safety_copy(project: Project) -> None:
    """SIGTERM during `rollback`'s slow downgrade: its pre-rollback backup is restored, exit 1, state as before the command."""
    project.start_at_0002()
    project.add_revision("0003", "0002", SLUG_0003, f'op.execute("SELECT pg_sleep(30)")\n{DROP_SLUG}')
    assert project.run("prod", "migrate").returncode == 0, project.last.stderr if project.last else ""
    before = project.state()
    proc = project.start("prod", "rollback")
    try:
        wait_for_session(project, "runbook:downgrade ", "pg_sleep", proc, timeout=60)
        run_id = newest_run_id(project)
        proc.send_signal(signal.SIGTERM)
        out, err = finish(proc)
    finally:
        _reap(proc)
    record = _assert_interrupted(project, proc, out, err, signal.SIGTERM, "rollback", code=1, status="rolled_back")
    assert project.state() == before
    assert _outcomes(record)[-2:] == [("rollback", "restore", "ok"), ("rollback", "verify", "ok")]
    assert "restored from the backup" in err
    assert_nothing_left(project, run_id)


def test_sigterm_during_rollback_restore_leaves_the_database_as_it_was(project: Project) -> None:
    """SIGTERM while `rollback --restore` replays the dump (psql on the host): nothing restored, marker row kept, exit 1."""
    project.upgrade_to("0001")
    _big_table(project)
    assert project.run("prod", "migrate").returncode == 0, project.last.stderr if project.last else ""
    project.db.psql("INSERT INTO collections (name, description) VALUES ('marker', 'written after the backup')")
    before = project.state()
    proc = project.start("prod", "rollback", "--restore")
    try:
        wait_for_session(project, "runbook:", "FROM stdin", proc, timeout=60)  # psql's COPY ... FROM stdin
        run_id = newest_run_id(project)
        proc.send_signal(signal.SIGTERM)
        out, err = finish(proc)
    finally:
        _reap(proc)
    assert "Traceback" not in out + err
    after = project.state()
    assert after == before, "the interrupted restore changed the database"
    assert project.db.psql("SELECT count(*) FROM collections WHERE name = 'marker'").strip() == "1"
    assert proc.returncode in (1, 3), out + err
    record = journal(project, run_id)
    assert record["exit_code"] == proc.returncode
    assert record["interrupted"] == {"signal": "SIGTERM", "step": "rollback", "phase": "run"}
    assert ("run", "rollback", "interrupted") in _outcomes(record)
    assert "interrupted by SIGTERM" in err
    assert_nothing_left(project, run_id)
    # Read back at the start revision and as it was: that is exit 1 (3 would page a person for nothing).
    assert proc.returncode == 1, f"the database is as it was, yet exit {proc.returncode}:\n{err}"
    assert record["status"] == "rolled_back"


def test_sigterm_while_rollback_restore_saves_the_current_state(project: Project) -> None:
    """SIGTERM during `rollback --restore`'s safety pg_dump (before the replay): nothing changed, no partial file, exit 1."""
    project.upgrade_to("0001")
    _big_table(project)
    assert project.run("prod", "migrate").returncode == 0, project.last.stderr if project.last else ""
    before = project.state()
    backups = project.backups()
    proc = project.start("prod", "rollback", "--restore")
    try:
        wait_for_host_process(DUMP_PATTERN.format(project.db.name), proc)
        run_id = newest_run_id(project)
        proc.send_signal(signal.SIGTERM)
        out, err = finish(proc)
    finally:
        _reap(proc)
    assert "Traceback" not in out + err, out + err
    assert project.state() == before
    assert project.backups() == backups
    assert not [f for f in _leftover_files(project.backup_dir) if f.endswith(".partial")]
    assert not _dump_processes(project.db.name), "pg_dump outlived the run"
    record = journal(project, run_id)
    assert record["exit_code"] == proc.returncode
    assert record["interrupted"] == {"signal": "SIGTERM", "step": "rollback", "phase": "run"}
    assert_nothing_left(project, run_id)
    # Nothing was replayed yet: the database is as it was, which is exit 1, not "a person is needed".
    assert proc.returncode == 1, f"the database is as it was, yet exit {proc.returncode}:\n{err}"
