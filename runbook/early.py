"""Connecting early: the first host is reached while the plan is still being validated.

Start-up is mostly CPU (imports, the Alembic project, verification files) and connecting is mostly
waiting on the network: the SSH handshake (about six round trips), the tunnel's channel, and each
database session (about five: channel, start-up, SCRAM), a third of a second or more each on a 50 ms
link. So the connecting runs in a thread while the plan is validated, and the run takes what it
opened (``take``). Nothing of it changes anything: a login, a tunnel, two idle sessions (the run's
shared one and the run lock's, not yet locked). Nothing runs on the host and no lock is taken
before the plan is complete; a plan that fails closes it all (``discard``).

Its errors (an unknown host key, a refused login) are raised where the run connects, after any
error of the plan. A database session that could not be opened early is opened again in the
foreground, which reports why in its own words.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from .inventory import Environment, Host
from .postgres import Endpoint
from .transports.base import Transport, Tunnel


@dataclass
class Early:
    """What was opened early for one host; whoever takes it owns it."""

    transport: Transport
    tunnel: Tunnel | None = None
    endpoint: Endpoint | None = None
    shared: Any = None      # the run's shared database session (``HostSession.db``)
    name: str = ""          # ... named runbook:<name> <run id>
    lock_conn: Any = None   # the run lock's own session (``RunLock``), not locked yet

    def close(self) -> None:
        for conn in (self.shared, self.lock_conn):
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
        if self.tunnel is not None:
            with contextlib.suppress(Exception):
                self.tunnel.close()
        with contextlib.suppress(Exception):
            self.transport.close()


_early: dict[str, Any] = {}  # host name -> background.Pending of its Early


def connect_early(env: Environment, run_id: str, *, lock: bool, name: str = "connect") -> None:
    """Start reaching the environment's first host (when it has an ``ssh`` block): SSH, the tunnel,
    the shared session (named ``runbook:<name> <run id>``) and, with ``lock``, the run lock's session."""
    from . import postgres, runner
    from .background import Pending
    from .hostsession import HostSession
    # What the thread needs is imported here, first: its handshake then starts at once, and its
    # round trips overlap the rest of the plan's imports instead of queueing behind them.
    import psycopg  # noqa: F401

    from .transports import ssh  # noqa: F401

    if env.embedded or not env.hosts or env.hosts[0].ssh is None or env.hosts[0].database is None:
        return
    host, db = env.hosts[0], env.hosts[0].database

    def work() -> Early:
        transport = HostSession(env, host, run_id).new_transport()
        early = Early(transport)
        try:
            transport.connect()  # type: ignore[attr-defined]
            early.tunnel = transport.tunnel(db.host, db.port)
        except BaseException:
            early.close()
            raise  # raised in the foreground, where the run connects
        ep = early.endpoint = Endpoint(early.tunnel.local_host, early.tunnel.local_port, db.name, db.user,
                                       db.password)
        locking = Pending(lambda: postgres.connect(ep, purpose=f"lock {run_id} {runner.token()}"),
                          "run-lock-early") if lock else None
        with contextlib.suppress(Exception):  # the foreground opens it again and says why
            early.shared = postgres.connect(ep, purpose=f"{name} {run_id}")
            early.name = name
        if locking is not None:
            with contextlib.suppress(Exception):
                early.lock_conn = locking.result()
        return early

    _early[host.name] = Pending(work, "connect-early")


def take(host: Host) -> Early | None:
    """What ``connect_early`` opened for ``host`` (waiting for it), or None; raises its error."""
    pending = _early.pop(host.name, None)
    if pending is None:
        return None
    early: Early = pending.result()
    return early


def discard() -> None:
    """Close what ``connect_early`` opened and nobody took (the plan failed, or was a dry run)."""
    while _early:
        _name, pending = _early.popitem()
        with contextlib.suppress(Exception):
            pending.result(timeout=30).close()
