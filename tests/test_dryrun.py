"""``--dry-run``: the plan, each statement's tables, lock and warnings; the database and host untouched."""

from __future__ import annotations

import json
from typing import Any

from tests.fixtures.project import Project

RISKY_UP = """
op.add_column("collections", sa.Column("owner", sa.Text(), nullable=False))
op.create_index("ix_documents_title", "documents", ["title"])
op.drop_column("chunks", "embedding")
"""
RISKY_DOWN = """
op.add_column("chunks", sa.Column("embedding", sa.ARRAY(sa.REAL()), nullable=True))
op.drop_index("ix_documents_title", table_name="documents")
op.drop_column("collections", "owner")
"""
EXPECTED = {  # a piece of the statement -> (tables, lock, a piece of its warning)
    "ADD COLUMN owner": (["collections"], "ACCESS EXCLUSIVE",
                         "adds NOT NULL column collections.owner without a default"),
    "CREATE INDEX ix_documents_title": (["documents"], "SHARE",
                                        "index on existing table documents built without CONCURRENTLY"),
    "DROP COLUMN embedding": (["chunks"], "ACCESS EXCLUSIVE", "drops column chunks.embedding: its data is gone"),
}


def _risky_project(project: Project) -> tuple[Any, ...]:
    project.add_revision("0003", "0002", RISKY_UP, RISKY_DOWN, doc="owners, a title index, no embeddings")
    project.start_at_0002()
    return project.state()


def _untouched(project: Project, state: tuple[Any, ...]) -> None:
    assert project.state() == state
    assert project.backups() == []
    runs = project.dir / ".runbook" / "runs"
    assert not runs.exists() or not any(runs.iterdir()), "a dry run writes no run journal"


def test_dry_run_shows_tables_locks_and_warnings_and_changes_nothing(project: Project) -> None:
    """A risky revision: each statement with its tables and lock, the three warnings; schema, rows, version identical."""
    state = _risky_project(project)

    result = project.run("prod", "migrate", "--dry-run", yes=False)  # no --yes needed: nothing changes
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "Plan for prod (migrate): nothing will be changed." in lines[0]
    assert any("db1" in ln and "at 0002, target 0003" in ln for ln in lines)
    assert any("revision 0003: owners, a title index, no embeddings" in ln for ln in lines)
    for piece, (tables, lock, warning) in EXPECTED.items():
        at = next(i for i, ln in enumerate(lines) if piece in ln)
        assert lines[at + 1].strip() == f"tables: {', '.join(tables)}; lock: {lock}", lines[at:at + 3]
        assert lines[at + 2].strip().startswith((f"WARNING: {warning}", f"ERROR: {warning}")), lines[at:at + 3]
    _untouched(project, state)


def test_dry_run_json(project: Project) -> None:
    """--json --dry-run: one parseable plan with the same statements, locks and warnings."""
    state = _risky_project(project)

    result = project.run("--json", "prod", "migrate", "--dry-run", yes=False)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    (plan,) = [e for e in events if e.get("event") == "dry_run"]
    assert plan["env"] == "prod" and plan["playbook"] == "migrate"
    (host,) = plan["hosts"]
    assert host["current"] == "0002" and host["target"] == "0003"
    (rev,) = host["revisions"]
    assert rev["revision"] == "0003" and "unrenderable" not in rev
    for piece, (tables, lock, warning) in EXPECTED.items():
        (st,) = [s for s in rev["statements"] if piece in s["sql"]]
        assert st["tables"] == tables and st["lock"] == lock
        assert any(w.startswith(warning) for w in st["warnings"]), st["warnings"]
    _untouched(project, state)


def test_rollback_dry_run_changes_nothing(project: Project) -> None:
    """rollback --dry-run names the target and what the downgrade drops; no backup, no journal, no change."""
    project.add_revision("0003", "0002", RISKY_UP.replace("nullable=False", "nullable=True"), RISKY_DOWN)
    project.start_at_0002()
    project.upgrade_to("0003", sample=False)
    state = project.state()

    result = project.run("prod", "rollback", "--dry-run", yes=False)
    assert result.returncode == 0, result.stderr
    assert "0003 -> 0002 (one revision back" in result.stdout
    assert "DESTROYS: drops column collections.owner: its data is gone" in result.stdout

    as_json = project.run("--json", "prod", "rollback", "--dry-run", yes=False)
    assert as_json.returncode == 0, as_json.stderr
    (plan,) = [e for e in map(json.loads, as_json.stdout.splitlines()) if e.get("event") == "dry_run"]
    (host,) = plan["hosts"]
    assert host["target"] == "0002" and host["undo"] == ["0003"]
    assert any(d.startswith("drops column collections.owner") for d in host["destroys"])
    _untouched(project, state)


def test_restore_dry_run_names_the_backup_it_would_restore(project: Project) -> None:
    """rollback --restore --dry-run: the chosen backup by name; no pre-restore backup, no change."""
    project.upgrade_to("0001")
    assert project.run("prod", "migrate").returncode == 0
    (dump,) = project.backups()
    project.db.psql("INSERT INTO collections (name, description) VALUES ('later', 'kept')")
    state = project.state()

    result = project.run("prod", "rollback", "--restore", "--dry-run", yes=False)
    assert result.returncode == 0, result.stderr
    assert f"at 0002 <- {dump.name} (revision 0001" in result.stdout
    missing = project.run("prod", "rollback", "--restore", "gone.dump", "--dry-run", yes=False)
    assert missing.returncode == 2 and "backup 'gone.dump' not found" in missing.stderr
    assert project.state() == state and project.backups() == [dump]


def test_backup_dry_run_shows_no_migration(project: Project) -> None:
    """A playbook without an upgrade step does not show pending revisions as if it would apply them."""
    state = _risky_project(project)
    result = project.run("prod", "backup", "--dry-run", yes=False)
    assert result.returncode == 0, result.stderr
    assert "at 0002; this playbook applies no migration." in result.stdout
    assert "ADD COLUMN" not in result.stdout
    _untouched(project, state)
