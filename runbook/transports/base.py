"""The small interface every transport implements.

A transport runs shell commands on the database's host (``pg_dump``, ``pg_restore``, ``sha256sum``),
moves small files to and from it, and opens a TCP path from the control machine to the database port
as the host sees it. Local and SSH transports implement it; steps only ever see this interface.
"""

from __future__ import annotations

import abc
import re
import secrets
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


@dataclass(frozen=True)
class HostSecret:
    """Bytes a command needs in a file (a PGPASSFILE): written by the command's own script from
    its stdin into a fresh 0600 file, exported as ``var``, removed when the command ends. They
    never travel on a command line, and no SFTP session is needed for them."""

    var: str
    data: bytes = field(repr=False)


@dataclass
class Tunnel:
    """A local endpoint that reaches ``remote_host:remote_port`` as seen from the host."""

    local_host: str
    local_port: int
    remote_host: str
    remote_port: int
    closers: list = field(default_factory=list)
    forwards: list = field(default_factory=list)  # what carries it (counted: connections, turns)

    def close(self) -> None:
        for close in reversed(self.closers):
            close()
        self.closers.clear()


class Transport(abc.ABC):
    """Run commands and move files on one host."""

    name: str = "transport"
    # Marks every command this transport starts (see job_script): the engine sets the run id, so
    # a reconnect or the next run can find and stop what a lost connection left running.
    tag: str = "-"
    commands = 0  # commands run so far (each costs a round trip at least): see ``counters``

    @abc.abstractmethod
    def run(self, command: str, *, env: Mapping[str, str] | None = None,
            timeout: float | None = None, check: bool = True, tag: str | None = None,
            secret: HostSecret | None = None) -> Result:
        """Run ``command`` through a POSIX shell on the host, as a job (``job_script``) that dies
        when this call gives up on it, is interrupted, or this process dies.

        ``env`` values must never be secrets: they may show on the remote command line; a
        ``secret`` reaches the command as a 0600 file named by ``secret.var``.
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

    def counters(self) -> dict[str, int]:
        """Round trips so far, by kind (``host_commands``; SSH adds tunnel and SFTP figures)."""
        return {"host_commands": self.commands}

    def kill_jobs(self, tag: str) -> bool:
        """Stop every command still running on the host under ``tag`` (a run id); True if there
        was any. For what a cut link (not a closed one) left behind."""
        if not re.fullmatch(r"[\w.:-]+", tag):
            return False
        # "runbook-jo[b] TAG" matches the jobs' command lines, never this command's own.
        pattern = f"{JOB_MARK[:-1]}[{JOB_MARK[-1]}] {tag}( |$)"
        result = self.run(f"pkill -TERM -f -- {shlex.quote(pattern)} && echo killed", check=False,
                          timeout=30, tag="reaper")
        return "killed" in result.stdout

    def __enter__(self) -> "Transport":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def quote(*parts: str) -> str:
    """Join arguments into one shell-safe command line."""
    return " ".join(shlex.quote(p) for p in parts)


JOB_MARK = "runbook-job"
# After the first signal, how long a stopped command gets before it is killed.
KILL_AFTER = 5


def job_script(command: str, *, timeout: float | None, tag: str, secret: HostSecret | None = None) -> str:
    """A POSIX-shell script that runs ``command`` so that nothing of it outlives its caller.

    The command runs under coreutils ``timeout`` (its own process group: a signal to ``timeout``
    reaches the whole pipeline, ``pg_dump | ...`` included, and a timeout stops it on the host too).
    A watchdog reads the script's stdin, which the caller holds open and never closes while it
    waits: when the caller closes it (gives up, is interrupted) or dies (SIGKILL, closed laptop: the
    kernel or sshd closes it), the watchdog gets EOF and sends TERM to the group, KILL
    ``KILL_AFTER`` s later. With a ``secret``, the caller first writes its bytes to that stdin: the
    script copies exactly that many into a new file created 0600 (umask 077), exports its path as
    ``secret.var`` and removes it when the command ends (the command's own trap does too).
    The command's ``$0`` is ``runbook-job <tag>`` so ``Transport.kill_jobs`` can find it after a cut
    link, which neither end notices at once. The script's own shell stays the parent (never
    ``exec``), so a command killed by a signal reports 128+N.
    """
    seconds = "0" if timeout is None else (f"{max(timeout, 0.001):.3f}".rstrip("0").rstrip(".") or "0.001")
    inner = f"/bin/sh -c {shlex.quote(command)} {shlex.quote(f'{JOB_MARK} {tag}')}"
    prelude = cleanup = ""
    if secret is not None:
        name = shlex.quote(f".runbook-pgpass-{tag}-{secrets.token_hex(4)}")
        prelude = (f'f="${{HOME:-/tmp}}"/{name}; (umask 077; head -c {len(secret.data)} > "$f") || exit 125; '
                   f'export {secret.var}="$f"; ')
        cleanup = 'rm -f -- "$f"; '
    return (
        f"{prelude}exec 3<&0 </dev/null; "
        f"if command -v timeout >/dev/null 2>&1; then timeout -k {KILL_AFTER} {seconds} {inner} & "
        f"else {inner} & fi; p=$!; "
        "{ cat <&3 >/dev/null 2>&1; kill -TERM $p 2>/dev/null; } >/dev/null 2>&1 & w=$!; "
        f"exec 3<&-; wait $p; rc=$?; {cleanup}kill $w 2>/dev/null; exit $rc"
    )


def stopped_by_timeout(result: Result, timeout: float | None, started: float) -> bool:
    """Whether the host's ``timeout`` stopped the job (exit 124 once the time was up)."""
    import time

    return timeout is not None and result.exited == 124 and time.monotonic() - started >= timeout
