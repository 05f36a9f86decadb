"""The transport for a database on this machine: commands through ``/bin/sh -c`` and plain files.

It is what an inventory host without an ``ssh`` block gets, and what ``runbook local`` uses. Each
command runs as a job (``base.job_script``): its own process group, stopped as a whole on a timeout,
an interrupt or this process's death; files are created with their final mode before any data is
written. Commands never inherit the variables that hold the inventory's passwords.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Mapping

from runbook.errors import CommandFailed, CommandTimedOut, TransportError
from runbook.interrupts import checkpoint
from runbook.transports.base import KILL_AFTER, HostSecret, Result, Transport, Tunnel, job_script, stopped_by_timeout

# After SIGTERM, how long a timed-out command gets to exit (pg_dump removes its partial output).
KILL_GRACE = 2.0


def _decode(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", "replace")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def failure_message(name: str, result: Result) -> str:
    """One line naming the host, the exit code, the command and the last line of its output."""
    last = result.tail(1)
    return f"{name}: command exited {result.exited}: {result.command}" + (f": {last}" if last else "")


class LocalTransport(Transport):
    """Run commands and move files on this machine."""

    def __init__(self, *, name: str = "local", hidden_env: frozenset[str] = frozenset()) -> None:
        self.name = name
        # Variables that hold secrets (the inventory's password_env): never inherited by commands.
        self.hidden_env = hidden_env

    def run(self, command: str, *, env: Mapping[str, str] | None = None,
            timeout: float | None = None, check: bool = True, tag: str | None = None,
            secret: HostSecret | None = None) -> Result:
        self.commands += 1
        full_env = {k: v for k, v in os.environ.items() if k not in self.hidden_env}
        full_env.update(env or {})
        # The job's stdin is a pipe whose write end only this process holds (not inheritable): it
        # closes when we give up on the command or die, and the job's watchdog then stops it.
        keep_r, keep_w = os.pipe()
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", job_script(command, timeout=timeout, tag=tag or self.tag, secret=secret)],
                stdin=keep_r, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env,
                start_new_session=True,
            )
        except BaseException:
            os.close(keep_w)
            raise
        finally:
            os.close(keep_r)
        if secret is not None:
            _write_all(keep_w, secret.data)
        started = time.monotonic()
        try:
            out, err = self._wait(proc, None if timeout is None else started + timeout + KILL_GRACE)
        except subprocess.TimeoutExpired:
            self._stop(proc, keep_w)
            raise CommandTimedOut(f"{self.name}: command timed out after {timeout:g}s: {command}") from None
        except BaseException:
            self._stop(proc, keep_w)  # interrupted: never leave a pg_dump behind
            raise
        os.close(keep_w)
        result = Result(command=command, exited=proc.returncode, stdout=_decode(out), stderr=_decode(err))
        if stopped_by_timeout(result, timeout, started):
            raise CommandTimedOut(f"{self.name}: command timed out after {timeout:g}s: {command}")
        if check and not result.ok:
            raise CommandFailed(failure_message(self.name, result), result=result)
        return result

    @staticmethod
    def _wait(proc: subprocess.Popen[bytes], deadline: float | None) -> tuple[bytes, bytes]:
        """communicate() in short slices: a signal that lands just before a long blocking wait
        would otherwise be handled only when the command ends."""
        while True:
            slice_ = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
            try:
                return proc.communicate(timeout=slice_)
            except subprocess.TimeoutExpired:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                checkpoint()  # a fleet's worker: the fleet stops (the caller stops the command)

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes], keep_w: int) -> None:
        """Close the job's stdin (its watchdog stops the command's process group), then make sure."""
        os.close(keep_w)
        for sig, wait in ((None, KILL_GRACE + KILL_AFTER), (signal.SIGKILL, KILL_GRACE)):
            if sig is not None:
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
                _write_all(fd, data)
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
