"""The example application's migrations (RAG Memory), run through Alembic against a real server."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy
from alembic import command
from alembic.config import Config
from sqlalchemy.pool import NullPool

from runbook.embedded import sample_data_sql
from tests.fixtures.pg import PgDatabase

ROOT = Path(__file__).resolve().parent.parent / "runbook" / "example"  # the example application
SAMPLE_COUNTS = {"collections": 6, "documents": 20, "chunks": 60}


@pytest.fixture
def engine(pg_db: PgDatabase) -> Iterator[sqlalchemy.Engine]:
    """An engine on the test database built from a creator, so the password needs no quoting."""
    engine = sqlalchemy.create_engine(
        "postgresql+psycopg://", poolclass=NullPool,
        creator=lambda: psycopg.connect(host=pg_db.host, port=pg_db.port, dbname=pg_db.name,
                                        user=pg_db.user, password=pg_db.password))
    yield engine
    engine.dispose()


def _migrate(engine: sqlalchemy.Engine, action: str, revision: str) -> None:
    cfg = Config(str(ROOT / "alembic.ini"))
    with engine.connect() as connection:
        cfg.attributes["connection"] = connection
        getattr(command, action)(cfg, revision)
        connection.commit()


def _load_sample_data(pg_db: PgDatabase) -> None:
    with pg_db.connect() as conn:
        conn.execute(sample_data_sql())


def _descriptions(pg_db: PgDatabase) -> dict[str, str | None]:
    with pg_db.connect() as conn:
        return dict(conn.execute("SELECT name, description FROM collections").fetchall())


def _has_check_constraint(pg_db: PgDatabase) -> bool:
    with pg_db.connect() as conn:
        row = conn.execute("SELECT count(*) FROM pg_constraint WHERE contype = 'c' "
                           "AND conname = 'description_not_empty'").fetchone()
    return row == (1,)


def test_upgrade_to_0001_creates_the_schema(pg_db: PgDatabase,
                                            engine: sqlalchemy.Engine) -> None:
    """Upgrading to 0001 through a handed-over connection creates the three tables."""
    _migrate(engine, "upgrade", "0001")
    assert pg_db.alembic_version() == {"0001"}
    _load_sample_data(pg_db)
    counts = pg_db.row_counts()
    assert {table: counts[table] for table in SAMPLE_COUNTS} == SAMPLE_COUNTS


def test_upgrade_to_0002_fills_descriptions_and_adds_the_constraint(
        pg_db: PgDatabase, engine: sqlalchemy.Engine) -> None:
    """0002 replaces NULL and blank descriptions, keeps every row and adds the constraint."""
    _migrate(engine, "upgrade", "0001")
    _load_sample_data(pg_db)
    before = _descriptions(pg_db)
    assert sum(1 for d in before.values() if d is None or not d.strip()) == 4
    _migrate(engine, "upgrade", "0002")
    assert pg_db.alembic_version() == {"0002"}
    after = _descriptions(pg_db)
    assert after.keys() == before.keys()
    for name, old in before.items():
        expected = old if old is not None and old.strip() else "No description provided"
        assert after[name] == expected
    counts = pg_db.row_counts()
    assert {table: counts[table] for table in SAMPLE_COUNTS} == SAMPLE_COUNTS
    assert _has_check_constraint(pg_db)
    with pg_db.connect() as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO collections (name, description) VALUES ('blank', '   ')")


def test_downgrade_to_0001_drops_the_constraint(pg_db: PgDatabase,
                                                engine: sqlalchemy.Engine) -> None:
    """Downgrading 0002 drops the constraint and the NOT NULL but keeps the filled-in data."""
    _migrate(engine, "upgrade", "0001")
    _load_sample_data(pg_db)
    _migrate(engine, "upgrade", "head")
    _migrate(engine, "downgrade", "0001")
    assert pg_db.alembic_version() == {"0001"}
    assert not _has_check_constraint(pg_db)
    assert None not in _descriptions(pg_db).values()
    with pg_db.connect() as conn:
        conn.execute("INSERT INTO collections (name, description) VALUES ('nullable', NULL)")


def test_downgrade_to_base_restores_the_empty_schema(pg_db: PgDatabase,
                                                     engine: sqlalchemy.Engine) -> None:
    """upgrade head then downgrade base leaves the schema of a fresh database."""
    fresh = pg_db.schema_dump()
    _migrate(engine, "upgrade", "head")
    assert "description_not_empty" in pg_db.schema_dump()
    _migrate(engine, "downgrade", "base")
    assert pg_db.alembic_version() == set()
    assert pg_db.row_counts() == {"alembic_version": 0}
    pg_db.psql("DROP TABLE alembic_version")
    assert pg_db.schema_dump() == fresh


def test_offline_sql_renders_without_a_database(monkeypatch: pytest.MonkeyPatch) -> None:
    """upgrade base:head --sql renders the whole history with no database and no URL."""
    monkeypatch.delenv("RAG_DATABASE_URL", raising=False)
    buffer = io.StringIO()
    cfg = Config(str(ROOT / "alembic.ini"), output_buffer=buffer)
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "base:head", sql=True)
    rendered = buffer.getvalue()
    assert "CREATE TABLE collections" in rendered
    assert "CREATE INDEX ix_chunks_document_id ON chunks (document_id)" in rendered
    assert "ALTER TABLE collections ALTER COLUMN description SET NOT NULL" in rendered
    assert "ADD CONSTRAINT description_not_empty CHECK (length(trim(description)) > 0)" in rendered
    assert "UPDATE alembic_version SET version_num='0002'" in rendered
