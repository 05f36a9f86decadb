"""Guards checked before anything connects: the maintenance window.

A run that would change the schema (a playbook with an ``upgrade`` step) outside the environment's
``window`` is refused with exit 4. Incident and read-only commands (rollback, status, verify, backup)
are never held back by the window.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Any

from .errors import ConfigError, GuardRefused
from .inventory import DAYS


def _hhmm(value: str, where: str) -> time:
    try:
        hours, minutes = value.split(":")
        return time(int(hours), int(minutes))
    except ValueError:
        raise ConfigError(f"{where}: '{value}' is not a time like 02:00") from None


def in_window(window: Any, now: datetime) -> bool:
    """Is ``now`` (aware) inside the window? A window may cross midnight (start after end)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        tz = ZoneInfo(window.tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"window.tz: unknown time zone '{window.tz}'") from None
    local = now.astimezone(tz)
    start, end = _hhmm(window.start, "window.start"), _hhmm(window.end, "window.end")
    days = set(window.days)
    t = local.time()
    if start <= end:
        return DAYS[local.weekday()] in days and start <= t < end
    # crosses midnight: the part after midnight belongs to the window that opened the day before
    if t >= start:
        return DAYS[local.weekday()] in days
    if t < end:
        return DAYS[(local - timedelta(days=1)).weekday()] in days
    return False


def check_window(env: Any, playbook: Any, now: datetime | None = None) -> None:
    window = env.config.window
    if window is None or playbook is None or "upgrade" not in playbook.kinds():
        return
    from datetime import timezone

    now = now or datetime.now(timezone.utc)
    if not in_window(window, now):
        raise GuardRefused(f"outside the maintenance window of '{env.name}' "
                           f"({','.join(window.days)} {window.start}-{window.end} {window.tz}; "
                           f"now {now.astimezone(timezone.utc):%a %H:%M} UTC): nothing was done")
