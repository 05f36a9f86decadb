"""An internal error (a bug) is never reported as "rolled back" unless the database was read back as it was.

These run ``cli.execute`` in-process so a bug can be injected with monkeypatch; the database, the
journal and the exit code are checked as in every failure test.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from runbook import cleanup, cli
from runbook.context import Options
from runbook.steps import verify
from tests.fixtures.faults import assert_nothing_left, journal, newest_run_id
from tests.fixtures.project import PASSWORD_ENV, Project


def _execute(project: Project, monkeypatch: pytest.MonkeyPatch, playbook: str = "migrate") -> int:
    monkeypatch.setenv(PASSWORD_ENV, project.db.password)
    monkeypatch.chdir(project.dir)
    return cli.execute(Path(project.inventory), "prod", playbook, Options(yes=True), argv=["prod", playbook])


def test_a_bug_before_any_step_is_exit_3_not_1(project: Project, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A bug outside the steps (nothing read back): exit 3, journal internal_error, traceback shown, nothing touched."""
    project.start_at_0002()
    project.add_revision("0003", "0002", 'op.add_column("collections", sa.Column("slug", sa.Text()))',
                         'op.drop_column("collections", "slug")')
    before = project.state()

    def bug(ctx: Any) -> None:
        raise ZeroDivisionError("division by zero in a bug")

    monkeypatch.setattr(cleanup, "dead_runs", bug)
    code = _execute(project, monkeypatch)
    err = capsys.readouterr().err
    assert code == 3
    assert "ZeroDivisionError" in err and "internal error, the database was not read back" in err
    assert project.state() == before and project.backups() == []
    run_id = newest_run_id(project)
    assert journal(project, run_id)["status"] == "internal_error" and journal(project, run_id)["exit_code"] == 3
    assert_nothing_left(project, run_id)


def test_a_bug_in_a_step_after_the_upgrade_rolls_back_and_reads_back(
        project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in verify after the upgrade committed: the rollback downgrades, reads back the start revision: exit 1."""
    project.start_at_0002()
    project.add_revision("0003", "0002", 'op.add_column("collections", sa.Column("slug", sa.Text()))',
                         'op.drop_column("collections", "slug")')
    before = project.state()
    calls: list[str] = []
    real = verify.run

    def buggy_once(ctx: Any, params: Any) -> dict[str, Any]:
        calls.append(ctx.step)
        if len(calls) == 1:
            raise KeyError("a bug")
        return real(ctx, params)

    monkeypatch.setattr(verify, "run", buggy_once)
    code = _execute(project, monkeypatch)
    assert code == 1
    assert project.state() == before
    run_id = newest_run_id(project)
    record = journal(project, run_id)
    assert record["status"] == "rolled_back"
    failed = [s for s in record["steps"] if s["outcome"] == "failed"]
    assert failed[0]["step"] == "verify" and "KeyError" in failed[0]["facts"]["error"]
    assert_nothing_left(project, run_id)
    assert os.environ.get("PGPASSFILE") is None
