"""The small interface every transport implements.

A transport runs shell commands on the database's host (``pg_dump``, ``pg_restore``, ``sha256sum``),
moves small files to and from it, and opens a TCP path from the control machine to the database port
as the host sees it. Local and SSH transports implement it; steps only ever see this interface.
"""

from __future__ import annotations

import abc
import shlex
from dataclasses import dataclass, field
from typing import Mapping


@dataclass(frozen=True)
class Result:
    """What a finished command left: the command line, exit code and output."""

    command: str
    exited: int
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.exited == 0

    def tail(self, lines: int = 20) -> str:
        text = (self.stderr or self.stdout).strip().splitlines()
        return "\n".join(text[-lines:])


@dataclass
class Tunnel:
    """A local endpoint that reaches ``remote_host:remote_port`` as seen from the host."""

    local_host: str
    local_port: int
    remote_host: str
    remote_port: int
    closers: list = field(default_factory=list)

    def close(self) -> None:
        for close in reversed(self.closers):
            close()
        self.closers.clear()


class Transport(abc.ABC):
    """Run commands and move files on one host."""

    name: str = "transport"

    @abc.abstractmethod
    def run(self, command: str, *, env: Mapping[str, str] | None = None,
            timeout: float | None = None, check: bool = True) -> Result:
        """Run ``command`` through a POSIX shell on the host.

        ``env`` values must never be secrets: they may show on the remote command line.
        Raises CommandFailed (check=True and non-zero exit), CommandTimedOut, ConnectionLost.
        """

    @abc.abstractmethod
    def put_bytes(self, data: bytes, path: str, *, mode: int = 0o600) -> None:
        """Write ``data`` to ``path`` on the host, created with ``mode`` (never world-readable first)."""

    @abc.abstractmethod
    def get_bytes(self, path: str) -> bytes:
        """Read a (small) file from the host."""

    @abc.abstractmethod
    def remove(self, path: str) -> None:
        """Remove a file on the host if it exists."""

    @abc.abstractmethod
    def tunnel(self, remote_host: str, remote_port: int) -> Tunnel:
        """Return a local endpoint for ``remote_host:remote_port`` as seen from the host."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection and every tunnel."""

    @property
    @abc.abstractmethod
    def home(self) -> str:
        """The login user's home directory on the host (for expanding ``~``)."""

    def __enter__(self) -> "Transport":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def quote(*parts: str) -> str:
    """Join arguments into one shell-safe command line."""
    return " ".join(shlex.quote(p) for p in parts)
