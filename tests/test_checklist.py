"""``runbook ENV checklist`` and the checklist at the start of a protected ``migrate``.

Real sshd, PostgreSQL, git and an HTTP server for the webhook. A project made ready for production
(migrations committed in git, rehearsed, a fresh verified backup, inside its window, a webhook, lint
clean, nobody holding a lock) passes every line; each line is then broken on its own and fails.
A protected migrate is refused on a failed line (nothing touched, journaled as refused) and runs
with that line overridden by name.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest

from tests.fixtures.faults import journal, newest_run_id
from tests.fixtures.project import Project
from tests.fixtures.webhook import Hook

VAR = "CHECKLIST_WEBHOOK"
LINES = ["committed", "rehearsed", "backup", "window", "notify", "lint", "blockers"]


def window_around_now(*, inside: bool) -> dict[str, Any]:
    """Every day, an hour either side of now (inside), or two to three hours from now (outside)."""
    now = datetime.now(timezone.utc)
    start, end = (now - timedelta(hours=1), now + timedelta(hours=1)) if inside \
        else (now + timedelta(hours=2), now + timedelta(hours=3))
    return {"start": f"{start:%H:%M}", "end": f"{end:%H:%M}", "tz": "UTC"}


def git(project: Project, *args: str) -> str:
    return subprocess.run(["git", "-C", str(project.dir), "-c", "user.name=t", "-c", "user.email=t@example.com",
                           *args], check=True, capture_output=True, text=True).stdout


class Ready:
    """A project ready for production, and the ways to break each line of its checklist."""

    def __init__(self, project: Project, hook: Hook) -> None:
        self.project = project
        self.hook = hook
        self.block: dict[str, Any] = {
            "checklist": {"backup_max_age": "1h"},
            "notify": {"webhook_env": VAR, "timeout": "2s"},
            "window": window_around_now(inside=True),
        }
        project.own_migrations()
        project.upgrade_to("0001")
        self.write()
        (project.dir / ".gitignore").write_text("__pycache__/\n.runbook/\n")
        git(project, "init", "-q")
        git(project, "add", "-A")
        git(project, "commit", "-q", "-m", "the application")

    def write(self, **changes: Any) -> None:
        block = {k: v for k, v in {**self.block, **changes}.items() if v is not None}
        self.project.env_overrides = {}
        self.project.write_inventory(**block)

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return self.project.run(*args, extra_env={VAR: self.hook.url, **(env or {})})

    def checklist(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, dict[str, Any]]]:
        result = self.run("--json", "prod", "checklist", *args, env=env)
        assert "Traceback" not in result.stderr, result.stderr
        rows = [json.loads(ln) for ln in result.stdout.splitlines() if ln.strip()]
        lines = {r["name"]: r for r in rows if r.get("event") == "checklist"}
        assert sorted(lines, key=LINES.index) == LINES, result.stdout + result.stderr
        return result.returncode, lines


@pytest.fixture
def ready(project: Project, hook: Hook, createdb: None) -> Ready:
    """Committed, rehearsed (which took the fresh backup), in the window, with a webhook."""
    r = Ready(project, hook)
    result = r.run("prod", "rehearse")
    assert result.returncode == 0, result.stdout + result.stderr
    return r


def marks(lines: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {name: line["mark"] for name, line in lines.items()}


# -- the command -----------------------------------------------------------------------------------


def test_a_ready_project_passes_every_line(ready: Ready) -> None:
    """Every line ok, exit 0, read-only: no journal of its own, alembic_version unchanged; the
    readable form says each line and its reason."""
    runs_before = sorted((ready.project.dir / ".runbook" / "runs").iterdir())
    code, lines = ready.checklist()
    assert code == 0, lines
    assert marks(lines) == {name: "ok" for name in LINES}
    assert "0001 -> 0002" in lines["rehearsed"]["reason"]
    assert "collections" in lines["blockers"]["reason"]
    assert sorted((ready.project.dir / ".runbook" / "runs").iterdir()) == runs_before
    assert ready.project.db.alembic_version() == {"0001"}
    text = ready.run("prod", "checklist")
    assert text.returncode == 0, text.stderr
    assert "every line ok or skipped" in text.stdout + text.stderr
    for name in LINES:
        assert f"ok       {name}" in text.stdout


def test_uncommitted_or_untracked_migrations_fail_and_no_repository_is_skipped(ready: Ready) -> None:
    folder = ready.project.alembic_dir
    (folder / "notes.md").write_text("a draft\n")  # untracked
    mako = folder / "script.py.mako"
    mako.write_text(mako.read_text() + "\n")  # uncommitted
    code, lines = ready.checklist()
    assert code == 4
    assert {n: m for n, m in marks(lines).items() if m != "ok"} == {"committed": "FAILED"}
    assert "2 uncommitted or untracked" in lines["committed"]["reason"]
    assert "notes.md" in lines["committed"]["reason"] and "script.py.mako" in lines["committed"]["reason"]
    (folder / "notes.md").unlink()
    git(ready.project, "checkout", "--", str(mako))
    assert ready.checklist()[0] == 0
    subprocess.run(["rm", "-rf", str(ready.project.dir / ".git")], check=True)
    code, lines = ready.checklist()
    assert code == 0
    assert lines["committed"]["mark"] == "skipped" and "not in a git repository" in lines["committed"]["reason"]


def test_a_revision_changed_since_the_rehearsal_fails(ready: Ready) -> None:
    path = ready.project.alembic_dir / "versions" / "0002_require_collection_description.py"
    path.write_text(path.read_text() + "\n# edited after the rehearsal\n")
    git(ready.project, "commit", "-qam", "edit 0002")  # committed: only the rehearsal line fails
    code, lines = ready.checklist()
    assert code == 4
    assert {n: m for n, m in marks(lines).items() if m != "ok"} == {"rehearsed": "FAILED"}
    assert "0002" in lines["rehearsed"]["reason"] and "changed" in lines["rehearsed"]["reason"]


def test_no_rehearsal_fails_and_nothing_pending_is_skipped(project: Project, hook: Hook) -> None:
    r = Ready(project, hook)
    assert r.run("prod", "backup").returncode == 0
    code, lines = r.checklist()
    assert code == 4
    assert {n: m for n, m in marks(lines).items() if m != "ok"} == {"rehearsed": "FAILED"}
    assert "no passed rehearsal" in lines["rehearsed"]["reason"]
    project.upgrade_to("0002", sample=False)
    code, lines = r.checklist()
    assert code == 0
    assert marks(lines)["rehearsed"] == "skipped" and "nothing pending" in lines["rehearsed"]["reason"]


def test_an_old_backup_fails_and_a_larger_max_age_accepts_it(ready: Ready) -> None:
    two_days_ago = time.time() - 2 * 86400
    for dump in ready.project.backups():
        os.utime(dump, (two_days_ago, two_days_ago))
    code, lines = ready.checklist()
    assert code == 4
    assert {n: m for n, m in marks(lines).items() if m != "ok"} == {"backup": "FAILED"}
    assert "backup_max_age" in lines["backup"]["reason"]
    ready.write(checklist={"backup_max_age": "72h"})
    code, lines = ready.checklist()
    assert code == 0 and lines["backup"]["mark"] == "ok"


def test_outside_the_window_fails_and_no_window_is_skipped(ready: Ready) -> None:
    ready.write(window=window_around_now(inside=False))
    code, lines = ready.checklist()
    assert code == 4
    assert {n: m for n, m in marks(lines).items() if m != "ok"} == {"window": "FAILED"}
    ready.write(window=None)
    code, lines = ready.checklist()
    assert code == 0 and lines["window"] == {**lines["window"], "mark": "skipped", "reason": "no window"}


def test_notification_not_configured_fails(ready: Ready) -> None:
    ready.write(notify=None)
    code, lines = ready.checklist()
    assert code == 4
    assert {n: m for n, m in marks(lines).items() if m != "ok"} == {"notify": "FAILED"}
    ready.write()
    result = ready.project.run("--json", "prod", "checklist")  # the block, but its variable unset
    rows = [json.loads(ln) for ln in result.stdout.splitlines()]
    notify, = [r for r in rows if r.get("name") == "notify"]
    assert result.returncode == 4 and notify["mark"] == "FAILED" and VAR in notify["reason"]


def test_an_error_level_lint_finding_fails(ready: Ready) -> None:
    ready.project.add_revision("0003", "0002", 'op.drop_column("collections", "description")',
                               'op.add_column("collections", sa.Column("description", sa.Text()))',
                               verify=[{"name": "v", "sql": "SELECT 1", "expect": 1}])
    git(ready.project, "add", "-A")
    git(ready.project, "commit", "-qm", "0003")
    code, lines = ready.checklist()
    assert code == 4
    assert lines["lint"]["mark"] == "FAILED" and "ban-drop-column" in lines["lint"]["reason"]
    code, lines = ready.checklist("--accept", "ban-drop-column")
    assert lines["lint"]["mark"] == "ok"


def test_a_session_holding_a_lock_on_a_touched_table_fails(ready: Ready) -> None:
    conn = ready.project.db.connect(application_name="rag-worker")
    pid = conn.info.backend_pid
    try:
        conn.execute("SELECT count(*) FROM collections").fetchone()  # ACCESS SHARE, kept in the transaction
        code, lines = ready.checklist()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    finally:
        conn.close()
    assert code == 4
    assert {n: m for n, m in marks(lines).items() if m != "ok"} == {"blockers": "FAILED"}
    assert f"pid {pid}" in lines["blockers"]["reason"]
    assert "rag-worker" in lines["blockers"]["reason"]


def test_unknown_override_is_a_usage_error(ready: Ready) -> None:
    result = ready.run("prod", "checklist", "--override", "rehersed")
    assert result.returncode == 2
    assert "'rehersed' is no line of the checklist" in result.stderr and "Traceback" not in result.stderr
    result = ready.run("prod", "migrate", "--override", "rehersed")
    assert result.returncode == 2 and ready.project.db.alembic_version() == {"0001"}


# -- at the start of a protected migrate -----------------------------------------------------------


def test_protected_migrate_is_refused_on_a_failed_line_and_runs_with_its_override(project: Project,
                                                                                   hook: Hook) -> None:
    r = Ready(project, hook)
    assert r.run("prod", "backup").returncode == 0  # a fresh backup, but no rehearsal
    backups = project.backups()
    before = project.state()
    refused = r.run("prod", "migrate")
    assert refused.returncode == 4, refused.stdout + refused.stderr
    assert "refused by the checklist: rehearsed" in refused.stderr and "--override rehearsed" in refused.stderr
    assert project.state() == before and project.db.alembic_version() == {"0001"}
    assert project.backups() == backups  # refused before the backup
    record = journal(project, newest_run_id(project))
    assert record["status"] == "refused" and record["exit_code"] == 4
    lines = {ln["name"]: ln for ln in record["hosts"]["db1"]["checklist"]}
    assert lines["rehearsed"]["mark"] == "FAILED" and not lines["rehearsed"]["overridden"]
    assert not [s for s in record.get("steps") or [] if s["step"] == "backup"]
    assert [b["status"] for b in hook.bodies()] == ["refused"]

    done = r.run("prod", "migrate", "--override", "rehearsed")
    assert done.returncode == 0, done.stdout + done.stderr
    assert project.db.alembic_version() == {"0002"}
    record = journal(project, newest_run_id(project))
    assert record["status"] == "succeeded"
    assert record["hosts"]["db1"]["checklist_overridden"] == ["rehearsed"]
    overridden = [e for e in project.events() if e["event"] == "checklist_overridden"]
    assert overridden and overridden[0]["lines"] == ["rehearsed"]


def test_protected_migrate_with_every_line_ok_runs(ready: Ready) -> None:
    done = ready.run("prod", "migrate")
    assert done.returncode == 0, done.stdout + done.stderr
    assert ready.project.db.alembic_version() == {"0002"}
    record = journal(ready.project, newest_run_id(ready.project))
    assert {ln["mark"] for ln in record["hosts"]["db1"]["checklist"]} == {"ok"}


def test_the_gate_follows_protected_and_before_migrate(project: Project, hook: Hook) -> None:
    """No rehearsal, so the `rehearsed` line fails: a protected environment without a checklist
    block is gated (the default), one with `before_migrate: false` is not."""
    from ruamel.yaml import YAML

    from tests.fixtures.project import dump_yaml

    r = Ready(project, hook)
    inv = YAML(typ="safe").load(project.inventory.read_text())
    del inv["environments"]["prod"]["checklist"]
    project.inventory.write_text(dump_yaml(inv))
    refused = r.run("prod", "migrate")
    assert refused.returncode == 4, refused.stdout + refused.stderr
    assert "refused by the checklist: rehearsed" in refused.stderr
    assert project.db.alembic_version() == {"0001"}
    r.write(checklist={"before_migrate": False})
    done = r.run("prod", "migrate")
    assert done.returncode == 0, done.stdout + done.stderr
    assert project.db.alembic_version() == {"0002"}
    assert "checklist" not in journal(project, newest_run_id(project))["hosts"]["db1"]


def test_a_playbook_that_rehearses_first_skips_the_rehearsal_line(project: Project, hook: Hook,
                                                                  createdb: None) -> None:
    """migrate-rehearsed rehearses before it upgrades: no earlier rehearsal is needed."""
    r = Ready(project, hook)
    assert r.run("prod", "backup").returncode == 0
    done = r.run("prod", "migrate-rehearsed")
    assert done.returncode == 0, done.stdout + done.stderr
    assert project.db.alembic_version() == {"0002"}
    lines = {ln["name"]: ln for ln in journal(project, newest_run_id(project))["hosts"]["db1"]["checklist"]}
    assert lines["rehearsed"]["mark"] == "skipped" and "rehearses before it upgrades" in lines["rehearsed"]["reason"]
