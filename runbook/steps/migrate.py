"""``upgrade`` and ``downgrade``: Alembic in-process, under lock_timeout retries, read back after.

Transaction mode: one transaction for the whole upgrade (Alembic's default,
``transaction_per_migration=False``). A failure in revision k of n leaves the database at the start
revision, so the rollback has nothing to undo but what ``autocommit_block`` sections committed; a lock
timeout is retried the same way, from wherever the database is. Whatever Alembic returns, the step
succeeds only if ``alembic_version`` holds the target afterwards.
"""

from __future__ import annotations

from typing import Any

from ..context import Context
from ..errors import ConfigError, LockTimeoutExhausted, MigrationError
from ..migrations import Revision, fmt, sqlstate
from ..retry import LockRetriesExhausted, lock_retries

INVALID_INDEXES_SQL = """
SELECT n.nspname, c.relname FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT i.indisvalid AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
"""


def _apply(ctx: Context, direction: str, target: str, spec: str, revisions: list[Revision]) -> list[str]:
    done: list[str] = []

    def on_apply(rev: str, heads: tuple[str, ...]) -> None:
        done.append(rev)
        log.info("revision_applied" if direction == "upgrade" else "revision_reverted",
                 revision=rev, heads=list(heads))

    log = ctx.log

    def attempt(timeout: float, n: int) -> None:
        # Through the backend seam: in-process Alembic over the tunnel, or the application's own
        # Alembic on the host (alembic.remote); either way the session gets these settings.
        done.clear()
        if n > 1:  # a failed CREATE INDEX CONCURRENTLY leaves an INVALID index the retry would trip on
            drop_new_invalid_indexes(ctx, retry=False)
        log.info("migration_attempt", direction=direction, attempt=n, lock_timeout_ms=int(timeout * 1000),
                 target=target, backend=ctx.migrations.kind)
        ctx.migrations.migrate(direction, spec, settings=ctx.settings(timeout), on_apply=on_apply)

    def on_retry(n: int, sleep: float, exc: BaseException | None) -> None:
        log.warning("lock_timeout_retry", direction=direction, attempt=n, sleep_s=round(sleep, 2),
                    error=_first_line(exc))

    try:
        lock_retries(attempt, lock_timeout=ctx.locks.lock_timeout, max_wait=ctx.locks.max_wait,
                     sleep=ctx.sleep, on_retry=on_retry)
    except LockRetriesExhausted as exc:
        raise LockTimeoutExhausted(
            f"{direction} to {target} could not get its locks in {exc.attempts} tries within "
            f"max_wait {ctx.locks.max_wait:g}s (lock_timeout {ctx.locks.lock_timeout:g}s)",
            step=direction, host=ctx.host.name) from exc.last
    except Exception as exc:
        failed = _failed_revision(revisions, done)
        where = f" in revision {failed.id} ({failed.doc})" if failed else ""
        code = sqlstate(exc)
        raise MigrationError(f"{direction} to {target} failed{where}: {_first_line(exc)}"
                             + (f" [SQLSTATE {code}]" if code else ""),
                             step=direction, host=ctx.host.name) from exc
    return done


def _failed_revision(revisions: list[Revision], done: list[str]) -> Revision | None:
    for rev in revisions:
        if rev.id not in done:
            return rev
    return None


def _first_line(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def invalid_indexes(ctx: Context) -> set[tuple[str, str]]:
    """(schema, index) of every INVALID index: pairs, as a schema name may hold a dot."""
    with ctx.connect("indexes") as conn, conn.cursor() as cur:
        cur.execute(INVALID_INDEXES_SQL)
        return {(n, c) for n, c in cur.fetchall()}


def _recorded(value: Any) -> tuple[str, str] | None:
    """A journal entry of ``invalid_indexes_before``: a [schema, index] pair (an older journal's
    "schema.index" string is split at its first dot, as that runbook wrote it)."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return str(value[0]), str(value[1])
    if isinstance(value, str) and "." in value:
        schema, index = value.split(".", 1)
        return schema, index
    return None


def pending_at_start(ctx: Context, params: Any) -> tuple[str, tuple[str, ...], list[Revision], dict[str, Any]]:
    """An upgrade-like step's target (``--to`` or its own), the revisions at the step's start,
    the pending revisions, and the facts that say so."""
    target = ctx.options.to or params.to
    current = ctx.current_at_start()
    want = ctx.migrations.resolve(target)
    pending = ctx.migrations.pending(current, target)
    return target, current, pending, {"from": fmt(current), "to": fmt(want), "pending": [r.id for r in pending]}


def going_back(migrations: Any, current: tuple[str, ...], target: str, env: str) -> ConfigError | None:
    """An upgrade whose target is below the current revision: a migrate only goes forward.

    Without this, Alembic refuses it only once the backup is taken ("cannot plan an upgrade"),
    and ``--to base`` looked like nothing to do. Going back is ``rollback --to REV``: it says what
    the downgrade destroys and asks first. Returns the refusal (exit 2, nothing touched), or None.
    """
    if not current:
        return None
    want = migrations.resolve(target)
    older = not want
    if not older:
        try:
            migrations.pending(current, target)
            return None
        except MigrationError:  # not above the current revision: below it, or on another branch
            try:
                older = bool(migrations.to_undo(current, want))
            except MigrationError:
                return None  # unrelated branches: the upgrade's own error says so
    if not older:
        return None
    return ConfigError(f"migrate --to {target}: {fmt(want) or 'base'} is below the current revision "
                       f"{fmt(current)}; a migrate only goes forward: nothing was done",
                       hint=f"runbook {env} rollback --to {target}")


# Steps that change nothing when no revision is pending: a run of only these skips its backup.
_IDLE_WITHOUT_PENDING = frozenset({"backup", "check_locks", "upgrade", "verify", "prune", "rehearse"})
# What a run with nothing pending skips: the dump protects a change that will not happen, the lock
# pre-flight looks for sessions a DDL would wait on, and there is no DDL. verify still runs (it is
# how a no-op run says the database is as it should be); prune too (a lowered ``keep`` applies).
NEEDLESS_WITHOUT_PENDING = ("backup", "check_locks")


def needless(ctx: Context, steps: Any) -> dict[str, str]:
    """The steps this run skips, each with its reason: nothing is pending from the start revision
    to any upgrade's target, and no other step of the playbook could change the database."""
    kinds = {s.kind for s in steps}
    upgrades = [s for s in steps if s.kind == "upgrade"]
    if not upgrades or not kinds <= _IDLE_WITHOUT_PENDING:
        return {}
    for step in upgrades:
        try:
            if ctx.migrations.pending(ctx.start, ctx.options.to or step.params.to):
                return {}
        except Exception:  # noqa: BLE001 - the upgrade step itself reports it (after its backup)
            return {}
    reason = f"nothing pending: {ctx.database.name} is at {fmt(ctx.start)}, the target"
    return {kind: reason for kind in NEEDLESS_WITHOUT_PENDING}


def upgrade(ctx: Context, params: Any) -> dict[str, Any]:
    target, current, pending, facts = pending_at_start(ctx, params)
    want = ctx.migrations.resolve(target)
    if not pending:
        ctx.log.info("nothing_to_migrate", revision=fmt(current))
        facts["applied"] = []
        return facts
    ctx.facts["changed"] = True
    ctx.journal.host(ctx.host.name)["invalid_indexes_before"] = [list(p) for p in sorted(invalid_indexes(ctx))]
    applied = _apply(ctx, "upgrade", fmt(want), target, pending)
    after = ctx.current()
    if set(after) != set(want):
        raise MigrationError(
            f"Alembic returned, but alembic_version holds {fmt(after)}, not {fmt(want)}: "
            "revisions were lost (a revision that commits by itself, or an env.py that leaves its "
            "transaction uncommitted)", step="upgrade", host=ctx.host.name)
    facts["applied"] = applied
    return facts


def prepare(ctx: Context, steps: Any) -> None:
    """Before the first step: the playbook's first Alembic run gets its database connection opened
    in the background while the steps before it (the backup) run. An upgrade only if it will apply
    something; a downgrade (or the ``rollback`` step's) unless the rollback restores a backup
    instead. Its first try's settings, so the try takes it; a retry, with other settings, opens
    its own."""
    from ..retry import lock_timeout_for

    first = next((s for s in steps if s.kind in ("upgrade", "downgrade", "rollback")), None)
    if first is None or ctx.options.dry_run:
        return
    if first.kind == "upgrade":
        try:
            if not ctx.migrations.pending(ctx.start, ctx.options.to or first.params.to):
                return
        except Exception:  # noqa: BLE001 - the step itself reports it
            return
    elif ctx.options.restore is not None:
        return
    if ctx.env.config.restore.mode == "swap" and first.kind == "upgrade":
        # its rollback may restore: refused now if it could not (``rollback`` checks for itself)
        from .swap import precheck

        precheck(ctx)
    direction = "upgrade" if first.kind == "upgrade" else "downgrade"
    ctx.migrations.prepare(direction, ctx.settings(lock_timeout_for(1, ctx.locks.lock_timeout)))


def irreversible(ctx: Context, rev: Revision) -> bool:
    """A revision whose downgrade is missing, empty (``pass``), raising or declared irreversible."""
    return ctx.migrations.irreversible(rev)


def resolve_down(ctx: Context, to: str) -> tuple[str, ...]:
    if to == "start":
        return ctx.start
    return ctx.migrations.resolve(to)


def downgrade(ctx: Context, params: Any) -> dict[str, Any]:
    target = resolve_down(ctx, params.to)
    current = ctx.current_at_start()
    facts: dict[str, Any] = {"from": fmt(current), "to": fmt(target)}
    if set(current) != set(target):
        undo = ctx.migrations.to_undo(current, target)
        for rev in undo:
            why = ctx.migrations.why_irreversible(rev)
            if why:  # refused before anything runs: the playbook's restore takes over
                raise MigrationError(f"revision {rev.id} ({rev.doc}) has no downgrade ({why}): it cannot "
                                     "be reversed", step="downgrade", host=ctx.host.name)
        # Several heads (the run started before a merge): Alembic's downgrade to one of them undoes
        # only what descends from it, so one downgrade per head gets back to all of them.
        facts["reverted"] = []
        for spec in target or ("base",):
            if set(ctx.current()) == set(target):
                break
            facts["reverted"] += _apply(ctx, "downgrade", fmt(target), spec,
                                        ctx.migrations.to_undo(ctx.current(), (spec,) if target else ()))
        after = ctx.current()
        if set(after) != set(target):
            raise MigrationError(f"downgrade returned, but alembic_version holds {fmt(after)}, "
                                 f"not {fmt(target)}", step="downgrade", host=ctx.host.name)
    else:
        ctx.log.info("nothing_to_downgrade", revision=fmt(current))
    facts["dropped_invalid_indexes"] = drop_new_invalid_indexes(ctx)
    return facts


def drop_new_invalid_indexes(ctx: Context, *, retry: bool = True) -> list[list[str]]:
    """Drop INVALID indexes (a failed CREATE INDEX CONCURRENTLY) that this run left behind.

    DROP INDEX CONCURRENTLY blocks no application query but waits for older transactions, so it
    runs under the concurrent-index policy (``locks.concurrently_timeout``); with ``retry`` its lock
    timeouts are retried within ``max_wait``, without, they go to the caller's own retry loop.
    """
    from psycopg import sql

    from ..units import pg_ms

    record = ctx.journal.host(ctx.host.name)
    if "invalid_indexes_before" not in record:
        return []
    before = {p for p in map(_recorded, record.get("invalid_indexes_before") or []) if p}
    dropped = []
    for schema, index in sorted(invalid_indexes(ctx) - before):
        name = [schema, index]
        statement = sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(schema, index))

        def once(timeout: float, n: int) -> None:
            with ctx.connect("drop_index", settings={"lock_timeout": pg_ms(timeout),
                                                     "statement_timeout": "0"}) as conn:
                conn.execute(statement)

        if not retry:
            once(ctx.locks.concurrently_timeout, 1)
        else:
            try:
                lock_retries(once, lock_timeout=ctx.locks.concurrently_timeout, max_wait=ctx.locks.max_wait,
                             sleep=ctx.sleep, on_retry=lambda n, pause, exc: ctx.log.warning(
                                 "lock_timeout_retry", direction="drop_invalid_index", index=name,
                                 attempt=n, sleep_s=round(pause, 2)))
            except LockRetriesExhausted as exc:
                raise MigrationError(f"INVALID index {schema!r}.{index!r} left by a failed concurrent build could not be "
                                     f"dropped within max_wait {ctx.locks.max_wait:g}s: older transactions "
                                     "still run", step="downgrade", host=ctx.host.name) from exc.last
        ctx.log.warning("invalid_index_dropped", index=name)
        dropped.append(name)
    return dropped
