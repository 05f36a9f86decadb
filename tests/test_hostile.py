"""Hostile names in the database never become commands: every command works on them or refuses in one line.

A role without superuser (raguser, the owner of the test database) creates schemas, tables, columns,
indexes and constraints named with quotes, ``;``, psql's ``\\!``, ``$(...)``, backticks, spaces, dots,
a newline, unicode and a leading ``-``; the superuser adds a role with such a name that gets a grant.
Each payload would ``touch /tmp/pwned-<tag>-N`` on the host (and the control machine: both are this
one): after every command no such file exists, and the database is exactly what it should be.
"""

from __future__ import annotations

import glob
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from psycopg import sql

from tests.fixtures.pg import PgDatabase
from tests.fixtures.project import NO_PREFLIGHT_PLAYBOOK, Project


@dataclass(frozen=True)
class Hostile:
    """The payload files' prefix and the names made with it."""

    marker: str
    schemas: tuple[str, ...]
    role: str

    def pwned(self) -> list[str]:
        """Files a payload would have created."""
        return glob.glob(f"{self.marker}*")


def hostile_names(marker: str) -> tuple[str, ...]:
    """Identifiers (each under PostgreSQL's 63 bytes) that would run ``touch`` if spliced by hand."""
    return (
        f'x"; \\! touch {marker}-1 #',
        f"$(touch {marker}-2)",
        f"`touch {marker}-3`",
        f"'; \\! touch {marker}-4 --",
        "-leading dash",
        "with space.and.dot",
        "ünïcødé ☃",
        f"nl\n\\! touch {marker}-5\n",
    )


def make_hostile(db: PgDatabase, marker: str) -> Hostile:
    """Create the hostile objects as raguser (no superuser) and a hostile role granted SELECT on one."""
    names = hostile_names(marker)
    role = f'r"; \\! touch {marker}-6 #'
    with db.server.admin() as admin:
        admin.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
    with db.connect(autocommit=True) as conn:
        for i, name in enumerate(names):
            schema, table = sql.Identifier(name), sql.Identifier(name, name)
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
            conn.execute(sql.SQL("CREATE TABLE {} ({} int CONSTRAINT {} CHECK ({} >= 0), note text)").format(
                table, sql.Identifier(name), sql.Identifier(f"c{i}{name}"[:60]), sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE INDEX {} ON {} (note)").format(sql.Identifier(f"i{i}{name}"[:60]), table))
            conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s), (2, %s)").format(table), (name, marker))
            conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(table, sql.Literal(name)))
        conn.execute(sql.SQL("CREATE TABLE public.{} (id int)").format(sql.Identifier(names[0])))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(names[1]), sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(sql.Identifier(names[1], names[1]),
                                                                sql.Identifier(role)))
    return Hostile(marker, names, role)


@pytest.fixture
def hostile(project: Project) -> Iterator[Hostile]:
    """The project's database at 0002 with the example data, then the hostile objects added."""
    marker = f"/tmp/pwned-{uuid.uuid4().hex[:8]}"
    project.start_at_0002()
    found = make_hostile(project.db, marker)
    try:
        yield found
    finally:
        for path in found.pwned():
            import os

            os.unlink(path)
        with project.db.admin() as admin:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(found.role)))
        with project.db.server.admin() as admin:
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(found.role)))


def _ok(result: object, hostile: Hostile, code: int = 0) -> str:
    out = result.stdout + result.stderr  # type: ignore[attr-defined]
    assert hostile.pwned() == [], "a payload ran"
    assert result.returncode == code, out  # type: ignore[attr-defined]
    assert "Traceback" not in out
    return out


def test_failed_migrate_restores_a_hostile_database(project: Project, hostile: Hostile) -> None:
    """A migrate whose rollback must restore the backup drops and recreates the hostile schemas exactly; no payload runs."""
    project.add_revision("0003", "0002", 'op.add_column("collections", sa.Column("slug", sa.Text()))', "pass",
                         verify=[{"name": "fails", "sql": "SELECT 1", "expect": 0}])
    before = project.state()
    out = _ok(project.run("prod", "migrate"), hostile, code=1)
    assert "restored from the backup" in out
    assert project.state() == before


def test_rollback_to_and_restore_on_a_hostile_database(project: Project, hostile: Hostile) -> None:
    """migrate, rollback --to, rollback --restore and backup all work on hostile names; state read back each time."""
    project.add_revision("0003", "0002", 'op.add_column("collections", sa.Column("slug", sa.Text()))',
                         'op.drop_column("collections", "slug")')
    at_0002 = project.state()
    _ok(project.run("prod", "migrate"), hostile)
    assert project.db.alembic_version() == {"0003"}
    _ok(project.run("prod", "rollback", "--to", "0002"), hostile)
    assert project.state() == at_0002
    _ok(project.run("prod", "backup"), hostile)
    newest = project.backups()[-1]
    with project.db.connect(autocommit=True) as conn:  # a change the restore must undo
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(hostile.schemas[0])))
    _ok(project.run("prod", "rollback", "--restore", newest.name), hostile)
    assert project.state() == at_0002


def test_status_and_dry_run_on_a_hostile_database(project: Project, hostile: Hostile) -> None:
    """status (with a hostile lock holder) and --dry-run read hostile names as data, never as commands."""
    project.add_revision("0003", "0002", 'op.add_column("collections", sa.Column("slug", sa.Text()))')
    with project.db.connect(autocommit=False, application_name=hostile.schemas[0][:60]) as holder:
        holder.execute(sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(
            sql.Identifier(hostile.schemas[2], hostile.schemas[2])))
        out = _ok(project.run("prod", "status"), hostile)
        holder.rollback()
    assert "0003" in out
    dry = _ok(project.run("prod", "migrate", "--dry-run"), hostile)
    assert "0003" in dry


CIC = """
with op.get_context().autocommit_block():
    op.execute('CREATE INDEX CONCURRENTLY "{index}" ON "{schema}"."{schema}" (note)')
"""


def test_invalid_index_under_hostile_names_is_dropped(project: Project, hostile: Hostile) -> None:
    """A concurrent build left INVALID in a hostile schema (with a dot) under a hostile index name is dropped exactly."""
    schema = hostile.schemas[5]  # "with space.and.dot": a "schema.index" string would split wrongly
    index = 'ix "; \\! touch ' + hostile.marker + "-7 #"
    body = CIC.format(index=index.replace('"', '""'), schema=schema).replace("\\", "\\\\")
    project.add_revision("0003", "0002", body, "pass")
    project.write_playbook("migrate", NO_PREFLIGHT_PLAYBOOK)
    project.write_inventory(locks={"lock_timeout": "1s", "max_wait": "3s", "blockers": "wait",
                                   "concurrently_timeout": "1s"})
    before = project.state()
    release, started = threading.Event(), threading.Event()

    def hold() -> None:  # an old transaction with a write on the table: the concurrent build waits for it
        with project.db.connect() as conn:
            conn.execute(sql.SQL("INSERT INTO {} VALUES (3, 'held')").format(sql.Identifier(schema, schema)))
            started.set()
            release.wait(30)
            conn.rollback()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert started.wait(10)
    proc = project.start("prod", "migrate")
    project.wait_event("rollback_started", proc=proc)
    release.set()
    out, err = proc.communicate(timeout=120)
    thread.join()
    assert hostile.pwned() == [], "a payload ran"
    assert proc.returncode == 1, out + err
    assert "Traceback" not in out + err
    dropped = [e for e in project.events() if e["event"] == "invalid_index_dropped"]
    assert dropped and dropped[0]["index"] == [schema, index]
    assert project.db.psql("SELECT count(*) FROM pg_index WHERE NOT indisvalid").strip() == "0"
    assert project.state() == before
