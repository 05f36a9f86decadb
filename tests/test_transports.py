"""The local and SSH transports, the SSH ones against the real sshd the suite starts."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from runbook.errors import (CommandFailed, CommandTimedOut, ConnectError, ConnectionLost, HostKeyError,
                            TransportError)
from runbook.transports.base import quote
from runbook.transports.local import LocalTransport
from runbook.transports.ssh import SSHTransport
from tests.fixtures.sshd import SSHServer


def _no_process(pattern: str, within: float = 3.0) -> bool:
    """True once no process on this machine matches ``pattern`` (the SSH host is this machine)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 1:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def echo_server() -> Iterator[tuple[str, int]]:
    """A TCP echo server on 127.0.0.1 (stands in for PostgreSQL behind a tunnel)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()
    listener.close()


def _echo_through(host: str, port: int, payload: bytes) -> bytes:
    with socket.create_connection((host, port), timeout=5) as conn:
        conn.sendall(payload)
        received = b""
        while len(received) < len(payload):
            chunk = conn.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


# -- local ------------------------------------------------------------------------------------


def test_local_run_returns_output_and_merges_env() -> None:
    """A local command sees os.environ plus ``env``, and its output comes back."""
    result = LocalTransport().run('echo "$GREETING"; echo "$PATH" >&2', env={"GREETING": "hi there"})
    assert result.ok and result.stdout == "hi there\n"
    assert result.stderr.strip() == os.environ["PATH"]


def test_local_failure_raises_command_failed_with_result() -> None:
    """A non-zero exit raises CommandFailed holding the code and output; check=False returns it."""
    with pytest.raises(CommandFailed) as info:
        LocalTransport().run("echo boom >&2; exit 3")
    assert info.value.result.exited == 3 and info.value.result.tail() == "boom"
    assert "exited 3" in str(info.value) and "boom" in str(info.value)
    assert LocalTransport().run("exit 4", check=False).exited == 4


def test_local_timeout_kills_the_process_group() -> None:
    """A timed-out local command raises CommandTimedOut and leaves no child running."""
    started = time.monotonic()
    with pytest.raises(CommandTimedOut):
        LocalTransport().run("sleep 31.31 & sleep 31.31; wait", timeout=0.5)
    assert time.monotonic() - started < 5
    assert _no_process("sleep 31.31")


def test_local_put_get_remove(tmp_path: Path) -> None:
    """put_bytes narrows an existing 0644 file to 0600; get_bytes reads it; remove tolerates absence."""
    path = tmp_path / "pgpass"
    path.write_text("old")
    path.chmod(0o644)
    local = LocalTransport()
    local.put_bytes(b"\x00secret\n", str(path))
    assert path.stat().st_mode & 0o777 == 0o600
    assert local.get_bytes(str(path)) == b"\x00secret\n"
    local.remove(str(path))
    local.remove(str(path))
    assert not path.exists()
    with pytest.raises(FileNotFoundError):
        local.get_bytes(str(path))


def test_local_put_bytes_into_missing_dir_is_transport_error(tmp_path: Path) -> None:
    """Writing where no directory exists raises TransportError naming the path."""
    with pytest.raises(TransportError, match="nope"):
        LocalTransport().put_bytes(b"x", str(tmp_path / "nope" / "file"))


def test_local_tunnel_is_the_target_itself() -> None:
    """The local transport needs no forwarding: the tunnel endpoint is the database address."""
    tunnel = LocalTransport().tunnel("127.0.0.1", 5432)
    assert (tunnel.local_host, tunnel.local_port) == ("127.0.0.1", 5432)
    tunnel.close()


# -- SSH: the happy path over one shared connection -------------------------------------------


@pytest.fixture(scope="module")
def ssh(sshd: SSHServer) -> Iterator[SSHTransport]:
    """One SSH connection to the test sshd, shared by the read-mostly tests of this module."""
    transport = SSHTransport(**sshd.transport_kwargs(name="testhost"))
    yield transport
    transport.close()


@pytest.fixture
def remote_path(sshd: SSHServer, ssh: SSHTransport) -> Iterator[str]:
    """A fresh path in the SSH user's home, removed afterwards."""
    path = f"{sshd.home}/runbook-test-{uuid.uuid4().hex[:8]}"
    yield path
    ssh.remove(path)


def test_ssh_run_echo_as_the_login_user(sshd: SSHServer, ssh: SSHTransport) -> None:
    """A command runs on the host as the configured user and returns stdout and stderr."""
    result = ssh.run("id -un; echo err >&2")
    assert result.stdout == f"{sshd.user}\n" and result.stderr == "err\n" and result.ok


def test_ssh_env_values_are_quoted(ssh: SSHTransport) -> None:
    """Env values with spaces and shell syntax arrive verbatim, never evaluated."""
    value = "two words; $(echo injected) 'q' \"dq\""
    assert ssh.run('printf %s "$VALUE"', env={"VALUE": value}).stdout == value


def test_ssh_runs_a_posix_shell(ssh: SSHTransport) -> None:
    """Commands run through /bin/sh whatever the login shell, and quote() survives the trip."""
    assert ssh.run(quote("printf", "%s|", "a b", "it's")).stdout == "a b|it's|"


def test_ssh_exit_codes(ssh: SSHTransport) -> None:
    """Non-zero exits raise CommandFailed with the result; check=False returns the code."""
    assert ssh.run("exit 7", check=False).exited == 7
    with pytest.raises(CommandFailed) as info:
        ssh.run("echo 'pg_dump: error: nope' >&2; exit 1")
    assert info.value.result.exited == 1
    assert info.value.result.tail() == "pg_dump: error: nope"
    assert "testhost" in str(info.value)


def test_ssh_home(sshd: SSHServer, ssh: SSHTransport) -> None:
    """``home`` is the login user's home directory on the host."""
    assert ssh.home == sshd.home


def test_ssh_put_bytes_is_0600_on_the_host(ssh: SSHTransport, remote_path: str) -> None:
    """put_bytes creates the file 0600, and narrows an existing 0644 file before writing."""
    ssh.run(f"echo old > {remote_path} && chmod 644 {remote_path}")
    ssh.put_bytes(b"127.0.0.1:5432:*:raguser:secret\n", remote_path)
    assert ssh.run(f"stat -c %a {remote_path}").stdout.strip() == "600"
    ssh.remove(remote_path)
    ssh.put_bytes(b"x", remote_path, mode=0o640)
    assert ssh.run(f"stat -c %a {remote_path}").stdout.strip() == "640"


def test_ssh_get_bytes_roundtrip(ssh: SSHTransport, remote_path: str) -> None:
    """get_bytes returns exactly what is on the host, binary and large included."""
    payload = os.urandom(300_000)
    ssh.put_bytes(payload, remote_path)
    assert ssh.get_bytes(remote_path) == payload
    assert ssh.run(f"wc -c < {remote_path}").stdout.strip() == str(len(payload))


def test_ssh_remove_and_missing_files(ssh: SSHTransport, remote_path: str) -> None:
    """remove deletes the file and tolerates its absence; reading a missing file is FileNotFoundError."""
    ssh.put_bytes(b"x", remote_path)
    ssh.remove(remote_path)
    ssh.remove(remote_path)
    assert ssh.run(f"test -e {remote_path}", check=False).exited == 1
    with pytest.raises(FileNotFoundError):
        ssh.get_bytes(remote_path)


def test_ssh_put_bytes_error_is_transport_error(ssh: SSHTransport) -> None:
    """Writing into a missing directory raises TransportError naming host and path."""
    with pytest.raises(TransportError, match="testhost.*/nonexistent-dir/f"):
        ssh.put_bytes(b"x", "/nonexistent-dir/f")


def test_ssh_tunnel_reaches_a_port_on_the_host(ssh: SSHTransport, echo_server: tuple[str, int]) -> None:
    """A tunnel carries bytes both ways, for several clients at once, until it is closed."""
    tunnel = ssh.tunnel(*echo_server)
    assert tunnel.local_host == "127.0.0.1" and tunnel.local_port != echo_server[1]
    payloads = [os.urandom(200_000) for _ in range(3)]
    results: list[bytes] = [b""] * 3

    def client(i: int) -> None:
        results[i] = _echo_through(tunnel.local_host, tunnel.local_port, payloads[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == payloads
    tunnel.close()
    with pytest.raises(OSError):
        _echo_through(tunnel.local_host, tunnel.local_port, b"after close")


def test_ssh_tunnel_to_closed_port_resets_client(ssh: SSHTransport, echo_server: tuple[str, int]) -> None:
    """A tunnel whose target refuses gives the client a closed connection, and the transport lives on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    tunnel = ssh.tunnel("127.0.0.1", dead_port)
    try:
        assert _echo_through(tunnel.local_host, tunnel.local_port, b"hello") == b""
    except OSError:
        pass
    tunnel.close()
    assert ssh.run("echo alive").stdout == "alive\n"


def test_ssh_timeout_stops_the_command_on_the_host(ssh: SSHTransport) -> None:
    """A timed-out command raises CommandTimedOut promptly and is killed on the host too."""
    started = time.monotonic()
    with pytest.raises(CommandTimedOut, match="timed out after 1s"):
        ssh.run("sleep 32.32 & sleep 32.32; wait", timeout=1)
    assert time.monotonic() - started < 5
    assert _no_process("sleep 32.32")
    assert ssh.run("echo still usable", timeout=5).stdout == "still usable\n"


# -- SSH: refusals ----------------------------------------------------------------------------


def _marker(sshd: SSHServer) -> str:
    return f"{sshd.home}/runbook-marker-{uuid.uuid4().hex[:8]}"


def test_ssh_unknown_host_key_is_refused_before_anything_runs(sshd: SSHServer, tmp_path: Path) -> None:
    """A host key missing from known_hosts raises HostKeyError, and no command reaches the host."""
    known_hosts = sshd.empty_known_hosts(tmp_path)
    marker = _marker(sshd)
    transport = SSHTransport(**sshd.transport_kwargs(known_hosts_path=known_hosts))
    with pytest.raises(HostKeyError) as info:
        transport.run(f"touch {marker}")
    message = str(info.value)
    assert f"127.0.0.1:{sshd.port} not found in {known_hosts}" in message
    assert "SHA256:" in message and info.value.hint and "ssh-keyscan" in info.value.hint
    assert not os.path.exists(marker)
    transport.close()


def test_ssh_changed_host_key_is_refused(sshd: SSHServer, tmp_path: Path) -> None:
    """A host key that differs from known_hosts raises HostKeyError saying it CHANGED."""
    known_hosts = sshd.wrong_known_hosts(tmp_path)
    marker = _marker(sshd)
    transport = SSHTransport(**sshd.transport_kwargs(known_hosts_path=known_hosts))
    with pytest.raises(HostKeyError, match="CHANGED") as info:
        transport.run(f"touch {marker}")
    assert known_hosts in str(info.value)
    assert not os.path.exists(marker)


def test_ssh_missing_known_hosts_file_is_refused(sshd: SSHServer, tmp_path: Path) -> None:
    """A known_hosts path that does not exist raises HostKeyError, never trust-on-first-use."""
    transport = SSHTransport(**sshd.transport_kwargs(known_hosts_path=str(tmp_path / "absent")))
    with pytest.raises(HostKeyError, match="does not exist"):
        transport.connect()


def test_ssh_ignores_the_users_ssh_files(sshd: SSHServer, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """~/.ssh/config and ~/.ssh/known_hosts are never read: only the inventory's files count."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text(f"Host {sshd.host}\n  Port 1\n  User nobody\n  ProxyJump x\n")
    (home / ".ssh" / "known_hosts").write_text(sshd.known_hosts_line + "\n")
    monkeypatch.setenv("HOME", str(home))
    with SSHTransport(**sshd.transport_kwargs()) as transport:
        assert transport.run("id -un").stdout.strip() == sshd.user
    unknown = SSHTransport(**sshd.transport_kwargs(known_hosts_path=sshd.empty_known_hosts(tmp_path)))
    with pytest.raises(HostKeyError):
        unknown.connect()


def test_ssh_wrong_user_is_connect_error(sshd: SSHServer) -> None:
    """A user the host refuses raises ConnectError naming user, host and port."""
    transport = SSHTransport(**sshd.transport_kwargs(user="nosuchuser"))
    with pytest.raises(ConnectError) as info:
        transport.connect()
    assert not isinstance(info.value, HostKeyError)
    assert f"nosuchuser@127.0.0.1:{sshd.port}" in str(info.value)


def test_ssh_wrong_key_is_connect_error(sshd: SSHServer, tmp_path: Path) -> None:
    """A key the host does not authorize raises ConnectError; a missing key file too."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    other = tmp_path / "other_key"
    other.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    with pytest.raises(ConnectError, match="cannot log in"):
        SSHTransport(**sshd.transport_kwargs(key_path=str(other))).connect()
    with pytest.raises(ConnectError, match="missing or unreadable"):
        SSHTransport(**sshd.transport_kwargs(key_path=str(tmp_path / "absent"))).connect()


def test_ssh_refused_port_is_connect_error(sshd: SSHServer) -> None:
    """Nothing listening on the port raises ConnectError quickly."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    with pytest.raises(ConnectError, match=f"127.0.0.1:{dead_port}: Connection refused"):
        SSHTransport(**sshd.transport_kwargs(port=dead_port)).connect()


def test_ssh_silent_server_times_out_as_connect_error(sshd: SSHServer) -> None:
    """A port that accepts but never speaks SSH fails within the (fractional) connect timeout."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        transport = SSHTransport(**sshd.transport_kwargs(port=port, connect_timeout=0.5))
        started = time.monotonic()
        with pytest.raises(ConnectError, match=f"127.0.0.1:{port}: no SSH banner within 0.5s"):
            transport.connect()
        assert time.monotonic() - started < 3


def test_ssh_command_killed_by_signal_is_command_failed(ssh: SSHTransport) -> None:
    """A command killed by a signal is a failed command (128+N), not a lost connection."""
    with pytest.raises(CommandFailed) as info:
        ssh.run("kill -9 $$")
    assert info.value.result.exited == 137
    assert ssh.run("echo alive", timeout=5).stdout == "alive\n"


# Walks up from the command's shell to the sshd process serving this connection.
_KILL_SSHD = ("p=$$; while [ \"$(cat /proc/$p/comm)\" != sshd ]; do "
              "p=$(awk '{print $4}' /proc/$p/stat); done; kill -9 $p; sleep 3")


@pytest.mark.parametrize("timeout", [None, 10])
def test_ssh_lost_connection_is_connection_lost(sshd: SSHServer, timeout: float | None) -> None:
    """A connection that dies mid-command raises ConnectionLost, then again until reconnected."""
    transport = SSHTransport(**sshd.transport_kwargs())
    started = time.monotonic()
    with pytest.raises(ConnectionLost, match="lost while running"):
        transport.run(_KILL_SSHD, timeout=timeout)
    assert time.monotonic() - started < 4
    with pytest.raises(ConnectionLost, match="was lost"):
        transport.run("echo never")
    transport.connect()
    assert transport.run("echo back").stdout == "back\n"
    transport.close()
