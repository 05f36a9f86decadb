"""The SSH transport's tunnels: a local listener whose every client gets a ``direct-tcpip`` channel.

Each accepted connection is pumped to and from its own channel by a thread; closing the forward
closes the listener and every pair. TCP_NODELAY on the client side, as on the SSH socket.
"""

from __future__ import annotations

import select
import socket
import threading
from typing import Any

import paramiko


class Forward:
    """A 127.0.0.1 listener whose every client gets its own ``direct-tcpip`` channel."""

    def __init__(self, transport: paramiko.Transport, remote_host: str, remote_port: int,
                 open_timeout: float) -> None:
        self.transport = transport
        self.remote = (remote_host, remote_port)
        self.open_timeout = open_timeout
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(32)
        self.listener.settimeout(0.5)  # so close() is noticed even if shutdown() does not wake accept()
        self.port: int = self.listener.getsockname()[1]
        self.stopped = threading.Event()
        # What crossed the link: connections (channels opened) and turns (a client message after
        # the server last spoke: each one waits for a round trip). Read by ``Transport.counters``.
        self.connections = 0
        self.turns = 0
        self.pairs: set[tuple[socket.socket, Any]] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, name=f"tunnel-{self.port}", daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, peer = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            # Nagle would hold back the tail of a multi-packet result for the client's delayed ACK.
            try:
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            try:
                channel = self.transport.open_channel("direct-tcpip", self.remote, peer,
                                                      timeout=self.open_timeout)
            except (paramiko.SSHException, EOFError, OSError):
                # The host could not reach the target (or the link is gone): the client sees a reset.
                client.close()
                continue
            with self.lock:
                if self.stopped.is_set():
                    channel.close()
                    client.close()
                    return
                self.pairs.add((client, channel))
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, channel), daemon=True).start()

    def _pump(self, client: socket.socket, channel: paramiko.Channel) -> None:
        server_spoke = True  # the first client message is a turn too
        try:
            while not self.stopped.is_set():
                readable, _, _ = select.select([client, channel], [], [], 1.0)
                if client in readable:
                    data = client.recv(65536)
                    if not data:
                        break
                    if server_spoke:
                        with self.lock:
                            self.turns += 1
                        server_spoke = False
                    channel.sendall(data)
                if channel in readable:
                    data = channel.recv(65536)
                    if not data:
                        break
                    server_spoke = True
                    client.sendall(data)
        except BaseException:  # noqa: BLE001 - either end closed under us (OSError, EOFError, paramiko's
            pass  # SSHException, ValueError or AttributeError from a socket/channel torn down meanwhile)
        finally:
            with self.lock:
                self.pairs.discard((client, channel))
            for end in (channel, client):
                try:
                    end.close()
                except BaseException:  # noqa: BLE001 - a pump thread never prints a traceback at exit
                    pass

    def close(self) -> None:
        self.stopped.set()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            pairs, self.pairs = list(self.pairs), set()
        for client, channel in pairs:
            channel.close()
            try:
                client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
