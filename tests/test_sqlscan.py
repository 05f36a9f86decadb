"""sqlscan: the lock each statement of a migration takes, the tables it touches, what it destroys.

The rules that judge the statements (squawk's and runbook's own) are tested in tests/test_lint.py."""

from __future__ import annotations

import pytest

from runbook import sqlscan
from runbook.sqlscan import (ACCESS_EXCLUSIVE, ACCESS_SHARE, ROW_EXCLUSIVE, SHARE, SHARE_ROW_EXCLUSIVE,
                             SHARE_UPDATE_EXCLUSIVE)


def one(sql: str, before: str = "") -> sqlscan.Statement:
    """The analysis of the last statement of ``before + sql``."""
    return sqlscan.analyze(before + sql)[-1]


@pytest.mark.parametrize(("sql", "lock", "tables"), [
    ("CREATE INDEX ix ON docs (title)", SHARE, ["docs"]),
    ("CREATE INDEX CONCURRENTLY ix ON docs (title)", SHARE_UPDATE_EXCLUSIVE, ["docs"]),
    ("DROP INDEX ix", ACCESS_EXCLUSIVE, []),  # its table is not in the SQL: see the index tests below
    ("DROP INDEX CONCURRENTLY ix", SHARE_UPDATE_EXCLUSIVE, []),
    ("DROP TABLE docs", ACCESS_EXCLUSIVE, ["docs"]),
    ("ALTER TABLE docs ADD COLUMN x int", ACCESS_EXCLUSIVE, ["docs"]),
    ("ALTER TABLE docs VALIDATE CONSTRAINT c", SHARE_UPDATE_EXCLUSIVE, ["docs"]),
    ("ALTER TABLE docs SET (fillfactor = 80)", SHARE_UPDATE_EXCLUSIVE, ["docs"]),
    ("ALTER TABLE docs ADD CONSTRAINT fk FOREIGN KEY (cid) REFERENCES coll (id) NOT VALID",
     SHARE_ROW_EXCLUSIVE, ["docs", "coll"]),
    ("ALTER TABLE docs ADD CONSTRAINT fk FOREIGN KEY (cid) REFERENCES coll (id) NOT VALID, "
     "ADD COLUMN y int", ACCESS_EXCLUSIVE, ["docs", "coll"]),
    ("ALTER TABLE docs RENAME COLUMN a TO b", ACCESS_EXCLUSIVE, ["docs"]),
    ("UPDATE docs SET title = 'x' WHERE title IS NULL", ROW_EXCLUSIVE, ["docs"]),
    ("DELETE FROM docs WHERE id = 1", ROW_EXCLUSIVE, ["docs"]),
    ("INSERT INTO docs (id) VALUES (1)", ROW_EXCLUSIVE, ["docs"]),
    ("TRUNCATE docs", ACCESS_EXCLUSIVE, ["docs"]),
    ("SELECT count(*) FROM docs", ACCESS_SHARE, ["docs"]),
    ("SELECT 1", None, []),
    ("CREATE TRIGGER t BEFORE INSERT ON docs FOR EACH ROW EXECUTE FUNCTION f()", SHARE_ROW_EXCLUSIVE,
     ["docs"]),
    ("CREATE TABLE fresh (id int PRIMARY KEY)", None, []),
    ("CREATE TABLE fresh (id int, cid int REFERENCES coll (id))", SHARE_ROW_EXCLUSIVE, ["coll"]),
    ("ALTER TABLE app.docs ADD COLUMN x int", ACCESS_EXCLUSIVE, ["app.docs"]),
])
def test_lock_and_tables_per_statement(sql: str, lock: str | None, tables: list[str]) -> None:
    """Each kind of statement reports PostgreSQL's lock for it and the existing tables it touches."""
    st = one(sql)
    assert (st.lock, st.tables) == (lock, tables)


def test_transaction_control_and_settings_are_not_statements() -> None:
    """BEGIN, SET and COMMIT around Alembic's offline SQL are left out; alembic_version is ignored."""
    stmts = sqlscan.analyze("BEGIN;\nSET lock_timeout = '1s';\nCREATE TABLE alembic_version (v text);\n"
                            "ALTER TABLE docs ADD COLUMN x int;\n"
                            "UPDATE alembic_version SET version_num='0002';\nCOMMIT;\n")
    assert [s.kind for s in stmts] == ["CreateStmt", "AlterTableStmt", "UpdateStmt"]
    assert stmts[2].tables == []
    assert stmts[1].sql == "ALTER TABLE docs ADD COLUMN x int"


def test_drop_index_is_on_its_table_not_on_the_index_name() -> None:
    """A DROP INDEX locks the index's table: from a CREATE INDEX earlier, or the given index map;
    an index found in neither is listed as unresolved (the pre-flight asks the database), never as a table."""
    stmts = sqlscan.analyze("CREATE INDEX ix_title ON docs (title);\nDROP INDEX ix_title;\n")
    assert stmts[1].tables == ["docs"] and stmts[1].unresolved == []
    known = {"ix_old": "chunks", "app.ix_app": "app.docs"}
    st = sqlscan.analyze("DROP INDEX ix_old, app.ix_app", known)[0]
    assert st.tables == ["chunks", "app.docs"] and st.unresolved == []
    unknown = sqlscan.analyze("DROP INDEX ix_nowhere")[0]
    assert unknown.tables == [] and unknown.unresolved == ["ix_nowhere"]
    assert sqlscan.touched_tables("DROP INDEX ix_old", known) == ["chunks"]


def test_transactions_are_tracked() -> None:
    """Statements between BEGIN and COMMIT are in a transaction; an autocommit_block's are not."""
    stmts = sqlscan.analyze("BEGIN;\nALTER TABLE docs ADD COLUMN x int;\nCOMMIT;\n"
                            "CREATE INDEX CONCURRENTLY ix ON docs (x);\nBEGIN;\nDELETE FROM docs;\nCOMMIT;\n")
    assert [(s.in_transaction, s.transaction) for s in stmts] == [(True, 1), (False, 0), (True, 2)]


def test_what_a_statement_destroys() -> None:
    """Dropped tables and columns, truncated tables: what a downgrade's preview says it destroys."""
    assert one("ALTER TABLE docs DROP COLUMN title").destroys == ["drops column docs.title: its data is gone"]
    assert one("DROP TABLE docs").destroys == ["drops table docs: its data is gone"]
    assert one("TRUNCATE docs").destroys == ["truncates docs: its data is gone"]
    assert one("DROP INDEX ix").destroys == []
    assert one("ALTER TABLE fresh DROP COLUMN x", before="CREATE TABLE fresh (x int);\n").destroys == []


def test_example_revision_0002() -> None:
    """The example application's 0002 as Alembic renders it: UPDATE, SET NOT NULL and a CHECK, on collections."""
    sql = ("BEGIN;\n"
           "UPDATE collections SET description = 'No description provided' "
           "WHERE description IS NULL OR trim(description) = '';\n"
           "ALTER TABLE collections ALTER COLUMN description SET NOT NULL;\n"
           "ALTER TABLE collections ADD CONSTRAINT description_not_empty CHECK (length(trim(description)) > 0);\n"
           "UPDATE alembic_version SET version_num='0002' WHERE alembic_version.version_num = '0001';\n"
           "COMMIT;\n")
    stmts = sqlscan.analyze(sql)
    assert [s.lock for s in stmts] == [ROW_EXCLUSIVE, ACCESS_EXCLUSIVE, ACCESS_EXCLUSIVE, ROW_EXCLUSIVE]
    assert sqlscan.touched_tables(sql) == ["collections"]
    assert stmts[0].fact()["tables"] == ["collections"]


def test_unparsable_sql_is_a_value_error() -> None:
    """SQL PostgreSQL's parser rejects raises ValueError (dry-run then says the revision cannot render)."""
    with pytest.raises(ValueError, match="cannot parse"):
        sqlscan.analyze("ALTER TABEL docs ADD x int")
