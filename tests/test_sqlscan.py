"""sqlscan: the lock each statement of a migration takes, the tables it touches, squawk-like warnings."""

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
    ("DROP INDEX ix", ACCESS_EXCLUSIVE, ["ix"]),
    ("DROP INDEX CONCURRENTLY ix", SHARE_UPDATE_EXCLUSIVE, ["ix"]),
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


def test_not_null_column_without_default_warns() -> None:
    """squawk adding-required-field: a NOT NULL column without a default fails on a table with rows."""
    assert any("NOT NULL column docs.x without a default" in w
               for w in one("ALTER TABLE docs ADD COLUMN x int NOT NULL").warnings)
    assert one("ALTER TABLE docs ADD COLUMN x int NOT NULL DEFAULT 0").warnings == []
    assert one("ALTER TABLE docs ADD COLUMN x int").warnings == []


def test_index_without_concurrently_on_an_existing_table_warns() -> None:
    """squawk require-concurrent-index-creation: only for tables not created by the same migration."""
    assert "without CONCURRENTLY" in one("CREATE INDEX ix ON docs (title)").warnings[0]
    assert one("CREATE INDEX CONCURRENTLY ix ON docs (title)").warnings == []
    assert one("CREATE INDEX ix ON fresh (id)", before="CREATE TABLE fresh (id int);\n").warnings == []


def test_constraint_without_not_valid_warns() -> None:
    """squawk adding-foreign-key/check-constraint: without NOT VALID the whole table is scanned under lock."""
    check = one("ALTER TABLE collections ADD CONSTRAINT ok CHECK (length(trim(description)) > 0)")
    assert len(check.warnings) == 1 and "constraint ok on collections without NOT VALID" in check.warnings[0]
    assert ACCESS_EXCLUSIVE in check.warnings[0]
    fk = one("ALTER TABLE docs ADD CONSTRAINT fk FOREIGN KEY (cid) REFERENCES coll (id)")
    assert len(fk.warnings) == 1 and "without NOT VALID" in fk.warnings[0]
    assert fk.lock == SHARE_ROW_EXCLUSIVE and SHARE_ROW_EXCLUSIVE in fk.warnings[0]
    assert one("ALTER TABLE docs ADD CONSTRAINT ok CHECK (x > 0) NOT VALID").warnings == []
    assert one("ALTER TABLE docs ADD CONSTRAINT fk FOREIGN KEY (cid) REFERENCES coll (id) NOT VALID"
               ).warnings == []


def test_unique_constraint_builds_an_index_under_lock() -> None:
    """squawk disallowed-unique-constraint: UNIQUE without USING INDEX builds the index under ACCESS EXCLUSIVE."""
    assert "USING INDEX" in one("ALTER TABLE docs ADD CONSTRAINT u UNIQUE (title)").warnings[0]
    assert one("ALTER TABLE docs ADD CONSTRAINT u UNIQUE USING INDEX ix").warnings == []


def test_set_not_null_warns() -> None:
    """SET NOT NULL scans the whole table under ACCESS EXCLUSIVE."""
    assert "sets NOT NULL on collections.description" in one(
        "ALTER TABLE collections ALTER COLUMN description SET NOT NULL").warnings[0]


def test_column_type_change_warns() -> None:
    """squawk changing-column-type: the table may be rewritten under ACCESS EXCLUSIVE."""
    st = one("ALTER TABLE docs ALTER COLUMN title TYPE varchar(10)")
    assert st.lock == ACCESS_EXCLUSIVE and "changes the type of docs.title" in st.warnings[0]


def test_dropped_column_and_table_warn() -> None:
    """squawk ban-drop-column / ban-drop-table: the data is gone."""
    assert "drops column docs.title" in one("ALTER TABLE docs DROP COLUMN title").warnings[0]
    assert "drops table docs" in one("DROP TABLE docs").warnings[0]
    assert one("DROP INDEX ix").warnings == []


def test_rename_warns() -> None:
    """squawk renaming-column/table: running application code using the old name breaks."""
    for sql in ("ALTER TABLE docs RENAME COLUMN title TO name", "ALTER TABLE docs RENAME TO documents"):
        st = one(sql)
        assert st.lock == ACCESS_EXCLUSIVE and "renames" in st.warnings[0]


def test_truncate_warns() -> None:
    """TRUNCATE takes ACCESS EXCLUSIVE and empties the table."""
    assert "truncates" in one("TRUNCATE docs").warnings[0]


def test_new_table_changes_do_not_warn() -> None:
    """Changes to a table created earlier in the same migration have nothing to lock or lose."""
    stmts = sqlscan.analyze("CREATE TABLE fresh (id int);\n"
                            "ALTER TABLE fresh ADD COLUMN x int NOT NULL;\n"
                            "ALTER TABLE fresh ALTER COLUMN x TYPE bigint;\n"
                            "ALTER TABLE fresh ADD CONSTRAINT c CHECK (x > 0);\n")
    assert [s.warnings for s in stmts] == [[], [], [], []]


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
    assert [len(s.warnings) for s in stmts] == [0, 1, 1, 0]
    assert stmts[0].fact()["tables"] == ["collections"]


def test_unparsable_sql_is_a_value_error() -> None:
    """SQL PostgreSQL's parser rejects raises ValueError (dry-run then says the revision cannot render)."""
    with pytest.raises(ValueError, match="cannot parse"):
        sqlscan.analyze("ALTER TABEL docs ADD x int")
