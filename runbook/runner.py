"""Who runs a run: enough to tell, later and from another process, that its runner is dead.

A pid alone is not enough (pids are reused, and a host name is shared by clones of a machine): a
runner is its machine (``/etc/machine-id``), that machine's boot (``boot_id``), its pid and the
pid's start time since boot. A runner is known dead only when the record names this machine and
either the boot changed, the pid no longer runs, or it runs with another start time (a new process
that got the same pid). Records that say less (another machine, an older runbook) are never judged.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from typing import Any, Mapping


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return ""


@lru_cache(maxsize=1)
def machine_id() -> str:
    return _read("/etc/machine-id") or _read("/var/lib/dbus/machine-id")


def boot_id() -> str:
    return _read("/proc/sys/kernel/random/boot_id")


def start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22)."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ')'
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def identity() -> dict[str, Any]:
    """This process as a runner, for the journal."""
    pid = os.getpid()
    return {"control_host": socket.gethostname(), "machine_id": machine_id(), "boot_id": boot_id(),
            "pid": pid, "pid_start": start_time(pid)}


CRON = frozenset({"cron", "crond", "anacron", "fcron"})


def invocation(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Who started this run and how, for the journal (``runbook ENV history``).

    ``how`` is ``terminal`` (a terminal on stdin, stdout or stderr: a person), ``cron`` (a cron
    daemon among this process's ancestors), ``systemd`` (``INVOCATION_ID``/``JOURNAL_STREAM``, set by
    systemd for the processes of a unit; the unit is read from this process's cgroup) or ``other``
    (a script, ssh without a terminal, CI). A terminal wins over systemd's variables, which a
    terminal started by a systemd user session inherits; cron is told by the process tree, as cron
    builds its jobs' environment itself.
    """
    environ = os.environ if environ is None else environ
    tty = next((name for name in map(_tty_name, (0, 1, 2)) if name), None)
    unit = None
    if tty:
        how = "terminal"
    elif _cron_ancestor():
        how = "cron"
    elif environ.get("INVOCATION_ID") or environ.get("JOURNAL_STREAM"):
        how, unit = "systemd", _systemd_unit()
    else:
        how = "other"
    return {"user": _user(), "uid": os.getuid(), "sudo_user": environ.get("SUDO_USER") or None,
            "control_host": socket.gethostname(), "how": how, "tty": tty, "unit": unit}


def _tty_name(fd: int) -> str | None:
    try:
        return os.ttyname(fd) if os.isatty(fd) else None
    except OSError:
        return None


def _user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a uid without a passwd entry (a container)
        return os.environ.get("USER") or os.environ.get("LOGNAME") or str(os.getuid())


def _cron_ancestor(limit: int = 16) -> bool:
    """Whether a cron daemon started this process (cron -> cron -> sh -c ... -> runbook)."""
    pid = os.getppid()
    for _ in range(limit):
        if pid <= 1:
            return False
        stat = _read(f"/proc/{pid}/stat")
        if not stat or ")" not in stat:
            return False
        comm = stat[stat.index("(") + 1: stat.rindex(")")]
        if comm in CRON:
            return True
        try:
            pid = int(stat.rsplit(")", 1)[-1].split()[1])  # field 4: the parent's pid
        except (IndexError, ValueError):
            return False
    return False


def _systemd_unit() -> str | None:
    """``runbook-migrate.service``: the innermost unit of this process's cgroup (v2 or v1's systemd line)."""
    for line in _read("/proc/self/cgroup").splitlines():
        hierarchy, _, path = line.partition(":")
        controllers, _, path = path.partition(":")
        if controllers in ("", "name=systemd"):
            units = [part for part in path.split("/") if part.endswith((".service", ".scope"))]
            if units:
                return units[-1]
    return None


def token() -> str:
    """A short form for an application_name (63 bytes): machine id prefix, pid, start time."""
    me = identity()
    return f"{me['machine_id'][:8]}:{me['pid']}:{me['pid_start'] or 0}"


def known_dead(record: Mapping[str, Any]) -> bool:
    """True only when the runner described by ``record`` certainly no longer runs."""
    mid = str(record.get("machine_id") or "")
    pid = record.get("pid")
    if not mid or not machine_id() or mid != machine_id()[: len(mid)] or len(mid) < 8:
        return False
    if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False
    if record.get("boot_id") and record["boot_id"] != boot_id():
        return True
    started = start_time(pid)
    if started is None:
        return True  # no such process
    expected = record.get("pid_start")
    return expected is not None and int(expected) != started


def from_token(text: str) -> dict[str, Any]:
    """The record a ``token`` stands for (empty if it is not one)."""
    parts = text.split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts[1:]):
        return {}
    return {"machine_id": parts[0], "pid": int(parts[1]), "pid_start": int(parts[2]) or None}
