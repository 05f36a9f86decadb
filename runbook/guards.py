"""The maintenance window guard: a schema change starts inside ``window``, and only if it fits.

A run that would change the schema (a playbook with an ``upgrade`` step) in an environment with a
``window`` is refused (exit 4, nothing touched) when it starts outside the window, or when what is
left of the window is shorter than the run's estimate (``estimate.py``). ``--ignore-window`` runs it
anyway, on purpose: logged (``window_ignored``) and recorded in the journal. Incident and read-only
commands (rollback, status, verify, backup) are never held back.

``start``/``end`` are wall-clock times in the window's own zone; a window may cross midnight (the
part after midnight belongs to the day it opened on). How long is left is computed in absolute time
(UTC), never by subtracting wall-clock times: on the night the clocks go forward, 01:00-04:00 is
two hours long, on the night they go back, four. The window ends the first time the wall clock shows
its end after now: an end inside the skipped hour is the moment the clocks jump, an end inside the
repeated hour its first occurrence (or its second, for a run started in the repeated hour itself).
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog

from .errors import ConfigError, GuardRefused
from .inventory_keys import DAYS


def _hhmm(value: str, where: str) -> time:
    try:
        hours, minutes = value.split(":")
        return time(int(hours), int(minutes))
    except ValueError:
        raise ConfigError(f"{where}: '{value}' is not a time like 02:00") from None


def _zone(window: Any) -> ZoneInfo:
    try:
        return ZoneInfo(window.tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"window.tz: unknown time zone '{window.tz}'") from None


def opened_on(window: Any, now: datetime) -> date | None:
    """The local date the window that ``now`` (aware) is in opened on; None outside the window."""
    tz = _zone(window)
    local = now.astimezone(tz)
    start, end = _hhmm(window.start, "window.start"), _hhmm(window.end, "window.end")
    days = set(window.days)
    t = local.time()
    if start <= end:
        return local.date() if DAYS[local.weekday()] in days and start <= t < end else None
    # crosses midnight: the part after midnight belongs to the window that opened the day before
    if t >= start:
        return local.date() if DAYS[local.weekday()] in days else None
    if t < end:
        before = local.date() - timedelta(days=1)
        return before if DAYS[before.weekday()] in days else None
    return None


def in_window(window: Any, now: datetime) -> bool:
    """Is ``now`` (aware) inside the window? A window may cross midnight (start after end)."""
    return opened_on(window, now) is not None


def closes_at(window: Any, now: datetime) -> datetime | None:
    """When (UTC) the window ``now`` is in closes; None outside the window."""
    day = opened_on(window, now)
    if day is None:
        return None
    start, end = _hhmm(window.start, "window.start"), _hhmm(window.end, "window.end")
    end_day = day if start <= end else day + timedelta(days=1)
    return _first_instant(datetime.combine(end_day, end), _zone(window), now)


def _first_instant(wall: datetime, tz: ZoneInfo, after: datetime) -> datetime:
    """The first instant (UTC) after ``after`` at which the wall clock of ``tz`` shows ``wall`` or,
    when ``wall`` is skipped (clocks going forward), the first existing minute after it."""
    for minutes in range(0, 24 * 60):  # a skipped span is an hour, in a few zones two
        shown = wall + timedelta(minutes=minutes)
        real = []
        for fold in (0, 1):  # the repeated hour exists twice
            instant = shown.replace(tzinfo=tz, fold=fold).astimezone(timezone.utc)
            if instant.astimezone(tz).replace(tzinfo=None) == shown:
                real.append(instant)
        if real:
            later = [i for i in real if i > after]
            return min(later) if later else max(real)
    raise ConfigError(f"window end {wall:%H:%M} does not exist in {tz.key}")  # pragma: no cover


def describe(window: Any) -> str:
    """``sun 02:00-04:00 Europe/Berlin``"""
    days = "every day" if set(window.days) == set(DAYS) else ",".join(window.days)
    return f"{days} {window.start}-{window.end} {window.tz}"


def applies(env: Any, playbook: Any) -> bool:
    """Only runs that change the schema are held to the window."""
    return env.config.window is not None and playbook is not None and "upgrade" in playbook.kinds()


def outside_window(env: Any, playbook: Any, now: datetime | None = None) -> GuardRefused | None:
    """The refusal of a run that would start outside its window (None: inside, or not held to one)."""
    if not applies(env, playbook):
        return None
    window = env.config.window
    now = now or datetime.now(timezone.utc)
    if in_window(window, now):
        return None
    local = now.astimezone(_zone(window))
    return GuardRefused(f"outside the maintenance window of '{env.name}' ({describe(window)}; "
                        f"now {local:%a %H:%M} {window.tz}): nothing was done",
                        hint="to run it outside the window on purpose, add --ignore-window")


def check_window(env: Any, playbook: Any, now: datetime | None = None) -> None:
    refusal = outside_window(env, playbook, now)
    if refusal is not None:
        raise refusal


class WindowGuard:
    """The window guard of one run, host after host.

    ``before_connect`` refuses a host outside the window, and decides the fit when the journal has
    past runs of the playbook on that host; otherwise the estimate needs the database's size, and
    ``after_connect`` decides it with one read-only query, before the run lock or any step. Every
    host the guard applies to logs ``window_estimate`` (seconds, where they come from, time left).
    """

    def __init__(self, env: Any, playbook: Any, journal: Any, *, ignore: bool = False,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.env = env
        self.playbook = playbook
        self.journal = journal
        self.ignore = ignore
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.log = structlog.get_logger("runbook")
        self.active = applies(env, playbook)
        self._undecided: str | None = None  # a host whose fit waits for the database's size

    def before_connect(self, host: str) -> None:
        from . import estimate

        self._undecided = None
        if not self.active:
            return
        refusal = outside_window(self.env, self.playbook, self.clock())
        if refusal is not None:
            if not self.ignore:
                raise refusal
            self._ignored(host, "outside the window", str(refusal).removesuffix(": nothing was done"))
        past = estimate.from_history(self.env.state_dir, self.env.name, host, self.playbook.name)
        if past is None:
            self._undecided = host
        else:
            self._judge(host, past)

    def after_connect(self, ctx: Any) -> None:
        from . import estimate

        host, self._undecided = self._undecided, None
        if host is None:
            return
        with ctx.connect("window") as conn:  # read-only, on the run's shared session
            size = int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])
        self._judge(host, estimate.from_size(size, host, self.playbook.name, self.env.config.locks.max_wait))

    def _judge(self, host: str, est: Any) -> None:
        from .estimate import human

        window = self.env.config.window
        now = self.clock()
        closes = closes_at(window, now)
        # one rounding for the log, the journal and the refusal: they say the same figures
        left = round((closes - now.astimezone(timezone.utc)).total_seconds(), 1) if closes is not None else None
        fact = {"estimate_s": round(est.seconds, 1), "source": est.source, "basis": est.basis,
                "window": describe(window), "closes": closes.isoformat() if closes else None,
                "left_s": left}
        self.journal.host(host)["window"] = fact
        self.log.info("window_estimate", **fact)
        if left is None or left >= est.seconds:
            return
        assert closes is not None
        local = closes.astimezone(_zone(window))
        refusal = GuardRefused(
            f"the maintenance window of '{self.env.name}' closes in {human(left)} (at {local:%H:%M} {window.tz}), "
            f"less than the estimate of {human(est.seconds)} for {self.playbook.name} on {host} "
            f"({est.basis}): nothing was done",
            hint="to run it anyway on purpose, add --ignore-window")
        if not self.ignore:
            raise refusal
        self._ignored(host, "the window is too short for the estimate", str(refusal).removesuffix(": nothing was done"))

    def _ignored(self, host: str, reason: str, detail: str) -> None:
        self.log.warning("window_ignored", reason=reason, detail=detail, window=describe(self.env.config.window))
        self.journal.record["window_ignored"] = True
        self.journal.host(host).setdefault("window_ignored", []).append(reason)
