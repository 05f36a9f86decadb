"""``restore``: put a backup back, atomically, after saving the current state.

The current state is dumped first (nothing is ever overwritten without a backup of it). Then, in one
``psql --single-transaction``: the database's own schemas are dropped and the dump's SQL (from
``pg_restore -f -``) is replayed. If anything fails, including pg_restore itself, the transaction
rolls back and the database is exactly as it was before the step.
"""

from __future__ import annotations

from typing import Any

from ..context import Backup, Context
from ..errors import CommandFailed, CommandTimedOut, RestoreError
from ..postgres import conn_args
from ..transports.base import quote
from . import backup as backup_step
from .hostcmd import bin_path, pg_env

SCHEMAS_SQL = """
SELECT nspname FROM pg_namespace
WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'
ORDER BY 1
"""


def chosen(ctx: Context, which: str) -> Backup:
    if which == "run":
        if ctx.backup is None:
            raise RestoreError("this run took no backup to restore", step="restore", host=ctx.host.name)
        return ctx.backup
    raise RestoreError(f"unknown backup '{which}'", step="restore", host=ctx.host.name)


def restore(ctx: Context, backup: Backup) -> Backup:
    """Save the current state, then restore ``backup``; returns the pre-restore backup."""
    db = ctx.database
    check = ctx.transport.run(f"sha256sum {quote(backup.path)} | cut -d' ' -f1", check=False)
    if not check.ok:
        raise RestoreError(f"backup {backup.path} is not readable on {ctx.host.name}: {check.tail(3)}",
                           step="restore", host=ctx.host.name)
    if backup.sha256 and check.stdout.strip() != backup.sha256:
        raise RestoreError(f"backup {backup.path} does not match its recorded sha256", step="restore",
                           host=ctx.host.name)
    saved = backup_step.take(ctx, label="_pre-restore")
    ctx.log.info("current_state_saved", **saved.fact())
    with ctx.connect("restore") as conn, conn.cursor() as cur:
        cur.execute(SCHEMAS_SQL)
        schemas = [r[0] for r in cur.fetchall()]
    drops = "".join(f'DROP SCHEMA IF EXISTS "{s}" CASCADE;\n' for s in schemas)
    prelude = f"SET client_min_messages = warning;\n{drops}CREATE SCHEMA public;\n"
    fail = "DO $$ BEGIN RAISE EXCEPTION 'pg_restore failed: restore abandoned'; END $$;"
    script = (
        f"{{ printf '%s' {quote(prelude)}; "
        f"{quote(bin_path(ctx, 'pg_restore'))} -f - {quote(backup.path)} || echo {quote(fail)}; }} | "
        + quote(bin_path(ctx, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction",
                *conn_args(db.host, db.port, db.name, db.user))
        + " > /dev/null"
    )
    try:
        with pg_env(ctx) as env, backup_step.progress(ctx, f"restoring {backup.name}"):
            ctx.transport.run(script, env=env, timeout=ctx.env.config.backup.timeout)
    except CommandFailed as exc:
        tail = exc.result.tail(5) if exc.result is not None else str(exc)
        raise RestoreError(f"restore of {backup.name} failed and was rolled back (the database is as "
                           f"it was; its state is saved in {saved.path}): {tail}",
                           step="restore", host=ctx.host.name) from exc
    except CommandTimedOut as exc:
        raise RestoreError(f"restore of {backup.name} timed out", step="restore", host=ctx.host.name) from exc
    return saved


def run(ctx: Context, params: Any) -> dict[str, Any]:
    backup = chosen(ctx, params.backup)
    saved = restore(ctx, backup)
    ctx.facts["restored"] = True
    return {"restored": backup.path, "restored_sha256": backup.sha256, "saved_current_state": saved.path}
