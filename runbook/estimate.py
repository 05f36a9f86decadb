"""How long a run of a playbook on a host is expected to take, for the window guard.

From experience first: the journal's past runs of the same playbook on the same host
(``.runbook/runs/*.json``) that succeeded and changed the schema (a run with nothing to migrate says
little about the next real one). The slowest of the most recent ``RECENT`` of them, times
``MARGIN``: databases grow, and a run that fits only if nothing goes slower than last time does
not fit.

Without such a run, from the database's size (``pg_database_size``, one read-only query): the
backup dominates a migrate of a big database, so ``size / BACKUP_RATE`` (a conservative
``pg_dump -Fc`` rate: compression on one core of a busy server), plus ``OVERHEAD`` (connecting,
Alembic, verification) plus twice ``locks.max_wait`` (the lock pre-flight may wait that long for
blockers, and the lock-timeout retries of the DDL as long again).

The estimate is of the run itself; a rollback after a failure comes on top (see the README).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

MARGIN = 1.5
RECENT = 5
BACKUP_RATE = 20 * 1024 * 1024  # bytes per second
OVERHEAD = 60.0  # seconds


@dataclass(frozen=True)
class Estimate:
    seconds: float
    source: str  # "history" or "database size"
    basis: str  # how it was reached, for the log line and a refusal


def host_duration(data: dict[str, Any], host: str) -> float | None:
    """Seconds a recorded run spent on ``host``: its own start and end, or, for a run of one host
    recorded before hosts had them, the run's."""
    rec = (data.get("hosts") or {}).get(host) or {}
    for source in (rec, data if len(data.get("hosts") or {}) == 1 else {}):
        try:
            return (datetime.fromisoformat(source["finished"])
                    - datetime.fromisoformat(source["started"])).total_seconds()
        except (KeyError, TypeError, ValueError):
            continue
    return None


def from_history(state_dir: Path, env: str, host: str, playbook: str) -> Estimate | None:
    """``MARGIN`` x the slowest of the last ``RECENT`` successful runs that changed the schema."""
    from .journal import runs

    seen: list[tuple[float, str]] = []
    for rec in runs(state_dir, env):
        data = rec.data
        hostrec = (data.get("hosts") or {}).get(host) or {}
        if data.get("playbook") != playbook or data.get("status") != "succeeded" \
                or hostrec.get("start_revision") == hostrec.get("end_revision"):
            continue
        took = host_duration(data, host)
        if took is not None:
            seen.append((took, str(data.get("run_id"))))
        if len(seen) == RECENT:
            break
    if not seen:
        return None
    slowest, run_id = max(seen)
    runs_said = "the last run" if len(seen) == 1 else f"the slowest of the last {len(seen)} runs"
    return Estimate(MARGIN * slowest, "history",
                    f"{MARGIN:g} x {human(slowest)}, {runs_said} of {playbook} on {host} that changed "
                    f"the schema, {run_id}")


def from_size(size: int, host: str, playbook: str, max_wait: float) -> Estimate:
    """Without history: the backup at ``BACKUP_RATE``, plus the overhead and the lock waits."""
    from .backups import human_size

    seconds = OVERHEAD + 2 * max_wait + size / BACKUP_RATE
    return Estimate(seconds, "database size",
                    f"no past {playbook} on {host} that changed the schema: {human_size(size)} at "
                    f"{BACKUP_RATE // (1024 * 1024)} MB/s + {OVERHEAD:g}s + 2 x locks.max_wait "
                    f"{human(max_wait)}")


def human(seconds: float) -> str:
    """``45s``, ``4min 30s``, ``2h 05min``"""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}min"
    if minutes:
        return f"{minutes}min {secs:02d}s" if secs else f"{minutes}min"
    return f"{secs}s"

