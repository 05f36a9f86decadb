"""CREATE INDEX CONCURRENTLY gets its own timeout policy; an INVALID index it leaves is dropped."""

from __future__ import annotations

import threading
import time

from tests.fixtures.project import NO_PREFLIGHT_PLAYBOOK, Project

CIC = """
with op.get_context().autocommit_block():
    op.execute("CREATE INDEX CONCURRENTLY ix_documents_title ON documents (title)")
"""


def _hold(project: Project, release: threading.Event, seconds: float = 30.0) -> threading.Thread:
    """An application transaction with an uncommitted write on documents, until ``release`` (or ``seconds``)."""
    started = threading.Event()

    def work() -> None:
        with project.db.connect() as conn:
            conn.execute("INSERT INTO documents (collection_id, title, content) "
                         "SELECT collection_id, 'held', 'held' FROM documents LIMIT 1")
            started.set()
            release.wait(seconds)
            conn.rollback()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    assert started.wait(10)
    return thread


def _setup(project: Project, concurrently_timeout: str, max_wait: str) -> None:
    project.start_at_0002()
    project.add_revision("0003", "0002", CIC, "op.execute('DROP INDEX IF EXISTS ix_documents_title')",
                         doc="index document titles")
    project.write_playbook("migrate", NO_PREFLIGHT_PLAYBOOK)
    project.write_inventory(locks={"lock_timeout": "1s", "max_wait": max_wait, "blockers": "wait",
                                   "concurrently_timeout": concurrently_timeout})


def test_index_build_waits_out_an_old_transaction(project: Project) -> None:
    """With lock_timeout 1s, the concurrent build waits 3 s for an old transaction (its own policy) and succeeds."""
    _setup(project, "20s", "10s")
    holder = _hold(project, threading.Event(), seconds=3.0)
    result = project.run("prod", "migrate")
    holder.join()
    assert result.returncode == 0, result.stderr
    assert project.db.alembic_version() == {"0003"}
    valid = project.db.psql("SELECT indisvalid FROM pg_index WHERE indexrelid = 'ix_documents_title'::regclass")
    assert valid.strip() == "t"
    events = project.events()
    assert any(e["event"] == "concurrent_index_policy" and e["lock_timeout"] == "20000ms" for e in events)
    assert not [e for e in events if e["event"] == "lock_timeout_retry"]


def test_failed_index_build_leaves_no_invalid_index(project: Project) -> None:
    """A concurrent build that times out is retried past its INVALID index, then rolled back: state identical."""
    _setup(project, "1s", "3s")
    before = project.state()
    release = threading.Event()
    holder = _hold(project, release)
    proc = project.start("prod", "migrate")
    project.wait_event("rollback_started", proc=proc)  # the build gave up: the old transaction ends now
    release.set()
    out, err = proc.communicate(timeout=120)
    holder.join()
    assert proc.returncode == 1, out + err
    events = project.events()
    retries = [e for e in events if e["event"] == "lock_timeout_retry" and e.get("direction") == "upgrade"]
    assert retries, "the build was retried"
    assert not [e for e in events if "already exists" in str(e.get("error", ""))]
    assert any(e["event"] == "invalid_index_dropped" for e in events)
    assert project.state() == before
    assert project.db.psql("SELECT count(*) FROM pg_index WHERE NOT indisvalid").strip() == "0"
