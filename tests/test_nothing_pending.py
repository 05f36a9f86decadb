"""No needless work: a migrate with nothing pending verifies and takes no backup; ``migrate --to``
a revision below the current one is refused before anything runs (exit 2, pointing to rollback).

Real PostgreSQL behind the test sshd: the database, the backup folder and the journal are read
back, not only the exit codes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.fixtures.project import Project


def _journal(project: Project, run_log: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(run_log.with_suffix(".json").read_text())
    return data


def _steps(record: dict[str, Any]) -> list[tuple[str, str]]:
    return [(s["step"], s["outcome"]) for s in record["steps"]]


def test_nothing_pending_verifies_without_a_backup_and_rollback_still_goes_back(project: Project) -> None:
    """migrate (changes, one dump); migrate again: exit 0, no new dump, backup and check_locks
    journaled as skipped with the reason, verify run; the database unchanged; then rollback goes
    back to where the first run started (the no-op run is not the run it goes back to)."""
    project.upgrade_to("0001")
    first = project.run("prod", "migrate")
    assert first.returncode == 0, first.stderr
    (dump,) = project.backups()
    first_log = project.run_logs()[-1]
    state = project.state()

    again = project.run("prod", "migrate")
    assert again.returncode == 0, again.stderr
    assert "nothing to migrate, no backup needed, verified" in again.stdout
    assert project.backups() == [dump], "a run with nothing pending writes no dump"
    assert project.state() == state

    second_log = project.run_logs()[-1]
    assert second_log != first_log
    record = _journal(project, second_log)
    assert record["status"] == "succeeded" and record["exit_code"] == 0
    assert _steps(record) == [("backup", "skipped"), ("check_locks", "skipped"), ("upgrade", "ok"),
                              ("verify", "ok"), ("prune", "ok")]
    reason = record["steps"][0]["facts"]["reason"]
    assert reason.startswith("nothing pending") and "0002" in reason
    assert record["hosts"]["db1"]["start_revision"] == record["hosts"]["db1"]["end_revision"] == "0002"
    assert "backup" not in record["hosts"]["db1"]
    events = project.events(second_log)
    skipped = [e for e in events if e["event"] == "step_skipped"]
    assert [e["step"] for e in skipped] == ["backup", "check_locks"]
    assert all(e["reason"] == reason and e["phase"] == "run" for e in skipped)
    verified = [e for e in events if e["event"] == "step_finished" and e["step"] == "verify"]
    assert verified and verified[0]["failed"] == 0 and verified[0]["checks"] >= 5
    assert not [e for e in events if e["event"] == "step_started" and e["step"] in ("backup", "check_locks")]

    third = project.run("prod", "migrate")  # each re-run: still no dump
    assert third.returncode == 0, third.stderr
    assert project.backups() == [dump]

    back = project.run("prod", "rollback")
    assert back.returncode == 0, back.stderr
    assert project.db.alembic_version() == {"0001"}
    first_id = first_log.stem
    assert f"the last successful migrate ({first_id})" in back.stderr, back.stderr


def test_dry_run_with_nothing_pending_says_so(project: Project) -> None:
    """--dry-run at the head: nothing pending, no backup would be taken, nothing written."""
    project.start_at_0002()
    text = project.run("prod", "migrate", "--dry-run")
    assert text.returncode == 0, text.stderr
    assert "nothing to migrate" in text.stdout
    assert "nothing pending: a run skips backup and check_locks (no new backup) and verifies" in text.stdout
    as_json = project.run("--json", "prod", "migrate", "--dry-run")
    assert as_json.returncode == 0, as_json.stderr
    (line,) = [json.loads(x) for x in as_json.stdout.splitlines() if '"dry_run"' in x]
    assert line["hosts"][0]["skipped"] == ["backup", "check_locks"] and line["hosts"][0]["revisions"] == []
    assert project.backups() == [] and project.run_logs() == []


def test_a_playbook_that_may_change_more_still_backs_up(project: Project) -> None:
    """A shell step could change the database: nothing pending or not, the backup is taken."""
    project.start_at_0002()
    project.write_playbook("migrate", """\
        steps:
          - backup
          - shell: {command: "true"}
          - upgrade: {to: head}
          - verify
        """)
    result = project.run("prod", "migrate")
    assert result.returncode == 0, result.stderr
    assert len(project.backups()) == 1
    assert not [e for e in project.events() if e["event"] == "step_skipped"]


def test_migrate_to_an_older_revision_is_refused_before_any_backup(project: Project) -> None:
    """migrate --to a revision below the current one (or base): exit 2, one error line and the
    rollback command, no dump, the database unchanged, the run journaled as refused with no step;
    a later rollback still goes back to the last real migrate's start."""
    project.upgrade_to("0001")
    assert project.run("prod", "migrate").returncode == 0
    (dump,) = project.backups()
    first_id = project.run_logs()[-1].stem
    state = project.state()

    for target in ("0001", "base"):
        refused = project.run("prod", "migrate", "--to", target)
        assert refused.returncode == 2, refused.stderr
        errors = [line for line in refused.stderr.splitlines() if line.startswith("runbook: error:")]
        assert errors == [f"runbook: error: migrate --to {target}: {'0001' if target != 'base' else 'base'} is below "
                          "the current revision 0002; a migrate only goes forward: nothing was done"], refused.stderr
        assert f"runbook: next: runbook prod rollback --to {target}" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert project.backups() == [dump]
        assert project.state() == state
        record = _journal(project, project.run_logs()[-1])
        assert record["status"] == "refused" and record["exit_code"] == 2 and record["steps"] == []
        events = project.events()
        assert not [e for e in events if e["event"] == "step_started"]

    dry = project.run("prod", "migrate", "--to", "0001", "--dry-run")
    assert dry.returncode == 2 and "rollback --to 0001" in dry.stderr, dry.stderr

    back = project.run("prod", "rollback")
    assert back.returncode == 0, back.stderr
    assert f"the last successful migrate ({first_id})" in back.stderr, back.stderr
    assert project.db.alembic_version() == {"0001"}
