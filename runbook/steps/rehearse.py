"""``rehearse``: the pending migrations, tried on a copy of production before production.

The newest verified backup at production's current revision (this run's own, when a ``backup``
step came first; one younger than ``max_age`` otherwise; a new one if there is none) is restored
into a scratch database on the same server (``rehearsal.py``), and there, with the same Alembic
project, the same session settings and the same verification queries as the real run: upgrade,
verify, downgrade, verify, compare the schema after the downgrade with the schema before the
upgrade (``pg_dump --schema-only`` on the host), upgrade again, verify. Each phase is timed: the
durations are logged (``rehearsal_phase``, ``rehearsal_estimate``) and kept in the journal
(``hosts.<host>.rehearsal``) as the estimate of the real run's.

The production database is only read (its revision, its encoding, a ``pg_dump`` when a backup is
taken); nothing of the rehearsal counts as a change of it (its steps run on a context of their own,
``rehearsal.scratch_context``). The scratch database is dropped whatever happens, shielded from
signals like a rollback. A failure is a ``RehearsalFailed`` naming the phase and the error: the run
stops before any later step (``upgrade`` of production included), and production is read back as it
was (exit 1, "failed before any change").
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator

import structlog

from .. import interrupts, rehearsal
from ..backups import human_age, list_backups
from ..context import Context
from ..errors import CommandFailed, CommandTimedOut, ConfigError, RunbookError, StepError
from ..estimate import human
from ..hostcmd import backup_dir, bin_path, cleanup_trap, pg_env
from ..migrations import fmt
from ..postgres import conn_args
from ..transports.base import quote


class RehearsalFailed(StepError):
    """The rehearsal failed in ``phase``: production was not touched (exit 1)."""

    def __init__(self, message: str, *, phase: str, host: str) -> None:
        super().__init__(message, step="rehearse", host=host)
        self.phase = phase


# -- before anything ------------------------------------------------------------------------------

def preflight(ctx: Context, steps: Any) -> None:
    """Before the first step of a playbook with a ``rehearse`` step: it can run here (in-process
    Alembic, a user that may create databases), and a scratch database a killed run left is
    dropped. A refusal is exit 2 (the environment's configuration: it does not pass by waiting),
    before anything is done."""
    if not any(s.kind == "rehearse" for s in steps) or ctx.options.dry_run:
        return
    if ctx.migrations.kind != "in-process":
        raise ConfigError(
            "rehearse needs in-process Alembic (alembic.config): with alembic.remote the application's "
            "env.py on the host may build its URL from its own settings and migrate production instead "
            "of the scratch copy: nothing was done",
            hint="rehearse with an alembic.config of the same migrations, or remove the rehearse step")
    with ctx.connect("rehearse") as conn:
        allowed, user = rehearsal.can_create_databases(conn)
        if not allowed:
            raise ConfigError(
                f"the rehearsal restores a copy of {ctx.database.name} into a scratch database on the "
                f"same server, but the database user '{user}' may not create databases (no CREATEDB): "
                "nothing was done", hint=f"{rehearsal.grant_hint(conn, user)}; or remove the rehearse step")
        dropped = rehearsal.drop_leftovers(conn, ctx.database.name)
    for name in dropped:
        ctx.log.warning("rehearsal_leftover_dropped", database=name,
                        previous_run=rehearsal.run_of(name, ctx.database.name))


# -- the phases -----------------------------------------------------------------------------------

class Phases:
    """Each phase timed, logged (``rehearsal_phase``) and recorded in the journal as it ends."""

    def __init__(self, ctx: Context, record: dict[str, Any]) -> None:
        self.ctx = ctx
        self.record = record
        self.durations: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        outcome = "failed"
        try:
            with structlog.contextvars.bound_contextvars(rehearsal=name):
                yield
            outcome = "ok"
        except interrupts.Interrupted:
            outcome = "interrupted"
            raise
        except RehearsalFailed:
            raise
        except Exception as exc:
            error = str(exc) if isinstance(exc, RunbookError) else f"{type(exc).__name__}: {exc}"
            raise RehearsalFailed(f"rehearsal failed in phase {name} on a copy of {self.ctx.database.name}: "
                                  f"{error}; production was not touched", phase=name,
                                  host=self.ctx.host.name) from exc
        finally:
            seconds = round(time.monotonic() - started, 3)
            self.durations[name] = seconds
            with interrupts.shielded():
                self.ctx.log.info("rehearsal_phase", rehearsal=name, outcome=outcome, duration_ms=int(seconds * 1000))
                self.record.setdefault("phases", []).append(
                    {"phase": name, "outcome": outcome, "duration_s": seconds})
                if outcome != "ok":
                    self.record["failed_phase"] = name
                self.ctx.journal.save()


def run(ctx: Context, params: Any) -> dict[str, Any]:
    from ..steps import migrate

    target, current, pending, facts = migrate.pending_at_start(ctx, params)
    want = ctx.migrations.resolve(target)
    if not pending:
        ctx.log.info("nothing_to_rehearse", revision=fmt(current))
        return {**facts, "rehearsed": False}
    no_downgrade = [(r.id, why) for r in pending if (why := ctx.migrations.why_irreversible(r))]
    record: dict[str, Any] = {"from": fmt(current), "to": fmt(want), "outcome": "running", "phases": [],
                              "sources": _sources(ctx, pending)}
    ctx.journal.host(ctx.host.name)["rehearsal"] = record
    phases = Phases(ctx, record)
    backup, age = _backup(ctx, params, current, phases)
    name = rehearsal.scratch_name(ctx.database.name, ctx.run_id)
    record.update(database=name, backup=backup, backup_age_s=round(age))
    ctx.log.info("rehearsal_started", database=name, backup=backup, backup_age_s=round(age), revision=fmt(current),
                 target=fmt(want), pending=facts["pending"])
    session = rehearsal.ScratchSession(ctx.session, name)
    scratch = rehearsal.scratch_context(ctx, session)
    outcome = "failed"
    try:
        with phases.phase("restore"):
            with ctx.connect("rehearse") as conn:
                rehearsal.create(conn, name, of=ctx.database.name, run_id=ctx.run_id)
            _restore(scratch, backup)
        with phases.phase("schema_before"):
            before = _schema(scratch)
            scratch.start = scratch.current()
            if set(scratch.start) != set(current):
                raise RehearsalFailed(f"the copy restored from {backup} is at {fmt(scratch.start)}, not at "
                                      f"production's {fmt(current)}: nothing was rehearsed",
                                      phase="schema_before", host=ctx.host.name)
        up, down, check = _params(target)
        with phases.phase("upgrade"):
            migrate.upgrade(scratch, up)
        with phases.phase("verify"):
            _verify(scratch, check)
        if no_downgrade:
            ctx.log.warning("rehearsal_downgrade_skipped", revisions=[r for r, _ in no_downgrade],
                            why=[w for _, w in no_downgrade],
                            hint="a failed real run restores its backup instead of downgrading")
            record["downgrade_skipped"] = {rev: why for rev, why in no_downgrade}
        else:
            with phases.phase("downgrade"):
                migrate.downgrade(scratch, down)
            with phases.phase("verify_downgraded"):
                _verify(scratch, check)
            with phases.phase("schema_compare"):
                _compare(scratch, before, record)
            with phases.phase("upgrade_again"):
                migrate.upgrade(scratch, up)
            with phases.phase("verify_again"):
                _verify(scratch, check)
        outcome = "passed"
    except interrupts.Interrupted:
        outcome = "interrupted"
        raise
    finally:
        with interrupts.shielded():
            _drop(ctx, session, name, record)
            record["outcome"] = outcome
            ctx.journal.save()
    if not record.get("dropped"):
        raise RehearsalFailed(f"the rehearsal passed, but its scratch database {name} could not be dropped "
                              "(see rehearsal_database_left); production was not touched", phase="drop",
                              host=ctx.host.name)
    estimate = _estimate(ctx, phases.durations, record)
    return {**facts, "rehearsed": True, "database": name, "backup": backup,
            "phases_s": dict(phases.durations), **estimate}


def _sources(ctx: Context, pending: list[Any]) -> dict[str, str | None]:
    """The sha256 of each rehearsed revision's file: what was rehearsed, so that a later check can
    tell whether a revision changed since (None: its source could not be read)."""
    import hashlib

    out: dict[str, str | None] = {}
    for rev in pending:
        text = ctx.migrations.source(rev)
        out[rev.id] = hashlib.sha256(text.encode("utf-8")).hexdigest() if text is not None else None
    return out


def _params(target: str) -> tuple[Any, Any, Any]:
    from ..playbook import DowngradeParams, UpgradeParams, VerifyParams

    return (UpgradeParams.model_validate({"to": target}), DowngradeParams.model_validate({"to": "start"}),
            VerifyParams.model_validate({}))


def _verify(scratch: Context, params: Any) -> None:
    from . import verify

    verify.run(scratch, params)


# -- the copy -------------------------------------------------------------------------------------

def _backup(ctx: Context, params: Any, current: tuple[str, ...], phases: Phases) -> tuple[str, float]:
    """The path and age of the backup to rehearse on: production as it is now, as closely as there is
    one (rows written since the backup are not in the copy: ``backup: new`` for a copy of now)."""
    from . import backup as backup_step

    revision = fmt(current).replace(",", "+")
    if params.backup == "newest":
        if ctx.backup is not None and ctx.backup.revision == revision:
            return ctx.backup.path, 0.0  # this run's own, a moment ago
        for found in list_backups(ctx.transport, backup_dir(ctx), ctx.database.name, ctx.env.name):
            if found.verified and not found.safety_copy and found.revision == revision \
                    and found.age_s() <= params.max_age:
                return found.path, found.age_s()
    with phases.phase("backup"):
        taken = backup_step.take(ctx)
    ctx.log.info("rehearsal_backup_taken", **taken.fact())
    return taken.path, 0.0


def _restore(scratch: Context, path: str) -> None:
    """``pg_restore`` of ``path`` into the scratch database, on the host (the dump stays there)."""
    from . import backup as backup_step

    db = scratch.database
    script = (cleanup_trap() + "; "
              + quote(bin_path(scratch, "pg_restore"), "--no-owner", "--exit-on-error",
                      *conn_args(db.host, db.port, db.name, db.user), path))
    env, secret = pg_env(scratch)
    try:
        with backup_step.progress(scratch, f"restoring {path.rsplit('/', 1)[-1]} into {db.name}"):
            scratch.transport.run(script, env=env, secret=secret, timeout=scratch.env.config.backup.timeout)
    except CommandFailed as exc:
        tail = exc.result.tail(5) if exc.result is not None else str(exc)
        raise RunbookError(f"pg_restore of {path} failed: {tail}") from exc
    except CommandTimedOut as exc:
        raise RunbookError(f"pg_restore of {path} timed out (backup.timeout)") from exc


def _schema(scratch: Context) -> list[str]:
    """The scratch database's schema (``pg_dump --schema-only`` on the host), comparable lines."""
    db = scratch.database
    script = cleanup_trap() + "; " + quote(bin_path(scratch, "pg_dump"), "--schema-only",
                                           *conn_args(db.host, db.port, db.name, db.user))
    env, secret = pg_env(scratch)
    try:
        out = scratch.transport.run(script, env=env, secret=secret, timeout=scratch.env.config.backup.timeout)
    except CommandFailed as exc:
        tail = exc.result.tail(5) if exc.result is not None else str(exc)
        raise RunbookError(f"pg_dump --schema-only of {db.name} failed: {tail}") from exc
    return rehearsal.comparable(out.stdout)


def _compare(scratch: Context, before: list[str], record: dict[str, Any]) -> None:
    diff = rehearsal.schema_diff(before, _schema(scratch),
                                 labels=("schema before the upgrade", "schema after the downgrade"))
    if not diff:
        scratch.log.info("rehearsal_schema_restored", revision=fmt(scratch.start))
        return
    shown = rehearsal.trimmed(diff)
    record["schema_diff"] = shown
    scratch.log.error("rehearsal_schema_differs", revision=fmt(scratch.start), diff=shown, lines=len(diff))
    raise RunbookError(f"the downgrade to {fmt(scratch.start)} did not restore the schema "
                       f"({rehearsal.changed_lines(diff)}); the whole diff is in the run log "
                       "(rehearsal_schema_differs) and the journal")


def _drop(ctx: Context, session: rehearsal.ScratchSession, name: str, record: dict[str, Any]) -> None:
    """Drop the scratch database (twice: the run's session may have broken meanwhile)."""
    import psycopg

    session.close()
    error = ""
    for last_try in (False, True):
        try:
            with ctx.connect("rehearse") as conn:
                rehearsal.drop(conn, name)
            record["dropped"] = True
            ctx.log.info("rehearsal_database_dropped", database=name)
            return
        except psycopg.OperationalError as exc:
            if last_try:
                error = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        except Exception as exc:  # noqa: BLE001 - said, and left to the next run
            error = f"{type(exc).__name__}: {exc}"
            break
    record["dropped"] = False
    ctx.log.error("rehearsal_database_left", database=name, error=error,
                  hint="the next run with a rehearse step drops it; or: DROP DATABASE ... WITH (FORCE)")


# -- what it says about the real run ---------------------------------------------------------------

def _estimate(ctx: Context, durations: dict[str, float], record: dict[str, Any]) -> dict[str, Any]:
    """The phases that the real run repeats, as its estimate (logged, journaled, and returned)."""
    real = {f"{phase}_s": durations[phase] for phase in ("backup", "upgrade", "verify", "downgrade")
            if phase in durations}
    record["estimate"] = real
    parts = [f"{phase} {human(durations[phase]) if durations[phase] >= 1 else f'{durations[phase]:.2f}s'}"
             for phase in ("restore", "upgrade", "verify", "downgrade") if phase in durations]
    backup = str(record.get("backup") or "").rsplit("/", 1)[-1]
    age = float(record.get("backup_age_s") or 0)
    summary = (f"rehearsal {record['from']} -> {record['to']} passed on a copy ({', '.join(parts)}) restored "
               f"from {backup}{f' ({human_age(age)} old)' if age >= 60 else ''}")
    record["summary"] = summary
    ctx.log.info("rehearsal_estimate", **real,
                 basis=f"measured on a copy restored from {record.get('backup')} on the same server: the real "
                       "upgrade should take about as long, plus any wait for its locks")
    ctx.journal.save()
    return {"estimate": real, "summary": summary}
