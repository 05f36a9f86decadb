"""End to end: ``runbook ENV migrate`` over a real SSH login against a real PostgreSQL."""

from __future__ import annotations

import stat
import subprocess

from tests.fixtures.project import ProcessWatcher, Project


def test_migrate_over_ssh_from_first_revision_to_head(project: Project) -> None:
    """migrate over SSH: exit 0, a 0600 readable backup on the host, constraints in place, rows kept, steps logged."""
    project.upgrade_to("0001")
    before = project.db.row_counts()
    result = project.run("prod", "migrate")
    assert result.returncode == 0, result.stderr
    assert "at 0002, verified" in result.stdout

    assert project.db.alembic_version() == {"0002"}
    assert project.db.row_counts() == before
    nulls = project.db.psql("SELECT count(*) FROM collections WHERE description IS NULL OR trim(description) = ''")
    assert nulls.strip() == "0"
    constraint = project.db.psql("SELECT count(*) FROM pg_constraint WHERE conname = 'description_not_empty'")
    assert constraint.strip() == "1"

    backups = project.backups()
    assert len(backups) == 1
    dump = backups[0]
    assert dump.name.startswith(f"{project.db.name}_prod_") and dump.name.endswith("_0001.dump")
    assert stat.S_IMODE(dump.stat().st_mode) == 0o600
    assert dump.stat().st_uid == dump.parent.stat().st_uid  # written on the host by the deploy user
    listing = subprocess.run([str(project.db.server.bindir / "pg_restore"), "--list", str(dump)],
                             capture_output=True, text=True, check=True).stdout
    assert "TABLE DATA public collections" in listing

    events = project.events()
    finished = [e for e in events if e["event"] == "step_finished"]
    assert [e["step"] for e in finished] == ["backup", "check_locks", "upgrade", "verify", "prune"]
    for e in finished:
        assert e["run_id"] and e["env"] == "prod" and e["host"] == "db1" and e["duration_ms"] >= 0
    backup_event = finished[0]
    assert backup_event["backup_path"] == str(dump)
    assert backup_event["backup_size"] == dump.stat().st_size
    import hashlib
    assert backup_event["backup_sha256"] == hashlib.sha256(dump.read_bytes()).hexdigest()
    assert finished[2]["from"] == "0001" and finished[2]["to"] == "0002" and finished[2]["applied"] == ["0002"]
    assert finished[3]["checks"] >= 5 and finished[3]["failed"] == 0
    assert events[-1]["event"] == "run_finished" and events[-1]["exit_code"] == 0


def test_migrate_again_has_nothing_to_do(project: Project) -> None:
    """A second migrate finds nothing pending, exits 0 and leaves the database as it was."""
    project.upgrade_to("0001")
    assert project.run("prod", "migrate").returncode == 0
    state = project.state()
    again = project.run("prod", "migrate")
    assert again.returncode == 0, again.stderr
    assert "nothing to migrate" in again.stdout
    assert project.state() == state


def test_migrate_to_named_revision(project: Project) -> None:
    """--to stops at the named revision."""
    result = project.run("prod", "migrate", "--to", "0001")
    assert result.returncode == 0, result.stderr
    assert project.db.alembic_version() == {"0001"}


def test_json_output_is_json_lines(project: Project) -> None:
    """--json writes one JSON object per stdout line: run_finished, then the run's summary last."""
    import json

    project.upgrade_to("0001")
    result = project.run("--json", "prod", "migrate")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert lines[-2]["event"] == "run_finished" and lines[-2]["exit_code"] == 0
    assert lines[-1]["event"] == "summary" and lines[-1]["exit_code"] == 0 and lines[-1]["hosts"][0]["to"] == "0002"
    assert all(e["schema_version"] == 1 for e in lines)
    assert any(e["event"] == "step_finished" and e["step"] == "backup" for e in lines)


def test_password_never_shown(project: Project) -> None:
    """The password is in no log file, no output and no process command line (local or remote)."""
    project.upgrade_to("0001")
    password = project.db.password
    with ProcessWatcher() as watcher:
        result = project.run("prod", "migrate")
    assert result.returncode == 0, result.stderr
    assert password not in result.stdout and password not in result.stderr
    for log in project.run_logs():
        assert password not in log.read_text()
    assert not [cmd for cmd in watcher.seen if password in cmd]
    assert any("pg_dump" in cmd for cmd in watcher.seen), "the watcher saw the remote pg_dump"
    assert password not in project.ssh.log()
    # no password file is left on the host
    import glob
    run_ids = [log.stem for log in project.run_logs()]  # other test sessions share this home
    assert run_ids and not [f for r in run_ids for f in glob.glob(f"{project.ssh.home}/.runbook-pgpass-{r}-*")]


def test_local_transport_migrate(local_project: Project) -> None:
    """Without an ssh block, the same playbook runs with the local transport."""
    local_project.upgrade_to("0001")
    result = local_project.run("prod", "migrate")
    assert result.returncode == 0, result.stderr
    assert local_project.db.alembic_version() == {"0002"}
    assert len(local_project.backups()) == 1
