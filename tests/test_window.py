"""The window guard, complete: when a window closes (DST, midnight), the run's estimate, the fit,
``--ignore-window``; against the real sshd and PostgreSQL where a run is involved.

"Now" is never faked for a run: each window is chosen around the real current time (in UTC, in a
zone with daylight saving, or in a fixed-offset zone where it is just past midnight). The DST days
themselves are unit tests with explicit datetimes.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from runbook import estimate
from runbook.guards import closes_at, in_window
from runbook.inventory_keys import DAYS, WindowConfig
from runbook.journal import Journal, now_iso
from tests.fixtures.faults import journal, newest_run_id
from tests.fixtures.project import Project

UTC = timezone.utc


def _w(days: list[str] | None = None, start: str = "02:00", end: str = "04:00", tz: str = "UTC") -> WindowConfig:
    return WindowConfig.model_validate({"days": days or ["sun"], "start": start, "end": end, "tz": tz})


def _left(window: WindowConfig, now: datetime) -> float:
    closes = closes_at(window, now)
    assert closes is not None, f"{now} is outside {window}"
    assert closes.tzinfo is not None and closes.utcoffset() == timedelta(0)
    return (closes - now).total_seconds()


# -- when a window closes: explicit datetimes ---------------------------------------------------


def test_closes_at_outside_is_none_and_inside_is_the_end() -> None:
    """Outside the window there is no end; inside, the end on the same day."""
    assert closes_at(_w(), datetime(2026, 11, 30, 3, tzinfo=UTC)) is None  # a Monday
    assert closes_at(_w(), datetime(2026, 11, 29, 3, 15, tzinfo=UTC)) == datetime(2026, 11, 29, 4, tzinfo=UTC)


def test_berlin_spring_forward_window_is_an_hour_shorter() -> None:
    """Sun 29 March 2026, Berlin: 02:00 CET becomes 03:00 CEST. At 01:30 CET, 01:00-04:00 has 1.5 h left, not 2.5 h."""
    w = _w(start="01:00", end="04:00", tz="Europe/Berlin")
    now = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)  # 01:30 CET
    assert _left(w, now) == 1.5 * 3600
    assert closes_at(w, now) == datetime(2026, 3, 29, 2, 0, tzinfo=UTC)  # 04:00 CEST


def test_berlin_fall_back_window_is_an_hour_longer() -> None:
    """Sun 25 October 2026, Berlin: 03:00 CEST becomes 02:00 CET. At 01:30 CEST, 01:00-04:00 has 3.5 h left."""
    w = _w(start="01:00", end="04:00", tz="Europe/Berlin")
    now = datetime(2026, 10, 24, 23, 30, tzinfo=UTC)  # 01:30 CEST
    assert _left(w, now) == 3.5 * 3600
    assert closes_at(w, now) == datetime(2026, 10, 25, 3, 0, tzinfo=UTC)  # 04:00 CET


def test_new_york_dst_days() -> None:
    """America/New_York, 8 March 2026 (02:00 EST -> 03:00 EDT) and 1 November 2026 (02:00 EDT -> 01:00 EST)."""
    spring = _w(start="01:00", end="05:00", tz="America/New_York")
    assert _left(spring, datetime(2026, 3, 8, 6, 30, tzinfo=UTC)) == 2.5 * 3600  # from 01:30 EST
    fall = _w(start="00:30", end="03:00", tz="America/New_York")
    assert _left(fall, datetime(2026, 11, 1, 4, 45, tzinfo=UTC)) == 3.25 * 3600  # from 00:45 EDT


def test_an_end_in_the_skipped_hour_is_when_the_clocks_jump() -> None:
    """Berlin 29 March 2026: 02:30 never shows; a window ending then ends at 02:00 CET = 03:00 CEST (01:00 UTC)."""
    w = _w(start="01:00", end="02:30", tz="Europe/Berlin")
    assert closes_at(w, datetime(2026, 3, 29, 0, 15, tzinfo=UTC)) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)


def test_an_end_in_the_repeated_hour_is_the_next_time_the_clock_shows_it() -> None:
    """Berlin 25 October 2026: 02:30 shows twice; before the first, that one ends the window; in the
    repeated hour itself (02:10 CET, inside again by the wall clock), the second."""
    w = _w(start="01:00", end="02:30", tz="Europe/Berlin")
    first = datetime(2026, 10, 24, 23, 15, tzinfo=UTC)  # 01:15 CEST
    assert closes_at(w, first) == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # 02:30 CEST
    again = datetime(2026, 10, 25, 1, 10, tzinfo=UTC)  # 02:10 CET
    assert in_window(w, again)
    assert closes_at(w, again) == datetime(2026, 10, 25, 1, 30, tzinfo=UTC)  # 02:30 CET


def test_a_window_across_midnight_closes_the_next_day() -> None:
    """sat 23:00-01:00: at Sat 23:30 1.5 h are left, at Sun 00:30 half an hour (the window opened on Saturday)."""
    w = _w(days=["sat"], start="23:00", end="01:00")
    assert _left(w, datetime(2026, 11, 28, 23, 30, tzinfo=UTC)) == 1.5 * 3600
    assert _left(w, datetime(2026, 11, 29, 0, 30, tzinfo=UTC)) == 0.5 * 3600
    assert closes_at(w, datetime(2026, 11, 28, 0, 30, tzinfo=UTC)) is None  # Saturday's early hours: Friday's window


def test_a_window_across_midnight_on_a_dst_night() -> None:
    """sat 23:00-03:00 New York, the night of 31 Oct/1 Nov 2026: from Sat 23:30 EDT to 03:00 EST is 4.5 h."""
    w = _w(days=["sat"], start="23:00", end="03:00", tz="America/New_York")
    assert _left(w, datetime(2026, 11, 1, 3, 30, tzinfo=UTC)) == 4.5 * 3600


def test_an_empty_window_is_a_config_error() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="a window of no time"):
        _w(start="02:00", end="02:00")


# -- the estimate -------------------------------------------------------------------------------


def _past_run(state_dir: Path, *, seconds: float, playbook: str = "migrate", host: str = "db1",
              status: str = "succeeded", revs: tuple[str, str] = ("0001", "0002"), ago_h: float = 0) -> str:
    """A run record written by the journal's own writer, its times set to the duration wanted."""
    from runbook.journal import new_run_id

    jr = Journal(state_dir, new_run_id(), "prod", playbook, [])
    end = datetime.now(UTC) - timedelta(hours=ago_h)
    start = end - timedelta(seconds=seconds)
    jr.record["started"] = start.isoformat(timespec="milliseconds")
    jr.host(host).update(start_revision=revs[0], end_revision=revs[1], started=jr.record["started"],
                         finished=end.isoformat(timespec="milliseconds"))
    jr.finish(status, 0 if status == "succeeded" else 1)
    jr.record["finished"] = jr.host(host)["finished"]
    jr.save()
    return jr.run_id


def test_estimate_from_history_is_the_slowest_recent_run_that_changed_something(tmp_path: Path) -> None:
    """1.5 x the slowest of the last five successful runs of the playbook on the host that changed the
    schema; runs with nothing to migrate, failed runs, other playbooks and hosts do not count."""
    assert estimate.from_history(tmp_path, "prod", "db1", "migrate") is None
    _past_run(tmp_path, seconds=900, ago_h=10)  # older than the five below: not looked at
    for i, secs in enumerate([40, 70, 50, 60, 30]):
        _past_run(tmp_path, seconds=secs, ago_h=5 - i)
    _past_run(tmp_path, seconds=500, revs=("0002", "0002"), ago_h=0.5)  # nothing to migrate
    _past_run(tmp_path, seconds=500, status="rolled_back", ago_h=0.4)
    _past_run(tmp_path, seconds=500, playbook="backup", ago_h=0.3)
    _past_run(tmp_path, seconds=500, host="db2", ago_h=0.2)
    est = estimate.from_history(tmp_path, "prod", "db1", "migrate")
    assert est is not None and est.source == "history"
    assert est.seconds == pytest.approx(1.5 * 70, abs=0.01)
    assert "the slowest of the last 5 runs" in est.basis and "1min 10s" in est.basis


def test_estimate_from_size() -> None:
    """No history: OVERHEAD + 2 x max_wait + size at BACKUP_RATE (20 MB/s)."""
    est = estimate.from_size(10 * 1024**3, "db1", "migrate", 120)
    assert est.source == "database size"
    assert est.seconds == pytest.approx(60 + 240 + 10 * 1024 / 20)
    assert "10.0 GB at 20 MB/s" in est.basis


# -- runs against the real services ---------------------------------------------------------------


def _hhmm(when: datetime) -> str:
    return f"{when:%H:%M}"


def _around_now(before: timedelta = timedelta(hours=1), after: timedelta = timedelta(hours=1),
                tz: str = "UTC", days: list[str] | None = None) -> dict[str, Any]:
    """A window open now: from ``before`` ago to ``after`` from now (whole minutes), in ``tz``."""
    now = datetime.now(ZoneInfo(tz))
    return {"days": days or list(DAYS), "start": _hhmm(now - before), "end": _hhmm(now + after), "tz": tz}


def _closed_today() -> dict[str, Any]:
    """A window open all day on every day but today (UTC)."""
    today = DAYS[datetime.now(UTC).weekday()]
    return {"days": [d for d in DAYS if d != today], "start": "00:00", "end": "23:59", "tz": "UTC"}


def _event(events: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [e for e in events if e["event"] == name]
    assert len(found) == 1, [e["event"] for e in events]
    return found[0]


def _names(events: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in events]


def test_inside_the_window_runs_and_logs_its_estimate(project: Project) -> None:
    """Inside a window with plenty of time: migrates, and logs the estimate (from the database size,
    no history yet) before the run lock is taken or any step runs."""
    project.upgrade_to("0001")
    project.write_inventory(window=_around_now())
    result = project.run("prod", "migrate")
    assert result.returncode == 0, result.stdout + result.stderr
    assert project.db.alembic_version() == {"0002"}
    events = project.events()
    est = _event(events, "window_estimate")
    assert est["source"] == "database size" and est["estimate_s"] > 60
    assert "at 20 MB/s" in est["basis"]
    assert 0 < est["left_s"] <= 3600
    names = _names(events)
    assert names.index("connecting") < names.index("window_estimate") < names.index("run_started")
    assert names.index("window_estimate") < names.index("step_started")
    record = journal(project, newest_run_id(project))
    assert record["hosts"]["db1"]["window"]["source"] == "database size"
    assert "window_ignored" not in record

    # The next run has history: its estimate comes from this run, decided before connecting.
    project.run("prod", "rollback", "--to", "0001")
    assert project.run("prod", "migrate").returncode == 0
    events = project.events()
    est = _event(events, "window_estimate")
    assert est["source"] == "history" and record["run_id"] in est["basis"]
    assert _names(events).index("window_estimate") < _names(events).index("connecting")


def test_outside_the_window_is_refused_touches_nothing_and_is_journaled(project: Project) -> None:
    """Outside: exit 4 before connecting, one line saying why and how to override; the database, the
    backup folder and the run lock untouched; the journal says refused."""
    project.upgrade_to("0001")
    project.write_inventory(window=_closed_today())
    before = project.state()
    result = project.run("prod", "migrate")
    assert result.returncode == 4, result.stdout + result.stderr
    assert "outside the maintenance window of 'prod'" in result.stderr
    assert "--ignore-window" in result.stderr and "Traceback" not in result.stderr
    assert project.state() == before and project.backups() == []
    record = journal(project, newest_run_id(project))
    assert record["status"] == "refused" and record["exit_code"] == 4
    assert record["steps"] == []
    names = _names(project.events())
    assert "connecting" not in names and "step_started" not in names
    assert names[-1] == "run_finished"


def test_ignore_window_runs_outside_on_purpose(project: Project) -> None:
    """--ignore-window outside the window: the run migrates, says so in a warning event and in its journal."""
    project.upgrade_to("0001")
    project.write_inventory(window=_closed_today())
    result = project.run("prod", "migrate", "--ignore-window")
    assert result.returncode == 0, result.stdout + result.stderr
    assert project.db.alembic_version() == {"0002"}
    events = project.events()
    ignored = _event(events, "window_ignored")
    assert ignored["level"] == "warning" and ignored["reason"] == "outside the window"
    assert "outside the maintenance window" in ignored["detail"]
    est = _event(events, "window_estimate")
    assert est["left_s"] is None and est["closes"] is None  # logged all the same
    record = journal(project, newest_run_id(project))
    assert record["window_ignored"] is True
    assert record["hosts"]["db1"]["window_ignored"] == ["outside the window"]
    assert "--ignore-window" in record["argv"]


def _stretch(project: Project, run_id: str, hours: float) -> None:
    """Make a real run's record say it took ``hours`` longer: its start moved back, nothing else
    changed (the record stays exactly in the journal's format)."""
    path = project.dir / ".runbook" / "runs" / f"{run_id}.json"
    record = json.loads(path.read_text())

    def earlier(stamp: str) -> str:
        return (datetime.fromisoformat(stamp) - timedelta(hours=hours)).isoformat(timespec="milliseconds")

    record["started"] = earlier(record["started"])
    record["hosts"]["db1"]["started"] = earlier(record["hosts"]["db1"]["started"])
    path.write_text(json.dumps(record, indent=2))


def test_a_window_too_short_for_the_runs_history_is_refused(project: Project) -> None:
    """A real migrate, recorded as having taken 3 h; back to 0001 by a real rollback; then with one
    hour of window left, migrate exits 4 naming both figures, before connecting, touching nothing."""
    project.upgrade_to("0001")
    assert project.run("prod", "migrate").returncode == 0
    past = newest_run_id(project)
    _stretch(project, past, 3)
    assert project.run("prod", "rollback", "--to", "0001").returncode == 0
    window = _around_now()
    project.write_inventory(window=window)
    before, backups = project.state(), project.backups()

    result = project.run("prod", "migrate")
    assert result.returncode == 4, result.stdout + result.stderr
    line, = [l for l in result.stderr.splitlines() if l.startswith("runbook: error:")]
    est = _event(project.events(), "window_estimate")
    assert est["source"] == "history" and 0 < est["left_s"] <= 3600
    assert f"the maintenance window of 'prod' closes in {estimate.human(est['left_s'])} (at {window['end']} UTC)" in line
    assert "less than the estimate of 4h 30min for migrate on db1" in line and past in line
    assert project.state() == before and project.backups() == backups
    record = journal(project, newest_run_id(project))
    assert (record["status"], record["exit_code"], record["steps"]) == ("refused", 4, [])
    assert record["hosts"]["db1"]["window"]["source"] == "history"
    names = _names(project.events())
    assert "connecting" not in names and "window_estimate" in names

    # --ignore-window runs it all the same, and says what it ignored.
    result = project.run("prod", "migrate", "--ignore-window")
    assert result.returncode == 0, result.stdout + result.stderr
    ignored = _event(project.events(), "window_ignored")
    assert ignored["reason"] == "the window is too short for the estimate"


def test_a_window_too_short_for_the_size_estimate_is_refused(project: Project) -> None:
    """No history: the estimate needs the database's size, read after connecting, before the run
    lock and any step (here 2 x max_wait of 1 h make it over 2 h, with 1 h left): exit 4, nothing touched."""
    project.upgrade_to("0001")
    project.write_inventory(window=_around_now(), locks={"lock_timeout": "1s", "max_wait": "1h"})
    before = project.state()
    result = project.run("prod", "migrate")
    assert result.returncode == 4, result.stdout + result.stderr
    assert "less than the estimate of 2h 01min for migrate on db1 (no past migrate on db1" in result.stderr
    assert project.state() == before and project.backups() == []
    names = _names(project.events())
    assert names.index("connecting") < names.index("window_estimate")
    assert "run_started" not in names and "step_started" not in names
    assert journal(project, newest_run_id(project))["status"] == "refused"


def _zone_at_local_hour(hour: int) -> str:
    """A fixed-offset zone (Etc/GMT-N is UTC+N) in which it is ``hour`` o'clock now."""
    offset = (hour - datetime.now(UTC).hour) % 24
    if offset > 14:
        offset -= 24
    return "Etc/GMT" if offset == 0 else f"Etc/GMT{-offset:+d}"


def test_a_window_across_midnight_on_the_real_clock(project: Project) -> None:
    """In a zone where it is just past midnight, a window opened yesterday at 23:xx and closing at
    01:xx: yesterday's window holds now (migrates; it closes at 01:xx local), today's does not (refused)."""
    for _ in range(2):  # once more if the hour turned in between
        tz = _zone_at_local_hour(0)
        now = datetime.now(ZoneInfo(tz))
        if now.hour == 0:
            break
    yesterday, today = DAYS[(now - timedelta(days=1)).weekday()], DAYS[now.weekday()]
    window = _around_now(tz=tz, days=[today])
    assert window["start"] > window["end"]  # 23:xx-01:xx: across midnight
    project.upgrade_to("0001")
    project.write_inventory(window=window)
    refused = project.run("prod", "migrate")
    assert refused.returncode == 4 and "outside the maintenance window" in refused.stderr, refused.stderr

    project.write_inventory(window={**window, "days": [yesterday]})
    result = project.run("prod", "migrate")
    assert result.returncode == 0, result.stdout + result.stderr
    est = _event(project.events(), "window_estimate")
    end = datetime.combine(now.date(), datetime.strptime(window["end"], "%H:%M").time(), tzinfo=ZoneInfo(tz))
    assert datetime.fromisoformat(est["closes"]) == end
    assert 0 < est["left_s"] <= 3600


@pytest.mark.parametrize("tz", ["Europe/Berlin", "America/New_York"])
def test_a_window_in_a_zone_with_daylight_saving(project: Project, tz: str) -> None:
    """A window written in a zone with DST, around the real time there: runs, and closes when the
    wall clock there shows its end."""
    project.upgrade_to("0001")
    window = _around_now(tz=tz)
    project.write_inventory(window=window)
    result = project.run("prod", "migrate")
    assert result.returncode == 0, result.stdout + result.stderr
    closes = datetime.fromisoformat(_event(project.events(), "window_estimate")["closes"])
    assert f"{closes.astimezone(ZoneInfo(tz)):%H:%M}" == window["end"]
    assert closes > datetime.now(UTC)
