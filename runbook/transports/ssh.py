"""The SSH transport: one verified Fabric/Paramiko connection per host, reused by every step.

Host keys are always checked against the inventory's ``known_hosts`` file alone (never
``~/.ssh/known_hosts``, never ``~/.ssh/config``, never Fabric's accept-anything default): an unknown
or changed key is refused before authentication, so nothing runs on a host we cannot vouch for.
Commands run on a session channel of that connection as jobs (``base.job_script``): a command we
give up on, are interrupted during, or leave behind by dying is stopped on the host instead of
holding its locks; files move over SFTP, created with their final
mode before any data is written; tunnels are ``direct-tcpip`` channels behind a local listener.
"""

from __future__ import annotations

import getpass
import os
import re
import select
import shlex
import socket
import threading
import time
from typing import Any, Mapping

import fabric
import paramiko

from runbook.errors import (CommandFailed, CommandTimedOut, ConnectError, ConnectionLost,
                            HostKeyError, TransportError)
from runbook.interrupts import checkpoint
from runbook.transports import known_hosts
from runbook.transports.base import HostSecret, Result, Transport, Tunnel, job_script, stopped_by_timeout
from runbook.transports.local import failure_message
from runbook.transports.tunnel import Forward

# How long the host's `timeout` gets to stop a timed-out command before we stop waiting for it.
TIMEOUT_GRACE = 2.0
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class _Deadline(Exception):
    """The local deadline of a command passed (the host's own ``timeout`` should have fired)."""


class _UnknownHostKey(paramiko.SSHException):  # type: ignore[misc]  # paramiko is untyped
    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        super().__init__(f"{hostname} not found in known_hosts")
        self.key = key


class _RejectUnknown(paramiko.RejectPolicy):  # type: ignore[misc]
    """RejectPolicy that keeps the offered key, so the error can show its fingerprint."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise _UnknownHostKey(hostname, key)


class SSHTransport(Transport):
    """Run commands, move files and open tunnels on one host over SSH (connects on first use)."""

    def __init__(self, host: str, *, port: int = 22, user: str | None = None,
                 key_path: str | None = None, known_hosts_path: str, connect_timeout: float = 10.0,
                 keepalive: int = 15, name: str | None = None) -> None:
        self.host = host
        self.port = port
        # Resolved now, as paramiko would, so every error names the login it tried.
        self.user = user or getpass.getuser()
        self.key_path = os.path.expanduser(key_path) if key_path else None
        self.known_hosts_path = os.path.expanduser(known_hosts_path)
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self.name = name or host
        self._conn: fabric.Connection | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._home: str | None = None
        self._tunnels: list[Tunnel] = []
        self._lock = threading.RLock()

    # -- connection -------------------------------------------------------------------------

    @property
    def where(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    def connect(self) -> None:
        """Open (or reopen) the connection; raises HostKeyError or ConnectError."""
        with self._lock:
            self._close_connection()
            self._conn = self._open()

    def _open(self) -> fabric.Connection:
        if not os.path.isfile(self.known_hosts_path):
            raise HostKeyError(
                f"known_hosts file {self.known_hosts_path} does not exist: cannot verify the host key "
                f"of {self.host}:{self.port}",
                hint=f"check the fingerprint out of band, then: ssh-keyscan -p {self.port} {self.host} "
                     f">> {self.known_hosts_path}")
        if self.key_path and not os.access(self.key_path, os.R_OK):
            raise ConnectError(f"cannot connect to {self.where}: key {self.key_path} is missing or "
                               "unreadable")
        # An explicit, empty SSHConfig and lazy=True: no ~/.ssh/config, /etc/ssh/ssh_config or
        # ~/.fabric.yaml can redirect the host, user, port or proxy behind the inventory's back.
        config = fabric.Config(ssh_config=paramiko.SSHConfig(), lazy=True,
                               overrides={"load_ssh_configs": False})
        conn = fabric.Connection(
            self.host, user=self.user, port=self.port, config=config, gateway=False,
            forward_agent=False,
            # The timeout goes in connect_kwargs: Fabric's connect_timeout is cast to int (0.5 -> 0 -> none).
            connect_kwargs={"key_filename": self.key_path, "look_for_keys": False, "allow_agent": False,
                            "timeout": self.connect_timeout, "banner_timeout": self.connect_timeout,
                            "auth_timeout": self.connect_timeout, "channel_timeout": self.connect_timeout},
        )
        client = conn.client
        client.set_missing_host_key_policy(_RejectUnknown())  # replaces Fabric's AutoAddPolicy
        known = self._known_host()
        accepted = client.get_host_keys()
        for key in known.accepted:
            accepted.add(known.name, key.get_name(), key)
        sock = conn.connect_kwargs["sock"] = self._socket()
        try:
            self._login(conn, known)
        except BaseException:
            # Fabric's close() skips a half-open client: close what paramiko and we opened.
            conn.client.close()
            sock.close()
            raise
        transport = conn.transport
        if self.keepalive > 0 and transport is not None:
            # Keepalives make a dead link fail the command (exit -1) instead of hanging forever.
            transport.set_keepalive(self.keepalive)
        return conn

    def _known_host(self) -> known_hosts.KnownHost:
        """The inventory's known_hosts for this host; host certificates are refused in one line."""
        try:
            known = known_hosts.load(self.known_hosts_path, self.host, self.port)
        except OSError as exc:
            raise HostKeyError(f"cannot read known_hosts file {self.known_hosts_path}: "
                               f"{exc.strerror or exc}") from exc
        if known.cert_authority_lines and not known.accepted:
            line = known.cert_authority_lines[0]
            raise HostKeyError(
                f"{self.known_hosts_path}:{line}: @cert-authority (host certificates) is not supported "
                f"by runbook, and no plain host key is listed for {known.name}; refusing to connect",
                hint=f"check the host key out of band, then: ssh-keyscan -p {self.port} {self.host} "
                     f">> {self.known_hosts_path}")
        return known

    def _revoked(self, known: known_hosts.KnownHost, key: paramiko.PKey) -> HostKeyError | None:
        line = known.revoked_line(key)
        if line is None:
            return None
        return HostKeyError(
            f"host key of {self.host}:{self.port} ({key.get_name()} {key.fingerprint}) is marked "
            f"@revoked in {self.known_hosts_path}:{line}; refusing to connect")

    def _login(self, conn: fabric.Connection, known: known_hosts.KnownHost) -> None:
        try:
            conn.open()
        except _UnknownHostKey as exc:
            revoked = self._revoked(known, exc.key)
            if revoked is not None:
                raise revoked from exc
            if known.accepted:  # other types are known: not "unknown", a type we cannot check
                raise self._other_type(known, exc.key) from exc
            raise HostKeyError(
                f"host key of {self.host}:{self.port} not found in {self.known_hosts_path} "
                f"(the server offers {exc.key.get_name()} {exc.key.fingerprint}); refusing to connect",
                hint=f"check that fingerprint out of band, then: ssh-keyscan -p {self.port} "
                     f"-t {exc.key.get_name()} {self.host} >> {self.known_hosts_path}") from exc
        except paramiko.BadHostKeyException as exc:
            revoked = self._revoked(known, exc.key)
            if revoked is not None:
                raise revoked from exc
            if exc.key.get_name() not in known.types:
                raise self._other_type(known, exc.key) from exc
            raise HostKeyError(
                f"host key of {self.host}:{self.port} CHANGED: the server offers {exc.key.get_name()} "
                f"{exc.key.fingerprint}, {self.known_hosts_path} expects {exc.expected_key.get_name()} "
                f"{exc.expected_key.fingerprint}; refusing to connect (possible man-in-the-middle)",
                hint=f"if the host was really rebuilt, remove the old key: ssh-keygen -R "
                     f"'{self._known_hosts_name()}' -f {self.known_hosts_path}") from exc
        except paramiko.AuthenticationException as exc:
            raise ConnectError(f"cannot log in to {self.where} with key {self.key_path}: {exc}") from exc
        except (paramiko.SSHException, EOFError, OSError) as exc:
            transport = conn.client.get_transport()
            if transport is not None and not transport.remote_version:
                # Paramiko then reports "No existing session", which says nothing useful.
                reason = f"no SSH banner within {self.connect_timeout:g}s (is sshd listening there?)"
            else:
                reason = str(exc) or type(exc).__name__
            raise ConnectError(f"cannot connect to {self.where}: {reason}") from exc

    def _other_type(self, known: known_hosts.KnownHost, key: paramiko.PKey) -> HostKeyError:
        """The server offers only a key type known_hosts does not list for it: not a changed key."""
        kind = key.get_name().removeprefix("ssh-")
        return HostKeyError(
            f"no {kind} key known for {known.name} in {self.known_hosts_path}; known: "
            f"{', '.join(known.types)} (the server offers {key.get_name()} {key.fingerprint}); "
            "refusing to connect",
            hint=f"check that fingerprint out of band, then: ssh-keyscan -p {self.port} "
                 f"-t {key.get_name()} {self.host} >> {self.known_hosts_path}")

    def _known_hosts_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def _socket(self) -> socket.socket:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except socket.gaierror as exc:
            raise ConnectError(f"cannot connect to {self.where}: cannot resolve {self.host}: "
                               f"{exc.strerror}") from exc
        except OSError as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            raise ConnectError(f"cannot connect to {self.where}: {reason}") from exc
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        # SSH is request/response: with Nagle on, a small packet waits for the peer's delayed ACK
        # (40 ms on Linux) at every handshake step, exec and SFTP open (bench/README.md).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.keepalive > 0 and hasattr(socket, "TCP_USER_TIMEOUT"):
            # Unacknowledged data past this kills the socket, so a cut link surfaces even mid-write.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, self.keepalive * 4 * 1000)
        return sock

    def _connection(self) -> fabric.Connection:
        with self._lock:
            if self._conn is None:
                self._conn = self._open()
            elif not self._conn.is_connected:
                # Never reconnect silently in the middle of a run: the engine decides what a loss means.
                raise ConnectionLost(f"{self.name}: the SSH connection to {self.where} was lost")
            return self._conn

    def _transport(self) -> paramiko.Transport:
        transport = self._connection().transport
        assert transport is not None
        return transport

    # -- commands ---------------------------------------------------------------------------

    def run(self, command: str, *, env: Mapping[str, str] | None = None,
            timeout: float | None = None, check: bool = True, tag: str | None = None,
            secret: HostSecret | None = None) -> Result:
        transport = self._transport()
        self.commands += 1
        script = job_script(command, timeout=timeout, tag=tag or self.tag, secret=secret)
        if env:
            script = f"export {self._env(env)}; {script}"
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout + TIMEOUT_GRACE
        try:
            channel = transport.open_session(timeout=self.connect_timeout)
            channel.exec_command(script)
            if secret is not None:
                channel.sendall(secret.data)  # read by the script into its 0600 file
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise ConnectionLost(f"{self.name}: the SSH connection to {self.where} failed while running "
                                 f"{command}: {exc}") from exc
        try:
            exited, out, err = self._collect(channel, transport, deadline)
        except _Deadline:
            raise CommandTimedOut(f"{self.name}: command timed out after {timeout:g}s: {command}") from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise ConnectionLost(f"{self.name}: the SSH connection to {self.where} failed while running "
                                 f"{command}: {exc}") from exc
        finally:
            # Closing the channel closes the job's stdin on the host: its watchdog stops whatever
            # still runs (an interrupt, a timeout, an error here), so nothing outlives this call.
            channel.close()
        if exited is None:
            raise ConnectionLost(f"{self.name}: the SSH connection to {self.where} was lost while running "
                                 f"{command} (no exit status)")
        result = Result(command=command, exited=exited, stdout=out, stderr=err)
        if stopped_by_timeout(result, timeout, started):
            raise CommandTimedOut(f"{self.name}: command timed out after {timeout:g}s (stopped on the host): "
                                  f"{command}")
        if check and not result.ok:
            raise CommandFailed(failure_message(self.name, result), result=result)
        return result

    @staticmethod
    def _collect(channel: paramiko.Channel, transport: paramiko.Transport,
                 deadline: float | None) -> tuple[int | None, str, str]:
        """Read a command's output until its exit status; None if the connection died first."""
        out, err = bytearray(), bytearray()

        def drain() -> None:
            while channel.recv_ready():
                out.extend(channel.recv(65536))
            while channel.recv_stderr_ready():
                err.extend(channel.recv_stderr(65536))

        while True:
            drain()
            if channel.exit_status_ready() and (channel.eof_received or channel.closed):
                drain()
                break
            if channel.closed or not transport.is_active():
                drain()
                return None, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
            if deadline is not None and time.monotonic() > deadline:
                raise _Deadline()
            checkpoint()  # a fleet's worker: the fleet stops (the caller closes the channel)
            if channel.eof_received:  # output done, exit status on its way: nothing to select on
                channel.status_event.wait(0.2)
            else:
                select.select([channel], [], [], 0.5)
        status = channel.recv_exit_status()  # -1: the channel closed without one (a dead link)
        exited = None if status == -1 and not transport.is_active() else status
        return exited, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    @staticmethod
    def _env(env: Mapping[str, str]) -> str:
        for key in env:
            if not _ENV_NAME.match(key):
                raise ValueError(f"not an environment variable name: {key!r}")
        return " ".join(f"{key}={shlex.quote(value)}" for key, value in env.items())

    @property
    def home(self) -> str:
        if self._home is None:
            self._home = self.run('printf %s "$HOME"', timeout=self.connect_timeout).stdout
        return self._home

    # -- files ------------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        forwards = [f for t in self._tunnels for f in t.forwards]
        return {"host_commands": self.commands, "sftp_files": self.sftp_files,
                "db_connections": sum(f.connections for f in forwards),
                "db_turns": sum(f.turns for f in forwards)}

    sftp_files = 0

    def _sftp_client(self) -> paramiko.SFTPClient:
        self.sftp_files += 1
        with self._lock:
            conn = self._connection()
            if self._sftp is None:
                try:
                    self._sftp = conn.client.open_sftp()
                except (paramiko.SSHException, EOFError, OSError) as exc:
                    raise ConnectionLost(f"{self.name}: cannot open SFTP on {self.where}: {exc}") from exc
            return self._sftp

    def _file_error(self, action: str, path: str, exc: BaseException) -> TransportError:
        transport = self._conn.transport if self._conn else None
        if isinstance(exc, (paramiko.SSHException, EOFError)) or not (transport and transport.is_active()):
            return ConnectionLost(f"{self.name}: the SSH connection to {self.where} was lost during "
                                  f"{action} {path}")
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return TransportError(f"{self.name}: cannot {action} {path}: {reason}")

    def put_bytes(self, data: bytes, path: str, *, mode: int = 0o600) -> None:
        sftp = self._sftp_client()
        try:
            with _open_with_mode(sftp, path, mode) as f:
                # A file that existed keeps its old mode through O_TRUNC: narrow it before any data.
                f.chmod(mode)
                f.set_pipelined(True)
                f.write(data)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._file_error("write", path, exc) from exc

    def get_bytes(self, path: str) -> bytes:
        """Read ``path``; a missing file raises FileNotFoundError, other failures TransportError."""
        sftp = self._sftp_client()
        try:
            with sftp.open(path, "rb") as f:
                f.prefetch()
                data: bytes = f.read()
                return data
        except FileNotFoundError:
            raise
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._file_error("read", path, exc) from exc

    def remove(self, path: str) -> None:
        sftp = self._sftp_client()
        try:
            sftp.remove(path)
        except FileNotFoundError:
            pass
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._file_error("remove", path, exc) from exc

    # -- tunnels ----------------------------------------------------------------------------

    def tunnel(self, remote_host: str, remote_port: int) -> Tunnel:
        forward = Forward(self._transport(), remote_host, remote_port, self.connect_timeout)
        tunnel = Tunnel(local_host="127.0.0.1", local_port=forward.port, remote_host=remote_host,
                        remote_port=remote_port)
        tunnel.closers.append(forward.close)
        tunnel.forwards.append(forward)
        tunnel.closers.append(lambda: self._forget(tunnel))
        with self._lock:
            self._tunnels.append(tunnel)
        return tunnel

    def _forget(self, tunnel: Tunnel) -> None:
        with self._lock:
            if tunnel in self._tunnels:
                self._tunnels.remove(tunnel)

    # -- teardown ---------------------------------------------------------------------------

    def _close_connection(self) -> None:
        for tunnel in list(self._tunnels):
            tunnel.close()
        self._tunnels.clear()
        if self._sftp is not None:
            try:
                self._sftp.close()
            except Exception:  # noqa: BLE001 - closing a dead session must not mask the real error
                pass
            self._sftp = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self._close_connection()

    def __repr__(self) -> str:
        return f"SSHTransport({self.where!r}, known_hosts={self.known_hosts_path!r})"


def _open_with_mode(sftp: paramiko.SFTPClient, path: str, mode: int) -> paramiko.SFTPFile:
    """``sftp.open(path, "wb")`` with ``mode`` in the SSH_FXP_OPEN attributes, so the server creates
    the file with it (open(2)'s mode argument): a new file never exists with another mode, not even
    for the round trip a chmod after the open would take. Paramiko's ``open`` sends no attributes."""
    from paramiko.sftp import CMD_HANDLE, CMD_OPEN, SFTP_FLAG_CREATE, SFTP_FLAG_TRUNC, SFTP_FLAG_WRITE

    attrs = paramiko.SFTPAttributes()
    attrs.st_mode = mode
    kind, msg = sftp._request(CMD_OPEN, path, SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_TRUNC, attrs)
    if kind != CMD_HANDLE:
        raise paramiko.SFTPError("Expected handle")
    return paramiko.SFTPFile(sftp, msg.get_binary(), "wb")
