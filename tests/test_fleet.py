"""Several databases in one environment: host after host, each with its own backup, lock and rollback."""

from __future__ import annotations

import uuid
from typing import Iterator

import pytest
from psycopg import sql

from tests.fixtures.pg import PgDatabase
from tests.fixtures.project import Project, dump_yaml


@pytest.fixture
def second_db(project: Project) -> Iterator[PgDatabase]:
    """A second tenant database on the same server, owned by raguser."""
    server = project.db.server
    name = f"t_tenant_b_{uuid.uuid4().hex[:8]}"
    with server.admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(server.user)))
    try:
        yield PgDatabase(server=server, name=name)
    finally:
        with server.admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _fleet(project: Project, other: PgDatabase) -> None:
    env = project.environment()
    ssh = project.ssh.inventory_ssh()
    env["hosts"] = [{"name": "tenant-a", "ssh": ssh},
                    {"name": "tenant-b", "ssh": ssh, "database": {"name": other.name}}]
    project.inventory.write_text(dump_yaml({"environments": {"tenants": env}}))


def _at_0001(project: Project, db: PgDatabase) -> None:
    from alembic import command
    from alembic.config import Config

    from runbook.embedded import sample_data_sql
    from tests.fixtures.project import ROOT

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.attributes["configure_logger"] = False
    with db.engine().connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.commit()
    db.psql(sample_data_sql())


def test_fleet_migrates_every_tenant(project: Project, second_db: PgDatabase) -> None:
    """Each host's database (the host's database block merged over the environment's) is backed up and migrated."""
    _at_0001(project, project.db)
    _at_0001(project, second_db)
    _fleet(project, second_db)
    result = project.run("tenants", "migrate")
    assert result.returncode == 0, result.stderr
    assert project.db.alembic_version() == {"0002"}
    assert second_db.alembic_version() == {"0002"}
    names = [p.name for p in project.backup_dir.glob("*.dump")]
    assert any(n.startswith(f"{project.db.name}_tenants_") for n in names)
    assert any(n.startswith(f"{second_db.name}_tenants_") for n in names)
    hosts = {e["host"] for e in project.events() if e["event"] == "step_finished"}
    assert hosts == {"tenant-a", "tenant-b"}
    assert "tenant-a: ok" in result.stdout and "tenant-b: ok" in result.stdout


def test_fleet_stops_at_the_first_failing_tenant(project: Project, second_db: PgDatabase) -> None:
    """A tenant that fails is rolled back, the tenants after it are not touched, and the summary says which is where."""
    _at_0001(project, project.db)
    _at_0001(project, second_db)
    # tenant-a cannot take 0003: a duplicate title there breaks its unique index
    project.own_migrations()
    project.add_revision("0003", "0002", "op.execute('CREATE UNIQUE INDEX uq_documents_title ON documents (title)')",
                         "op.execute('DROP INDEX uq_documents_title')")
    project.db.psql("INSERT INTO documents (collection_id, title, content) "
                    "SELECT collection_id, title, content FROM documents LIMIT 1")
    _fleet(project, second_db)  # with the project's own migrations (app/alembic.ini)
    before_a, before_b = project.state(), (second_db.schema_dump(), second_db.row_counts(), second_db.alembic_version())
    result = project.run("tenants", "migrate")
    assert result.returncode == 1, result.stderr
    assert project.state() == before_a
    assert (second_db.schema_dump(), second_db.row_counts(), second_db.alembic_version()) == before_b
    out = result.stdout + result.stderr
    assert "tenant-a: FAILED (exit 1)" in out and "not run: tenant-b" in out
