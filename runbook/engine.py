"""Plan -> run -> on failure: the playbook's rollback steps -> always: the journal and the outcome.

The engine owns a run on each host: through a ``HostSession`` it reaches the host, takes the run
lock (``RunLock``), ends what a dead earlier run left behind (``cleanup``), records the start
revision, runs the playbook's steps (checking before each that the run lock is still held), and on
any failure, a signal included, runs the ``on_failure`` steps under their conditions, shielded from
further signals. The outcome is read back from the database, never assumed: ``outcome.
rollback_verdict`` gives exit 1 only if the database is at the start revision again and nothing of
the rollback failed.

An environment of several hosts is a fleet (``fleet.py``): each host gets an ``Engine`` of its own
(``for_host``: its own run lock and state), run in the main thread one after another, or in worker
threads with ``--parallel``. A worker learns of a signal through ``interrupts.checkpoint``; the
main thread also cancels the queries of the hosts still running their steps (``cancel_queries``),
never of one already rolling back (``phase``, under ``_state``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any, Callable

import structlog

from . import interrupts
from .context import Context, Options
from .errors import ConfigError, GuardRefused, RunbookError, StepError
from .hostsession import HostSession
from .interrupts import Interrupted
from .inventory import Environment, Host
from .journal import Journal
from .migrations import MigrationBackend, fmt
from .outcome import NEEDS_PERSON, OK, ROLLED_BACK, Outcome, rollback_verdict
from .playbook import Playbook, Step
from .runlock import RunLock


class RunLockLost(StepError):
    """The run lock's session ended under the run: it must not go on unlocked."""


class RollbackAll(RunbookError):
    """Why ``--rollback-all`` rolls back a host that succeeded: another host's failure, a signal."""


class Engine:
    """Runs one playbook for one environment, host after host."""

    def __init__(self, env: Environment, playbook: Playbook, options: Options, journal: Journal,
                 migrations: MigrationBackend, *, sleep: Callable[[float], None] = interrupts.sleep) -> None:
        self.env = env
        self.playbook = playbook
        self.options = options
        self.journal = journal
        self.migrations = migrations
        self.sleep = sleep
        self.log = structlog.get_logger("runbook")
        self._lock: RunLock | None = None
        # What the fleet's main thread may look at while a worker runs this host (``cancel_queries``)
        self._state = threading.Lock()
        self.phase = "waiting"  # connecting, running (its steps), rolling_back, done
        self.ctx: Context | None = None

    def for_host(self) -> "Engine":
        """An engine for one host of a fleet: the same run, its own run lock and state."""
        return Engine(self.env, self.playbook, self.options, self.journal, self.migrations, sleep=self.sleep)

    # -- running ------------------------------------------------------------------------------
    def run(self) -> Outcome:
        """The environment's one host (errors raised to the caller); several: ``fleet.Fleet``."""
        host = self.env.hosts[0]
        with structlog.contextvars.bound_contextvars(host=host.name):
            return self.run_host(host)

    def _set_phase(self, phase: str, ctx: Context | None = None) -> None:
        with self._state:
            self.phase = phase
            if ctx is not None:
                self.ctx = ctx

    def cancel_queries(self) -> list[int]:
        """From the fleet's main thread when it stops: cancel the queries this host's run has in
        flight on its database (not its run lock's session), so that its worker reaches its
        rollback now rather than when a long statement ends. Only while its steps run: a host
        already rolling back is never disturbed. Returns the server pids cancelled."""
        from . import postgres

        with self._state:
            ctx = self.ctx
            if self.phase != "running" or ctx is None:
                return []
            try:
                with postgres.connect(ctx.endpoint, purpose=f"stop {self.journal.run_id}", connect_timeout=5) as conn:
                    busy = [s for s in postgres.run_sessions(conn, self.journal.run_id)
                            if s["state"] == "active" and not str(s["application"]).startswith("runbook:lock ")]
                    for session in busy:
                        conn.execute("SELECT pg_cancel_backend(%s)", (session["pid"],))
            except Exception as exc:  # noqa: BLE001 - the worker still stops at its next checkpoint
                self.log.warning("cancel_failed", host=ctx.host.name, error=str(exc).strip()[:200])
                return []
        if busy:
            self.log.warning("queries_cancelled", host=ctx.host.name, sessions=busy)
        return [int(s["pid"]) for s in busy]

    def run_host(self, host: Host) -> Outcome:
        try:
            return self._run_host(host)
        finally:
            self._set_phase("done")

    def _run_host(self, host: Host) -> Outcome:
        from . import preflight
        from .guards import WindowGuard
        from .journal import now_iso

        interrupts.checkpoint()  # a fleet stopping before this host connected: not started
        self._set_phase("connecting")
        self.journal.host(host.name)["started"] = now_iso()
        window = WindowGuard(self.env, self.playbook, self.journal, ignore=self.options.ignore_window)
        window.before_connect(host.name)  # outside the window, or too short for past runs: refused
        opened, lock = self._open(host, announce=True)
        with opened as session:
            ctx = session.context(self.options, self.journal, self.migrations)
            ctx.kinds = frozenset(self.playbook.kinds())
            try:
                window.after_connect(ctx)  # no past runs: the fit from the database's size
                lock.acquire()
                if session.created:
                    from .embedded import load_sample

                    load_sample(ctx, self.migrations)
                preflight.after_lock(ctx, self.playbook)
                ctx.start = ctx.current()
                record = self.journal.host(host.name)
                record.update(start_revision=fmt(ctx.start), database=ctx.database.name)
                self.journal.save()
                heads = {"heads": fmt(ctx.migrations.heads())} \
                    if self.playbook.kinds() - {"backup", "prune", "shell", "restore"} else {}
                self.log.info("run_started", playbook=self.playbook.name, playbook_file=str(self.playbook.path),
                              revision=fmt(ctx.start), **heads)
                preflight.before_steps(ctx, self.playbook)  # checklist, lint gate, connection ahead
                self._set_phase("running", ctx)
                interrupts.checkpoint()  # a fleet stopping: this host is left as it was (nothing ran)
                outcome = self._run_steps(ctx)
                with interrupts.shielded():
                    with contextlib.suppress(Exception):
                        # the outcome's own read-back is the last thing that happened to the database
                        end = ctx.last_read if ctx.last_read is not None else ctx.current()
                        record["end_revision"] = fmt(end)
                    record["finished"] = now_iso()
                    self.journal.save()
                return outcome
            finally:
                lock.release()

    def revert(self, host: Host, reason: str) -> Outcome:
        """``--rollback-all``: put back a host this run migrated, to the revision it started from.

        The same machinery as a failure during its run: the playbook's ``on_failure`` steps
        (downgrade to the start revision, verify; the run's backup of this host restored if that
        fails), under the host's run lock taken again, shielded from signals, read back and judged
        by ``rollback_verdict``. Raises if the host cannot be reached or another run holds its lock.
        """
        from .context import Backup
        from .journal import now_iso

        record = self.journal.host(host.name)
        start = tuple(r for r in str(record.get("start_revision") or "").split(",") if r and r != "base")
        with interrupts.shielded():
            opened, lock = self._open(host, announce=False)
            with opened as session:
                ctx = session.context(self.options, self.journal, self.migrations)
                try:
                    lock.acquire()
                    self._set_phase("rolling_back", ctx)
                    ctx.start = start
                    ctx.facts["changed"] = True
                    taken = record.get("backup") or {}
                    if taken.get("backup_path"):
                        ctx.backup = Backup(taken["backup_path"], int(taken.get("backup_size") or 0),
                                            str(taken.get("backup_sha256") or ""),
                                            str(taken.get("backup_revision") or ""), "")
                    outcome = self._rollback_shielded(ctx, RollbackAll(reason))
                    if outcome.code == ROLLED_BACK:  # it had succeeded: what happened is the put-back
                        outcome.message = outcome.message.replace("failed and rolled back", "rolled back", 1)
                    with contextlib.suppress(Exception):
                        record["end_revision"] = fmt(ctx.last_read if ctx.last_read is not None else ctx.current())
                    record["rolled_back"] = {"reason": reason, "exit_code": outcome.code, "finished": now_iso()}
                    self.journal.save()
                    return outcome
                finally:
                    lock.release()
                    self._set_phase("done")

    def _open(self, host: Host, *, announce: bool) -> tuple[HostSession, RunLock]:
        """The host reached, the run lock's session connecting alongside (not locked yet)."""
        lock = self._lock = RunLock(None, self.journal.run_id, self.env.state_dir)
        try:
            return HostSession(self.env, host, self.journal.run_id, sleep=self.sleep).open(
                announce=announce, on_tunnel=lock.connect_ahead), lock
        except BaseException:
            lock.release()
            raise

    def step(self, ctx: Context, step: Step, phase: str) -> dict[str, Any]:
        from .steps import runner

        entry = self.journal.step_started(ctx.host.name, step.kind, phase)
        started = time.monotonic()
        counted = _counters(ctx)
        ctx.step = step.kind
        with structlog.contextvars.bound_contextvars(step=step.kind, phase=phase):
            self.log.info("step_started", params=step.describe())
            try:
                facts = runner(step.kind)(ctx, step.params)
            except BaseException as exc:
                # A fleet's worker whose step failed because the fleet stops (its query cancelled):
                # the step was interrupted, like the main thread's would be by the signal itself.
                stop = None if isinstance(exc, Interrupted) else interrupts.pending()
                with interrupts.shielded():
                    ms = int((time.monotonic() - started) * 1000)
                    if isinstance(exc, Interrupted) or stop is not None:
                        sig = exc if isinstance(exc, Interrupted) else stop
                        assert sig is not None
                        self.log.error("step_interrupted", duration_ms=ms, signal=sig.name)
                        where = {"signal": sig.name, "step": step.kind, "phase": phase}
                        self.journal.record.setdefault("interrupted", where)  # the first, as for one host
                        self.journal.host(ctx.host.name)["interrupted"] = where
                        self.journal.step_finished(entry, "interrupted", {"signal": sig.name})
                        if stop is not None:
                            raise stop from exc
                        raise
                    error = str(exc) if isinstance(exc, RunbookError) else f"{type(exc).__name__}: {exc}"
                    self.log.error("step_failed", duration_ms=ms, error=error,
                                   exc_info=not isinstance(exc, RunbookError))
                    self.journal.step_finished(entry, "failed", {"error": error})
                raise
            finally:
                ctx.step = ""
            ms = int((time.monotonic() - started) * 1000)
            # what the step cost on the link: on a slow one, each of these is a round trip or more
            self.log.info("step_finished", duration_ms=ms, round_trips=_spent(counted, _counters(ctx)), **facts)
            self.journal.step_finished(entry, "ok", facts)
            return facts

    def skipped(self, ctx: Context, step: Step, reason: str) -> None:
        """A step not needed by this run: logged and journaled (outcome ``skipped``) with why."""
        entry = self.journal.step_started(ctx.host.name, step.kind, "run")
        self.log.info("step_skipped", step=step.kind, phase="run", params=step.describe(), reason=reason)
        self.journal.step_finished(entry, "skipped", {"reason": reason})

    def _check_lock(self, ctx: Context, step: str) -> None:
        """Before every step: the run lock is still ours, or the run stops (and rolls back)."""
        lock = self._lock
        if lock is not None and not ctx.session.begin_step(step, lock):
            self.log.error("run_lock_lost", holder=lock.holder())
            raise RunLockLost("the run lock's session ended (terminated, timed out or the server restarted): "
                              "the run does not go on unlocked", step="run_lock", host=ctx.host.name)

    def _run_steps(self, ctx: Context) -> Outcome:
        skip: dict[str, str] = {}
        try:
            try:
                if "upgrade" in self.playbook.kinds():
                    from .steps.migrate import needless

                    skip = needless(ctx, self.playbook.steps)  # nothing pending: no backup to take
                for step in self.playbook.steps:
                    if step.kind in skip:
                        self.skipped(ctx, step, skip[step.kind])
                    elif step.wanted(ctx.facts):
                        interrupts.checkpoint()  # a fleet's worker: stop between steps
                        self._check_lock(ctx, step.kind)
                        self.step(ctx, step, "run")
            except Exception as exc:  # between steps, a cancelled query of a stopping fleet is its stop
                stop = interrupts.pending()
                if stop is not None:
                    raise stop from exc
                raise
        except (GuardRefused, ConfigError) as exc:  # a refusal, or bad input found on the host (rollback)
            if ctx.facts.get("changed"):
                return self._rollback(ctx, exc)
            return Outcome(exc.exit_code, "refused", str(exc))
        except Interrupted as exc:
            with interrupts.shielded():
                self.log.warning("run_interrupted", signal=exc.name, step=(self.journal.host(ctx.host.name).get(
                    "interrupted") or {}).get("step"))
                return self._rollback(ctx, exc)
        except Exception as exc:
            return self._rollback(ctx, exc)
        now = fmt(ctx.current())
        what = f"{self.env.name}/{ctx.host.name}: {ctx.database.name} at {now}"
        if "upgrade" in self.playbook.kinds() and not ctx.facts.get("changed"):
            what = f"{what}: nothing to migrate" + (", no backup needed" if "backup" in skip else "")
        if "verify" in self.playbook.kinds():
            what += ", verified"
        rehearsed = (self.journal.host(ctx.host.name).get("rehearsal") or {}).get("summary")
        if rehearsed:
            what += f"; {rehearsed}"
        return Outcome(OK, "succeeded", what)

    def _rollback(self, ctx: Context, error: BaseException) -> Outcome:
        with interrupts.shielded():
            self._set_phase("rolling_back")
            return self._rollback_shielded(ctx, error)

    def _rollback_shielded(self, ctx: Context, error: BaseException) -> Outcome:
        reason = str(error) if isinstance(error, (RunbookError, Interrupted)) else f"{type(error).__name__}: {error}"
        if not ctx.facts.get("changed"):
            current = self._read_back(ctx)
            if current is not None and set(current) == set(ctx.start):
                self.log.info("rollback_not_needed", reason="nothing was changed", revision=fmt(current))
                return Outcome(ROLLED_BACK, "failed", f"failed before any change: {reason}")
        self.log.warning("rollback_started", reason=reason, start_revision=fmt(ctx.start))
        unresolved = lost_to_other = False
        facts = ctx.facts
        problems: list[str] = []  # what failed during the rollback, in order, for the last lines
        reverted: list[str] = []
        for step in self.playbook.on_failure:
            if not step.wanted(facts):
                self.log.info("step_skipped", step=step.kind, params=step.describe())
                continue
            try:
                self._ensure_connected(ctx)
                if not self._ensure_locked(ctx, step.kind):
                    lost_to_other = True
                    problems.append(f"another run holds the run lock ({self._lock.holder() if self._lock else '?'}): "
                                    "the rollback was not run")
                    break
                done = self.step(ctx, step, "rollback")
                reverted += done.get("reverted") or []
                if step.kind == "restore":
                    unresolved = False
            except Exception as exc:
                unresolved = True
                facts[f"{step.kind}_failed"] = True
                facts["rollback_failed"] = True
                if getattr(exc, "backup_unusable", False):
                    facts["backup_unusable"] = True
                problems.append(f"{step.kind} failed: "
                                + (str(exc) if isinstance(exc, RunbookError) else f"{type(exc).__name__}: {exc}"))
        current = self._read_back(ctx)
        start = fmt(ctx.start)
        verdict = rollback_verdict(start=ctx.start, current=current, unresolved=unresolved,
                                   restored=bool(facts.get("restored")), reverted=bool(reverted),
                                   lock_lost_to_other=lost_to_other)
        if verdict.code == ROLLED_BACK:
            self.log.info("rollback_finished", revision=start, how=verdict.how)
            return Outcome(ROLLED_BACK, "rolled_back",
                           f"failed and rolled back ({verdict.how}; {ctx.database.name} at {start}, verified): {reason}")
        state = f"at {fmt(current)}" if current is not None else "in an unknown state (unreachable)"
        backup = ctx.backup.path if ctx.backup else None
        usable = backup is not None and not facts.get("backup_unusable")
        if usable and not lost_to_other:
            nxt = f"runbook {self.env.name} rollback --restore {backup.rsplit('/', 1)[-1]}"  # type: ignore[union-attr]
        else:  # no backup this run can trust, or another run is at work: look at the state first
            nxt = f"runbook {self.env.name} status"
        if not problems:
            problems.append(f"the database is not back at {start}")
        self.log.error("rollback_incomplete", state=state, start_revision=start, backup=backup,
                       backup_usable=usable, problems=problems, next=nxt)
        msg = (f"FAILED and the rollback did not complete: {ctx.database.name} on {ctx.host.name} is {state}; "
               f"the run started at {start}; " + "; ".join(problems)
               + (f"; the run's backup is {backup}" + ("" if usable else " (unusable)") if backup else "")
               + f". Original failure: {reason}")
        return Outcome(NEEDS_PERSON, "needs_person", msg, nxt)

    def _read_back(self, ctx: Context) -> tuple[str, ...] | None:
        try:
            self._ensure_connected(ctx)
            return ctx.current()
        except Exception as exc:
            self.log.error("read_back_failed", error=str(exc))
            return None

    def _ensure_connected(self, ctx: Context) -> None:
        """After a lost link, reconnect (bounded) so the rollback can still run; the run lock is
        then taken again by ``_ensure_locked`` before anything else runs."""
        if not ctx.session.alive():
            ctx.session.reconnect()

    def _ensure_locked(self, ctx: Context, step: str) -> bool:
        """The run lock is ours (taken again if its session was lost); False if another run has it."""
        lock = self._lock
        if lock is None or ctx.session.begin_step(step, lock):
            return True
        lock.endpoint = ctx.endpoint
        try:
            lock.acquire()
        except GuardRefused:
            self.log.error("run_lock_taken_by_another_run", holder=lock.holder())
            return False
        self.log.warning("run_lock_taken_again")
        return True


def _counters(ctx: Context) -> dict[str, int]:
    try:
        return dict(ctx.transport.counters())
    except Exception:  # noqa: BLE001 - a lost transport counts nothing
        return {}


def _spent(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """What a step added to each counter (a reconnect starts them again: never negative)."""
    return {k: max(0, v - before.get(k, 0)) for k, v in after.items()}


def state_dir_of(inventory_path: Path) -> Path:
    return inventory_path.parent / ".runbook"
