"""Sessions that block the migration: the pre-flight policies and the lock_timeout retries, for real.

An application session holds a lock on ``collections`` (which 0002 alters) in an open transaction,
as a worker or a report would. ``check_locks`` finds it before any DDL and applies the policy; a
session that appears after the pre-flight is met by the upgrade's lock_timeout retries instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from ruamel.yaml import YAML

from tests.fixtures.project import PLAYBOOKS, AppLoad, Project, dump_yaml

LOCK_TIMEOUT = 1.0


class Holder:
    """An application session holding ACCESS SHARE on a table in an open transaction."""

    def __init__(self, project: Project, table: str = "collections", app: str = "rag-worker") -> None:
        self.conn = project.db.connect(application_name=app)
        self.query = f"SELECT count(*) FROM {table}"
        self.conn.execute(self.query).fetchone()  # psycopg opened a transaction: the lock stays
        self.pid = self.conn.info.backend_pid
        self.released_at: float | None = None

    def release(self) -> None:
        self.conn.commit()
        self.released_at = time.monotonic()

    def in_transaction(self) -> bool:
        return self.conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def app_at_0001(project: Project) -> Iterator[Project]:
    """The application with its data at 0001: migrate applies 0002, which alters collections."""
    project.upgrade_to("0001")
    yield project


def _run_with(project: Project, holder: Holder, **locks: Any) -> tuple[Any, float]:
    project.write_inventory(locks={"lock_timeout": "1s", "max_wait": "10s", **locks})
    started = time.monotonic()
    result = project.run("prod", "migrate")
    return result, time.monotonic() - started


def _events(project: Project, name: str) -> list[dict[str, Any]]:
    return [e for e in project.events() if e["event"] == name]


def _pid_alive(project: Project, pid: int) -> bool:
    with project.db.admin() as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() == (1,)


def test_wait_policy_waits_for_the_blocker_then_migrates(app_at_0001: Project) -> None:
    """Policy wait: the run waits while the blocker holds its lock, migrates once it commits (~2 s), exit 0."""
    project = app_at_0001
    holder = Holder(project)
    try:
        proc = project.start("prod", "migrate")
        first_wait = project.wait_event("lock_wait", proc=proc)
        time.sleep(2.0)
        holder.release()
        out, err = proc.communicate(timeout=120)
    finally:
        holder.close()
    assert proc.returncode == 0, out + err
    assert project.db.alembic_version() == {"0002"}
    assert [s["pid"] for s in first_wait["sessions"]] == [holder.pid]
    waits = _events(project, "lock_wait")
    assert len(waits) >= 2 and all(w["sessions"][0]["application"] == "rag-worker" for w in waits)
    upgrade = next(e for e in project.events() if e["event"] == "step_started" and e["step"] == "upgrade")
    assert upgrade["timestamp"] > waits[-1]["timestamp"]


def test_wait_policy_gives_up_after_max_wait(app_at_0001: Project) -> None:
    """Policy wait, a blocker that never commits: exit 4 after max_wait, no DDL, state identical."""
    project = app_at_0001
    before = project.state()
    holder = Holder(project)
    try:
        result, took = _run_with(project, holder, max_wait="2s", blockers="wait")
        assert holder.in_transaction()
    finally:
        holder.close()
    assert result.returncode == 4, result.stdout + result.stderr
    assert project.state() == before
    assert 2.0 <= took < 30
    assert f"pid {holder.pid}" in result.stderr and "max_wait 2s" in result.stderr
    assert _events(project, "blockers_wait_exhausted")
    assert not _events(project, "migration_attempt")
    assert not [e for e in _events(project, "step_started") if e["step"] == "upgrade"]


def test_abort_policy_refuses_at_once(app_at_0001: Project) -> None:
    """Policy abort: exit 4 without waiting, the blocking pid named, nothing touched."""
    project = app_at_0001
    before = project.state()
    holder = Holder(project)
    try:
        result, _ = _run_with(project, holder, blockers="abort")
        assert holder.in_transaction()
    finally:
        holder.close()
    assert result.returncode == 4, result.stdout + result.stderr
    assert project.state() == before
    assert f"pid {holder.pid}" in result.stderr and "rag-worker" in result.stderr
    aborted, = _events(project, "blockers_abort")
    assert aborted["sessions"][0]["pid"] == holder.pid
    assert not _events(project, "lock_wait") and not _events(project, "migration_attempt")
    check = next(e for e in project.events() if e["event"] == "step_failed" and e["step"] == "check_locks")
    assert check["duration_ms"] < 2000


def test_terminate_policy_ends_the_blocker_and_migrates(app_at_0001: Project) -> None:
    """Policy terminate: the blocker's session is terminated and logged with pid, user, application, query, age; exit 0."""
    project = app_at_0001
    holder = Holder(project)
    time.sleep(0.3)  # an age worth showing
    try:
        result, _ = _run_with(project, holder, blockers="terminate")
        assert not _pid_alive(project, holder.pid)
        with pytest.raises(psycopg.OperationalError):
            holder.conn.execute("SELECT 1")
    finally:
        holder.close()
    assert result.returncode == 0, result.stdout + result.stderr
    assert project.db.alembic_version() == {"0002"}
    terminated, = _events(project, "blocker_terminated")
    assert terminated["pid"] == holder.pid and terminated["user"] == project.db.user
    assert terminated["application"] == "rag-worker" and terminated["query"] == holder.query
    assert terminated["xact_age_s"] >= 0.3
    check = next(e for e in project.events() if e["event"] == "step_finished" and e["step"] == "check_locks")
    assert check["terminated"] == [holder.pid]


# -- lock_timeout retries: a lock taken after the pre-flight ---------------------------------------

def _playbook_with_pause(project: Project) -> None:
    """The shipped migrate playbook with a pause after check_locks (where workers would be paused).

    An application transaction that starts in that gap is one the pre-flight could not see: only
    the upgrade's lock_timeout retries protect the application from it.
    """
    shipped = YAML(typ="safe").load((PLAYBOOKS / "migrate.yaml").read_text())
    at = shipped["steps"].index("check_locks")
    shipped["steps"].insert(at + 1, {"shell": {"command": "sleep 1.5"}})
    project.write_playbook("migrate", dump_yaml(shipped))


class MigrationWatcher:
    """Samples pg_stat_activity: how long each runbook:upgrade session has waited on a lock."""

    def __init__(self, project: Project) -> None:
        self.conn = project.db.admin()
        self.waits: dict[int, float] = {}  # backend pid -> longest wait seen
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.is_set():
            rows = self.conn.execute(
                "SELECT pid, extract(epoch FROM clock_timestamp() - query_start)::float FROM pg_stat_activity "
                "WHERE application_name LIKE 'runbook:upgrade %' AND wait_event_type = 'Lock'").fetchall()
            for pid, waited in rows:
                self.waits[pid] = max(self.waits.get(pid, 0.0), waited)
            time.sleep(0.02)

    def __enter__(self) -> "MigrationWatcher":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.conn.close()


def test_lock_timeout_retries_keep_application_latency_bounded(app_at_0001: Project) -> None:
    """A lock taken after the pre-flight: the upgrade retries on lock_timeout, app queries wait < 1.2 x lock_timeout, and it migrates once the holder commits."""
    project = app_at_0001
    _playbook_with_pause(project)
    with AppLoad(project.db) as load, MigrationWatcher(project) as watcher:
        proc = project.start("prod", "migrate")
        try:
            project.wait_event("step_started", proc=proc, step="shell")
            holder = Holder(project)  # a transaction the pre-flight did not see
            project.wait_event("lock_timeout_retry", proc=proc)
            time.sleep(4.0)
            holder.release()
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        holder.close()
    assert proc.returncode == 0, out + err
    assert project.db.alembic_version() == {"0002"}

    retries = _events(project, "lock_timeout_retry")
    attempts = _events(project, "migration_attempt")
    assert len(retries) >= 3 and len(attempts) == len(retries) + 1
    assert all(a["lock_timeout_ms"] <= LOCK_TIMEOUT * 1000 for a in attempts)
    assert all("lock timeout" in r["error"] for r in retries)

    # On the server: each try was a session of its own that waited at most about one lock_timeout.
    assert len(watcher.waits) >= 2, watcher.waits
    assert max(watcher.waits.values()) < LOCK_TIMEOUT + 0.3, watcher.waits

    # The application: its queries queued behind a waiting ALTER for one lock_timeout at most.
    assert holder.released_at is not None
    during = [s for t, s in load.samples if t < holder.released_at]
    assert not load.errors and len(during) > 50
    worst = load.worst
    print(f"worst application query latency {worst:.3f}s with lock_timeout {LOCK_TIMEOUT:g}s; "
          f"longest lock wait of a migration session {max(watcher.waits.values()):.3f}s; "
          f"{len(attempts)} tries")
    assert worst < 1.2 * LOCK_TIMEOUT + 0.4
    assert worst > LOCK_TIMEOUT / 16  # the app did queue behind a try: the test measured something


def test_lock_timeout_retries_exhausted_roll_back(app_at_0001: Project) -> None:
    """A lock taken after the pre-flight and never released: the retries stop at max_wait, exit 1, state identical."""
    project = app_at_0001
    project.write_inventory(locks={"lock_timeout": "1s", "max_wait": "3s", "blockers": "wait"})
    _playbook_with_pause(project)
    before = project.state()
    proc = project.start("prod", "migrate")
    holder = None
    try:
        project.wait_event("step_started", proc=proc, step="shell")
        holder = Holder(project)
        out, err = proc.communicate(timeout=120)
        assert holder.in_transaction()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if holder is not None:
            holder.close()
    assert proc.returncode == 1, out + err
    assert project.state() == before
    assert "could not get its locks" in err and "max_wait 3s" in err
    assert len(_events(project, "lock_timeout_retry")) >= 2
