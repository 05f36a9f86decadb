"""Retention (``backup.keep``) on the host: the newest backups stay, and so do the ones a rollback needs."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

from tests.fixtures.project import Project


def _stamp_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _backup(project: Project) -> Path:
    """Run ``runbook prod backup``; returns the dump it wrote."""
    before = set(project.backups())
    # backup names carry a one-second stamp: never start in the second of the previous backup
    while any(_stamp_now() in p.name for p in before):
        time.sleep(0.05)
    result = project.run("prod", "backup")
    assert result.returncode == 0, result.stderr
    (new,) = set(project.backups()) - before
    return new


def _files(project: Project) -> set[str]:
    return {p.name for p in project.backup_dir.iterdir()}


def _with_checksums(*dumps: Path) -> set[str]:
    return {p.name for p in dumps} | {p.name + ".sha256" for p in dumps}


def test_keep_two_prunes_old_backups_but_never_the_last_migrates(project: Project) -> None:
    """keep: 2 and four backups after a migrate: the 2 newest and the migrate's backup remain, with checksums."""
    project.write_inventory(backup={"dir": str(project.backup_dir), "keep": 2})
    project.upgrade_to("0001")
    result = project.run("prod", "migrate")
    assert result.returncode == 0, result.stderr
    (migrate_backup,) = project.backups()
    state = project.state()

    taken = [_backup(project) for _ in range(4)]
    assert _files(project) == _with_checksums(migrate_backup, taken[2], taken[3])
    for gone in taken[:2]:
        assert not gone.exists() and not Path(f"{gone}.sha256").exists()
    pruned = [e for e in project.events() if e["event"] == "backup_pruned"]
    assert [e["backup"] for e in pruned] == [str(taken[1])], "the last run pruned the one beyond keep"
    assert project.state() == state, "backups and pruning never change the database"


def test_keep_counts_every_run_and_a_migrate_prunes_too(project: Project) -> None:
    """keep: 1: each backup run leaves the newest plus the migrate's; the next migrate's backup replaces it."""
    project.write_inventory(backup={"dir": str(project.backup_dir), "keep": 1})
    project.upgrade_to("0001")
    assert project.run("prod", "migrate", "--to", "0001").returncode == 0  # nothing to migrate
    assert project.backups() == [], "nothing pending: no backup taken (tests/test_nothing_pending.py)"
    first = _backup(project)
    # a no-op migrate is no "last successful migrate": it protects no backup
    second = _backup(project)
    assert not first.exists()
    assert _files(project) == _with_checksums(second)

    before = set(project.backups())
    while any(_stamp_now() in p.name for p in before):
        time.sleep(0.05)
    assert project.run("prod", "migrate").returncode == 0
    (migrate_backup,) = set(project.backups()) - before
    assert _files(project) == _with_checksums(migrate_backup)
    third = _backup(project)
    assert _files(project) == _with_checksums(migrate_backup, third)
    assert project.db.alembic_version() == {"0002"}
