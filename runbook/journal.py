"""Run records: what each run did, read back by ``status`` and ``rollback``.

In the spirit of ansible-runner's artifacts: each run has ``.runbook/runs/<run_id>.jsonl`` (every
event, appended by the log pipeline) and ``<run_id>.json`` (its status), the latter rewritten
atomically (temp file + rename, mode 0600) at every step start and end. A run killed half-way keeps
``status: running`` with its last step; since its process is gone, readers report it incomplete.

A fleet run with ``--parallel`` writes one record from several threads (each host's steps, its
host entry): the record and its host entries are ``Shared`` dicts whose every change takes the
journal's lock, and ``save`` serialises the record under the same lock, so a write never sees a
host entry half-changed by another thread, and each save is still one atomic rename.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import tempfile
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import runner

RUNNING = "running"


RUN_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{6}")


def new_run_id() -> str:
    """``20261125T081500Z-1f4a3c``: the suffix starts with the milliseconds (3 hex digits), so run
    ids sort in the order the runs started, even several in one second."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y%m%dT%H%M%SZ") + f"-{now.microsecond // 1000:03x}" + secrets.token_hex(2)[:3]


def now_iso() -> str:
    # milliseconds: a run's duration (finished - started) is worth showing even for a 2 s run
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def write_atomic(path: Path, data: str) -> None:
    """Temp file (mkstemp: 0600 from its creation) + fsync + rename."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class Shared(dict):  # type: ignore[type-arg]
    """A dict whose changes take ``lock`` (the journal's), so a ``save`` in another thread never
    iterates it while it changes. Reads need no lock."""

    def __init__(self, lock: Any, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.lock = lock

    def __setitem__(self, key: Any, value: Any) -> None:
        with self.lock:
            super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        with self.lock:
            super().__delitem__(key)

    def update(self, *args: Any, **kw: Any) -> None:
        with self.lock:
            super().update(*args, **kw)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        with self.lock:
            return super().setdefault(key, default)

    def pop(self, key: Any, *default: Any) -> Any:
        with self.lock:
            return super().pop(key, *default)


class Journal:
    """The status record of one run, kept on disk as the run goes (safe for a fleet's threads)."""

    def __init__(self, state_dir: Path, run_id: str, env: str, playbook: str, argv: list[str]) -> None:
        self.dir = state_dir / "runs"
        self.run_id = run_id
        self.log_path = self.dir / f"{run_id}.jsonl"
        self.path = self.dir / f"{run_id}.json"
        self.lock = threading.RLock()
        self.record: dict[str, Any] = Shared(self.lock, {
            "run_id": run_id, "env": env, "playbook": playbook, "argv": argv,
            "status": RUNNING, "exit_code": None,
            "started": now_iso(), "finished": None,
            **runner.identity(),  # control_host, machine_id, boot_id, pid, pid_start
            "started_by": runner.invocation(),  # user, sudo_user, control_host, how (terminal, cron, systemd)
            "current_step": None, "steps": [], "hosts": Shared(self.lock),
        })

    def save(self) -> None:
        """Write the record, redacted like the run log: an error message may quote a secret."""
        from .log import REDACTOR

        with self.lock:  # the scrub copies the record: no thread changes it meanwhile
            text = json.dumps(REDACTOR.scrub(self.record), indent=2, default=str)
            write_atomic(self.path, text)

    def host(self, name: str) -> dict[str, Any]:
        with self.lock:
            hosts = self.record["hosts"]
            if name not in hosts:
                hosts[name] = Shared(self.lock)
            entry: dict[str, Any] = hosts[name]
            return entry

    def step_started(self, host: str, step: str, phase: str) -> dict[str, Any]:
        with self.lock:
            entry = Shared(self.lock, {"host": host, "step": step, "phase": phase, "started": now_iso(),
                                       "finished": None, "outcome": RUNNING})
            self.record["steps"].append(entry)
            self.record["current_step"] = f"{host}:{step}"
            self.save()
            return entry

    def step_finished(self, entry: dict[str, Any], outcome: str, facts: dict[str, Any] | None = None) -> None:
        with self.lock:
            entry.update(finished=now_iso(), outcome=outcome)
            if facts:
                entry["facts"] = facts
            self.record["current_step"] = None
            self.save()

    def finish(self, status: str, exit_code: int) -> None:
        with self.lock:
            self.record.update(status=status, exit_code=exit_code, finished=now_iso())
            self.save()


@dataclass
class RunRecord:
    data: dict[str, Any]

    @property
    def incomplete(self) -> bool:
        """A run still marked running whose process is gone (killed, crashed, host lost)."""
        if self.data.get("status") != RUNNING:
            return False
        if self.data.get("machine_id"):
            return runner.known_dead(self.data)
        if self.data.get("control_host") != socket.gethostname():
            return False  # cannot tell from here; a run lock on the database answers that
        return not _alive(int(self.data.get("pid") or 0))

    def last_step(self) -> dict[str, Any] | None:
        steps = self.data.get("steps") or []
        return steps[-1] if steps else None


def record(state_dir: Path, run_id: str) -> dict[str, Any] | None:
    """The status record of run ``run_id`` in this state folder, if it has one."""
    if not RUN_ID.fullmatch(run_id):
        return None
    try:
        data = json.loads((state_dir / "runs" / f"{run_id}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def runs(state_dir: Path, env: str | None = None) -> list[RunRecord]:
    """Every recorded run, newest first."""
    folder = state_dir / "runs"
    out: list[RunRecord] = []
    if not folder.is_dir():
        return out
    for path in folder.glob("*.json"):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if env is None or data.get("env") == env:
            out.append(RunRecord(data))
    out.sort(key=lambda r: (str(r.data.get("started")), str(r.data.get("run_id"))), reverse=True)
    return out


def last_successful(state_dir: Path, env: str, host: str, playbook: str = "migrate") -> dict[str, Any] | None:
    """The host record of the newest successful run of ``playbook`` that changed something."""
    for rec in runs(state_dir, env):
        data = rec.data
        if data.get("playbook") != playbook or data.get("status") != "succeeded":
            continue
        hostrec = (data.get("hosts") or {}).get(host)
        if hostrec and hostrec.get("start_revision") != hostrec.get("end_revision"):
            return {**hostrec, "run_id": data.get("run_id"), "started": data.get("started")}
    return None
