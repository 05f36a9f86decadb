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

    # -- opening --------------------------------------------------------------------------------
    def open(self, *, announce: bool = False,
             on_tunnel: Callable[[Endpoint], None] | None = None) -> "HostSession":
        """Reach the host; ``on_tunnel`` is called once the tunnel is up, before the shared session
        is opened (the run lock's session then connects alongside it)."""
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
                on_tunnel(self.endpoint)
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
        transport = _take_early(self.host) or self.new_transport()
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
            with self.db("connect"):
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
        """Name the shared session after the step and ask whether the run lock is still held,
        in one round trip (the first query of every step)."""
        from . import postgres

        import psycopg

        label = f"{postgres.APP_NAME}:{name} {self.run_id}"[:63]
        for last_try in (False, True):  # a session broken meanwhile (a restarted server): once more
            try:
                with self.db(self._shared_name or name) as conn:
                    held = bool(lock.held(conn, label))
                break
            except psycopg.OperationalError:
                if last_try:
                    raise
        self._shared_name = name
        return held

    def _drop_shared(self) -> None:
        if self._shared is not None:
            with contextlib.suppress(Exception):
                self._shared.close()
        self._shared = None

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

    def __init__(self, env: Environment, playbook: Any, options: Any, migrations: Any) -> None:
        from .journal import new_run_id

        self.env = env
        self.playbook = playbook
        self.options = options
        self.migrations = migrations
        self.run_id = new_run_id()

    def context(self, stack: contextlib.ExitStack, host: Host) -> Any:
        session = stack.enter_context(HostSession(self.env, host, self.run_id).open())
        return session.context(self.options, None, self.migrations)


# -- connecting early ---------------------------------------------------------------------------
# The SSH handshake (about six round trips: a third of a second on a 50 ms link) runs in a thread
# while the plan is validated (imports, the Alembic project, verification files): it touches
# nothing on the host, and nothing runs there before the plan is complete. Its error (an unknown
# host key, a refused login) is raised where the run connects, after any error of the plan.
_early: dict[str, Any] = {}  # host name -> background.Pending of its connected transport


def connect_early(env: Environment) -> None:
    """Start the SSH handshake with the environment's first host (when it has an ``ssh`` block)."""
    from .background import Pending

    if env.embedded or not env.hosts or env.hosts[0].ssh is None:
        return
    host = env.hosts[0]

    def work() -> Transport:
        transport = HostSession(env, host, "-").new_transport()
        try:
            transport.connect()  # type: ignore[attr-defined]
        except BaseException:
            transport.close()
            raise  # raised in the foreground, where the run connects
        return transport

    _early[host.name] = Pending(work, "ssh-early")


def _take_early(host: Host) -> Transport | None:
    pending = _early.pop(host.name, None)
    if pending is None:
        return None
    transport: Transport = pending.result()
    return transport


def discard_early() -> None:
    """Close what ``connect_early`` opened and nobody took (the plan failed, or was a dry run)."""
    while _early:
        _name, pending = _early.popitem()
        with contextlib.suppress(Exception):
            pending.result(timeout=30).close()
