"""``runbook prod status``: revisions, pending migrations, backups, runs and lock holders, read-only."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.fixtures.project import Project, held_until_removed


def _status_json(project: Project) -> dict[str, Any]:
    result = project.run("--json", "prod", "status", yes=False)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    (report,) = [e for e in events if e.get("event") == "status"]
    return report


def _status_text(project: Project) -> str:
    result = project.run("prod", "status", yes=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_status_of_a_fresh_database(project: Project) -> None:
    """At base: every revision pending, by name; no backups, no runs; status itself changes nothing."""
    state = project.state()
    text = _status_text(project)
    assert "at base (head 0002)" in text
    assert "pending: 0001 initial_schema" in text and "; 0002 require_collection_description" in text
    assert "backups in " in text and ": 0\n" in text
    assert "run lock: free" in text
    assert "none recorded" in text

    report = _status_json(project)
    (host,) = report["hosts"]
    assert host["current"] == "base" and host["head"] == "0002"
    assert [p["revision"] for p in host["pending"]] == ["0001", "0002"]
    assert host["pending"][0]["doc"].startswith("initial_schema")
    assert host["backups"] == [] and host["run_lock"] is None and report["runs"] == []

    assert project.state() == state
    assert project.db.alembic_version() is None
    assert not (project.dir / ".runbook" / "runs").exists(), "status writes no run journal"


def test_status_after_a_migrate(project: Project) -> None:
    """Migrated: current = head, the backup with its size, age and checksum, the run with outcome and duration."""
    project.upgrade_to("0001")
    assert project.run("prod", "migrate").returncode == 0
    state = project.state()
    (dump,) = project.backups()
    digest = hashlib.sha256(dump.read_bytes()).hexdigest()

    text = _status_text(project)
    assert "at 0002 (head 0002)" in text and "pending: none, up to date" in text
    assert "backups in " in text and ": 1\n" in text
    line = next(ln for ln in text.splitlines() if dump.name in ln)
    assert f"sha256 {digest[:12]}" in line and " KB " in line and " old" in line
    run = next(ln for ln in text.splitlines() if " migrate " in ln)
    assert "succeeded" in run and "exit 0" in run and "db1 0001->0002" in run and "INCOMPLETE" not in run

    report = _status_json(project)
    (host,) = report["hosts"]
    assert host["current"] == "0002" and host["pending"] == []
    assert project.db.alembic_version() == {host["current"]}
    (backup,) = host["backups"]
    assert backup["name"] == dump.name and backup["path"] == str(dump)
    assert backup["size"] == dump.stat().st_size and backup["sha256"] == digest
    assert backup["verified"] and backup["revision"] == "0001" and 0 <= backup["age_s"] < 600
    (last,) = report["runs"]
    assert last["playbook"] == "migrate" and last["status"] == "succeeded" and last["exit_code"] == 0
    assert last["incomplete"] is False and 0 < last["duration_s"] < 120
    assert last["hosts"] == {"db1": {"start_revision": "0001", "end_revision": "0002"}}
    assert project.state() == state


def test_status_flags_a_run_killed_mid_migration(project: Project) -> None:
    """A migrate SIGKILLed in a slow revision: status says INCOMPLETE and where it stopped; nothing was applied."""
    project.add_revision("0003", "0002", 'op.execute("SELECT pg_sleep(30)")', doc="a slow data migration")
    project.start_at_0002()
    state = project.state()
    proc = project.start("prod", "migrate")
    try:
        project.wait_event("migration_attempt", proc=proc, timeout=60)
        deadline = time.monotonic() + 30
        while "pg_sleep" not in project.db.psql(
                "SELECT string_agg(query, ' ') FROM pg_stat_activity WHERE state = 'active'"):
            assert time.monotonic() < deadline, "the slow revision never started"
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.communicate()

    text = _status_text(project)
    run = next(ln for ln in text.splitlines() if " migrate " in ln)
    assert "running" in run and "INCOMPLETE (its runner died during upgrade)" in run
    assert "at 0002 (head 0003)" in text and "pending: 0003 a slow data migration" in text

    report = _status_json(project)
    (last,) = report["runs"]
    assert last["status"] == "running" and last["incomplete"] is True
    assert last["last_step"] == "upgrade" and last["last_step_outcome"] == "running"
    assert report["hosts"][0]["current"] == "0002"

    assert project.state() == state, "the killed upgrade committed nothing"


def test_status_shows_a_lock_holder(project: Project) -> None:
    """A session holding LOCK collections in an open transaction is listed with its pid and lock."""
    project.start_at_0002()
    state = project.state()
    with project.db.connect() as holder:
        holder.execute("LOCK TABLE collections IN ACCESS EXCLUSIVE MODE")
        pid = holder.info.backend_pid

        text = _status_text(project)
        line = next(ln for ln in text.splitlines() if f"pid {pid} " in ln)
        assert "idle in transaction" in line and "collections:AccessExclusiveLock" in line

        report = _status_json(project)
        (session,) = [s for s in report["hosts"][0]["sessions"] if s["pid"] == pid]
        assert "collections:AccessExclusiveLock" in session["locks"]
        assert session["state"] == "idle in transaction" and session["user"] == project.db.user
        holder.rollback()
    assert project.state() == state


def test_status_shows_the_run_lock_of_a_run_in_progress(project: Project) -> None:
    """While a migrate runs, status (which takes no lock itself) names the run holding the run lock."""
    marker = project.dir / "hold"
    marker.touch()
    project.add_revision("0003", "0002", held_until_removed(marker), doc="a slow data migration")
    project.start_at_0002()
    proc = project.start("prod", "migrate")
    try:
        started = project.wait_event("run_started", proc=proc, timeout=60)
        report = _status_json(project)
    finally:
        marker.unlink(missing_ok=True)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    lock = report["hosts"][0]["run_lock"]
    assert lock is not None and lock["holder"].startswith(started["run_id"])
    (running,) = [r for r in report["runs"] if r["run_id"] == started["run_id"]]
    assert running["status"] == "running" and running["incomplete"] is False
    assert project.db.alembic_version() == {"0003"}
    assert _status_json(project)["hosts"][0]["run_lock"] is None


def test_status_and_dry_run_create_no_embedded_cluster(tmp_path: Path) -> None:
    """On a fresh checkout, 'local status' and 'local migrate --dry-run' create nothing (the migrate loads the example data)."""
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("environments:\n  local:\n    embedded: true\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOK_")}

    def runbook(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "runbook", "--inventory", str(inventory), *args],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL, check=False)

    status = runbook("--json", "local", "status")
    assert status.returncode == 0, status.stderr
    (report,) = [e for e in map(json.loads, status.stdout.splitlines()) if e.get("event") == "status"]
    (host,) = report["hosts"]
    assert host["current"] == "base" and [p["revision"] for p in host["pending"]] == ["0001", "0002"]
    assert "does not exist yet" in host["note"]

    plan = runbook("local", "migrate", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "at base, target 0002" in plan.stdout and "revision 0001" in plan.stdout
    assert "upgrades it to 0001 and loads the example data" in plan.stdout
    assert not (tmp_path / ".runbook").exists()
