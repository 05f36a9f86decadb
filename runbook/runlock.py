"""The run lock: a PostgreSQL advisory lock on a session of its own, held (and known held) for a run.

PostgreSQL releases it when the session ends, which it notices at once when the runner dies and its
SSH connection closes (tests/test_guard.py: free ~10 ms after a SIGKILL). It does not when the link
is cut instead (power loss, network): sshd on the host keeps the session open until its TCP
keepalive gives up. A holder whose runner is known dead (``runner.known_dead``: this machine, and
its pid gone or reused) is therefore taken over: its sessions are terminated, which also rolls back
whatever transaction it left open. Any other holder is a refusal (exit 4).

The session can also be ended under a running run (``pg_terminate_backend``, an
``idle_session_timeout``, a restarted server): ``held`` asks the server, and the engine checks it
before every step, so a run never goes on unlocked.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import structlog

from . import journal as journal_mod
from . import postgres, runner
from .errors import GuardRefused
from .postgres import RUN_LOCK, Endpoint

# Asked from another session (the run's shared one, with its other business of the moment), by
# the lock session's server pid: a lock session that ended no longer shows there.
HELD_BY_SQL = """
SELECT set_config('application_name', %(name)s, false),
       EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND classid = %(classid)s
               AND objid = %(objid)s AND granted AND pid = %(pid)s)
"""


class RunLock:
    """Take, check, take again and release the run lock of one database."""

    def __init__(self, endpoint: Endpoint | None, run_id: str, state_dir: Path | None = None) -> None:
        self.endpoint = endpoint
        self.run_id = run_id
        self.state_dir = state_dir
        self.conn: Any = None
        self.pid = 0  # the lock session's server pid
        self._ahead: Any = None  # background.Pending of the lock's connection (connect_ahead)

    def connect_ahead(self, endpoint: Endpoint, conn: Any = None) -> None:
        """Open the lock's session in a thread now (``acquire`` takes it): its handshake, a few
        round trips, then overlaps the run's other session opening. ``conn``: a session already
        opened for it (``early``), which ``acquire`` takes instead if it is still usable."""
        from .background import Pending

        self.endpoint = endpoint
        if conn is not None and postgres.quiet(conn):
            self._ahead = Pending(lambda: conn, "run-lock-connect")
            return
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
        self._ahead = Pending(self._connect, "run-lock-connect")

    @property
    def where(self) -> Endpoint:
        assert self.endpoint is not None, "the run lock's endpoint is set before it is used"
        return self.endpoint

    def _connect(self) -> Any:
        return postgres.connect(self.where, purpose=f"lock {self.run_id} {runner.token()}")

    def acquire(self) -> None:
        """Take the lock, or raise GuardRefused naming the holder."""
        ahead, self._ahead = self._ahead, None  # (before release, which would close it)
        self.release()
        self.conn = ahead.result() if ahead is not None else self._connect()
        self.pid = int(self.conn.info.backend_pid)
        if self._try():
            return
        holder = postgres.run_lock_holder(self.conn)
        if holder is not None and self._dead_runner(holder[1]):
            dead_run = run_id_of(holder[1])
            ended = postgres.terminate_run_sessions(self.conn, dead_run)
            structlog.get_logger("runbook").warning(
                "stale_run_lock_taken_over", previous_run=dead_run, sessions=ended,
                reason="its runner is no longer running on this control host")
            if self._try():
                return
            holder = postgres.run_lock_holder(self.conn)
        self.release()
        raise GuardRefused(f"another runbook run is in progress on {self.where.dbname}: {describe(holder, self.state_dir)}",
                           step="run_lock")

    def held_query(self, name: str) -> tuple[str, dict[str, Any]] | None:
        """The query (and its parameters) asking, on another session (the lock's own may be the one
        that is gone), whether this run still holds the lock: its session alive, the lock granted
        to it. It also names the session it runs on ``name``. None: no lock taken, so not held."""
        if self.conn is None or not self.pid:
            return None
        return HELD_BY_SQL, {"name": name, "classid": RUN_LOCK[0], "objid": RUN_LOCK[1], "pid": self.pid}

    @staticmethod
    def held_in(row: Any) -> bool:
        """The answer to ``held_query``, from its row."""
        return bool(row and row[1])

    def holder(self) -> str:
        """Who holds the lock now, for a message (asked on a fresh session)."""
        try:
            with postgres.connect(self.where, purpose=f"probe {self.run_id}", connect_timeout=5) as conn:
                return describe(postgres.run_lock_holder(conn), self.state_dir)
        except Exception as exc:  # noqa: BLE001 - only for the message
            return f"unknown ({str(exc).strip()[:100]})"

    def _try(self) -> bool:
        row = self.conn.execute("SELECT pg_try_advisory_lock(%s, %s)", RUN_LOCK).fetchone()
        return bool(row and row[0])

    def _dead_runner(self, app: str) -> bool:
        """True only when the holder's runner is known to be dead (``runner.known_dead``)."""
        run_id = run_id_of(app)
        if not run_id:
            return False
        record = journal_mod.record(self.state_dir, run_id) if self.state_dir else None
        if record is None:  # another state folder: the application_name carries the runner's token
            parts = app.split()
            record = runner.from_token(parts[-1]) if len(parts) == 3 else {}
        return runner.known_dead(record)

    def release(self) -> None:
        ahead, self._ahead = self._ahead, None
        if ahead is not None:  # opened ahead and never taken (the host could not be reached)
            with contextlib.suppress(Exception):
                ahead.result(timeout=30).close()
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None


def run_id_of(app: str) -> str:
    """The run id in a runbook application_name ('runbook:<purpose> <run_id> ...'), or ''."""
    parts = app.removeprefix("runbook:").split()
    return parts[1] if len(parts) > 1 and journal_mod.RUN_ID.fullmatch(parts[1]) else ""


def describe(holder: tuple[int, str, str | None, Any] | None, state_dir: Path | None = None) -> str:
    """'<run id> on <control host>:<pid> (server pid N, from ADDR, since T)' for a message."""
    if not holder:
        return "another session"
    pid, app, client, since = holder
    parts = app.removeprefix("runbook:lock ").split()
    who = " ".join(parts)
    if len(parts) == 2 and journal_mod.RUN_ID.fullmatch(parts[0]):
        token = runner.from_token(parts[1])
        record = (journal_mod.record(state_dir, parts[0]) if state_dir else None) or {}
        machine = record.get("control_host") or f"machine {token.get('machine_id', '?')}"
        who = f"{parts[0]} on {machine}:{token.get('pid', '?')} "
    return f"{who.strip()} (server pid {pid}, from {client or 'local'}, since {since:%Y-%m-%d %H:%M:%S %Z})"
