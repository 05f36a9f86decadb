"""Plan -> run -> on failure: the playbook's rollback steps -> always: the journal and the outcome.

The engine owns a run on each host: it connects (transport, tunnel), takes the run lock on its own
session, records the start revision, runs the playbook's steps, and on any failure runs the
``on_failure`` steps under their conditions. The outcome is read back from the database, never
assumed: exit 1 only if the database is at the start revision again and the rollback verified.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import structlog

from . import journal as journal_mod
from .backups import folder_of
from .context import Context, Options
from .errors import (ConfigError, ConnectError, GuardRefused, RunbookError, StepError)
from .inventory import Database, Environment, Host
from .journal import Journal
from .migrations import Migrations, fmt
from .playbook import Playbook, Step
from .postgres import RUN_LOCK, Endpoint
from .steps.hostcmd import remove_pgpass_of
from .transports.base import Transport, Tunnel


@dataclass
class Outcome:
    """How a run ended: the exit code and the lines a person reads last."""

    code: int
    status: str
    message: str
    next_command: str | None = None


class RunLock:
    """A PostgreSQL advisory lock held on a session of its own for the whole run (released if we die).

    PostgreSQL releases it when the session ends, which it notices at once when the runner dies and
    its SSH connection closes (tests/test_guard.py: free ~10 ms after a SIGKILL; a statement the
    runner left running is cancelled within postgres.CLIENT_CHECK_INTERVAL, 1 s, where it used to
    run to its end). It does not when the link is cut instead (power loss, network): sshd
    on the host keeps the session open until its TCP keepalive gives up, for hours by default. A
    holder whose runner is known dead (its journal, or its application_name, names this control
    host and a pid that no longer runs) is therefore taken over: its sessions are terminated, which
    also rolls back whatever transaction it left open. Any other holder is a refusal (exit 4).
    """

    def __init__(self, endpoint: Endpoint, run_id: str, state_dir: Path | None = None) -> None:
        self.endpoint = endpoint
        self.run_id = run_id
        self.state_dir = state_dir
        self.conn: Any = None

    def acquire(self) -> None:
        from . import postgres

        who = f"lock {self.run_id} {socket.gethostname()}:{os.getpid()}"
        self.conn = postgres.connect(self.endpoint, purpose=who)
        if self._try():
            return
        holder = self._holder()
        if holder is not None and self._dead_runner(holder[1]):
            dead_run = _run_id_of(holder[1])
            ended = postgres.terminate_run_sessions(self.conn, dead_run)
            structlog.get_logger("runbook").warning(
                "stale_run_lock_taken_over", previous_run=dead_run, sessions=ended,
                reason="its runner is no longer running on this control host")
            if self._try():
                return
            holder = self._holder()
        self.release()
        if holder:
            pid, app, client, since = holder
            who_holds = (f"{app.removeprefix('runbook:lock ')} (server pid {pid}, from {client or 'local'}, "
                         f"since {since:%Y-%m-%d %H:%M:%S %Z})")
        else:
            who_holds = "another session"
        raise GuardRefused(f"another runbook run is in progress on {self.endpoint.dbname}: {who_holds}",
                           step="run_lock")

    def _try(self) -> bool:
        row = self.conn.execute("SELECT pg_try_advisory_lock(%s, %s)", RUN_LOCK).fetchone()
        return bool(row and row[0])

    def _holder(self) -> tuple[int, str, str | None, Any] | None:
        from .postgres import run_lock_holder

        return run_lock_holder(self.conn)

    def _dead_runner(self, app: str) -> bool:
        """True only when the holder's runner is known to be dead: same control host, pid gone."""
        run_id = _run_id_of(app)
        if not run_id:
            return False
        record = journal_mod.record(self.state_dir, run_id) if self.state_dir else None
        if record is not None:
            host, pid = record.get("control_host"), record.get("pid")
        else:  # application_name is 'runbook:lock <run_id> <host>:<pid>' (63 bytes at most)
            parts = app.split()
            host, _, pid = parts[-1].rpartition(":") if len(parts) == 3 else ("", "", "")
        if host != socket.gethostname() or not str(pid or "").isdigit():
            return False
        return int(str(pid)) != os.getpid() and not journal_mod.alive(int(str(pid)))

    def release(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None


def _run_id_of(app: str) -> str:
    """The run id in a runbook application_name ('runbook:<purpose> <run_id> ...'), or ''."""
    parts = app.removeprefix("runbook:").split()
    return parts[1] if len(parts) > 1 and journal_mod.RUN_ID.fullmatch(parts[1]) else ""


class Engine:
    """Runs one playbook for one environment, host after host."""

    def __init__(self, env: Environment, playbook: Playbook, options: Options, journal: Journal,
                 migrations: Migrations, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.env = env
        self.playbook = playbook
        self.options = options
        self.journal = journal
        self.migrations = migrations
        self.sleep = sleep
        self.log = structlog.get_logger("runbook")
        self._lock: RunLock | None = None

    # -- connecting ---------------------------------------------------------------------------
    def _transport(self, host: Host) -> Transport:
        if host.ssh is None:
            from .transports.local import LocalTransport

            return LocalTransport(name=host.name)
        from .inventory import expand
        from .transports.ssh import SSHTransport

        base = self.env.inventory_path.parent
        ssh = host.ssh
        return SSHTransport(
            ssh.host, port=ssh.port, user=ssh.user,
            key_path=str(expand(ssh.key, base)) if ssh.key else None,
            known_hosts_path=str(expand(ssh.known_hosts, base)),
            connect_timeout=ssh.connect_timeout, keepalive=int(ssh.keepalive), name=host.name)

    def _database(self, host: Host, stack: contextlib.ExitStack) -> tuple[Database, str | None, bool]:
        """The host's database; for the embedded environment, start the throwaway cluster first."""
        if not self.env.embedded:
            assert host.database is not None
            return host.database, None, False
        from .embedded import EmbeddedCluster, find_bindir

        cluster = EmbeddedCluster(self.env.state_dir)
        emb = stack.enter_context(cluster)
        bindir = find_bindir()
        db = Database(emb.host, emb.port, emb.name, emb.user, emb.password)
        return db, str(bindir) if bindir else None, emb.created

    def _connect(self, host: Host, transport: Transport, db: Database) -> tuple[Tunnel, Endpoint]:
        tunnel = transport.tunnel(db.host, db.port)
        endpoint = Endpoint(tunnel.local_host, tunnel.local_port, db.name, db.user, db.password)
        return tunnel, endpoint

    # -- running ------------------------------------------------------------------------------
    def run(self) -> Outcome:
        """Host after host; the first host that does not succeed stops the fleet."""
        hosts = self.env.hosts
        done: list[tuple[str, Outcome]] = []
        outcome = Outcome(0, "succeeded", "nothing to do")
        for host in hosts:
            with structlog.contextvars.bound_contextvars(host=host.name):
                try:
                    outcome = self.run_host(host)
                except RunbookError as exc:
                    if len(hosts) == 1:
                        raise
                    outcome = Outcome(exc.exit_code, "refused" if exc.exit_code in (2, 4) else "failed",
                                      f"{host.name}: {exc}", exc.hint)
            done.append((host.name, outcome))
            if outcome.code != 0:
                break
        if len(hosts) == 1:
            return outcome
        # a fleet: say where each host stands, so nobody has to guess which databases changed
        lines = [f"{name}: {'ok' if o.code == 0 else 'FAILED (exit %d)' % o.code}: {o.message}"
                 for name, o in done]
        skipped = [h.name for h in hosts[len(done):]]
        if skipped:
            lines.append(f"not run: {', '.join(skipped)}")
        self.log.info("fleet_finished", hosts={n: o.code for n, o in done}, not_run=skipped)
        return Outcome(outcome.code, outcome.status, " | ".join(lines), outcome.next_command)

    def open_host(self, host: Host, stack: contextlib.ExitStack, *,
                  announce: bool = False) -> tuple[Context, bool]:
        """Reach one host: its database (the embedded cluster started first), the transport and the
        tunnel, checked reachable; closed by ``stack``. Also True if the embedded database is new."""
        db, pg_bin, created = self._database(host, stack)
        if announce:
            self.log.info("connecting", transport="local" if host.ssh is None else "ssh",
                          ssh_host=host.ssh.host if host.ssh else None, database=db.name,
                          db_host=db.host, db_port=db.port)
        transport = stack.enter_context(self._transport(host))
        tunnel, endpoint = self._connect(host, transport, db)
        stack.callback(tunnel.close)
        self._check_reachable(endpoint, host)
        ctx = Context(self.journal.run_id, self.env, host, self.options, self.journal, transport, db,
                      endpoint, self.migrations, self.log, pg_bin=pg_bin, backup_dir=folder_of(self.env),
                      sleep=self.sleep)
        # After a reconnect ctx holds another transport: close whichever it holds at the end.
        stack.callback(lambda: ctx.transport.close())
        return ctx, created

    def run_host(self, host: Host) -> Outcome:
        with contextlib.ExitStack() as stack:
            ctx, created = self.open_host(host, stack, announce=True)
            db, endpoint = ctx.database, ctx.endpoint
            lock = self._lock = RunLock(endpoint, self.journal.run_id, self.env.state_dir)
            lock.acquire()
            stack.callback(lock.release)
            if created:
                self._load_sample(ctx)
            self._report_incomplete(ctx)
            ctx.start = ctx.current()
            record = self.journal.host(host.name)
            record.update(start_revision=fmt(ctx.start), database=db.name)
            self.journal.save()
            heads = {"heads": fmt(ctx.migrations.heads())} \
                if self.playbook.kinds() - {"backup", "prune", "shell", "restore"} else {}
            self.log.info("run_started", playbook=self.playbook.name, revision=fmt(ctx.start), **heads)
            outcome = self._run_steps(ctx)
            with contextlib.suppress(Exception):
                record["end_revision"] = fmt(ctx.current())
            self.journal.save()
            return outcome
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_reachable(self, endpoint: Endpoint, host: Host) -> None:
        import psycopg

        from . import postgres

        try:
            postgres.connect(endpoint, purpose=f"probe {self.journal.run_id}").close()
        except psycopg.OperationalError as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise ConnectError(f"cannot connect to database {endpoint.dbname} as {endpoint.user} on "
                               f"{host.name}: {reason}") from None

    def _load_sample(self, ctx: Context) -> None:
        """A fresh embedded database gets the example data at the first revision."""
        from . import postgres
        from .embedded import sample_data_sql

        first = [r for r in self.migrations.script.walk_revisions() if not r.down_revision]
        if not first:
            return
        rev = first[0].revision
        eng = postgres.engine(ctx.endpoint, purpose="sample")
        try:
            self.migrations.run("upgrade", eng, rev)
        finally:
            eng.dispose()
        with ctx.connect("sample") as conn:
            conn.execute(sample_data_sql())
        self.log.info("sample_data_loaded", revision=rev)

    def _report_incomplete(self, ctx: Context) -> None:
        """Warn about runs killed half-way since the last run that ended knowing the database's state.

        Runs refused by a guard in between (exit 2/4) never looked at the database: they do not
        make a killed run before them any less worth saying. A run killed while pg_dump or
        pg_restore ran could not remove its password file from the host: that is done here.
        """
        for rec in journal_mod.runs(self.env.state_dir, self.env.name):
            run_id = str(rec.data.get("run_id") or "")
            if run_id == self.journal.run_id:
                continue
            if rec.incomplete:
                last = rec.last_step() or {}
                self.log.warning("previous_run_incomplete", previous_run=run_id,
                                 last_step=last.get("step"), last_step_outcome=last.get("outcome"),
                                 started=rec.data.get("started"))
                removed = remove_pgpass_of(ctx, run_id)
                if removed:
                    self.log.warning("stale_password_file_removed", previous_run=run_id, files=removed)
            elif rec.data.get("status") in ("succeeded", "rolled_back", "failed", "needs_person"):
                break

    def step(self, ctx: Context, step: Step, phase: str) -> dict[str, Any]:
        from .steps import runner

        entry = self.journal.step_started(ctx.host.name, step.kind, phase)
        started = time.monotonic()
        with structlog.contextvars.bound_contextvars(step=step.kind, phase=phase):
            self.log.info("step_started", params=step.describe())
            try:
                facts = runner(step.kind)(ctx, step.params)
            except BaseException as exc:
                ms = int((time.monotonic() - started) * 1000)
                error = str(exc) if isinstance(exc, RunbookError) else f"{type(exc).__name__}: {exc}"
                self.log.error("step_failed", duration_ms=ms, error=error,
                               exc_info=not isinstance(exc, RunbookError))
                self.journal.step_finished(entry, "failed", {"error": error})
                raise
            ms = int((time.monotonic() - started) * 1000)
            self.log.info("step_finished", duration_ms=ms, **facts)
            self.journal.step_finished(entry, "ok", facts)
            return facts

    def _run_steps(self, ctx: Context) -> Outcome:
        try:
            for step in self.playbook.steps:
                if step.wanted(ctx.facts):
                    self.step(ctx, step, "run")
        except (GuardRefused, ConfigError) as exc:  # a refusal, or bad input found on the host (rollback)
            if ctx.facts.get("changed"):
                return self._rollback(ctx, exc)
            return Outcome(exc.exit_code, "refused", str(exc))
        except Exception as exc:
            return self._rollback(ctx, exc)
        now = fmt(ctx.current())
        what = f"{self.env.name}/{ctx.host.name}: {ctx.database.name} at {now}"
        if "upgrade" in self.playbook.kinds() and not ctx.facts.get("changed"):
            what = f"{what}: nothing to migrate"
        if "verify" in self.playbook.kinds():
            what += ", verified"
        return Outcome(0, "succeeded", what)

    def _rollback(self, ctx: Context, error: BaseException) -> Outcome:
        reason = str(error) if isinstance(error, RunbookError) else f"{type(error).__name__}: {error}"
        if not ctx.facts.get("changed"):
            current = self._read_back(ctx)
            if current is not None and set(current) == set(ctx.start):
                self.log.info("rollback_not_needed", reason="nothing was changed", revision=fmt(current))
                return Outcome(1, "failed", f"failed before any change: {reason}")
        self.log.warning("rollback_started", reason=reason, start_revision=fmt(ctx.start))
        unresolved = False
        facts = ctx.facts
        problems: list[str] = []  # what failed during the rollback, in order, for the last lines
        reverted: list[str] = []
        for step in self.playbook.on_failure:
            if not step.wanted(facts):
                self.log.info("step_skipped", step=step.kind, params=step.describe())
                continue
            try:
                self._ensure_connected(ctx)
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
        if current is not None and set(current) == set(ctx.start) and not unresolved:
            if facts.get("restored"):
                how = "restored from the backup"
            elif reverted:
                how = "downgraded"
            else:  # the failed upgrade's own transaction rolled back: there was nothing to downgrade
                how = "the failed transaction rolled back"
            self.log.info("rollback_finished", revision=start, how=how)
            return Outcome(1, "rolled_back",
                           f"failed and rolled back ({how}; {ctx.database.name} at {start}, verified): {reason}")
        state = f"at {fmt(current)}" if current is not None else "in an unknown state (unreachable)"
        backup = ctx.backup.path if ctx.backup else None
        usable = backup is not None and not facts.get("backup_unusable")
        if usable:
            nxt = f"runbook {self.env.name} rollback --restore {backup.rsplit('/', 1)[-1]}"  # type: ignore[union-attr]
        else:  # no backup this run can trust: look at the state and the older backups first
            nxt = f"runbook {self.env.name} status"
        if not problems:
            problems.append(f"the database is not back at {start}")
        self.log.error("rollback_incomplete", state=state, start_revision=start, backup=backup,
                       backup_usable=usable, problems=problems, next=nxt)
        msg = (f"FAILED and the rollback did not complete: {ctx.database.name} on {ctx.host.name} is {state}; "
               f"the run started at {start}; " + "; ".join(problems)
               + (f"; the run's backup is {backup}" + ("" if usable else " (unusable)") if backup else "")
               + f". Original failure: {reason}")
        return Outcome(3, "needs_person", msg, nxt)

    def _read_back(self, ctx: Context) -> tuple[str, ...] | None:
        try:
            self._ensure_connected(ctx)
            return ctx.current()
        except Exception as exc:
            self.log.error("read_back_failed", error=str(exc))
            return None

    def _ensure_connected(self, ctx: Context) -> None:
        """After a lost link, reconnect (bounded) so the rollback can still run.

        The sessions opened through the lost tunnel may still be alive on the server (it notices a
        vanished client late when the link is cut rather than closed): they are terminated, so their
        transactions roll back now and the run lock they held is free, and the run lock is taken
        again before anything else runs. If another run took it meanwhile, nothing more is done.
        """
        from . import postgres

        try:
            postgres.connect(ctx.endpoint, purpose=f"probe {ctx.run_id}", connect_timeout=5).close()
            return
        except Exception as exc:
            self.log.warning("connection_lost", error=str(exc).strip()[:200])
        deadline = time.monotonic() + 60
        delay = 1.0
        while True:
            try:
                with contextlib.suppress(Exception):
                    ctx.transport.close()
                transport = self._transport(ctx.host)
                _tunnel, endpoint = self._connect(ctx.host, transport, ctx.database)
                conn = postgres.connect(endpoint, purpose=f"probe {ctx.run_id}", connect_timeout=5)
                break
            except Exception as exc:
                if time.monotonic() + delay > deadline:
                    raise ConnectError(f"lost the connection to {ctx.host.name} and could not reconnect: "
                                       f"{exc}") from exc
                self.sleep(delay)
                delay = min(delay * 2, 10)
        try:
            with conn:
                ended = postgres.terminate_run_sessions(conn, ctx.run_id)
            if ended:
                self.log.warning("lost_sessions_terminated", sessions=ended)
            if self._lock is not None:
                self._lock.release()
                self._lock.endpoint = endpoint
                self._lock.acquire()
        except BaseException:
            transport.close()
            raise
        ctx.transport, ctx.endpoint = transport, endpoint
        self.log.info("reconnected", run_lock="held again" if self._lock is not None else None)


def state_dir_of(inventory_path: Path) -> Path:
    return inventory_path.parent / ".runbook"
