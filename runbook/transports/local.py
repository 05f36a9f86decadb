"""The transport for a database on this machine: commands through ``/bin/sh -c`` and plain files.

It is what an inventory host without an ``ssh`` block gets, and what ``runbook local`` uses. Each
command runs in its own process group so a timeout can stop the whole pipeline (``pg_dump | ...``),
not just the shell; files are created with their final mode before any data is written.
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Mapping

from runbook.errors import CommandFailed, CommandTimedOut, TransportError
from runbook.transports.base import Result, Transport, Tunnel

# After SIGTERM, how long a timed-out command gets to exit (pg_dump removes its partial output).
KILL_GRACE = 2.0


def _decode(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", "replace")


def failure_message(name: str, result: Result) -> str:
    """One line naming the host, the exit code, the command and the last line of its output."""
    last = result.tail(1)
    return f"{name}: command exited {result.exited}: {result.command}" + (f": {last}" if last else "")


class LocalTransport(Transport):
    """Run commands and move files on this machine."""

    def __init__(self, *, name: str = "local") -> None:
        self.name = name

    def run(self, command: str, *, env: Mapping[str, str] | None = None,
            timeout: float | None = None, check: bool = True) -> Result:
        full_env = {**os.environ, **env} if env else None
        proc = subprocess.Popen(
            ["/bin/sh", "-c", command], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=full_env, start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._stop(proc)
            raise CommandTimedOut(f"{self.name}: command timed out after {timeout:g}s: {command}") from None
        except BaseException:
            self._stop(proc)  # KeyboardInterrupt: never leave a pg_dump behind
            raise
        result = Result(command=command, exited=proc.returncode, stdout=_decode(out), stderr=_decode(err))
        if check and not result.ok:
            raise CommandFailed(failure_message(self.name, result), result=result)
        return result

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes]) -> None:
        """Terminate the command's whole process group, then kill it if it lingers."""
        for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, KILL_GRACE)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                # A grandchild that left the group may hold the pipes open: bound the wait.
                proc.communicate(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def put_bytes(self, data: bytes, path: str, *, mode: int = 0o600) -> None:
        try:
            fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC, mode)
            try:
                # An existing file keeps its old mode through O_CREAT: narrow it before writing.
                os.fchmod(fd, mode)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
        except OSError as exc:
            raise TransportError(f"{self.name}: cannot write {path}: {exc.strerror or exc}") from exc

    def get_bytes(self, path: str) -> bytes:
        """Read ``path``; a missing file raises FileNotFoundError, other failures TransportError."""
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise TransportError(f"{self.name}: cannot read {path}: {exc.strerror or exc}") from exc

    def remove(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise TransportError(f"{self.name}: cannot remove {path}: {exc.strerror or exc}") from exc

    def tunnel(self, remote_host: str, remote_port: int) -> Tunnel:
        # The database is reachable from here as it is from "the host": nothing to forward.
        return Tunnel(local_host=remote_host, local_port=remote_port,
                      remote_host=remote_host, remote_port=remote_port)

    def close(self) -> None:
        pass

    @property
    def home(self) -> str:
        return os.path.expanduser("~")

    def __repr__(self) -> str:
        return f"LocalTransport(name={self.name!r})"
