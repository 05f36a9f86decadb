"""``runbook local migrate``: the embedded default, from nothing, against real PostgreSQL binaries."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from runbook.embedded import EmbeddedCluster
from tests.fixtures.pg import stop_embedded
from tests.fixtures.project import Project


@pytest.fixture
def local_dir() -> Iterator[Path]:
    """A project folder with an embedded-only inventory, reachable by the postgres user (not tmp_path,
    whose parents are 0700); any server left running is stopped and the folder removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="runbook-local-"))
    base.chmod(0o755)
    (base / "inventory.yaml").write_text("environments:\n  local: {embedded: true}\n")
    try:
        yield base
    finally:
        stop_embedded(base / ".runbook" / "pg" / "data")
        shutil.rmtree(base, ignore_errors=True)  # the socket directory is pg/run, inside it


def runbook(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``runbook local ...`` run from the project folder with the default ./inventory.yaml."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOK_")}
    return subprocess.run([sys.executable, "-m", "runbook", "local", *args], cwd=folder, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180, check=False)


def running(folder: Path) -> bool:
    return (folder / ".runbook" / "pg" / "data" / "postmaster.pid").exists()


def query(folder: Path, sql: str) -> list[tuple[object, ...]]:
    """Run ``sql`` as raguser on the embedded database, starting it for the query if needed."""
    cluster = EmbeddedCluster(folder / ".runbook")
    db = cluster.ensure()
    try:
        assert (folder / ".runbook" / "pg" / "port").read_text().strip() == str(db.port)
        with psycopg.connect(host=db.host, port=db.port, user="raguser", dbname="rag_memory",
                             password=db.password) as conn:
            return conn.execute(sql).fetchall()
    finally:
        cluster.stop()


def test_local_migrate_from_nothing_then_nothing_to_do(local_dir: Path) -> None:
    """From an empty folder: cluster created, sample data migrated to head and verified, server stopped;
    a second run has nothing to migrate and leaves the data as it was."""
    first = runbook(local_dir, "migrate")
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stdout + first.stderr
    assert "local/localhost: rag_memory at 0002" in first.stdout and "verified" in first.stdout
    assert not running(local_dir), "runbook stops the embedded server it started"

    rows = query(local_dir, "SELECT (SELECT version_num FROM alembic_version), "
                            "(SELECT count(*) FROM collections), "
                            "(SELECT count(*) FROM collections WHERE description IS NULL "
                            "   OR trim(description) = ''), "
                            "(SELECT count(*) FROM collections WHERE description = 'No description provided'), "
                            "(SELECT count(*) FROM pg_constraint WHERE conname = 'description_not_empty'), "
                            "(SELECT count(*) FROM documents), (SELECT count(*) FROM chunks)")
    version, collections, blank, defaulted, constraint, documents, chunks = rows[0]
    assert version == "0002"
    assert collections and documents and chunks, "the sample data was loaded"
    assert blank == 0 and defaulted, "NULL and blank descriptions were replaced"
    assert constraint == 1
    backups = sorted((local_dir / ".runbook" / "backups").glob("rag_memory_local_*_0001.dump"))
    assert len(backups) == 1, "the sample data at 0001 was backed up before the upgrade"

    second = runbook(local_dir, "migrate")
    assert second.returncode == 0, second.stderr
    assert "nothing to migrate" in second.stdout
    assert not running(local_dir)
    assert query(local_dir, "SELECT count(*) FROM collections")[0][0] == collections


def test_local_leaves_a_running_server_running(local_dir: Path) -> None:
    """A server that was already running (a person started it) is used and left running."""
    cluster = EmbeddedCluster(local_dir / ".runbook")
    db = cluster.ensure()
    try:
        with psycopg.connect(host=db.host, port=db.port, user="raguser", dbname="rag_memory",
                             password=db.password, autocommit=True) as conn:
            conn.execute("CREATE TABLE keep_me (id int)")
        result = runbook(local_dir, "migrate", "--to", "0001")
        assert result.returncode == 0, result.stderr
        assert running(local_dir), "a server runbook did not start is not stopped"
        with psycopg.connect(host=db.host, port=db.port, user="raguser", dbname="rag_memory",
                             password=db.password) as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0001",)]
            assert conn.execute("SELECT to_regclass('keep_me')::text").fetchone() == ("keep_me",)
    finally:
        cluster.stop()


def test_local_dry_run_changes_nothing(local_dir: Path) -> None:
    """--dry-run on the embedded environment shows the plan from base and leaves no server running."""
    result = runbook(local_dir, "migrate", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "revision 0001" in result.stdout and "revision 0002" in result.stdout
    assert not running(local_dir)
    assert query(local_dir, "SELECT to_regclass('collections')::text") == [(None,)]


def test_shell_step_never_inherits_the_password_variable(local_project: Project) -> None:
    """A shell step on the local transport sees runbook's environment minus the password_env variable."""
    from tests.fixtures.project import PASSWORD_ENV

    local_project.upgrade_to("0001")
    local_project.write_playbook("probe", """\
        description: what a shell step sees
        steps:
          - shell: {command: "env | cut -d= -f1 | sort | tr '\\\\n' ' '; printf '%s' \\"${PRODUCTION_PASSWORD:-unset}\\""}
        """)
    result = local_project.run("prod", "probe", extra_env={"PROBE_MARK": "visible"})
    assert result.returncode == 0, result.stdout + result.stderr
    finished = [e for e in local_project.events() if e["event"] == "step_finished" and e.get("step") == "shell"]
    output = finished[0]["output"]
    names = output.split()
    assert "PROBE_MARK" in names and "PATH" in names  # the rest of runbook's environment is there
    assert PASSWORD_ENV not in names
    assert output.endswith("unset")
