"""The swap restore (``restore.mode: swap``): ``pg_restore -j N`` beside the database, then a rename.

The in-place restore is one ``psql --single-transaction``: atomic, and single-threaded. A big
database restores at the speed of ``pg_restore -j N`` only outside one transaction, so the swap
restore never restores into the live database at all:

1. the rights it needs are checked before anything (``precheck``: CREATEDB, ownership of the
   database, ``pg_signal_backend``, CONNECT on ``postgres``): a missing one is exit 2, nothing done;
2. (the caller checks the backup's checksum; no dump of the current state is taken: the database
   the swap replaces is kept instead, and is the saved state);
3. ``<db>__runbook_restore_<stamp>`` is created like the live database (owner, encoding, locale,
   tablespace, connection limit; its name is in the run's journal first, so a killed run's copy is
   dropped by the next run), and ``pg_restore -j N --exit-on-error`` restores the backup into it;
4. it gets the live database's grants, comment and settings (``dbswap.carry_over_sql``);
5. it is verified: ``alembic_version`` must be the backup's revision, and the verification queries
   of that revision and of the environment must hold;
6. the swap, in one statement from the ``postgres`` database: every client session of the database
   is ended (the application's, named in the run log, and runbook's own, the run lock's included),
   the database is renamed ``<db>__runbook_before_<stamp>`` and the copy takes its name, in one
   transaction; the run lock is then taken again on the new database.

A failure (or a signal) anywhere before step 6 drops the copy: the database was never touched. A
SIGKILL leaves the copy, which the next run drops (``drop_dead_copy``; and any swap restore drops the
copies it finds of its database). The database it replaced is kept, never dropped silently: it is
what the playbook's ``on_failure`` puts back (a ``Backup`` with ``database`` set: verified, then
swapped in again, steps 5-6), and what ``rollback --restore <its name>`` puts back; the ``prune``
step of the next successful run drops it (``prune_kept``), with an event saying so.
"""

from __future__ import annotations

import contextlib
import time
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

from .. import dbswap, interrupts, postgres
from ..context import Backup, Context
from ..errors import CommandFailed, CommandTimedOut, ConfigError, RestoreError
from ..hostcmd import bin_path, cleanup_trap, pg_env
from ..transports.base import quote
from . import backup as backup_step

SWAP_TRIES = 3  # a session that connects between its end and the rename makes the rename fail


def jobs(ctx: Any) -> int:
    """``restore.jobs``, else ``backup.jobs``: the pg_restore processes of a swap restore."""
    return int(ctx.env.config.restore.jobs or ctx.env.config.backup.jobs or 1)


def precheck(ctx: Context) -> dbswap.Rights:
    """The rights a swap restore needs, or ConfigError (exit 2) naming each missing one: asked
    before anything is done (before the run's first step for a migrate, before the rollback's)."""
    db = ctx.database.name
    with ctx.connect("restore") as conn:
        rights = ctx.swap_rights = dbswap.rights(conn, db)
    if rights.missing:
        raise ConfigError(f"restore.mode: swap needs, for database user {rights.user} on {db}: "
                          + "; ".join(rights.missing) + ". Nothing was done: grant them (as a superuser), "
                          "or set restore.mode: in-place in the inventory")
    return rights


def plan_lines(ctx: Any, rights: dbswap.Rights | None = None, *, kept: str | None = None) -> list[str]:
    """What a person is told before a swap restore (rollback's confirmation); ``kept``: a kept
    database swapped back in rather than a backup restored."""
    db = ctx.database.name
    size = f" ({_size(rights.size)})" if rights is not None and rights.size else ""
    how = (f"  How: {kept} is verified, then renamed to {db}." if kept else
           f"  How: restore.mode swap: pg_restore -j {jobs(ctx)} into a new database "
           f"{dbswap.side_prefix(db, 'restore')}<UTC time> on the same server, verified, then renamed to {db}.")
    return [how,
            f"  At the swap EVERY session of {db} is ended (the application's too: it must reconnect).",
            f"  {db} as it is now{size} is kept as {dbswap.side_prefix(db, 'before')}<UTC time> (instead of a "
            "dump) until the next successful migrate or backup prunes it"
            + ("." if kept else ": the server needs room for both.")]


def _size(n: float) -> str:
    from ..backups import human_size

    return human_size(n)


def restore(ctx: Context, backup: Backup, on_changed: Callable[[Backup], None] | None = None) -> dict[str, Any]:
    """Restore ``backup`` beside the database and swap it in; returns the facts (the names, the
    sessions ended, and ``saved``: the database it replaced, kept, as a ``Backup``). A ``backup``
    that is a kept database (``Backup.database``) is verified and swapped in as it is.

    ``on_changed`` gets ``saved`` once the database may have changed (the swap committed, or its
    outcome is unknown): until then a failure leaves the database untouched."""
    from ..migrations import fmt

    db = ctx.database.name
    kept = backup.database  # a database an earlier swap kept: swapped back in, never dropped here
    rights = ctx.swap_rights or precheck(ctx)
    if not rights.maintenance:
        raise ConfigError("restore.mode: swap: no database to run the rename from (postgres, template1)")
    with ctx.connect("restore") as conn:
        sides = dbswap.side_of(conn, db)
        for old in sides:
            if old["kind"] == "restore":  # a copy of an earlier run that died (the run lock is ours)
                conn.execute(dbswap.drop_sql(old["name"], force=True))
                ctx.log.warning("restore_copy_dropped", database=old["name"], size=old["size"],
                                reason="left by an earlier run")
        props = None if kept else dbswap.properties(conn)
    taken = {d["name"] for d in sides if d["kind"] == "before"}
    if kept and backup.path not in taken:
        raise RestoreError(f"no kept database {backup.path} of {db} on the server", step="restore",
                           host=ctx.host.name)
    for _ in range(5):  # names carry a one-second stamp: a swap back in the second of the swap waits
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        before = dbswap.side_name(db, "before", stamp)
        if before not in taken:
            break
        ctx.sleep(1.0)
    else:
        raise RestoreError(f"{before} exists already: is another process making databases named like it?",
                           step="restore", host=ctx.host.name)
    copy = backup.path if kept else dbswap.side_name(db, "restore", stamp)
    saved = Backup(before, rights.size, "", fmt(ctx.current()).replace(",", "+"), stamp, database=True)
    record = ctx.journal.host(ctx.host.name)
    record["swap"] = {"before": before, "state": "restoring", **({"source": copy} if kept else {"copy": copy})}
    ctx.journal.save()
    ctx.log.info("swap_restore_started", database=db, backup=backup.path, into=copy, kept_as=before,
                 jobs=jobs(ctx))
    facts: dict[str, Any] = {"mode": "swap", "jobs": jobs(ctx), ("source" if kept else "copy"): copy}
    created = swapped = False
    try:
        if props is not None:
            created = True  # (from here on it may exist: dropped if anything fails)
            with _said(ctx, f"creating the copy {copy}"), ctx.connect("restore") as conn:
                conn.execute(dbswap.create_sql(props, copy))
            ctx.log.info("restore_copy_created", database=copy, owner=props.owner, encoding=props.encoding,
                         tablespace=props.tablespace)
            _pg_restore(ctx, backup, copy)
            carried = dbswap.carry_over_sql(props, copy)
            if carried:
                with _said(ctx, f"giving {copy} the settings, grants and comment of {db}"), \
                        ctx.connect("restore") as conn:
                    conn.execute(_joined(carried))  # one implicit transaction, one round trip
        with _said(ctx, f"verifying {copy}"):
            _verify(ctx, copy, None if kept else backup.revision)

        def changed() -> None:
            ctx.log.info("current_state_saved", **saved.fact(), kept_database=before)
            if on_changed is not None:
                on_changed(saved)

        swapped, ended = _swap(ctx, rights.maintenance, db, copy, before, changed)
    except BaseException as exc:
        with interrupts.shielded():
            if created and not swapped:
                _drop_copy(ctx, copy, exc)
            record["swap"]["state"] = "dropped" if created else "failed"
            ctx.journal.save()
        raise
    record["swap"]["state"] = "swapped"
    ctx.journal.save()
    facts.update(before=before, sessions_ended=ended, saved=saved)
    return facts


@contextlib.contextmanager
def _said(ctx: Context, doing: str) -> Iterator[None]:
    """A database error while ``doing`` becomes one RestoreError saying the database is untouched."""
    import psycopg

    try:
        yield
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RestoreError(f"swap restore: {doing} failed: {first} ({ctx.database.name} was not changed)",
                           step="restore", host=ctx.host.name) from exc


def _joined(statements: list[Any]) -> Any:
    from psycopg import sql

    return sql.SQL("; ").join(statements)


def _pg_restore(ctx: Context, backup: Backup, copy: str) -> None:
    """``pg_restore -j N --exit-on-error`` of ``backup`` into ``copy``, on the host."""
    db = ctx.database
    n = jobs(ctx)
    script = (cleanup_trap() + "; "
              + quote(bin_path(ctx, "pg_restore"), "-j", str(n), "--exit-on-error",
                      *postgres.conn_args(db.host, db.port, copy, db.user), backup.path))
    ctx.log.info("restore_attempt", backup=backup.path, into=copy, jobs=n)
    started = time.monotonic()
    try:
        env, secret = pg_env(ctx)
        with backup_step.progress(ctx, f"restoring {backup.name} into {copy}"):
            ctx.transport.run(script, env=env, secret=secret, timeout=ctx.env.config.backup.timeout)
    except CommandFailed as exc:
        tail = exc.result.tail(5) if exc.result is not None else str(exc)
        raise RestoreError(f"pg_restore of {backup.name} into {copy} failed ({db.name} was not changed): {tail}",
                           step="restore", host=ctx.host.name) from exc
    except CommandTimedOut as exc:
        raise RestoreError(f"pg_restore of {backup.name} into {copy} timed out ({db.name} was not changed)",
                           step="restore", host=ctx.host.name) from exc
    ctx.log.info("restore_copy_restored", database=copy, jobs=n, duration_ms=int((time.monotonic() - started) * 1000))


def _verify(ctx: Context, copy: str, revision: str | None) -> None:
    """The copy is at the backup's ``revision`` (if known), and the checks of the revision it is at
    (and the environment's) hold on it, before anything else is touched."""
    from ..migrations import fmt
    from . import verify

    with postgres.connect(ctx.endpoint.with_db(copy), purpose=f"restore/verify {ctx.run_id}") as conn:
        revisions = postgres.current_revisions(conn)
        expected = None if revision is None else set() if revision == "base" else set(revision.split("+"))
        if expected is not None and set(revisions) != expected:
            raise RestoreError(f"the restored copy {copy} is at {fmt(revisions)}, but its backup was taken "
                               f"at {revision}: {ctx.database.name} was not changed",
                               step="restore", host=ctx.host.name)
        checks, _missing = verify.checks_for(ctx, None, revisions)
        problems = verify.run_checks(conn, checks) if checks else []
    failures = [f"{c.name}: {p}" for c, p in zip(checks, problems) if p]
    if failures:
        raise RestoreError(f"{copy} (to be swapped in) fails {len(failures)} of {len(checks)} verification "
                           f"queries at {fmt(revisions)} ({ctx.database.name} was not changed): "
                           + "; ".join(failures), step="restore", host=ctx.host.name)
    ctx.log.info("restore_copy_verified", database=copy, revision=fmt(revisions), checks=len(checks))


def _swap(ctx: Context, maintenance: str, db: str, copy: str, before: str,
          on_changed: Callable[[], None]) -> tuple[bool, list[dict[str, Any]]]:
    """Rename ``db`` to ``before`` and ``copy`` to ``db`` (``dbswap.swap_sql``), shielded from
    signals (its outcome must be known); then, whatever happened, take the run lock again (the
    swap ended its session). Returns (swapped, the sessions it ended that were not this run's)."""
    lock = getattr(ctx.session, "run_lock", None)
    ctx.session.close_db_sessions()  # closed, not ended; the run lock's session stays until the swap
    outcome: dict[str, Any] = {"swapped": False, "ended": []}
    with interrupts.shielded():
        try:
            _rename(ctx, maintenance, db, copy, before, outcome)
        finally:
            if outcome["ended"]:
                ctx.log.warning("sessions_ended", database=db, count=len(outcome["ended"]),
                                sessions=outcome["ended"],
                                reason="the swap restore renames the database: no session may stay on it")
                _say(ctx, f"runbook: ended {len(outcome['ended'])} session(s) of {db} for the swap: "
                     + "; ".join(f"pid {e['pid']} {e['application'] or '-'} ({e['user']} from {e['client']}, "
                                 f"{e['state']})" for e in outcome["ended"]))
            if outcome["swapped"] is not False:  # done, or perhaps done: the database may have changed
                on_changed()
            if outcome["swapped"]:
                ctx.log.info("database_swapped", database=db, restored_from=copy, kept_as=before)
                _say(ctx, f"runbook: {db} is now the restored copy; the database it replaced is kept as "
                     f"{before} until the next successful migrate or backup prunes it")
            _lock_again(ctx, lock, bool(outcome["swapped"]), db, before)
    return bool(outcome["swapped"]), outcome["ended"]


def _rename(ctx: Context, maintenance: str, db: str, copy: str, before: str, outcome: dict[str, Any]) -> None:
    """The swap statement from the maintenance database, tried again (``SWAP_TRIES``) when a session
    connected between its end and the rename; ``outcome`` gets ``swapped`` (True, False, or None:
    the link was lost and it cannot be told) and the sessions ended."""
    import psycopg

    try:
        with postgres.connect(ctx.endpoint.with_db(maintenance), purpose=f"restore/swap {ctx.run_id}") as conn:
            for attempt in range(1, SWAP_TRIES + 1):
                try:
                    rows = conn.execute(dbswap.swap_sql(db, copy, before)).fetchall()
                except psycopg.errors.ObjectInUse as exc:  # rolled back: nothing renamed
                    first = str(exc).strip().splitlines()[0]
                    ctx.log.warning("swap_retry", attempt=attempt, error=first)
                    if attempt == SWAP_TRIES:
                        raise RestoreError(f"could not swap {copy} in after {attempt} tries: {first}; "
                                           f"{db} was not changed", step="restore", host=ctx.host.name) from exc
                    continue
                outcome["ended"] += [_ended(r) for r in rows if ctx.run_id not in (r[2] or "")]
                outcome["swapped"] = True
                return
    except psycopg.OperationalError as exc:  # the link, mid-swap: did it commit?
        done = outcome["swapped"] = _renamed(ctx, maintenance, before)
        state = "it was done" if done else "it may or may not be done" if done is None else f"{db} was not changed"
        raise RestoreError(f"the swap of {copy} into {db} lost its connection ({str(exc).strip()[:200]}): {state}",
                           step="restore", host=ctx.host.name) from exc


def _say(ctx: Context, line: str) -> None:
    """A line for the person at the terminal (or cron's mail); ``--json`` has the events."""
    import click

    if not ctx.options.json:
        click.echo(line, err=True)


def _ended(row: Any) -> dict[str, Any]:
    pid, user, app, client, state, query, datname, _ = row
    return {"pid": pid, "user": user, "application": app or None, "client": client or "local",
            "state": state, "query": query}


def _renamed(ctx: Context, maintenance: str, before: str) -> bool | None:
    """After a lost swap: does ``before`` exist (the swap committed)? None if it cannot be told."""
    try:
        with postgres.connect(ctx.endpoint.with_db(maintenance), purpose=f"restore/probe {ctx.run_id}") as conn:
            row = conn.execute("SELECT EXISTS (SELECT FROM pg_database WHERE datname = %s)", (before,)).fetchone()
            return bool(row and row[0])
    except Exception:  # noqa: BLE001 - unknown, said as such
        return None


def _lock_again(ctx: Context, lock: Any, swapped: bool, db: str, before: str) -> None:
    """The swap ended the run lock's session: take the lock again (on the new database)."""
    from ..errors import GuardRefused

    if lock is None:
        return
    lock.release()
    try:
        lock.acquire()
    except GuardRefused as exc:
        state = f"{db} is the restored copy (the old one is {before})" if swapped else f"{db} was not changed"
        raise RestoreError(f"another run took the run lock during the swap: {state}; {exc}",
                           step="restore", host=ctx.host.name) from exc


def _drop_copy(ctx: Context, copy: str, why: BaseException) -> None:
    """Drop the copy of a restore that failed before the swap (its sessions ended: FORCE)."""
    try:
        with ctx.connect("restore") as conn:
            conn.execute(dbswap.drop_sql(copy, force=True))
    except Exception as exc:  # noqa: BLE001 - the next run drops it, and says so
        ctx.log.error("restore_copy_not_dropped", database=copy, error=str(exc).strip()[:200],
                      hint="the next run drops it")
        return
    ctx.log.warning("restore_copy_dropped", database=copy, reason=f"the restore failed: {str(why)[:200]}")


def drop_dead_copy(ctx: Any, run: dict[str, Any]) -> None:
    """The copy a killed run ``run`` (its journal record) may have left on this host: dropped
    (only a ``copy`` it made: a kept database it was swapping back in is its ``source``, kept)."""
    swap = ((run.get("hosts") or {}).get(ctx.host.name) or {}).get("swap") or {}
    copy = swap.get("copy")
    if not copy or swap.get("state") == "swapped" or copy == ctx.database.name:
        return
    with ctx.connect("cleanup") as conn:
        exists = conn.execute("SELECT EXISTS (SELECT FROM pg_database WHERE datname = %s)", (copy,)).fetchone()
        if not (exists and exists[0]):
            return
        conn.execute(dbswap.drop_sql(copy, force=True))
    ctx.log.warning("restore_copy_dropped", database=copy, previous_run=run.get("run_id"),
                    reason="left by a run that was killed")


def prune_kept(ctx: Any) -> list[str]:
    """The ``prune`` step: drop the databases earlier swap restores replaced (and copies left
    behind), never this run's own; each dropped one is logged. One a session is still using (a
    person looking at it) is kept, and said so."""
    import psycopg

    record = ctx.journal.host(ctx.host.name) if ctx.journal is not None else {}
    mine = {v for k, v in (record.get("swap") or {}).items() if k in ("copy", "before", "source")}
    dropped: list[str] = []
    with ctx.connect("prune") as conn:
        for side in dbswap.side_of(conn, ctx.database.name):
            if side["name"] in mine:
                continue
            try:
                conn.execute(dbswap.drop_sql(side["name"], force=side["kind"] == "restore"))
            except psycopg.errors.ObjectInUse as exc:
                ctx.log.warning("kept_database_in_use", database=side["name"], error=str(exc).strip().splitlines()[0])
                continue
            dropped.append(side["name"])
            ctx.log.warning("kept_database_dropped", database=side["name"], size=side["size"],
                            reason="replaced by a swap restore of an earlier run (restore.mode: swap)"
                            if side["kind"] == "before" else "a copy left by an earlier restore")
    return dropped
