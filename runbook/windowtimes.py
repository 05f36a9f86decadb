"""The maintenance window as real instants over the coming year: its starts, its ends, its length.

A window is written in wall-clock time of its zone (``sun 02:00-04:00 Europe/Berlin``), but a timer
and a stop time live in real time. Where the zone changes its clocks the two part ways: a start
that falls in the hour skipped in spring does not exist (systemd's ``OnCalendar`` then skips that
day), and a window that spans the change is an hour shorter (or longer) than written. A stop time
is one fixed duration, so it is computed from the *shortest* occurrence; ``schedule`` says which
day that is. cron has no time zone of its own (Debian's has no ``CRON_TZ``): it runs in the time
zone of the machine, so its line is the window's start converted to this machine's local time, and
checked against every occurrence of the coming year.
"""

from __future__ import annotations

import os
import time as _time
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from .inventory_keys import DAYS

HORIZON_DAYS = 371  # a year and a week: every clock change of the zone, whatever today is


def clock(value: str) -> time:
    """``"2:00"`` / ``"02:00"`` (validated by the inventory) as a time."""
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


@dataclass(frozen=True)
class Occurrence:
    """One opening of the window: the day it opens (in its zone), its real start and end.

    ``start`` is None where the start does not exist on that day (the clocks skip it)."""

    day: date
    start: datetime | None
    end: datetime

    @property
    def length(self) -> float:
        assert self.start is not None  # in UTC: aware datetimes of one zone subtract as wall clocks
        return (self.end.astimezone(timezone.utc) - self.start.astimezone(timezone.utc)).total_seconds()


def _exists(naive: datetime, tz: ZoneInfo) -> datetime | None:
    """The first real instant showing ``naive`` on the zone's clocks, or None if none does.

    For a time shown twice (autumn), the first (``fold=0``), as systemd fires."""
    aware = naive.replace(tzinfo=tz, fold=0)
    back = aware.astimezone(timezone.utc).astimezone(tz).replace(tzinfo=None)
    return aware if back == naive else None


def _earliest(naive: datetime, tz: ZoneInfo) -> datetime:
    """The earliest real instant ``naive`` can mean: for an end, the conservative one (a time shown
    twice ends at the first; a skipped one at the earlier of its two readings)."""
    candidates = [naive.replace(tzinfo=tz, fold=fold) for fold in (0, 1)]
    return min(candidates, key=lambda t: t.astimezone(timezone.utc))


def occurrences(window: Any, today: date, horizon: int = HORIZON_DAYS) -> list[Occurrence]:
    """Every opening of the window from ``today`` (in the window's zone) for ``horizon`` days."""
    tz = ZoneInfo(window.tz)
    start, end = clock(window.start), clock(window.end)
    days = set(window.days)
    out = []
    for offset in range(horizon):
        day = today + timedelta(days=offset)
        if DAYS[day.weekday()] not in days:
            continue
        end_day = day if end > start else day + timedelta(days=1)  # crosses midnight
        out.append(Occurrence(day, _exists(datetime.combine(day, start), tz),
                              _earliest(datetime.combine(end_day, end), tz)))
    return out


@dataclass(frozen=True)
class Lengths:
    """The window's written length, its shortest real one and the first day of that, the days
    whose start does not exist."""

    nominal: float
    shortest: float
    shortest_on: date | None  # None when every occurrence is as long as written
    skipped: tuple[date, ...]


def lengths(window: Any, today: date) -> Lengths:
    start, end = clock(window.start), clock(window.end)
    nominal = (datetime.combine(date.min, end) - datetime.combine(date.min, start)).total_seconds()
    if nominal <= 0:
        nominal += 86400
    occ = occurrences(window, today)
    real = [o for o in occ if o.start is not None]
    skipped = tuple(o.day for o in occ if o.start is None)
    if not real:
        return Lengths(nominal, 0.0, None, skipped)
    shortest = min(real, key=lambda o: o.length)
    if shortest.length >= nominal:
        return Lengths(nominal, nominal, None, skipped)
    return Lengths(nominal, shortest.length, shortest.day, skipped)


def machine_zone() -> str:
    """The name of the zone this machine's clock (and its cron) shows: ``TZ``, else
    ``/etc/localtime``'s target, else what the C library calls it."""
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz:
        return tz
    try:
        target = os.readlink("/etc/localtime")
        if "zoneinfo/" in target:
            return target.split("zoneinfo/", 1)[1]
    except OSError:
        pass
    return _time.tzname[0] or "UTC"


@dataclass(frozen=True)
class CronTimes:
    """The window's start as cron fields in this machine's local time."""

    fields: tuple[tuple[int, int, tuple[int, ...]], ...]  # (minute, hour, cron days of week 0=Sun)
    local_first: datetime  # the next start, in local time
    wrong_from: date | None  # the first window day the fields miss (clock changes differ)


def cron_times(window: Any, today: date) -> CronTimes:
    """Convert the next start of each window day to local time (``astimezone()`` uses the C
    library's local time, as cron does), then check the fields against the whole coming year."""
    occ = [o for o in occurrences(window, today) if o.start is not None]
    chosen: dict[str, tuple[int, int, int]] = {}
    for o in occ:
        name = DAYS[o.day.weekday()]
        if name not in chosen:
            assert o.start is not None
            local = o.start.astimezone()
            chosen[name] = (local.minute, local.hour, (local.weekday() + 1) % 7)
    by_time: dict[tuple[int, int], set[int]] = {}
    for minute, hour, dow in chosen.values():
        by_time.setdefault((minute, hour), set()).add(dow)
    fields = tuple((m, h, tuple(sorted(d))) for (m, h), d in sorted(by_time.items(), key=lambda kv: (kv[0][1], kv[0][0])))
    fires = {(m, h, d) for m, h, days in fields for d in days}
    wrong_from = None
    for o in occ:
        assert o.start is not None
        local = o.start.astimezone()
        if (local.minute, local.hour, (local.weekday() + 1) % 7) not in fires:
            wrong_from = o.day
            break
    first = occ[0].start.astimezone() if occ and occ[0].start is not None else datetime.now().astimezone()
    return CronTimes(fields, first, wrong_from)
