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
from ..inventory import CheckConfig
from ..migrations import fmt
from ..verifyfiles import load_file

def checks_for(ctx: Context, params: Any) -> tuple[list[CheckConfig], list[str]]:
    current = ctx.current()
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


def run_check(conn: Any, check: CheckConfig) -> str | None:
    """None if the check holds, else what went wrong."""
    import psycopg
    import psycopg.errors

    try:
        with conn.transaction(force_rollback=True), conn.cursor() as cur:
            cur.execute(check.sql)
            row = cur.fetchone() if cur.description else None
        if check.expect_error is not None:
            return f"expected error {check.expect_error}, but the statement succeeded"
        got = row[0] if row else None
        if not _equal(got, check.expect):
            return f"expected {check.expect!r}, got {got!r}"
        return None
    except psycopg.Error as exc:
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
    checks, missing = checks_for(ctx, params)
    revision = fmt(ctx.current())
    for rev in missing:
        ctx.log.warning("verify_file_missing", revision=rev, path=ctx.migrations.verify_location(rev),
                        hint="no per-revision checks for this revision: add that file to verify it")
    if not checks:
        ctx.log.warning("no_verification_queries", revision=revision)
    failures: list[str] = []
    with ctx.connect("verify", settings={"statement_timeout": "60000ms", "lock_timeout": "5000ms"}) as conn:
        for check in checks:
            problem = run_check(conn, check)
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
