"""``restore``: put a backup back, atomically, after saving the current state.

The backup's checksum is checked and the current state is dumped first (nothing is ever
overwritten without a backup of it). Then, by ``restore.mode``:

- ``in-place`` (the default), in one ``psql --single-transaction``: the database's own schemas are
  dropped and the dump's SQL (from ``pg_restore -f -``) is replayed. If anything fails, including
  pg_restore itself, the transaction rolls back and the database is exactly as it was before the
  step. Atomic, and single-threaded.
- ``swap``: ``pg_restore -j N`` into a new database, verified, then renamed into place in one
  transaction (``steps/swap.py``): the speed of ``pg_restore -j N``, the database never
  half-restored; it ends every session of the database at the swap and needs CREATEDB.

The replay runs with ``lock_timeout`` (through ``PGOPTIONS``) and is retried on a lock timeout, like
the upgrade, bounded by ``max_wait``: a session of the application holding a lock must neither keep
the restore waiting for hours nor have every other query queue behind the restore's DROP meanwhile.
A backup that cannot be read or does not match its checksum raises ``BackupUnusable``: restoring it
again is pointless, and the engine says so.
"""

from __future__ import annotations

from typing import Any, Callable

from .. import dumpdir
from ..context import Backup, Context
from ..errors import CommandFailed, CommandTimedOut, RestoreError
from ..migrations import LOCK_NOT_AVAILABLE
from ..postgres import conn_args
from ..retry import LockRetriesExhausted, lock_retries
from ..transports.base import quote
from ..units import pg_ms
from . import backup as backup_step
from ..hostcmd import HASHER, bin_path, cleanup_trap, pg_env

# Quoted by the server (format %I): a schema name is the database's content, never trusted. A
# quoted identifier is safe in a psql script whatever it holds (newlines and backslashes included):
# psql reads no meta-command and substitutes no variable inside double quotes.
SCHEMAS_SQL = """
SELECT format(E'DROP SCHEMA IF EXISTS %I CASCADE;\n', nspname) FROM pg_namespace
WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'
ORDER BY 1
"""

# A schema made by CREATE SCHEMA is owned by its creator, with no grant and no comment; the public
# schema of a new database is not (PostgreSQL 15: pg_database_owner, USAGE for PUBLIC, a comment),
# and pg_dump only records how public differs from those defaults. So the public schema gets back
# its current owner, grants and comment, or roles of the application would lose USAGE on it.
PUBLIC_SCHEMA_SQL = """
SELECT format('DO $rb$ BEGIN ALTER SCHEMA public OWNER TO %I; '
              'EXCEPTION WHEN insufficient_privilege THEN NULL; END $rb$;', pg_get_userbyid(n.nspowner))
       || E'\n' || coalesce((
           SELECT string_agg(format('GRANT %s ON SCHEMA public TO %s%s;', a.privilege_type,
                                    CASE WHEN a.grantee = 0 THEN 'PUBLIC'
                                         ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
                                    CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END), E'\n')
           FROM aclexplode(n.nspacl) a WHERE a.grantee <> n.nspowner), '')
       || E'\n' || format('COMMENT ON SCHEMA public IS %L;', obj_description(n.oid, 'pg_namespace'))
       || E'\n'
FROM pg_namespace n WHERE n.nspname = 'public'
"""


class BackupUnusable(RestoreError):
    """The backup cannot be restored at all (unreadable, or not the file that was written)."""

    backup_unusable = True


class _LockTimeout(Exception):
    """The replay hit ``lock_timeout`` (and was rolled back): retried by ``lock_retries``."""

    sqlstate = LOCK_NOT_AVAILABLE


def _errors(stderr: str, lines: int = 5) -> str:
    """The tail of psql's stderr without its LOCATION lines (VERBOSITY=verbose adds them)."""
    kept = [ln for ln in (stderr or "").strip().splitlines() if not ln.startswith("LOCATION:")]
    return "\n".join(kept[-lines:])


def chosen(ctx: Context, which: str) -> Backup:
    if which == "run":
        if ctx.backup is None:
            raise RestoreError("this run took no backup to restore", step="restore", host=ctx.host.name)
        return ctx.backup
    raise RestoreError(f"unknown backup '{which}'", step="restore", host=ctx.host.name)


def check_checksum(ctx: Context, backup: Backup, jobs: int = 1) -> None:
    """The backup is readable and is the one that was written: its sha256 (a folder's: every file
    against its manifest, ``jobs`` at once, and the manifest's own sha256), or BackupUnusable."""
    if backup.path.endswith(dumpdir.SUFFIX):
        folder, name = backup.path.rsplit("/", 1)
        check = ctx.transport.run(dumpdir.check_script(folder, name, jobs), check=False,
                                  timeout=ctx.env.config.backup.timeout)
        if not check.ok:
            raise BackupUnusable(f"backup {backup.path} does not match its manifest (damaged or replaced since "
                                 f"it was written): {_errors(check.stderr or check.stdout, 3)}",
                                 step="restore", host=ctx.host.name)
    else:
        # the hasher alone: behind a pipe its failure (an unreadable file) would be the pipe's success
        check = ctx.transport.run(f"{HASHER}; h {quote(backup.path)}", check=False)
        if not check.ok or not check.stdout.strip():
            raise BackupUnusable(f"backup {backup.path} is not readable on {ctx.host.name}: {check.tail(3)}",
                                 step="restore", host=ctx.host.name)
    if backup.sha256 and check.stdout.split()[0] != backup.sha256:
        raise BackupUnusable(f"backup {backup.path} does not match its recorded sha256 (damaged or "
                             "replaced since it was written)", step="restore", host=ctx.host.name)


def restore(ctx: Context, backup: Backup, on_saved: Callable[[Backup], None] | None = None,
            facts: dict[str, Any] | None = None) -> Backup:
    """Save the current state, then restore ``backup``; returns the saved state.

    In place, the saved state is a ``_pre-restore`` backup taken first. By swap (``restore.mode:
    swap``, or ``backup`` is a database a swap kept), it is the database the swap replaces, kept
    on the server: no dump is taken, and the restore runs at the speed of ``pg_restore -j``.
    ``on_saved`` gets it as soon as the database may change (in place: once the dump exists; swap:
    once the swap is done): if the restore then fails (an interrupt, a lost link), the caller's
    rollback can put that state back. ``facts`` gets what a swap did."""
    from . import swap

    if ctx.env.config.restore.mode == "swap" or backup.database:
        if ctx.swap_rights is None:
            swap.precheck(ctx)  # before anything (a rollback or a migrate checked it already)
        if not backup.database:
            check_checksum(ctx, backup, swap.jobs(ctx))
        done = swap.restore(ctx, backup, on_changed=on_saved)
        saved: Backup = done.pop("saved")
        if facts is not None:
            facts.update(done)
        return saved
    db = ctx.database
    check_checksum(ctx, backup, swap.jobs(ctx))
    saved = backup_step.take(ctx, label="_pre-restore")
    ctx.log.info("current_state_saved", **saved.fact())
    if on_saved is not None:
        on_saved(saved)
    with ctx.connect("restore") as conn, conn.cursor() as cur:
        cur.execute(SCHEMAS_SQL)
        drops = "".join(r[0] for r in cur.fetchall())
        cur.execute(PUBLIC_SCHEMA_SQL)
        public = "".join(r[0] for r in cur.fetchall())
    prelude = f"SET client_min_messages = warning;\n{drops}CREATE SCHEMA public;\n{public}"
    fail = "DO $$ BEGIN RAISE EXCEPTION 'pg_restore failed: restore abandoned'; END $$;"
    script = (
        cleanup_trap() + "; "
        f"{{ printf '%s' {quote(prelude)}; "
        f"{quote(bin_path(ctx, 'pg_restore'))} -f - {quote(backup.path)} || echo {quote(fail)}; }} | "
        + quote(bin_path(ctx, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose",
                "--single-transaction", *conn_args(db.host, db.port, db.name, db.user))
        + " > /dev/null"
    )

    def attempt(timeout: float, n: int) -> None:
        ctx.log.info("restore_attempt", attempt=n, lock_timeout_ms=int(timeout * 1000), backup=backup.path)
        try:
            env, secret = pg_env(ctx)
            with backup_step.progress(ctx, f"restoring {backup.name}"):
                env = {**env, "PGOPTIONS": f"-c lock_timeout={pg_ms(timeout)}"}
                ctx.transport.run(script, env=env, secret=secret, timeout=ctx.env.config.backup.timeout)
        except CommandFailed as exc:
            stderr = exc.result.stderr if exc.result is not None else ""
            if f"{LOCK_NOT_AVAILABLE}:" in stderr:
                raise _LockTimeout(_errors(stderr, 2)) from exc
            raise

    def on_retry(n: int, sleep: float, exc: BaseException | None) -> None:
        ctx.log.warning("lock_timeout_retry", direction="restore", attempt=n, sleep_s=round(sleep, 2),
                        error=str(exc or ""))

    rolled_back = f"was rolled back (the database is as it was; its state is saved in {saved.path})"
    try:
        lock_retries(attempt, lock_timeout=ctx.locks.lock_timeout, max_wait=ctx.locks.max_wait,
                     sleep=ctx.sleep, on_retry=on_retry)
    except LockRetriesExhausted as exc:
        raise RestoreError(f"restore of {backup.name} could not get its locks in {exc.attempts} tries within "
                           f"max_wait {ctx.locks.max_wait:g}s (lock_timeout {ctx.locks.lock_timeout:g}s) and "
                           f"{rolled_back}: {exc.last}", step="restore", host=ctx.host.name) from exc
    except CommandFailed as exc:
        tail = _errors(exc.result.stderr or exc.result.stdout) if exc.result is not None else str(exc)
        raise RestoreError(f"restore of {backup.name} failed and {rolled_back}: {tail}",
                           step="restore", host=ctx.host.name) from exc
    except CommandTimedOut as exc:
        raise RestoreError(f"restore of {backup.name} timed out", step="restore", host=ctx.host.name) from exc
    return saved


def run(ctx: Context, params: Any) -> dict[str, Any]:
    backup = chosen(ctx, params.backup)
    facts: dict[str, Any] = {}
    saved = restore(ctx, backup, facts=facts)
    ctx.facts["restored"] = True
    return {"restored": backup.path, "restored_sha256": backup.sha256, "saved_current_state": saved.path,
            **({"swap": facts} if facts else {})}
