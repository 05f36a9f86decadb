"""Connections opened before they are needed (issue 10): early, while the plan is validated, and
the upgrade's Alembic connection during the backup. What they must never do: outlive a run that
did not take them, or break a run when the server ended them meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from tests.fixtures.faults import assert_nothing_left, journal, newest_run_id, runbook_sessions
from tests.fixtures.project import Project

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def app_at_0001(project: Project) -> Iterator[Project]:
    """The application with its data at 0001: migrate applies 0002."""
    project.upgrade_to("0001")
    yield project


def _migrate_with_pause(project: Project, seconds: float) -> None:
    """The shipped migrate playbook with a pause on the host before the upgrade."""
    import io

    yaml = YAML(typ="safe")
    shipped = yaml.load((ROOT / "runbook" / "playbooks" / "migrate.yaml").read_text())
    at = shipped["steps"].index("check_locks")
    shipped["steps"].insert(at, {"shell": {"command": f"sleep {seconds}"}})
    out = io.StringIO()
    YAML().dump(shipped, out)
    project.write_playbook("migrate", out.getvalue())


def test_upgrade_connection_ended_by_the_server_before_use_is_replaced(app_at_0001: Project) -> None:
    """The upgrade's connection, opened during the backup, is terminated before the upgrade: the
    upgrade notices without a round trip, opens another, and the run succeeds."""
    project = app_at_0001
    _migrate_with_pause(project, 3)
    proc = project.start("prod", "migrate")
    project.wait_event("step_started", proc=proc, step="shell")
    deadline = time.monotonic() + 10
    ended: list[int] = []
    while not ended and time.monotonic() < deadline:
        with project.db.admin() as conn:
            ended = [pid for pid, in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name LIKE 'runbook:upgrade %' AND state = 'idle'").fetchall()]
            for pid in ended:
                conn.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
        time.sleep(0.05)
    assert ended, "no idle upgrade connection was opened ahead of the upgrade"
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert project.db.alembic_version() == {"0002"}
    run_id = newest_run_id(project)
    assert journal(project, run_id)["status"] == "succeeded"
    assert_nothing_left(project, run_id)


def test_a_plan_that_fails_closes_what_was_opened_early(app_at_0001: Project) -> None:
    """Bad input found after the early connection started (an unknown --to revision): exit 2, one
    line, and no session, tunnel or login of it remains."""
    project = app_at_0001
    result = project.run("prod", "migrate", "--to", "no_such_revision")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no_such_revision" in result.stderr and "Traceback" not in result.stderr
    time.sleep(0.3)  # the server notices closed sessions at once; be generous
    assert runbook_sessions(project) == []
    assert project.db.alembic_version() == {"0001"}


def test_another_run_holding_the_lock_closes_the_early_sessions(app_at_0001: Project) -> None:
    """Refused because another run holds the run lock (exit 4): the sessions opened early for the
    refused run are closed, and the holder keeps its lock."""
    project = app_at_0001
    _migrate_with_pause(project, 8)
    first = project.start("prod", "migrate")
    project.wait_event("step_started", proc=first, step="shell")
    first_id = newest_run_id(project)
    second = project.run("prod", "migrate")
    assert second.returncode == 4, second.stdout + second.stderr
    assert "another runbook run is in progress" in second.stderr
    second_id = newest_run_id(project)
    assert second_id != first_id
    time.sleep(0.3)
    assert runbook_sessions(project, second_id) == [], "sessions of the refused run remain"
    assert any(app.startswith("runbook:lock") for _, app, _, _ in runbook_sessions(project, first_id))
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, out + err
    assert project.db.alembic_version() == {"0002"}


@pytest.mark.parametrize("kind", ["status", "dry-run"])
def test_read_only_commands_take_no_lock_session(app_at_0001: Project, kind: str) -> None:
    """status and --dry-run open no run-lock session early (they take no lock) and leave nothing."""
    project = app_at_0001
    args = ["prod", "status"] if kind == "status" else ["prod", "migrate", "--dry-run"]
    result = project.run(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    time.sleep(0.3)
    assert runbook_sessions(project) == []
