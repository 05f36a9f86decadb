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
