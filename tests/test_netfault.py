"""A real, silent network cut in the middle of a migration (no FIN, no RST: packets just vanish).

``test_failures.py`` kills the sshd serving the run: the kernel then closes the TCP connection
cleanly and the runner learns at once. A pulled cable, a dead switch or a stateful firewall that
forgets the connection says nothing: only keepalives and ``TCP_USER_TIMEOUT`` can tell. Here the
"database host" is a network namespace joined to this one by a veth pair; its sshd is started with
``ip netns exec`` and the link is cut by setting the namespace's end of the pair down (no iptables
on these machines; ``tc netem`` is unavailable), then restored.

The test PostgreSQL listens on 127.0.0.1 of the root namespace only, which the namespace cannot
reach: a small forwarder on the root end of the pair (10.200.0.x -> 127.0.0.1, same port) stands in
for the database's address "as seen from the SSH host". Its connections reach PostgreSQL from
127.0.0.1, which pg_hba already allows. Traffic only ever goes to loopback and to this namespace.
"""

from __future__ import annotations

import glob
import ipaddress
import os
import random
import select
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from tests.fixtures.pg import PgServer
from tests.fixtures.project import Project
from tests.fixtures.sshd import SSHServer, start_another_sshd, stop_sshd

NET = ipaddress.IPv4Network("10.200.0.0/24")
SSH_PORT = 2222
CUT_SECONDS = 8.0

# 0003: a 6 s statement, then DDL and data, all in the upgrade's transaction: the cut lands in the
# sleep, so whatever 0003 did is still uncommitted when the link dies.
SLOW_0003 = """
op.execute("SELECT pg_sleep(6)")
op.add_column("collections", sa.Column("slug", sa.Text(), nullable=True))
op.execute("INSERT INTO collections (name, description) VALUES ('added-by-0003', 'new')")
"""
DOWN_0003 = 'op.drop_column("collections", "slug")'


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


def _must(*args: str) -> None:
    done = _ip(*args)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")


class Forwarder:
    """A TCP forwarder ``listen -> target`` in threads (the namespace's view of PostgreSQL)."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(listen)
        self.listener.listen(64)
        self.listener.settimeout(0.2)
        self.stopped = threading.Event()
        self.socks: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, name="pg-forwarder", daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.socks.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peer = {a: b, b: a}
        try:
            while not self.stopped.is_set():
                readable, _, _ = select.select([a, b], [], [], 0.5)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peer[sock].sendall(data)
        except OSError:
            pass
        finally:
            with self.lock:
                self.socks.discard(a)
                self.socks.discard(b)
            a.close()
            b.close()

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()
        self.thread.join(timeout=5)
        with self.lock:
            socks, self.socks = list(self.socks), set()
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@dataclass
class NetHost:
    """A database "host" in its own network namespace: its sshd, and how to cut its link."""

    ns: str
    ns_dev: str
    root_ip: str  # this namespace's end: where the host reaches PostgreSQL
    ns_ip: str
    ssh: SSHServer

    def cut(self) -> None:
        _must("-n", self.ns, "link", "set", self.ns_dev, "down")

    def restore(self) -> None:
        _must("-n", self.ns, "link", "set", self.ns_dev, "up")


def _free_slash30() -> ipaddress.IPv4Network:
    """A random /30 of 10.200.0.0/24 that no address of this namespace uses yet."""
    used = _ip("-4", "-o", "addr", "show").stdout
    subnets = list(NET.subnets(new_prefix=30))
    random.shuffle(subnets)
    for net in subnets:
        if not any(f" {h}/" in used for h in net):
            return net
    raise RuntimeError("no free /30 left in 10.200.0.0/24")


@pytest.fixture(scope="module")
def nethost(sshd: SSHServer, pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetHost]:
    if os.geteuid() != 0:
        pytest.fail("network namespaces need root (the suite runs as root on these machines)")
    tag = uuid.uuid4().hex[:8]
    ns, root_dev, ns_dev = f"rbns-{tag}", f"rbv{tag}a", f"rbv{tag}b"
    net = _free_slash30()
    root_ip, ns_ip = str(net[1]), str(net[2])
    proc: subprocess.Popen[bytes] | None = None
    forwarder: Forwarder | None = None
    try:
        _must("netns", "add", ns)
        _must("link", "add", root_dev, "type", "veth", "peer", "name", ns_dev, "netns", ns)
        _must("addr", "add", f"{root_ip}/30", "dev", root_dev)
        _must("link", "set", root_dev, "up")
        _must("-n", ns, "addr", "add", f"{ns_ip}/30", "dev", ns_dev)
        _must("-n", ns, "link", "set", ns_dev, "up")
        _must("-n", ns, "link", "set", "lo", "up")
        forwarder = Forwarder((root_ip, pg_server.port), ("127.0.0.1", pg_server.port))
        tmp = tmp_path_factory.mktemp("nethost")
        proc, server = start_another_sshd(sshd, tmp, listen=ns_ip, port=SSH_PORT,
                                          prefix=["ip", "netns", "exec", ns])
        yield NetHost(ns=ns, ns_dev=ns_dev, root_ip=root_ip, ns_ip=ns_ip, ssh=server)
    finally:
        if proc is not None:
            stop_sshd(proc)
        # sshd's per-connection children outlive the listener: end those (ours, all in our namespace).
        for pid in _ip("netns", "pids", ns).stdout.split():
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
        if forwarder is not None:
            forwarder.close()
        _ip("link", "del", root_dev)  # also removes its peer
        _ip("netns", "del", ns)


def _when(event: dict[str, object]) -> float:
    return datetime.fromisoformat(str(event["timestamp"])).timestamp()


def _upgrade_session_active(project: Project) -> bool:
    with project.db.admin() as conn:
        rows = conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' "
            "AND application_name LIKE 'runbook:upgrade %%' AND query LIKE '%%pg_sleep%%'").fetchall()
    return bool(rows)


def test_silent_network_cut_mid_upgrade_is_detected_and_rolled_back(project: Project, nethost: NetHost) -> None:
    """The link to the host goes silent for 8 s during 0003's upgrade: no hang, exit 1, the database at 0002."""
    ssh = nethost.ssh.inventory_ssh()
    ssh["keepalive"] = "1s"
    project.env_overrides = {
        "hosts": [{"name": "db1", "ssh": ssh}],
        "database": {"host": nethost.root_ip, "port": project.db.port, "name": project.db.name,
                     "user": project.db.user, "password_env": "PRODUCTION_PASSWORD"},
    }
    project.write_inventory()
    project.start_at_0002()
    project.add_revision("0003", "0002", SLOW_0003, DOWN_0003)
    project.write_inventory()
    before = project.state()

    started = time.monotonic()
    proc = project.start("prod", "migrate")
    cut_at = None
    cut_wall = restored_wall = 0.0
    try:
        project.wait_event("migration_attempt", proc=proc, timeout=60, direction="upgrade")
        deadline = time.monotonic() + 10
        while not _upgrade_session_active(project):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "0003's pg_sleep never ran"
            time.sleep(0.02)
        nethost.cut()
        cut_at, cut_wall = time.monotonic(), time.time()
        time.sleep(CUT_SECONDS)
        nethost.restore()
        restored_wall = time.time()
        out, err = proc.communicate(timeout=120)
    finally:
        if cut_at is not None:
            nethost.restore()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    elapsed = time.monotonic() - started
    after_cut = time.monotonic() - (cut_at or started)

    run_id = project.run_logs()[-1].stem
    events = project.events()
    names = [e["event"] for e in events]
    print(f"\nexit {proc.returncode}, {elapsed:.1f}s in all, {after_cut:.1f}s after the cut; events: "
          + ", ".join(n for n in names if n in ("step_failed", "connection_lost", "lost_sessions_terminated",
                                                "reconnected", "rollback_started", "rollback_finished",
                                                "rollback_incomplete", "run_finished")))

    assert after_cut < 60, f"the runner took {after_cut:.0f}s after the cut"
    assert proc.returncode in (1, 3), out + err
    if proc.returncode == 1:
        assert project.state() == before
        assert "rolled back" in err
        # The dead link was found by the keepalive (1 s, TCP_USER_TIMEOUT 4 s) while it was still
        # cut, not by the link coming back; the rollback reconnected once it was back.
        failed = next(e for e in events if e["event"] == "step_failed" and e.get("step") == "upgrade")
        detected = _when(failed) - cut_wall
        assert detected < CUT_SECONDS - 1, f"the cut was noticed {detected:.1f}s after it happened"
        assert "reconnected" in names and names.index("step_failed") < names.index("reconnected")
        assert _when(events[names.index("reconnected")]) >= restored_wall - 0.5
        assert names.index("reconnected") < names.index("run_lock_taken_again") < names.index(
            "step_started", names.index("rollback_started"))
        assert "the failed transaction rolled back" in err
    else:
        tail = (out + err).strip().splitlines()[-3:]
        text = "\n".join(tail)
        assert "runbook prod " in text, text
        # the last lines name the state the database is in (read back), or say it is unknown
        current = project.db.alembic_version()
        state = f"is at {','.join(sorted(current)) if current else 'base'}"
        assert state in err or "in an unknown state" in err, err
    assert not glob.glob(f"{nethost.ssh.home}/.runbook-pgpass-{run_id}-*")
    with project.db.admin() as conn:
        left = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s",
                            (f"runbook:% {run_id}%",)).fetchone()
    assert left == (0,), "the run left sessions behind"
