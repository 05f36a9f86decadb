"""Narrow unit tests of a fleet's pure parts: the shard split, --limit/--shard parsing, the worst
exit code, and the journal written by several threads at once (the end-to-end behaviour is in
tests/test_fleet.py, against real sshd and PostgreSQL)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from runbook.errors import ConfigError
from runbook.journal import Journal
from runbook.outcome import worst
from runbook.selection import parse_shard, patterns, shard_of

NAMES = [f"tenant-{i:04d}" for i in range(2000)]


def test_every_host_is_in_exactly_one_shard_and_shards_are_about_even() -> None:
    for n in (1, 2, 3, 7, 16):
        shards = [shard_of(name, n) for name in NAMES]
        assert set(shards) == set(range(1, n + 1))
        counts = [shards.count(k) for k in range(1, n + 1)]
        assert max(counts) < 1.3 * len(NAMES) / n and min(counts) > 0.7 * len(NAMES) / n, counts


def test_the_split_depends_on_the_name_only() -> None:
    """Not on the inventory's order, nor on which other hosts exist."""
    before = {name: shard_of(name, 4) for name in NAMES}
    assert {name: shard_of(name, 4) for name in reversed(NAMES)} == before
    assert shard_of("new-tenant", 4) in range(1, 5)
    assert {name: shard_of(name, 4) for name in NAMES} == before  # adding one moved nobody


def test_one_more_shard_moves_about_one_host_in_n_plus_one_and_only_to_the_new_shard() -> None:
    moved = [name for name in NAMES if shard_of(name, 4) != shard_of(name, 5)]
    assert 0.15 * len(NAMES) < len(moved) < 0.25 * len(NAMES)  # ~1/5
    assert {shard_of(name, 5) for name in moved} == {5}


@pytest.mark.parametrize("text, expected", [("1/4", (1, 4)), (" 4 / 4 ", (4, 4)), ("1/1", (1, 1))])
def test_shard_parses(text: str, expected: tuple[int, int]) -> None:
    assert parse_shard(text) == expected


@pytest.mark.parametrize("text, message", [
    ("0/4", "K must be from 1 to 4 (a 0-based index"),
    ("5/4", "K must be from 1 to 4"),
    ("1/0", "N must be at least 1"),
    ("-1/4", "expected K/N"),
    ("1/4/2", "expected K/N"),
    ("", "expected K/N"),
])
def test_bad_shards_are_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_shard(text)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_limit_patterns_comma_separated_or_repeated() -> None:
    assert patterns(("a,b", "c*", " d ,")) == ["a", "b", "c*", "d"]
    with pytest.raises(ConfigError):
        patterns((" , ",))


def test_worst_exit_code() -> None:
    assert worst([0, 1, 0]) == 1
    assert worst([1, 4]) == 4
    assert worst([4, 3, 2]) == 3  # a person needed outranks a refusal
    assert worst([]) == 0


def test_the_journal_written_by_several_threads(tmp_path: Path) -> None:
    """Eight threads start and finish steps, change their host entries and save at once: no save
    fails on a record changing under it, and the file always holds the whole record."""
    jr = Journal(tmp_path, "20261201T000000Z-abc123", "tenants", "migrate", [])
    errors: list[BaseException] = []

    def host(name: str) -> None:
        try:
            for i in range(60):
                entry = jr.step_started(name, f"step{i}", "run")
                rec = jr.host(name)
                rec.update(start_revision="0001", step=i)
                rec.setdefault("window_ignored", []).append(i)
                rec[f"k{i}"] = {"n": i}
                jr.step_finished(entry, "ok", {"i": i})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=host, args=(f"t{n}",)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    data = json.loads(jr.path.read_text())
    assert len(data["steps"]) == 8 * 60 and all(s["outcome"] == "ok" for s in data["steps"])
    assert {h: r["step"] for h, r in data["hosts"].items()} == {f"t{n}": 59 for n in range(8)}
    assert not list(jr.path.parent.glob("*.tmp"))
