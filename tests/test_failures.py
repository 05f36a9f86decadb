"""Every failure path of ``runbook prod migrate``, injected for real, with the database checked after.

Each test starts from a deployed application (the example data at 0002), adds revisions to a private
copy of the Alembic project, makes one thing fail and then compares the schema dump, the row counts
and alembic_version with what they were before the run: "rolled back" is read back, never assumed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ruamel.yaml import YAML

from tests.fixtures.project import PLAYBOOKS, Project, dump_yaml

# 0003: a column, a row and fewer chunks, so that a rollback has schema and data to undo.
UP_0003 = """
op.add_column("collections", sa.Column("slug", sa.Text(), nullable=True))
op.execute("INSERT INTO collections (name, description) VALUES ('added-by-0003', 'new')")
op.execute("DELETE FROM chunks WHERE chunk_index = 2")
"""
DOWN_0003 = 'op.drop_column("collections", "slug")'
# Undoes part of 0003, then fails at run time on the data (a unique violation), as a buggy data
# migration does: what it did before failing must not stay either. (A downgrade() that raises at its
# top level is recognised as "no downgrade" before it runs: that is the "empty" case below.)
RAISING_DOWN = """
op.drop_column("collections", "slug")
op.execute("UPDATE collections SET name = 'renamed-back'")
"""
FAILING_CHECK = [{"name": "every collection has a slug",
                  "sql": "SELECT count(*) FROM collections WHERE slug IS NULL", "expect": 0}]


def _tail(result: subprocess.CompletedProcess[str], lines: int = 4) -> list[str]:
    return (result.stdout + result.stderr).strip().splitlines()[-lines:]


def _steps(project: Project) -> list[tuple[str, str, str]]:
    """(phase, step, outcome) of every finished or failed step of the newest run."""
    out = []
    for e in project.events():
        if e["event"] == "step_finished":
            out.append((e["phase"], e["step"], "ok"))
        elif e["event"] == "step_failed":
            out.append((e["phase"], e["step"], "failed"))
    return out


def test_broken_sql_in_the_last_revision_rolls_back_both(project: Project) -> None:
    """0003 fine, 0004 broken SQL: exit 1, the database back at 0002 exactly (0003 did not stay)."""
    project.start_at_0002()
    project.add_revision("0003", "0002", UP_0003, DOWN_0003)
    project.add_revision("0004", "0003", 'op.execute("ALTER TABLE collections ADD COLUMN x no_such_type")')
    before = project.state()

    result = project.run("prod", "migrate")

    assert result.returncode == 1, result.stderr
    assert project.state() == before
    assert "rolled back (the failed transaction rolled back" in result.stderr
    assert "revision 0004" in result.stderr
    assert ("run", "upgrade", "failed") in _steps(project)
    assert len(project.backups()) == 1  # the run's own backup, never needed


def test_failed_verification_downgrades_to_the_start(project: Project) -> None:
    """0003 applies but its verification fails: downgraded to 0002, exit 1, state identical."""
    project.start_at_0002()
    project.add_revision("0003", "0002", 'op.add_column("collections", sa.Column("slug", sa.Text()))',
                         DOWN_0003, verify=FAILING_CHECK)
    before = project.state()

    result = project.run("prod", "migrate")

    assert result.returncode == 1, result.stderr
    assert project.state() == before
    steps = _steps(project)
    assert steps == [("run", "backup", "ok"), ("run", "check_locks", "ok"), ("run", "upgrade", "ok"),
                     ("run", "verify", "failed"), ("rollback", "downgrade", "ok"),
                     ("rollback", "verify", "ok")]
    failed = [e for e in project.events() if e["event"] == "check_failed"]
    assert failed and failed[0]["check"] == "every collection has a slug"
    assert "downgraded" in result.stderr


@pytest.mark.parametrize("downgrade", [RAISING_DOWN, "pass"], ids=["raises", "empty"])
def test_downgrade_impossible_restores_the_backup(project: Project, downgrade: str) -> None:
    """A downgrade that raises (or is empty) goes to the restore: current state saved first, exit 1, state identical."""
    project.start_at_0002()
    project.add_revision("0003", "0002", UP_0003, downgrade, verify=FAILING_CHECK)
    before = project.state()

    result = project.run("prod", "migrate")

    assert result.returncode == 1, result.stdout + result.stderr
    assert project.state() == before
    assert "restored from the backup" in result.stderr
    steps = _steps(project)
    assert steps[:4] == [("run", "backup", "ok"), ("run", "check_locks", "ok"), ("run", "upgrade", "ok"),
                         ("run", "verify", "failed")]
    assert steps[4:] == [("rollback", "downgrade", "failed"), ("rollback", "restore", "ok"),
                         ("rollback", "verify", "ok")]
    events = project.events()
    # An empty downgrade is refused before it runs: nothing was reverted, straight to the restore.
    assert not [e for e in events if e["event"] == "revision_reverted"]
    failure = next(e for e in events if e["event"] == "step_failed" and e["step"] == "downgrade")
    if downgrade == "pass":
        assert "has no downgrade" in failure["error"]
    else:
        assert "duplicate key value violates unique constraint" in failure["error"]

    run_backup, = [b for b in project.backups() if "_pre-restore" not in b.name]
    saved, = [b for b in project.backups() if "_pre-restore" in b.name]
    assert run_backup.name.endswith("_0002.dump") and saved.name.endswith("_0003_pre-restore.dump")
    restored = next(e for e in events if e["event"] == "step_finished" and e["step"] == "restore")
    assert restored["restored"] == str(run_backup) and restored["saved_current_state"] == str(saved)
    # What was saved is the failed state (0003's column and row), restorable by hand if needed.
    sql = subprocess.run([str(project.db.server.bindir / "pg_restore"), "-f", "-", str(saved)],
                         capture_output=True, text=True, check=True).stdout
    assert "slug" in sql and "added-by-0003" in sql


def test_downgrade_that_leaves_the_start_unverified_restores(project: Project) -> None:
    """A downgrade that returns but breaks 0002's checks (drops its constraint): the verification after it fails, the backup is restored, exit 1, state identical."""
    project.start_at_0002()
    project.add_revision("0003", "0002", UP_0003, """
        op.drop_column("collections", "slug")
        op.drop_constraint("description_not_empty", "collections")
        """, verify=FAILING_CHECK)
    before = project.state()

    result = project.run("prod", "migrate")

    assert result.returncode == 1, result.stdout + result.stderr
    assert project.state() == before
    assert "restored from the backup" in result.stderr
    assert _steps(project)[4:] == [("rollback", "downgrade", "ok"), ("rollback", "verify", "failed"),
                                   ("rollback", "restore", "ok"), ("rollback", "verify", "ok")]


def _corrupt_playbook(project: Project, command: str) -> None:
    """The shipped migrate playbook plus a step after the upgrade that damages the run's backup."""
    shipped = YAML(typ="safe").load((PLAYBOOKS / "migrate.yaml").read_text())
    at = next(i for i, s in enumerate(shipped["steps"]) if isinstance(s, dict) and "upgrade" in s)
    shipped["steps"].insert(at + 1, {"shell": {"command": command}})
    shipped["description"] = "migrate, with a disk fault on the backup volume after the upgrade"
    project.write_playbook("migrate", dump_yaml(shipped))


@pytest.mark.parametrize("fault", ["bitrot", "unreadable"])
def test_restore_of_a_damaged_backup_needs_a_person(project: Project, fault: str) -> None:
    """The backup is damaged on the host before the restore: exit 3, nothing restored, the last lines say the state and the next command."""
    project.start_at_0002()
    project.add_revision("0003", "0002", UP_0003, RAISING_DOWN, verify=FAILING_CHECK)
    damage = {
        "bitrot": 'printf rot | dd of="$f" bs=1 seek=300 conv=notrunc status=none',
        "unreadable": 'chmod 000 "$f"',
    }[fault]
    _corrupt_playbook(project, f'for f in {project.backup_dir}/*.dump; do {damage}; done')
    before = project.state()

    result = project.run("prod", "migrate")

    assert result.returncode == 3, result.stdout + result.stderr
    # The rollback could not restore: the database is left as the failed upgrade made it, untouched.
    assert project.db.alembic_version() == {"0003"}
    assert project.state() != before
    slug = project.db.psql("SELECT count(*) FROM information_schema.columns "
                           "WHERE table_name = 'collections' AND column_name = 'slug'")
    assert slug.strip() == "1"
    run_backup, = project.backups()
    tail = _tail(result, 3)
    state_line, next_line = tail[0], tail[1]
    assert "FAILED and the rollback did not complete" in state_line
    assert f"{project.db.name} on db1 is at 0003" in state_line and "started at 0002" in state_line
    assert ("does not match its recorded sha256" if fault == "bitrot" else "not readable") in state_line
    # Restoring that backup again cannot work: the next command is not a restore of it.
    assert run_backup.name not in next_line
    assert next_line == "runbook: next: runbook prod status"
    assert tail[2].startswith("runbook: run log ")
    finished = project.events()[-1]
    assert finished["event"] == "run_finished" and finished["exit_code"] == 3
    assert finished["next"] == "runbook prod status"


def test_restore_blocked_by_a_lock_holder_rolls_back_atomically(project: Project) -> None:
    """A session holding a lock on another table makes the restore time out: the restore is rolled back whole, exit 3, next command given."""
    project.start_at_0002()
    project.write_inventory(locks={"lock_timeout": "1s", "max_wait": "3s", "blockers": "wait"})
    project.add_revision("0003", "0002", 'op.add_column("collections", sa.Column("slug", sa.Text()))',
                         RAISING_DOWN, verify=FAILING_CHECK)
    # A report reading chunks in a long transaction: 0003 does not touch chunks, so neither the
    # pre-flight nor the upgrade waits for it, but the restore must replace every table.
    holder = project.db.connect()
    holder.execute("SELECT count(*) FROM chunks").fetchone()
    try:
        result = project.run("prod", "migrate")
        assert holder.info.transaction_status.name == "INTRANS"  # never terminated by the restore
    finally:
        holder.close()

    assert result.returncode == 3, result.stdout + result.stderr
    # All or nothing: the restore's DROP SCHEMA of the other tables was rolled back with it.
    assert project.db.alembic_version() == {"0003"}
    counts = project.db.row_counts()
    assert counts["chunks"] > 0 and counts["collections"] > 0
    run_backup = next(b for b in project.backups() if "_pre-restore" not in b.name)
    saved = [b for b in project.backups() if "_pre-restore" in b.name]
    assert len(saved) == 1
    events = project.events()
    assert any(e["event"] == "lock_timeout_retry" and e.get("step") == "restore" for e in events)
    tail = _tail(result, 3)
    assert f"{project.db.name} on db1 is at 0003" in tail[0] and "started at 0002" in tail[0]
    assert "rolled back" in tail[0] and saved[0].name in tail[0]
    assert tail[1] == f"runbook: next: runbook prod rollback --restore {run_backup.name}"


def _sessions(project: Project, like: str) -> list[tuple[int, str, str]]:
    with project.db.admin() as conn:
        rows = conn.execute(
            "SELECT pid, state, query FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name LIKE %s", (like,)).fetchall()
    return [(int(p), str(s), str(q)) for p, s, q in rows]


def _wait_for_session(project: Project, like: str, query: str, proc: subprocess.Popen[str],
                      timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not any(query in q and s == "active" for _, s, q in _sessions(project, like)):
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (exit {proc.returncode}) too early:\n{out}\n{err}")
        assert time.monotonic() < deadline, f"no session {like} running {query!r}"
        time.sleep(0.02)


SLOW_0003 = """
op.add_column("collections", sa.Column("slug", sa.Text(), nullable=True))
op.execute("SELECT pg_sleep(3)")
"""


def _sshd_children(project: Project) -> list[int]:
    """The processes of the test sshd that serve a connection (never the listener itself)."""
    assert project.ssh is not None
    pidfile = Path(project.ssh.log_path).parent / "sshd.pid"
    master = int(pidfile.read_text().split()[0])
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], list(children.get(master, []))
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def test_lost_ssh_connection_mid_upgrade_rolls_back(project: Project) -> None:
    """The SSH connection dies during the upgrade: the transaction dies with it, the engine reconnects, exit 1 at 0002."""
    project.start_at_0002()
    project.add_revision("0003", "0002", SLOW_0003, DOWN_0003)
    before = project.state()
    served_before = set(_sshd_children(project))
    proc = project.start("prod", "migrate")
    try:
        _wait_for_session(project, "runbook:upgrade %", "pg_sleep", proc)
        serving = [pid for pid in _sshd_children(project) if pid not in served_before]
        assert serving, "no sshd process serves the run"
        for pid in serving:
            os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert proc.returncode == 1, out + err
    assert project.state() == before
    events = project.events()
    names = [e["event"] for e in events]
    assert "connection_lost" in names and "reconnected" in names
    assert names.index("rollback_started") < names.index("reconnected") < names.index("step_started",
                                                                                    names.index("rollback_started"))
    # Back on a new tunnel, the run holds its run lock again before the rollback goes on.
    assert names.index("reconnected") < names.index("run_lock_taken_again") < names.index(
            "step_started", names.index("rollback_started"))
    assert "rolled back (the failed transaction rolled back" in err



def test_password_file_removed_on_the_host_when_the_runner_dies(project: Project) -> None:
    """Runner SIGKILLed during pg_dump: the dump stops on the host at once, its password file and partial dump go."""
    import glob
    import signal

    from tests.fixtures.faults import assert_nothing_left, runbook_sessions, wait_for_session

    project.upgrade_to("0001")
    # owned by the application role, so pg_dump really dumps it (seconds), rather than failing at once
    project.db.psql("CREATE TABLE big AS SELECT g, repeat('x', 500) AS pad FROM generate_series(1, 600000) g; "
                    f"ALTER TABLE big OWNER TO {project.db.user}")
    proc = project.start("prod", "backup")
    try:
        wait_for_session(project, "runbook:backup ", "COPY", proc)
        run_id = project.run_logs()[-1].stem
        assert runbook_sessions(project, run_id), "pg_dump's session names the run"
        assert glob.glob(f"{project.ssh.home}/.runbook-pgpass-{run_id}-*"), "the password file exists while pg_dump runs"
        proc.send_signal(signal.SIGKILL)  # nobody is left on the control side to clean up
        proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert_nothing_left(project, run_id, within=3.0)  # stopped on the host now, not when the dump would end
    assert not list(project.backup_dir.glob("*.partial"))
