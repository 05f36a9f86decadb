"""Faults outside runbook's control, injected for real: a killed runner, a cut link, a restarted
server, a full or read-only backup folder, a stolen run lock, a killed remote Alembic.

Each case checks the database (schema dump, row counts and alembic_version, or a marker row), the
run's journal record, the exit code, and that nothing of the run is left: no password file, no host
process (its jobs are tagged ``runbook-job <run id>``) and no database session named after the run.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.fixtures import byo
from tests.fixtures.faults import assert_nothing_left, host_jobs, journal, wait_for_session
from tests.fixtures.pg import SUPERUSER, PgServer
from tests.fixtures.project import Project
from tests.test_netfault import NetHost, nethost  # noqa: F401 - the fixture, reused
from tests.test_remote import deploy, deploy_venv, deployed  # noqa: F401 - fixtures, reused

MARKER = "written-after-the-backup"
LOCK_KEY = "x'72756E62'::int, 1"

SLOW_0003 = """
op.add_column("collections", sa.Column("slug", sa.Text(), nullable=True))
op.execute("SELECT pg_sleep({seconds})")
"""
DOWN_0003 = 'op.drop_column("collections", "slug")'


# -- helpers ------------------------------------------------------------------------------------
def _big_table(project: Project, rows: int, *, random: bool = False) -> None:
    """A table owned by the application's role (a restore must be able to drop it)."""
    pad = "md5(random()::text) || md5(random()::text)" if random else "md5(g::text) || md5((g + 1)::text)"
    project.db.psql(f"SET ROLE {project.db.user};\n"
                    f"CREATE TABLE big (id int PRIMARY KEY, pad text NOT NULL);\n"
                    f"INSERT INTO big SELECT g, {pad} FROM generate_series(1, {rows}) g;\n")


def _insert_marker(project: Project) -> None:
    project.db.psql(f"INSERT INTO collections (name, description) VALUES ('{MARKER}', 'must survive')")


def _marker_rows(project: Project) -> int:
    return int(project.db.psql(f"SELECT count(*) FROM collections WHERE name = '{MARKER}'").strip())


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def _run_id(project: Project, proc: subprocess.Popen[str], since: set[Path]) -> str:
    return str(project.wait_event("run_started", proc=proc, since=since, timeout=60)["run_id"])


def _names(project: Project, log: Path | None = None) -> list[str]:
    return [str(e["event"]) for e in project.events(log)]


def _log_of(project: Project, run_id: str) -> Path:
    return project.dir / ".runbook" / "runs" / f"{run_id}.jsonl"


def _assert_reported_incomplete(project: Project, run_id: str, last_step: str) -> None:
    """``status`` flags the killed run INCOMPLETE; the next run (a backup) says so first."""
    status = project.run("prod", "status")
    assert status.returncode == 0, status.stdout + status.stderr
    line = next((ln for ln in status.stdout.splitlines() if run_id in ln), None)
    assert line is not None and "INCOMPLETE" in line, status.stdout
    before = set(project.run_logs())
    nxt = project.run("prod", "backup")
    assert nxt.returncode == 0, nxt.stdout + nxt.stderr
    log, = set(project.run_logs()) - before
    events = project.events(log)
    names = [e["event"] for e in events]
    warning = events[names.index("previous_run_incomplete")]
    assert warning["previous_run"] == run_id and warning["last_step"] == last_step, warning
    assert names.index("previous_run_incomplete") < names.index("step_started")
    assert "previous_run_incomplete" in nxt.stderr and run_id in nxt.stderr


def _assert_killed_record(project: Project, run_id: str, step: str) -> None:
    record = journal(project, run_id)
    assert record["status"] == "running" and record["exit_code"] is None, record
    assert record["steps"][-1]["step"] == step and record["steps"][-1]["outcome"] == "running", record["steps"]


def _kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL


# -- 1. SIGKILL during a restore --------------------------------------------------------------
def test_sigkill_during_restore_leaves_the_database_unchanged(project: Project) -> None:
    """SIGKILL while the host's psql replays a big dump: the restore never commits, nothing of the run stays, the next run reports it."""
    project.start_at_0002()
    _big_table(project, 600_000)
    taken = project.run("prod", "backup")
    assert taken.returncode == 0, taken.stdout + taken.stderr
    _insert_marker(project)
    before = project.state()
    logs = set(project.run_logs())

    proc = project.start("prod", "rollback", "--restore")
    try:
        run_id = _run_id(project, proc, logs)
        # the replay (not the pre-restore pg_dump, whose COPY goes TO stdout) is loading rows
        wait_for_session(project, "runbook:", "FROM stdin", proc, timeout=120)
        assert host_jobs(run_id), "the restore does not run as a tagged host job"
        _kill(proc)
        killed_at = time.monotonic()
    finally:
        _stop(proc)

    assert_nothing_left(project, run_id, within=8)
    print(f"\nnothing of the killed restore left after {time.monotonic() - killed_at:.1f}s")
    assert _marker_rows(project) == 1
    assert project.state() == before
    _assert_killed_record(project, run_id, "rollback")
    _assert_reported_incomplete(project, run_id, "rollback")
    assert_nothing_left(project, run_id)


def test_failed_restore_puts_back_the_state_it_started_from(project: Project) -> None:
    """SIGTERM during the replay of `rollback --restore`: the restore fails, and the rollback puts back the state it started from from its own pre-restore backup (exit 1)."""
    project.start_at_0002()
    _big_table(project, 600_000)
    taken = project.run("prod", "backup")
    assert taken.returncode == 0, taken.stdout + taken.stderr
    _insert_marker(project)
    before = project.state()
    logs = set(project.run_logs())

    proc = project.start("prod", "rollback", "--restore")
    try:
        run_id = _run_id(project, proc, logs)
        wait_for_session(project, "runbook:", "FROM stdin", proc, timeout=120)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=180)
    finally:
        _stop(proc)

    assert _marker_rows(project) == 1 and project.state() == before
    saved = [b for b in project.backups() if "_pre-restore" in b.name]
    assert saved, project.backups()  # the run did back up the state it started from ...
    events = project.events(_log_of(project, run_id))
    errors = [str(e.get("error")) for e in events if e["event"] == "step_failed"]
    # ... so its rollback must not say it has none, and must put that state back: exit 1
    assert not [e for e in errors if "this run took no backup to restore" in e], errors
    assert proc.returncode == 1, out + err
    assert "restored from the backup" in err, err
    record = journal(project, run_id)
    assert record["status"] == "rolled_back" and record["exit_code"] == 1
    assert_nothing_left(project, run_id)


# -- 2. a cut link during backup and restore ----------------------------------------------------
CUT_SECONDS = 8.0


def _via_nethost(project: Project, host: NetHost) -> None:
    ssh = host.ssh.inventory_ssh()
    ssh["keepalive"] = "1s"
    project.env_overrides = {
        "hosts": [{"name": "db1", "ssh": ssh}],
        "database": {"host": host.root_ip, "port": project.db.port, "name": project.db.name,
                     "user": project.db.user, "password_env": "PRODUCTION_PASSWORD"},
    }
    project.write_inventory()


@pytest.mark.parametrize("phase", ["backup", "restore"])
def test_network_cut_during_backup_or_restore(project: Project, nethost: NetHost, phase: str) -> None:  # noqa: F811
    """The link to the host goes silent while pg_dump (or the restore's psql) runs: a truthful exit code, and nothing of the run left once the link is back."""
    _via_nethost(project, nethost)
    project.start_at_0002()
    _via_nethost(project, nethost)
    _big_table(project, 400_000)
    if phase == "restore":
        taken = project.run("prod", "backup")
        assert taken.returncode == 0, taken.stdout + taken.stderr
        _insert_marker(project)
    before = project.state()
    dumps_before = set(project.backup_dir.glob("*"))
    logs = set(project.run_logs())

    proc = project.start(*(["prod", "backup"] if phase == "backup" else ["prod", "rollback", "--restore"]))
    cut = False
    try:
        run_id = _run_id(project, proc, logs)
        if phase == "backup":
            wait_for_session(project, "runbook:backup ", "COPY", proc, timeout=60)
        else:
            wait_for_session(project, "runbook:", "FROM stdin", proc, timeout=120)
        assert host_jobs(run_id)
        nethost.cut()
        cut = True
        time.sleep(CUT_SECONDS)
        nethost.restore()
        cut = False
        out, err = proc.communicate(timeout=180)
    finally:
        if cut:
            nethost.restore()
        _stop(proc)

    names = _names(project, _log_of(project, run_id))
    print(f"\n{phase}: exit {proc.returncode}; events: "
          + ", ".join(n for n in names if n in ("step_failed", "connection_lost", "reconnected",
                                                "lost_host_commands_stopped", "lost_sessions_terminated",
                                                "rollback_started", "rollback_not_needed",
                                                "rollback_finished", "rollback_incomplete")))
    assert proc.returncode in (1, 3), out + err
    record = journal(project, run_id)
    assert record["exit_code"] == proc.returncode
    if proc.returncode == 1:
        assert project.state() == before
        assert record["status"] in ("failed", "rolled_back"), record["status"]
        if phase == "backup":
            assert "failed before any change" in err, err
    else:
        assert record["status"] == "needs_person"
        tail = err.strip().splitlines()[-3:]
        assert "FAILED and the rollback did not complete" in tail[0], err
        current = project.db.alembic_version()
        state = f"is at {','.join(sorted(current)) if current else 'base'}"
        assert state in tail[0] or "in an unknown state" in tail[0], tail[0]
        assert tail[1].startswith("runbook: next: runbook prod "), tail
    assert "reconnected" in names, names
    assert_nothing_left(project, run_id, within=15)
    assert not list(project.backup_dir.glob("*.partial"))
    if phase == "backup":
        assert set(project.backup_dir.glob("*")) == dumps_before


# -- 3. the database restarted mid-upgrade -------------------------------------------------------
def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", SUPERUSER, "--", *argv] if os.geteuid() == 0 else argv


def _server_up(server: PgServer) -> bool:
    try:
        with server.admin() as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _pg_ctl(server: PgServer, *args: str) -> subprocess.CompletedProcess[str]:
    log = server.data_dir.parent / "postgres.log"  # the one the fixture started it with
    return subprocess.run(_as_postgres([str(server.bindir / "pg_ctl"), "-D", str(server.data_dir),
                                        "-l", str(log), "-w", "-t", "60", *args]),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=90, check=False)


@pytest.fixture
def restartable(project: Project) -> Iterator[PgServer]:
    """The shared test server, sure to be up again (same port, socket, options) when the test ends."""
    server = project.db.server
    try:
        yield server
    finally:
        deadline = time.monotonic() + 30
        while not _server_up(server) and time.monotonic() < deadline:
            if _pg_ctl(server, "status").returncode == 3:  # not running: start it (postmaster.opts)
                _pg_ctl(server, "start")
            time.sleep(0.2)
        assert _server_up(server), "the shared test server did not come back"


def test_database_restart_mid_upgrade_rolls_back(project: Project, restartable: PgServer) -> None:
    """pg_ctl restart -m fast during a slow revision: the run lock is taken again, the rollback completes, exit 1, state unchanged."""
    project.start_at_0002()
    project.add_revision("0003", "0002", SLOW_0003.format(seconds=20), DOWN_0003)
    before = project.state()
    logs = set(project.run_logs())

    proc = project.start("prod", "migrate")
    try:
        run_id = _run_id(project, proc, logs)
        wait_for_session(project, "runbook:upgrade ", "pg_sleep", proc, timeout=60)
        restarted = _pg_ctl(restartable, "restart", "-m", "fast")
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        out, err = proc.communicate(timeout=150)
    finally:
        _stop(proc)

    assert proc.returncode == 1, out + err
    assert project.state() == before
    record = journal(project, run_id)
    assert record["status"] == "rolled_back" and record["exit_code"] == 1
    events = project.events(_log_of(project, run_id))
    names = [e["event"] for e in events]
    failed = next(i for i, e in enumerate(events) if e["event"] == "step_failed" and e.get("step") == "upgrade")
    assert failed < names.index("rollback_started") < names.index("run_lock_taken_again") \
        < names.index("rollback_finished"), names
    assert "rolled back" in err
    assert_nothing_left(project, run_id)


# -- 4. the backup folder full or not writable ---------------------------------------------------
@pytest.fixture
def bad_backup_dir(request: pytest.FixtureRequest, project: Project) -> Iterator[Path]:
    """A 2 MB tmpfs owned by the SSH user ("full"), or a root-owned 0755 folder ("not_writable")."""
    if os.geteuid() != 0:
        pytest.fail("mounting a tmpfs and a root-owned folder need root (the suite runs as root here)")
    assert project.ssh is not None
    path = Path(tempfile.mkdtemp(prefix="runbook-badbackup-"))
    path.chmod(0o755)
    mounted = False
    try:
        if request.param == "full":
            user = pwd.getpwnam(project.ssh.user)
            done = subprocess.run(["mount", "-t", "tmpfs", "-o",
                                   f"size=2m,mode=0755,uid={user.pw_uid},gid={user.pw_gid}", "tmpfs", str(path)],
                                  capture_output=True, text=True, check=False)
            assert done.returncode == 0, done.stderr
            mounted = True
        yield path
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("bad_backup_dir", ["full", "not_writable"], indirect=True)
def test_backup_folder_full_or_not_writable_refuses_before_any_change(project: Project, bad_backup_dir: Path) -> None:
    """No room (2 MB tmpfs, a bigger database) or no permission in backup.dir: exit 1 before any change, no dump or .partial, nothing left."""
    project.start_at_0002()
    project.add_revision("0003", "0002", 'op.add_column("collections", sa.Column("slug", sa.Text()))', DOWN_0003)
    project.write_inventory(backup={"dir": str(bad_backup_dir), "keep": 10})
    _big_table(project, 150_000, random=True)  # ~10 MB of random hex: well over 2 MB compressed
    before = project.state()
    logs = set(project.run_logs())

    result = project.run("prod", "migrate")

    assert result.returncode == 1, result.stdout + result.stderr
    assert "failed before any change" in result.stderr, result.stderr
    assert project.state() == before and project.db.alembic_version() == {"0002"}
    assert sorted(os.listdir(bad_backup_dir)) == [], os.listdir(bad_backup_dir)
    log, = set(project.run_logs()) - logs
    run_id = log.stem
    record = journal(project, run_id)
    assert record["status"] == "failed" and record["exit_code"] == 1, record
    assert [s["step"] for s in record["steps"]] == ["backup"] and record["steps"][0]["outcome"] == "failed"
    failure = next(e for e in project.events(log) if e["event"] == "step_failed")
    reason = "No space left on device" if bad_backup_dir.is_mount() else "Permission denied"
    assert reason in failure["error"], failure["error"]
    assert "upgrade" not in [e.get("step") for e in project.events(log) if e["event"] == "step_started"]
    assert_nothing_left(project, run_id)


# -- 5. the run lock's session terminated mid-run ---------------------------------------------
@pytest.mark.parametrize("taker", ["nobody", "another session"])
def test_run_lock_session_terminated_mid_run(project: Project, taker: str) -> None:
    """pg_terminate_backend of the run lock's session mid-upgrade: the run stops before the next step and rolls back with the lock taken again (exit 1), or exits 3 naming who took it."""
    project.start_at_0002()
    project.add_revision("0003", "0002", SLOW_0003.format(seconds=4), DOWN_0003)
    before = project.state()
    logs = set(project.run_logs())
    other: Any = None

    proc = project.start("prod", "migrate")
    try:
        run_id = _run_id(project, proc, logs)
        wait_for_session(project, "runbook:upgrade ", "pg_sleep", proc, timeout=60)
        with project.db.admin() as conn:
            ended = conn.execute(
                "SELECT pid, pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name LIKE 'runbook:lock %%'").fetchall()
        assert len(ended) == 1 and ended[0][1], ended
        if taker == "another session":
            other = project.db.connect(autocommit=True, application_name="dba-maintenance")
            other.execute(f"SELECT pg_advisory_lock({LOCK_KEY})")
            other_pid = other.info.backend_pid
        out, err = proc.communicate(timeout=120)
    finally:
        _stop(proc)
        if other is not None:
            other.close()

    events = project.events(_log_of(project, run_id))
    names = [e["event"] for e in events]
    record = journal(project, run_id)
    assert "run_lock_lost" in names, names
    lost = names.index("run_lock_lost")
    # the upgrade finished (committed); the run stopped before the next step
    assert ("step_finished", "upgrade") in [(e["event"], e.get("step")) for e in events[:lost]]
    assert "verify" not in [e.get("step") for e in events[lost:] if e["event"] == "step_started"
                            and e.get("phase") == "run"]
    if taker == "nobody":
        assert proc.returncode == 1, out + err
        assert project.state() == before
        assert lost < names.index("run_lock_taken_again") < names.index("rollback_finished")
        assert record["status"] == "rolled_back" and record["exit_code"] == 1
        assert "downgraded" in err, err
    else:
        assert proc.returncode == 3, out + err
        assert "run_lock_taken_by_another_run" in names and "run_lock_taken_again" not in names
        # nothing was rolled back under another holder's lock: 0003 stays, and the message says so
        assert project.db.alembic_version() == {"0003"} and project.state() != before
        assert record["status"] == "needs_person" and record["exit_code"] == 3
        tail = err.strip().splitlines()[-3:]
        assert f"{project.db.name} on db1 is at 0003" in tail[0], tail
        assert "another run holds the run lock" in tail[0], tail
        assert "dba-maintenance" in tail[0] and f"server pid {other_pid}" in tail[0], tail[0]
        assert tail[1] == "runbook: next: runbook prod status", tail
    assert_nothing_left(project, run_id)


# -- 6. alembic.remote: the runner killed mid-upgrade ------------------------------------------
def _alembic_on_host(venv: Path) -> list[str]:
    out = subprocess.run(["pgrep", "-af", f"{venv}/bin/alembi[c]"], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if line.strip()]


def test_remote_alembic_killed_runner(project: Project, deployed: Path, deploy_venv: Path) -> None:  # noqa: F811
    """SIGKILL of the runner while the host's own alembic runs a slow revision: no alembic and no session left within seconds, the next run reports it."""
    deploy(project, deployed, deploy_venv, start=byo.HEAD)
    slow = deployed / "migrations" / "versions" / "r12_slow.py"
    slow.write_text(byo.revision_source(
        "r12", "r11", None, "slow", 'op.add_column("accounts", sa.Column("nick", sa.Text()))\n'
        'op.execute("SELECT pg_sleep(20)")', 'op.drop_column("accounts", "nick")'))
    if os.geteuid() == 0 and project.ssh is not None:
        user = pwd.getpwnam(project.ssh.user)
        os.chown(slow, user.pw_uid, user.pw_gid)
    before = project.state()
    logs = set(project.run_logs())

    proc = project.start("prod", "migrate")
    try:
        run_id = _run_id(project, proc, logs)
        wait_for_session(project, "runbook:upgrade ", "pg_sleep", proc, timeout=120)
        assert _alembic_on_host(deploy_venv), "the host's alembic is not running"
        assert host_jobs(run_id)
        _kill(proc)
        killed_at = time.monotonic()
    finally:
        _stop(proc)

    deadline = killed_at + 8
    while _alembic_on_host(deploy_venv) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alembic_on_host(deploy_venv), "the host's alembic outlived its runner"
    assert_nothing_left(project, run_id, within=8)
    print(f"\nnothing of the killed remote upgrade left after {time.monotonic() - killed_at:.1f}s")
    assert project.state() == before and project.db.alembic_version() == {byo.HEAD}
    _assert_killed_record(project, run_id, "upgrade")
    _assert_reported_incomplete(project, run_id, "upgrade")
    assert_nothing_left(project, run_id)
