"""Verification checks in one pipelined transaction: each judged alone, nothing left behind."""

from __future__ import annotations

import psycopg

from runbook.inventory_keys import CheckConfig
from runbook.steps.verify import run_checks
from tests.fixtures.pg import PgDatabase


def test_checks_are_isolated_judged_and_leave_nothing(pg_db: PgDatabase) -> None:
    """A failing or erroring check does not stop the next; a probe INSERT is rolled back before the next check runs."""
    with pg_db.server.connect(pg_db.name, autocommit=True) as conn:
        conn.execute("CREATE TABLE probe_t (x int CHECK (x > 0))")
        checks = [
            CheckConfig(name="holds", sql="SELECT 1", expect=1),
            CheckConfig(name="rejected as expected", sql="INSERT INTO probe_t VALUES (-1)", expect_error="check_violation"),
            CheckConfig(name="an insert that works", sql="INSERT INTO probe_t VALUES (5)", expect_error="check_violation"),
            CheckConfig(name="sees no earlier insert", sql="SELECT count(*) FROM probe_t", expect=0),
            CheckConfig(name="errors", sql="SELECT 1/0", expect=1),
            CheckConfig(name="wrong value", sql="SELECT 2", expect=3),
            CheckConfig(name="still judged after all that", sql="SELECT 'ok'", expect="ok"),
        ]
        problems = run_checks(conn, checks)
        assert problems[0] is None and problems[1] is None
        assert problems[2] == "expected error check_violation, but the statement succeeded"
        assert problems[3] is None
        assert problems[4] is not None and problems[4].startswith("error 22012")
        assert problems[5] == "expected 3, got 2"
        assert problems[6] is None
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert conn.execute("SELECT count(*) FROM probe_t").fetchone() == (0,)
        # the checks' statement_timeout/lock_timeout were local to their transaction
        assert conn.execute("SHOW statement_timeout").fetchone() == ("0",)


def test_an_error_that_arrives_while_later_checks_are_queued(pg_db: PgDatabase) -> None:
    """The server sends an error at once, so it can reach psycopg while later checks are still
    being queued (it then raises from a later execute, not from the sync): every check is still
    judged on its own, in order, and the transaction still ends rolled back."""
    with pg_db.server.connect(pg_db.name, autocommit=True) as conn:
        checks = [CheckConfig(name="fails first", sql="SELECT 1/0", expect_error="division_by_zero")]
        for i in range(300):  # enough queued after it for the error to come back meanwhile
            checks.append(CheckConfig(name=f"holds {i}", sql=f"SELECT {i}", expect=i))
            if i % 100 == 50:
                checks.append(CheckConfig(name=f"fails {i}", sql="SELECT 1/0", expect=1))
        problems = run_checks(conn, checks)
        assert len(problems) == len(checks)
        for check, problem in zip(checks, problems):
            if check.name.startswith("fails ") and check.name != "fails first":
                assert problem is not None and problem.startswith("error 22012"), (check.name, problem)
            else:
                assert problem is None, (check.name, problem)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
