"""The maintenance window guard."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from runbook.errors import ConfigError, GuardRefused
from runbook.guards import check_window, in_window
from runbook.inventory_keys import WindowConfig
from tests.fixtures.project import Project


def _w(**kw: object) -> WindowConfig:
    return WindowConfig.model_validate({"days": ["sun"], "start": "02:00", "end": "04:00", "tz": "UTC", **kw})


def test_inside_and_outside_a_window() -> None:
    """Sunday 03:00 UTC is inside sun 02:00-04:00; Sunday 04:00 and Monday 03:00 are not."""
    assert in_window(_w(), datetime(2026, 11, 29, 3, 0, tzinfo=timezone.utc))
    assert not in_window(_w(), datetime(2026, 11, 29, 4, 0, tzinfo=timezone.utc))
    assert not in_window(_w(), datetime(2026, 11, 30, 3, 0, tzinfo=timezone.utc))


def test_window_in_another_time_zone() -> None:
    """The window is read in its own time zone (02:00-04:00 Berlin is 01:00-03:00 UTC in winter)."""
    w = _w(tz="Europe/Berlin")
    assert in_window(w, datetime(2026, 11, 29, 1, 30, tzinfo=timezone.utc))
    assert not in_window(w, datetime(2026, 11, 29, 3, 30, tzinfo=timezone.utc))


def test_window_across_midnight() -> None:
    """sat 23:00-01:00 includes Sunday 00:30 (opened on Saturday) but not Saturday 00:30."""
    w = _w(days=["sat"], start="23:00", end="01:00")
    assert in_window(w, datetime(2026, 11, 29, 0, 30, tzinfo=timezone.utc))
    assert not in_window(w, datetime(2026, 11, 28, 0, 30, tzinfo=timezone.utc))


def test_bad_time_zone_is_a_config_error() -> None:
    """An unknown time zone is refused when the inventory is validated, and by the guard itself."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        _w(tz="Mars/Olympus")
    with pytest.raises(ConfigError):
        in_window(_w().model_copy(update={"tz": "Mars/Olympus"}), datetime(2026, 11, 29, 3, tzinfo=timezone.utc))


def test_migrate_outside_window_is_refused_and_touches_nothing(project: Project) -> None:
    """migrate outside its window exits 4 with nothing touched; rollback and status are not held back."""
    project.upgrade_to("0001")
    now = datetime.now(timezone.utc)
    closed = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    closed.remove(closed[now.weekday()])  # every day but today
    project.write_inventory(window={"days": closed, "start": "00:00", "end": "23:59", "tz": "UTC"})
    before = project.state()
    result = project.run("prod", "migrate")
    assert result.returncode == 4, result.stderr
    assert "outside the maintenance window" in result.stderr
    assert project.state() == before
    assert project.backups() == []
    assert project.run("prod", "status").returncode == 0


def test_check_window_ignores_playbooks_without_upgrade(tmp_path: Path) -> None:
    """Only playbooks that upgrade are held to the window."""
    class Env:
        name = "prod"
        class config:  # noqa: N801
            window = _w()

    class PB:
        @staticmethod
        def kinds() -> set[str]:
            return {"rollback", "verify"}

    check_window(Env, PB, datetime(2026, 11, 30, 3, tzinfo=timezone.utc))
    PB.kinds = staticmethod(lambda: {"upgrade"})  # type: ignore[method-assign]
    with pytest.raises(GuardRefused):
        check_window(Env, PB, datetime(2026, 11, 30, 3, tzinfo=timezone.utc))
