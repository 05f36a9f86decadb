"""``verify``: the verification queries that hold at the current revision.

Checks come from ``<script_location>/verify/<revision>.yaml`` for each current head (in the spirit of
Sqitch's verify scripts), from the environment's ``verify:`` list and from the step's own ``checks``.
Each runs inside a transaction that is always rolled back, so a probe INSERT leaves nothing behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..context import Context
from ..errors import VerificationError
from ..inventory_keys import CheckConfig
from ..migrations import fmt
from ..verifyfiles import load_file

def checks_for(ctx: Context, params: Any, current: tuple[str, ...]) -> tuple[list[CheckConfig], list[str]]:
    checks: list[CheckConfig] = []
    missing: list[str] = []
    for rev in current:
        path = ctx.migrations.verify_file(rev)
        if path.is_file():
            checks.extend(load_file(path))
        else:
            missing.append(rev)
    checks.extend(ctx.env.config.verify)
    checks.extend(getattr(params, "checks", None) or [])
    return checks, missing


# Local to the checks' transaction: a stuck check fails instead of hanging the run.
CHECK_SETTINGS_SQL = ("SELECT set_config('statement_timeout', '60000', true), "
                      "set_config('lock_timeout', '5000', true)")


def run_checks(conn: Any, checks: list[CheckConfig]) -> list[str | None]:
    """Each check's problem (None if it holds), in one transaction that is always rolled back.

    Nothing is prepared (psycopg prepares a statement run five times): after an error the server
    skips the rest of a batch, a PREPARE among them, which psycopg would still count as made.
    Every check runs in a savepoint rolled back after it, so a probe INSERT leaves nothing behind
    and no check sees another's effects. Round trips: the checks go to the server together, in
    pipeline mode, and come back with one sync; a check that raises an error (a probe that is
    rejected, as expected or not) makes the server skip the rest up to that sync, so those are
    sent again, together, after it. So a revision's checks cost one round trip, plus one per
    check that ends in an error; each still gets its own result or error.
    """
    problems: list[str | None] = []
    with conn.pipeline() as pipeline:
        conn.execute("BEGIN", prepare=False)
        conn.execute(CHECK_SETTINGS_SQL, prepare=False)
        try:
            while len(problems) < len(checks):
                problems.extend(_batch(conn, pipeline, checks[len(problems):]))
        finally:
            conn.execute("ROLLBACK", prepare=False)
    return problems


def _batch(conn: Any, pipeline: Any, checks: list[CheckConfig]) -> list[str | None]:
    """Send ``checks`` in one go; the problems of those up to the first that raised an error
    (that one included), in order."""
    import psycopg

    cursors = []
    error = None
    try:
        for check in checks:
            conn.execute("SAVEPOINT runbook_check", prepare=False)
            cur = conn.cursor()
            cursors.append(cur)
            cur.execute(check.sql, prepare=False)
            conn.execute("ROLLBACK TO SAVEPOINT runbook_check", prepare=False)
    except psycopg.errors.PipelineAborted:
        pass  # an earlier error is on its way
    except psycopg.OperationalError:
        raise
    except psycopg.Error as exc:  # the server sends an error at once: it can arrive while we queue
        error = exc
    error = _sync(pipeline, len(checks), error)
    problems: list[str | None] = []
    try:
        for check, cur in zip(checks, cursors):
            if cur.pgresult is None:  # the check that raised ``error``
                assert error is not None
                problems.append(_judge_error(check, error))
                conn.execute("ROLLBACK TO SAVEPOINT runbook_check", prepare=False)  # leaves the failed state
                break
            problems.append(_judge(check, cur.fetchone() if cur.description else None))
    finally:
        for cur in cursors:
            cur.close()
    return problems


def _sync(pipeline: Any, statements: int, error: Any = None) -> Any:
    """Sync the pipeline and take every result: the first error raised by a statement (``error``
    if that came already, None if none did). psycopg raises the first error as soon as it arrives,
    with results still on the way (on a slow link, they come in pieces): the syncs go on until
    all are in, the statements the server skipped after the error each raising ``PipelineAborted``."""
    import psycopg

    for _ in range(3 * statements + 3):  # each sync takes at least one result: bounded
        try:
            pipeline.sync()
            return error
        except psycopg.errors.PipelineAborted:
            continue
        except psycopg.OperationalError:
            raise  # the connection itself: not a check's result
        except psycopg.Error as exc:
            error = error or exc
    raise RuntimeError("the verification pipeline did not settle")  # pragma: no cover - a psycopg change


def _judge(check: CheckConfig, row: Any) -> str | None:
    if check.expect_error is not None:
        return f"expected error {check.expect_error}, but the statement succeeded"
    got = row[0] if row else None
    if not _equal(got, check.expect):
        return f"expected {check.expect!r}, got {got!r}"
    return None


def _judge_error(check: CheckConfig, exc: Any) -> str | None:
    import psycopg.errors

    if check.expect_error is not None:
        wanted = psycopg.errors.lookup(check.expect_error.upper())
        if isinstance(exc, wanted):
            return None
        return f"expected error {check.expect_error}, got {exc.sqlstate}: {str(exc).splitlines()[0]}"
    return f"error {exc.sqlstate}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"


def _equal(got: Any, expected: Any) -> bool:
    if got == expected:
        return True
    return str(got) == str(expected)


def run(ctx: Context, params: Any) -> dict[str, Any]:
    current = ctx.current_at_start()
    checks, missing = checks_for(ctx, params, current)
    revision = fmt(current)
    for rev in missing:
        ctx.log.warning("verify_file_missing", revision=rev, path=ctx.migrations.verify_location(rev),
                        hint="no per-revision checks for this revision: add that file to verify it")
    if not checks:
        ctx.log.warning("no_verification_queries", revision=revision)
    failures: list[str] = []
    with ctx.connect("verify") as conn:
        problems = run_checks(conn, checks) if checks else []
    for check, problem in zip(checks, problems):
        if problem:
            ctx.log.error("check_failed", check=check.name, problem=problem)
            failures.append(f"{check.name}: {problem}")
        else:
            ctx.log.info("check_passed", check=check.name)
    facts = {"revision": revision, "checks": len(checks), "failed": len(failures)}
    if failures:
        raise VerificationError(f"{len(failures)} of {len(checks)} verification queries failed at "
                                f"{revision}: " + "; ".join(failures), step="verify", host=ctx.host.name)
    return facts
