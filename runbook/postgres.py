"""PostgreSQL facts and command builders: connections, activity and lock holders, pg_dump/pg_restore.

Connections are opened from the control machine to an endpoint (the tunnel's local end). The
password travels only as a connect argument, never in a URL, a command line or a log line; commands
that run on the host read it from a 0600 PGPASSFILE written for the command and removed after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, TypeVar

from .transports.base import quote

APP_NAME = "runbook"
T = TypeVar("T")


@dataclass(frozen=True)
class Endpoint:
    """How the control machine reaches the database (through the tunnel when over SSH)."""

    host: str
    port: int
    dbname: str
    user: str
    password: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:  # never show the password, even in a traceback
        return f"Endpoint({self.user}@{self.host}:{self.port}/{self.dbname})"

    def with_db(self, dbname: str) -> "Endpoint":
        return replace(self, dbname=dbname)


# The server version of each endpoint, learnt by its first connection (the run's probe).
_SERVER_VERSION: dict[tuple[str, int], int] = {}

# How often the server checks, during a statement, that our end of the session is still there.
# A runner killed (or cut off) mid-statement otherwise leaves the statement running to its end with
# its locks held, and application queries queued behind them; with the check the server cancels it,
# and rolls its transaction back, within this interval of noticing the closed socket (PostgreSQL 14+;
# older servers refuse the setting at start-up, hence the version learnt first).
CLIENT_CHECK_INTERVAL = "1000ms"


def client_check(ep: Endpoint) -> dict[str, str]:
    """The ``client_connection_check_interval`` setting, if the server (seen once) knows it."""
    if _SERVER_VERSION.get((ep.host, ep.port), 0) >= 140000:
        return {"client_connection_check_interval": CLIENT_CHECK_INTERVAL}
    return {}


def connect(ep: Endpoint, *, purpose: str, autocommit: bool = True,
            settings: dict[str, str] | None = None, connect_timeout: int = 10) -> Any:
    """A psycopg connection; ``settings`` become server settings of the session (``-c k=v``)."""
    import psycopg

    settings = {**client_check(ep), **(settings or {})}
    options = " ".join(f"-c {k}={v}" for k, v in settings.items())
    kwargs: dict[str, Any] = dict(host=ep.host, port=ep.port, dbname=ep.dbname, user=ep.user,
                                  application_name=f"{APP_NAME}:{purpose}",
                                  connect_timeout=connect_timeout, autocommit=autocommit)
    if ep.password is not None:
        kwargs["password"] = ep.password
    if options:
        kwargs["options"] = options
    conn = psycopg.connect(**kwargs)
    _SERVER_VERSION[(ep.host, ep.port)] = conn.info.server_version
    return conn


def engine(ep: Endpoint, *, purpose: str, settings: dict[str, str] | None = None, keep: bool = False) -> Any:
    """A SQLAlchemy engine whose connections come from ``connect`` (no URL holds the password).

    ``keep``: the pool keeps one connection between uses (one opened ahead, while earlier steps
    run: see ``HostSession.prepare_engine``) and, before handing it out, checks it without a round
    trip (``quiet``); one that is not is replaced by a new connection.
    """
    from sqlalchemy import create_engine, event
    from sqlalchemy.pool import NullPool, QueuePool

    def creator() -> Any:
        return connect(ep, purpose=purpose, autocommit=False, settings=settings)

    if not keep:
        return create_engine("postgresql+psycopg://", poolclass=NullPool, creator=creator)
    eng = create_engine("postgresql+psycopg://", poolclass=QueuePool, pool_size=1, max_overflow=4,
                        creator=creator)
    event.listen(eng, "checkout", _checkout_quiet)
    return eng


def _checkout_quiet(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
    from sqlalchemy.exc import DisconnectionError

    if not quiet(dbapi_conn):
        raise DisconnectionError("the kept connection is closed or the server spoke: a new one")  # pool retries


def quiet(conn: Any) -> bool:
    """Whether an idle psycopg connection is usable as far as can be told without a round trip:
    open, not broken, and nothing arrived on its socket (a session the server ended gets an error
    message and then EOF; an idle healthy one gets nothing)."""
    import select

    if conn.closed or conn.broken:
        return False
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


def pgpass_line(ep_host: str, port: int, dbname: str, user: str, password: str) -> str:
    def esc(value: str) -> str:
        return value.replace("\\", "\\\\").replace(":", "\\:")
    return f"{esc(ep_host)}:{port}:{esc(dbname)}:{esc(user)}:{esc(password)}\n"


def conninfo(host: str, port: int, dbname: str, user: str) -> str:
    """A libpq connection string (``dbname='...' user='...' host=... port=...``), quoted by libpq's
    rules, so a name holding ``=``, spaces or quotes stays just a name."""
    from psycopg.conninfo import make_conninfo

    return make_conninfo(dbname=dbname, user=user, host=host, port=port)


def conn_args(host: str, port: int, dbname: str, user: str) -> list[str]:
    """Connection arguments of pg_dump and psql: one ``-d`` conninfo, never ``-d NAME -U USER``.

    libpq expands a ``-d`` value containing ``=`` as a connection string, so a database named
    ``x host=evil`` would send the password to another server; keyword parameters cannot be.
    """
    return ["-d", conninfo(host, port, dbname, user), "--no-password"]


def pg_dump_cmd(host: str, port: int, dbname: str, user: str, out: str | None, bin_dir: str | None = None,
                *, directory: bool = False, jobs: int = 1) -> str:
    """``pg_dump -Fc`` (one file; to stdout when ``out`` is None), or ``-Fd`` (a folder) with ``-j
    jobs`` processes."""
    exe = f"{bin_dir}/pg_dump" if bin_dir else "pg_dump"
    fmt = ["-Fd", "-j", str(jobs)] if directory else ["-Fc"]
    return quote(exe, *fmt, *conn_args(host, port, dbname, user), *(["-f", out] if out else []))


def pg_restore_list_cmd(path: str, bin_dir: str | None = None) -> str:
    exe = f"{bin_dir}/pg_restore" if bin_dir else "pg_restore"
    return quote(exe, "--list", path) + " > /dev/null"


ACTIVITY_SQL = """
SELECT a.pid, a.usename, a.application_name, a.client_addr::text AS client_addr, a.state,
       a.wait_event_type, left(a.query, 300) AS query,
       extract(epoch FROM now() - a.xact_start)::float AS xact_age_s,
       extract(epoch FROM now() - a.query_start)::float AS query_age_s,
       a.backend_xid IS NOT NULL AS wrote
FROM pg_stat_activity a
WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
  AND a.backend_type = 'client backend'
  AND coalesce(a.application_name, '') NOT LIKE 'runbook:%'
ORDER BY a.xact_start NULLS LAST
"""

TABLE_LOCKS_SQL = """
SELECT l.pid, c.relname, n.nspname, l.mode, l.granted
FROM pg_locks l
JOIN pg_class c ON c.oid = l.relation
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.pid <> pg_backend_pid()
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
"""


@dataclass(frozen=True)
class Session:
    """One other session of the database, as pg_stat_activity and pg_locks show it."""

    pid: int
    user: str | None
    application: str | None
    client: str | None
    state: str | None
    query: str | None
    xact_age_s: float | None
    query_age_s: float | None
    locks: tuple[str, ...] = ()

    def fact(self) -> dict[str, Any]:
        return {"pid": self.pid, "user": self.user, "application": self.application,
                "state": self.state, "xact_age_s": round(self.xact_age_s or 0, 1),
                "query": self.query, "locks": list(self.locks)}


_NOT_RUNBOOK = "  AND coalesce(a.application_name, '') NOT LIKE 'runbook:%'\n"
assert _NOT_RUNBOOK in ACTIVITY_SQL


def sessions(conn: Any, *, runbook: bool = False) -> list[Session]:
    """Every other client session of this database with the table locks it holds or waits for.

    runbook's own sessions are left out unless ``runbook`` (status shows those of a run going on,
    or left behind by a killed one)."""
    with conn.pipeline():  # both queries in one round trip
        return read_sessions(*queue_sessions(conn, runbook=runbook))


def queue_sessions(conn: Any, *, runbook: bool = False) -> tuple[Any, Any]:
    """The two queries of ``sessions``, queued in the connection's pipeline: their cursors."""
    lock_cur, cur = conn.cursor(), conn.cursor()
    lock_cur.execute(TABLE_LOCKS_SQL, prepare=False)
    cur.execute(ACTIVITY_SQL.replace(_NOT_RUNBOOK, "") if runbook else ACTIVITY_SQL, prepare=False)
    return lock_cur, cur


def read_sessions(lock_cur: Any, cur: Any) -> list[Session]:
    """``sessions`` from the cursors of ``queue_sessions`` (closed after)."""
    with lock_cur, cur:
        lock_rows = lock_cur.fetchall()
        rows = cur.fetchall()
    locks: dict[int, list[str]] = {}
    for pid, relname, nsp, mode, granted in lock_rows:
        name = relname if nsp == "public" else f"{nsp}.{relname}"
        locks.setdefault(pid, []).append(f"{name}:{mode}{'' if granted else ' (waiting)'}")
    out = []
    for pid, user, app, client, state, _wait, query, xage, qage, _wrote in rows:
        out.append(Session(pid, user, app, client, state, query, xage, qage, tuple(locks.get(pid, ()))))
    return out


def touching(session: Session, tables: Iterable[str]) -> bool:
    wanted = {t.split(".")[-1] for t in tables}
    return any(lock.split(":")[0].split(".")[-1] in wanted for lock in session.locks)


def then_revisions(conn: Any, sql: str, params: Any) -> tuple[Any, tuple[str, ...]]:
    """``sql``'s first row, then the rows of alembic_version, in one round trip (``with_revisions``)."""
    def queue() -> Any:
        cur = conn.cursor()
        cur.execute(sql, params, prepare=False)
        return cur

    first, revisions = with_revisions(conn, queue)
    return first.fetchone(), revisions


def with_revisions(conn: Any, queue: Callable[[], T]) -> tuple[T, tuple[str, ...]]:
    """What ``queue()`` sends (it queues statements and returns their cursors, or whatever reads
    them), then the rows of alembic_version, in one round trip: pipelined, on an autocommit session,
    the revisions read after the rest ran. A missing table (base) is the error that says so; it comes
    last, so the answers before it stay good (but a setting made with ``set_config`` is undone with
    the failed implicit transaction). Nothing is prepared: psycopg would count a PREPARE the server
    skipped after an error as made."""
    import psycopg

    queued: Any = None
    try:
        # The pipeline's end is its one sync (an explicit sync() before it would cost a second
        # round trip): the answers are read after the block.
        with conn.pipeline():
            queued = queue()
            revs = conn.cursor()
            revs.execute("SELECT version_num FROM alembic_version ORDER BY 1", prepare=False)
    except psycopg.errors.UndefinedTable:
        return queued, ()
    return queued, tuple(r[0] for r in revs.fetchall())


def current_revisions(conn: Any) -> tuple[str, ...]:
    """The rows of alembic_version (empty when the table does not exist: base).

    On an autocommit session, one round trip: the table is read, and a missing one (base) is the
    error that says so; otherwise the table is looked up first, so no transaction is aborted."""
    import psycopg

    if conn.autocommit and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT version_num FROM alembic_version ORDER BY 1")
                return tuple(r[0] for r in cur.fetchall())
        except psycopg.errors.UndefinedTable:
            return ()
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('alembic_version') IS NOT NULL")
        row = cur.fetchone()
        if not row or not row[0]:
            return ()
        cur.execute("SELECT version_num FROM alembic_version ORDER BY 1")
        return tuple(r[0] for r in cur.fetchall())


RUN_SESSIONS_SQL = """
SELECT pid, application_name, state, left(query, 300) AS query,
       extract(epoch FROM now() - coalesce(xact_start, backend_start))::float AS age_s
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND (application_name LIKE %(last)s OR application_name LIKE %(inner)s)
"""


def run_sessions(conn: Any, run_id: str) -> list[dict[str, Any]]:
    """The sessions runbook opened for run ``run_id`` (application_name 'runbook:<purpose> <run_id>...')."""
    with conn.cursor() as cur:
        cur.execute(RUN_SESSIONS_SQL, {"last": f"{APP_NAME}:% {run_id}", "inner": f"{APP_NAME}:% {run_id} %"})
        return [{"pid": pid, "application": app, "state": state, "query": query,
                 "age_s": round(age or 0.0, 1)} for pid, app, state, query, age in cur.fetchall()]


def terminate_run_sessions(conn: Any, run_id: str, *, wait: float = 5.0) -> list[dict[str, Any]]:
    """End the sessions of run ``run_id`` (a dead runner's, or ours through a lost tunnel).

    Their transactions roll back; returns what they were. Waits (bounded) until they are gone, so
    their locks (the run lock among them) are free when this returns.
    """
    import time

    found = run_sessions(conn, run_id)
    with conn.cursor() as cur:
        for session in found:
            cur.execute("SELECT pg_terminate_backend(%s)", (session["pid"],))
    deadline = time.monotonic() + wait
    while found and run_sessions(conn, run_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


RUN_LOCK = (0x72756E62, 1)  # 'runb': the advisory key of runbook's run lock (per database)

RUN_LOCK_HOLDER_SQL = """
SELECT a.pid, a.application_name, a.client_addr::text, a.backend_start
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objid = %s AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


def run_lock_holder(conn: Any) -> tuple[int, str, str | None, Any] | None:
    """(server pid, application_name, client address, backend start) of the run lock's holder."""
    row = conn.execute(RUN_LOCK_HOLDER_SQL, RUN_LOCK).fetchone()
    return (int(row[0]), str(row[1] or ""), row[2], row[3]) if row else None
