"""Reaching one host: its database, the transport, the tunnel; and reaching it again after a loss.

Runs, ``status`` and ``--dry-run`` all reach a host through a ``HostSession`` (connecting is kept
apart from executing, as pyinfra keeps its connectors apart from its operations). It starts the
embedded cluster when the environment is embedded, opens the transport (SSH or local) and the tunnel
to the database port as the host sees it, and checks that the database answers.

``reconnect`` is for a run that lost its link half-way: bounded retries (tenacity), then what the
lost connection may have left behind is ended before anything else runs: commands still running on
the host under this run's tag (a cut link leaves them running until sshd notices) and the run's
database sessions (whose transactions then roll back).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator

import structlog

from . import early
from .errors import ConnectError
from .inventory import Database, Environment, Host
from .postgres import Endpoint
from .transports.base import Transport, Tunnel

RECONNECT_WITHIN = 60.0


class HostSession:
    """One host of an environment, connected; ``transport`` and ``endpoint`` change on reconnect."""

    def __init__(self, env: Environment, host: Host, run_id: str, *,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.env = env
        self.host = host
        self.run_id = run_id
        self.sleep = sleep
        self.log = structlog.get_logger("runbook")
        self.stack = contextlib.ExitStack()
        self.database: Database | None = None
        self.pg_bin: str | None = None
        self.created = False  # a new embedded database
        self.transport: Transport | None = None
        self.tunnel: Tunnel | None = None
        self.endpoint: Endpoint | None = None
        self._shared: Any = None  # the run's database session on this host (see ``db``)
        self._shared_name = ""
        self._ahead: dict[tuple[Any, ...], tuple[Endpoint, Any]] = {}  # see ``prepare_engine``
        self._early_lock: Any = None  # the run lock's session, opened early (``early``)
        self.step_revisions: tuple[str, ...] | None = None  # alembic_version as the step began
        self.run_lock: Any = None  # the run lock the steps are checked against (``begin_step``)

    # -- opening --------------------------------------------------------------------------------
    def open(self, *, announce: bool = False,
             on_tunnel: Callable[[Endpoint, Any], None] | None = None) -> "HostSession":
        """Reach the host; ``on_tunnel(endpoint, lock_conn)`` is called once the tunnel is up, before
        the shared session is opened (the run lock's session then connects alongside it), with the
        run lock's session if one was opened early (``early``), else None."""
        try:
            self.database = self._database()
            if announce:
                db, ssh = self.database, self.host.ssh
                self.log.info("connecting", transport="local" if ssh is None else "ssh",
                              ssh_host=ssh.host if ssh else None, database=db.name, db_host=db.host,
                              db_port=db.port)
            self._connect()
            if on_tunnel is not None:
                assert self.endpoint is not None
                on_tunnel(self.endpoint, self._early_lock)
            self._early_lock = None
            self.check_reachable()
        except BaseException:
            self.close()
            raise
        return self

    def __enter__(self) -> "HostSession":
        return self if self.transport is not None else self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _database(self) -> Database:
        """The host's database; for the embedded environment, start the throwaway cluster first."""
        if not self.env.embedded:
            assert self.host.database is not None
            return self.host.database
        from .embedded import EmbeddedCluster, find_bindir

        emb = self.stack.enter_context(EmbeddedCluster(self.env.state_dir))
        bindir = find_bindir()
        self.pg_bin, self.created = (str(bindir) if bindir else None), emb.created
        return Database(emb.host, emb.port, emb.name, emb.user, emb.password)

    def new_transport(self) -> Transport:
        host = self.host
        if host.ssh is None:
            from .transports.local import LocalTransport

            transport: Transport = LocalTransport(name=host.name, hidden_env=frozenset(self.env.secret_vars()))
        else:
            from .inventory import expand
            from .transports.ssh import SSHTransport

            base, ssh = self.env.inventory_path.parent, host.ssh
            transport = SSHTransport(
                ssh.host, port=ssh.port, user=ssh.user,
                key_path=str(expand(ssh.key, base)) if ssh.key else None,
                known_hosts_path=str(expand(ssh.known_hosts, base)),
                connect_timeout=ssh.connect_timeout, keepalive=int(ssh.keepalive), name=host.name)
        transport.tag = self.run_id
        return transport

    def _connect(self) -> None:
        db = self.database
        assert db is not None
        got = early.take(self.host)
        if got is not None and got.tunnel is not None and got.endpoint is not None:
            self.transport, self.tunnel, self.endpoint = got.transport, got.tunnel, got.endpoint
            self._shared, self._shared_name, self._early_lock = got.shared, got.name, got.lock_conn
            return
        transport = self.new_transport()
        transport.tag = self.run_id
        try:
            tunnel = transport.tunnel(db.host, db.port)
        except BaseException:
            transport.close()
            raise
        self.transport, self.tunnel = transport, tunnel
        self.endpoint = Endpoint(tunnel.local_host, tunnel.local_port, db.name, db.user, db.password)

    def check_reachable(self) -> None:
        """Open the shared session (``db``): the database answers, or one clear line."""
        import psycopg

        assert self.endpoint is not None
        try:
            with self.db(self._shared_name or "connect"):  # opened early: as named then
                pass
        except psycopg.OperationalError as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise ConnectError(f"cannot connect to database {self.endpoint.dbname} as {self.endpoint.user} on "
                               f"{self.host.name}: {reason}") from None

    @contextlib.contextmanager
    def db(self, name: str) -> Iterator[Any]:
        """The run's one database session on this host, for every read and check of every step.

        A new connection through the tunnel costs about five round trips before its first query
        (channel open, startup, SCRAM): on a 50 ms link a quarter of a second each, so steps share
        this autocommit session instead of opening their own. It is named ``runbook:<name> <run
        id>`` (the engine passes the step), renamed when the step changes; it never holds a lock or
        a transaction between uses (a block that leaves one open gets the session closed). Broken
        (a lost link, a restarted server), it is opened again on next use.
        """
        import psycopg

        from . import postgres

        assert self.endpoint is not None
        label = f"{postgres.APP_NAME}:{name} {self.run_id}"[:63]
        conn = self._shared
        if conn is None or conn.closed or conn.broken:
            conn = self._shared = postgres.connect(self.endpoint, purpose=f"{name} {self.run_id}")
            self._shared_name = name
        elif self._shared_name != name:
            conn.execute("SELECT set_config('application_name', %s, false)", (label,))
            self._shared_name = name
        try:
            yield conn
        except psycopg.OperationalError:
            self._drop_shared()
            raise
        if conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            self._drop_shared()

    def begin_step(self, name: str, lock: Any) -> bool:
        """The first round trip of every step: name the shared session after the step, ask whether
        the run lock is still held, and read alembic_version (kept in ``step_revisions``)."""
        from . import postgres

        import psycopg

        self.run_lock = lock  # a swap restore ends its session, and takes it again
        label = f"{postgres.APP_NAME}:{name} {self.run_id}"[:63]
        query = lock.held_query(label)
        for last_try in (False, True):  # a session broken meanwhile (a restarted server): once more
            try:
                with self.db(self._shared_name or name) as conn:
                    if query is None:
                        row, revisions = None, postgres.current_revisions(conn)
                    else:
                        row, revisions = postgres.then_revisions(conn, *query)
                break
            except psycopg.OperationalError:
                if last_try:
                    raise
        # at base (no alembic_version) the renaming was undone with the failed read: again next time
        self._shared_name = name if revisions or query is None else "?"
        self.step_revisions = revisions
        return lock.held_in(row)

    def close_db_sessions(self) -> None:
        """Close the run's shared session and the connections opened ahead (a swap restore is about
        to rename the database: no session may stay on it). ``db`` opens a new one on next use."""
        self._drop_ahead()
        self._drop_shared()

    def _drop_shared(self) -> None:
        if self._shared is not None:
            with contextlib.suppress(Exception):
                self._shared.close()
        self._shared = None

    # -- a connection ahead -----------------------------------------------------------------------
    def prepare_engine(self, purpose: str, settings: dict[str, str]) -> None:
        """Open, in the background, the SQLAlchemy engine and connection a coming Alembic run will
        take (``take_engine``): the connection (about five round trips) and SQLAlchemy's first-
        connect queries (about nine) then overlap the steps before it instead of adding to them.
        The connection holds no lock and no transaction while it waits."""
        from . import postgres
        from .background import Pending

        assert self.endpoint is not None
        endpoint = self.endpoint

        def work() -> Any:
            eng = postgres.engine(endpoint, purpose=purpose, settings=settings, keep=True)
            try:
                with eng.connect():
                    pass  # opened, initialised, and back in the pool
            except BaseException:
                eng.dispose()
                raise
            return eng

        self._ahead[(purpose, *sorted(settings.items()))] = (endpoint, Pending(work, "db-ahead"))

    def take_engine(self, purpose: str, settings: dict[str, str]) -> Any | None:
        """The engine ``prepare_engine`` opened for exactly this purpose and these settings, or None
        (none was, it failed, or the tunnel changed since): the caller then opens its own."""
        item = self._ahead.pop((purpose, *sorted(settings.items())), None)
        if item is None:
            return None
        endpoint, pending = item
        try:
            eng = pending.result()
        except Exception as exc:  # noqa: BLE001 - the caller connects itself and reports its error
            self.log.debug("connection_ahead_failed", error=str(exc).strip()[:200])
            return None
        if endpoint != self.endpoint:
            eng.dispose()
            return None
        return eng

    def _drop_ahead(self) -> None:
        while self._ahead:
            _key, (_endpoint, pending) = self._ahead.popitem()
            with contextlib.suppress(Exception):
                pending.result(timeout=15).dispose()

    # -- losing it ------------------------------------------------------------------------------
    def alive(self) -> bool:
        """Whether the database answers through the current tunnel (a fresh session, 5 s at most)."""
        from . import postgres

        assert self.endpoint is not None
        try:
            postgres.connect(self.endpoint, purpose=f"probe {self.run_id}", connect_timeout=5).close()
            return True
        except Exception as exc:  # noqa: BLE001 - any failure means: not through this tunnel
            self.log.warning("connection_lost", error=str(exc).strip()[:200])
            return False

    def reconnect(self) -> None:
        """A new transport and tunnel (retried for up to RECONNECT_WITHIN s), then end what the
        lost connection left: this run's host commands and its database sessions."""
        from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

        from . import postgres

        self._disconnect()
        retrying = Retrying(stop=stop_after_delay(RECONNECT_WITHIN), wait=wait_exponential(min=1, max=10),
                            retry=retry_if_exception_type(Exception), sleep=self.sleep, reraise=True)
        try:
            for attempt in retrying:
                with attempt:
                    self._disconnect()
                    self._connect()
                    assert self.endpoint is not None
                    # A session of its own (not the shared one): it ends every other session of the run.
                    probe = postgres.connect(self.endpoint, purpose=f"probe {self.run_id}", connect_timeout=5)
        except Exception as exc:
            raise ConnectError(f"lost the connection to {self.host.name} and could not reconnect: {exc}") from exc
        assert self.transport is not None and self.endpoint is not None
        with contextlib.suppress(Exception):
            if self.transport.kill_jobs(self.run_id):
                self.log.warning("lost_host_commands_stopped", tag=self.run_id)
        with probe:
            ended = postgres.terminate_run_sessions(probe, self.run_id)
        if ended:
            self.log.warning("lost_sessions_terminated", sessions=ended)
        self.log.info("reconnected")

    def _disconnect(self) -> None:
        if self._early_lock is not None:
            with contextlib.suppress(Exception):
                self._early_lock.close()
            self._early_lock = None
        self._drop_ahead()
        self._drop_shared()
        if self.tunnel is not None:
            with contextlib.suppress(Exception):
                self.tunnel.close()
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.close()
        self.tunnel = None
        self.transport = None

    def close(self) -> None:
        self._disconnect()
        self.stack.close()

    def context(self, options: Any, journal: Any, migrations: Any, *, sleep: Any = None) -> Any:
        """What the steps of a run (or status, dry-run) see of this host."""
        from .backups import folder_of
        from .context import Context

        return Context(self.run_id, self.env, self.host, options, journal, self, migrations, self.log,
                       backup_dir=folder_of(self.env), sleep=sleep or self.sleep)


class Viewer:
    """What ``status`` and ``--dry-run`` need: the plan, and a way to reach each host read-only,
    without a run, a run lock or a journal (their sessions are named by a run id of their own)."""

    def __init__(self, env: Environment, playbook: Any, options: Any, migrations: Any,
                 run_id: str | None = None) -> None:
        from .journal import new_run_id

        self.env = env
        self.playbook = playbook
        self.options = options
        self.migrations = migrations
        self.run_id = run_id or new_run_id()

    def context(self, stack: contextlib.ExitStack, host: Host) -> Any:
        session = stack.enter_context(HostSession(self.env, host, self.run_id).open())
        return session.context(self.options, None, self.migrations)
