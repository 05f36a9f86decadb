"""Big databases: directory-format backups with ``pg_dump -j`` and the swap restore (``pg_restore -j``
into a new database, renamed into place), over a real SSH login against a real PostgreSQL.

Every failure case checks the database (schema dump, row counts, alembic_version), the run's journal
record, the exit code, and that nothing of the run is left (password files, host processes, database
sessions; and no copy database of the restore).
"""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from runbook import dbswap
from tests.fixtures.faults import assert_nothing_left, journal
from tests.fixtures.pg import APP_USER, PgServer
from tests.fixtures.project import Project

DIRECTORY = {"format": "directory", "jobs": 2}


def _pg_restore_of(project: Project) -> str:
    """A pgrep pattern for the pg_restore of a swap restore of ``project``'s database: the program
    (``.../bin/pg_restore``), not the host job's shell, whose script names it too."""
    return f"bin/pg_restore -j 2 --exit-on-error -d dbname={project.db.name[:20]}"


# -- helpers ------------------------------------------------------------------------------------
def _stamp_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _dumpdirs(project: Project) -> list[Path]:
    return sorted(p for p in project.backup_dir.glob("*.dumpdir") if p.is_dir())


def _backup(project: Project) -> Path:
    """``runbook prod backup`` (never in the second of the previous one); the folder it wrote."""
    before = set(_dumpdirs(project))
    while any(_stamp_now() in p.name for p in before):
        time.sleep(0.05)
    result = project.run("prod", "backup")
    assert result.returncode == 0, result.stdout + result.stderr
    (new,) = set(_dumpdirs(project)) - before
    return new


def _side_databases(server: PgServer, db: str) -> list[str]:
    """The databases a swap restore made for ``db`` (its copies and the ones it replaced)."""
    with server.admin() as conn:
        rows = conn.execute(dbswap.SIDE_SQL, dbswap.side_params(db)).fetchall()
    return sorted(d["name"] for d in dbswap.side_databases(rows, db))


def _copies(project: Project) -> list[str]:
    prefix = dbswap.side_prefix(project.db.name, "restore")
    return [n for n in _side_databases(project.db.server, project.db.name) if n.startswith(prefix)]


def _kept(project: Project) -> list[str]:
    prefix = dbswap.side_prefix(project.db.name, "before")
    return [n for n in _side_databases(project.db.server, project.db.name) if n.startswith(prefix)]


def _new_run(project: Project, before: set[Path]) -> str:
    (log,) = set(project.run_logs()) - before
    return log.stem


def _events(project: Project, run_id: str) -> list[dict[str, Any]]:
    return project.events(project.dir / ".runbook" / "runs" / f"{run_id}.jsonl")


def _database_props(server: PgServer, db: str) -> dict[str, Any]:
    """What a database is beyond its content: owner, encoding, locale, grants, comment, settings."""
    with server.admin() as conn:
        row = conn.execute(
            "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datctype, "
            "datconnlimit, datacl::text[], shobj_description(oid, 'pg_database') FROM pg_database "
            "WHERE datname = %s", (db,)).fetchone()
        settings = conn.execute(
            "SELECT coalesce(pg_get_userbyid(nullif(s.setrole, 0)), '-'), s.setconfig FROM pg_db_role_setting s "
            "JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = %s ORDER BY 1", (db,)).fetchall()
    assert row is not None
    return {"owner": row[0], "encoding": row[1], "collate": row[2], "ctype": row[3], "connlimit": row[4],
            "acl": sorted(row[5] or []), "comment": row[6], "settings": settings}


def _big_table(project: Project, rows: int) -> None:
    """A table of the application's role, big enough that pg_restore takes a while."""
    project.db.psql(f"SET ROLE {APP_USER};\n"
                    "CREATE TABLE big (id int PRIMARY KEY, pad text NOT NULL);\n"
                    f"INSERT INTO big SELECT g, md5(g::text) || md5((g + 1)::text) FROM generate_series(1, {rows}) g;\n")


def _wait_for_process(pattern: str, proc: subprocess.Popen[str], timeout: float = 120) -> int:
    """The pid of a process whose command line matches ``pattern`` (pgrep -f), once it runs."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(["pgrep", "-f", "-o", pattern], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            return int(out.stdout.split()[0])
        if proc.poll() is not None:
            o, e = proc.communicate()
            pytest.fail(f"the run ended (exit {proc.returncode}) before {pattern!r} ran:\n{o}\n{e}")
        assert time.monotonic() < deadline, f"no process {pattern!r}"
        time.sleep(0.02)


@pytest.fixture
def swap_rights(pg_server: PgServer) -> Iterator[None]:
    """What a swap restore needs, granted to the application's role for the test (taken back after)."""
    role = sql.Identifier(APP_USER)
    with pg_server.admin() as conn:
        conn.execute(sql.SQL("ALTER ROLE {} CREATEDB").format(role))
        conn.execute(sql.SQL("GRANT pg_signal_backend TO {}").format(role))
    try:
        yield
    finally:
        with pg_server.admin() as conn:
            conn.execute(sql.SQL("ALTER ROLE {} NOCREATEDB").format(role))
            conn.execute(sql.SQL("REVOKE pg_signal_backend FROM {}").format(role))


@pytest.fixture
def swap_project(project: Project, swap_rights: None) -> Iterator[Project]:
    """``project`` with directory backups (2 jobs) and swap restores (2 jobs); the databases the
    swap leaves beside the test database are dropped after the test."""
    project.env_overrides = {"backup": {"dir": str(project.backup_dir), "keep": 10, **DIRECTORY},
                             "restore": {"mode": "swap", "jobs": 2}}
    project.write_inventory()
    try:
        yield project
    finally:
        server = project.db.server
        with server.admin() as conn:
            for name in _side_databases(server, project.db.name):
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# -- directory-format backups ---------------------------------------------------------------------
def test_directory_backup_with_jobs_is_checksummed_listed_restorable_and_pruned(project: Project) -> None:
    """format: directory, jobs: 2: a 0700 folder of 0600 files with a sha256sum -c manifest beside it
    (its sha256 recorded), read by pg_restore --list; status lists it; rollback --restore puts it
    back; retention prunes folders like files."""
    project.write_inventory(backup={"dir": str(project.backup_dir), "keep": 2, **DIRECTORY})
    project.upgrade_to("0001")
    at_backup = project.state()
    logs = set(project.run_logs())
    folder = _backup(project)
    run_id = _new_run(project, logs)

    assert folder.name.startswith(f"{project.db.name}_prod_") and folder.name.endswith("_0001.dumpdir")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = sorted(folder.iterdir())
    assert any(f.name == "toc.dat" for f in files) and len(files) >= 4, files
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    manifest = folder.with_name(folder.name + ".sha256")
    assert stat.S_IMODE(manifest.stat().st_mode) == 0o600
    lines = manifest.read_text().splitlines()
    assert sorted(line.split("  ", 1)[1] for line in lines) == sorted(f"{folder.name}/{f.name}" for f in files)
    check = subprocess.run(["sha256sum", "-c", "--strict", manifest.name], cwd=folder.parent,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    listed = subprocess.run([str(project.db.server.bindir / "pg_restore"), "--list", str(folder)],
                            capture_output=True, text=True)
    assert listed.returncode == 0 and "TABLE DATA public collections" in listed.stdout, listed.stderr
    facts = next(e for e in _events(project, run_id) if e["event"] == "step_finished" and e["step"] == "backup")
    assert facts["backup_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert facts["backup_size"] == sum(f.stat().st_size for f in files) + folder.stat().st_size
    assert not list(project.backup_dir.glob("*.partial*")), "no work files left"

    status = project.run("prod", "status", "--json")
    assert status.returncode == 0, status.stderr
    import json

    (host,) = json.loads(status.stdout)["hosts"]
    (listed_backup,) = host["backups"]
    assert listed_backup["name"] == folder.name and listed_backup["format"] == "directory"
    assert listed_backup["verified"] and listed_backup["sha256"] == facts["backup_sha256"]
    text = project.run("prod", "status")
    assert folder.name in text.stdout and facts["backup_sha256"][:12] in text.stdout

    project.db.psql("INSERT INTO collections (name, description) VALUES ('written-later', 'after')")
    restored = project.run("prod", "rollback", "--restore", folder.name)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert project.state() == at_backup
    saved = [p for p in _dumpdirs(project) if p.name.endswith("_pre-restore.dumpdir")]
    assert len(saved) == 1, "the pre-restore copy is a directory dump too"

    # keep: 2 counts folders like files: the oldest go, with their manifests
    taken = [_backup(project) for _ in range(3)]
    assert not folder.exists() and not manifest.exists()
    left = {p.name for p in project.backup_dir.iterdir()}
    assert {t.name for t in taken[1:]} <= left and taken[0].name not in left, left
    assert all(f"{n}.sha256" in left for n in left if n.endswith(".dumpdir"))


def test_a_damaged_directory_backup_is_refused_before_anything_changes(project: Project) -> None:
    """One byte changed in one file of a directory dump: rollback --restore refuses it (exit 1,
    nothing changed, no pre-restore backup); so does a missing file."""
    project.write_inventory(backup={"dir": str(project.backup_dir), "keep": 10, **DIRECTORY})
    project.upgrade_to("0001")
    folder = _backup(project)
    project.db.psql("INSERT INTO collections (name, description) VALUES ('written-later', 'after')")
    before = project.state()
    data = max((f for f in folder.iterdir() if f.name != "toc.dat"), key=lambda f: f.stat().st_size)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data.write_bytes(bytes(raw))

    for damage in ("changed", "missing"):
        if damage == "missing":
            data.unlink()
        logs = set(project.run_logs())
        result = project.run("prod", "rollback", "--restore", folder.name)
        run_id = _new_run(project, logs)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "does not match its manifest" in result.stderr and data.name in result.stderr, result.stderr
        assert "failed before any change" in result.stderr
        assert project.state() == before
        assert not [p for p in _dumpdirs(project) if "_pre-restore" in p.name]
        record = journal(project, run_id)
        assert record["status"] == "failed" and record["exit_code"] == 1
        assert_nothing_left(project, run_id)


def test_jobs_need_the_directory_format_and_the_swap_mode(project: Project) -> None:
    """backup.jobs > 1 without format: directory, and restore.jobs > 1 without mode: swap: exit 2,
    one line naming the key and its line, before anything connects."""
    project.upgrade_to("0001")
    before = project.state()
    project.write_inventory(backup={"dir": str(project.backup_dir), "jobs": 4})
    result = project.run("prod", "backup")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "environments.prod.backup.jobs" in line and "needs format: directory" in line, line
    assert f"{project.inventory}:" in line

    project.write_inventory(restore={"jobs": 2})
    result = project.run("prod", "backup")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "environments.prod.restore.jobs" in line and "needs mode: swap" in line, line
    assert not project.backup_dir.exists() or not list(project.backup_dir.iterdir())
    assert project.state() == before


# -- the swap restore -----------------------------------------------------------------------------
def _dress_up(project: Project) -> None:
    """Database-level properties pg_restore does not restore: settings, a role's setting in the
    database, grants, a comment."""
    name = sql.Identifier(project.db.name)
    with project.db.server.admin() as conn:
        conn.execute("DROP ROLE IF EXISTS rb_reader")
        conn.execute("CREATE ROLE rb_reader")
        conn.execute(sql.SQL("ALTER DATABASE {} SET work_mem = '7MB'").format(name))
        conn.execute(sql.SQL("""ALTER DATABASE {} SET search_path = "$user", public, "odd ""Schema" """).format(name))
        conn.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} SET statement_timeout = '42s'").format(
            sql.Identifier(APP_USER), name))
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(name))
        conn.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO rb_reader").format(name))
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS 'RAG memory, prod'").format(name))


def test_swap_restore_ends_the_sessions_and_lands_on_the_backup(swap_project: Project) -> None:
    """rollback --restore with restore.mode swap and an application session open: the session is
    ended and named, the database equals the backup (schema, rows, alembic_version) with its own
    settings, grants and comment, the replaced one is kept, shown by status, and dropped by the
    next successful run's prune."""
    project = swap_project
    project.upgrade_to("0001")
    _dress_up(project)
    props = _database_props(project.db.server, project.db.name)
    at_backup = project.state()
    assert project.run("prod", "migrate").returncode == 0
    (backup,) = _dumpdirs(project)
    project.db.psql("INSERT INTO collections (name, description) VALUES ('written-later', 'after the backup')")
    latest = project.state()

    app = project.db.connect(autocommit=True, application_name="rag-api")
    app_pid = app.info.backend_pid
    app.execute("SELECT count(*) FROM collections").fetchone()
    idle_tx = project.db.connect(application_name="rag-worker")  # idle in transaction
    idle_tx.execute("SELECT 1 FROM collections LIMIT 1").fetchone()
    try:
        logs = set(project.run_logs())
        result = project.run("prod", "rollback", "--restore", backup.name)
        run_id = _new_run(project, logs)
        assert result.returncode == 0, result.stdout + result.stderr
        err = result.stderr
        assert "restore.mode swap: pg_restore -j 2" in err and "EVERY session" in err, err
        assert "sessions_ended" in err and "rag-api" in err and str(app_pid) in err, err
        assert f"ended 2 session(s) of {project.db.name} for the swap: " in err
        assert f"pid {app_pid} rag-api ({APP_USER} from 127.0.0.1" in err
        with pytest.raises(psycopg.OperationalError):
            app.execute("SELECT 1")
        with pytest.raises(psycopg.OperationalError):
            idle_tx.execute("SELECT 1")
    finally:
        app.close()
        idle_tx.close()

    assert project.state() == at_backup
    assert _database_props(project.db.server, project.db.name) == props
    (kept,) = _kept(project)
    assert _copies(project) == []
    assert project.db.server.row_counts(kept) == latest[1] and project.db.server.alembic_version(kept) == {"0002"}

    events = _events(project, run_id)
    names = [e["event"] for e in events]
    for name in ("restore_copy_created", "restore_copy_restored", "restore_copy_verified", "sessions_ended",
                 "database_swapped"):
        assert name in names, names
    ended = next(e for e in events if e["event"] == "sessions_ended")
    assert {s["application"] for s in ended["sessions"]} == {"rag-api", "rag-worker"}, ended
    swapped = next(e for e in events if e["event"] == "database_swapped")
    assert swapped["kept_as"] == kept
    finished = next(e for e in events if e["event"] == "step_finished" and e["step"] == "rollback")
    assert finished["swap"]["before"] == kept and finished["to"] == "0001"
    assert finished["saved_current_state"] == kept, "the replaced database is the saved state"
    assert not [p for p in _dumpdirs(project) if "_pre-restore" in p.name], "no dump of it was taken"
    verified = next(e for e in events if e["event"] == "step_finished" and e["step"] == "verify")
    assert verified["failed"] == 0 and verified["revision"] == "0001"
    record = journal(project, run_id)
    assert record["status"] == "succeeded" and record["hosts"]["db1"]["swap"]["state"] == "swapped"
    assert_nothing_left(project, run_id)

    status = project.run("prod", "status")
    assert f"kept database {kept}" in status.stdout, status.stdout

    # the kept database is swapped back in by name: the state before the rollback, nothing lost
    logs = set(project.run_logs())
    back = project.run("prod", "rollback", "--restore", kept)
    run_id = _new_run(project, logs)
    assert back.returncode == 0, back.stdout + back.stderr
    assert f"<- the kept database {kept}" in back.stderr
    assert project.state() == latest
    (kept_again,) = _kept(project)
    assert kept_again != kept and project.db.server.alembic_version(kept_again) == {"0001"}
    assert _copies(project) == []
    assert_nothing_left(project, run_id)

    logs = set(project.run_logs())
    assert project.run("prod", "backup").returncode == 0
    pruned = [e for e in _events(project, _new_run(project, logs)) if e["event"] == "kept_database_dropped"]
    assert [e["database"] for e in pruned] == [kept_again]
    assert _kept(project) == [] and project.state() == latest


def test_a_failure_after_the_swap_swaps_the_kept_database_back(swap_project: Project) -> None:
    """The rollback's verify step fails after a swap (a check that only the copy passes): the
    playbook's on_failure swaps the kept database back in: exit 1, the database as it was."""
    project = swap_project
    project.upgrade_to("0001")
    backup = _backup(project)
    project.db.psql("INSERT INTO collections (name, description) VALUES ('written-later', 'after')")
    before = project.state()
    # true on the copy and the kept database (their own names), false once the copy is renamed into
    # place, true again once the kept database is back (its row)
    project.write_inventory(verify=[{"name": "a side database, or the row written later",
                                     "sql": "SELECT (current_database() LIKE '%runbook%' OR EXISTS (SELECT FROM "
                                            "collections WHERE name = 'written-later'))::int", "expect": 1}])
    logs = set(project.run_logs())
    result = project.run("prod", "rollback", "--restore", backup.name)
    run_id = _new_run(project, logs)
    assert result.returncode == 1, result.stdout + result.stderr
    assert project.state() == before
    events = _events(project, run_id)
    swaps = [e for e in events if e["event"] == "database_swapped"]
    assert len(swaps) == 2 and swaps[1]["restored_from"] == swaps[0]["kept_as"], swaps
    assert _copies(project) == []
    # the database from before the rollback went back in; the restored one is kept in its turn
    assert _kept(project) == [swaps[1]["kept_as"]]
    record = journal(project, run_id)
    assert record["status"] == "rolled_back" and record["exit_code"] == 1
    assert_nothing_left(project, run_id)


def test_swap_restore_killed_half_way_leaves_the_database_untouched(swap_project: Project) -> None:
    """pg_restore killed on the host in the middle of a swap restore: exit 1, the database exactly as
    it was, the copy dropped, nothing of the run left."""
    project = swap_project
    project.start_at_0002()
    _big_table(project, 300_000)
    backup = _backup(project)
    project.db.psql("INSERT INTO collections (name, description) VALUES ('written-later', 'must survive')")
    before = project.state()
    props = _database_props(project.db.server, project.db.name)
    logs = set(project.run_logs())

    proc = project.start("prod", "rollback", "--restore", backup.name)
    try:
        pid = _wait_for_process(_pg_restore_of(project), proc)
        os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    run_id = _new_run(project, logs)
    assert proc.returncode == 1, out + err
    assert "failed before any change" in err and "was not changed" in err, err
    assert project.state() == before
    assert _database_props(project.db.server, project.db.name) == props
    assert _copies(project) == [] and _kept(project) == []
    names = [e["event"] for e in _events(project, run_id)]
    assert "restore_copy_dropped" in names and "database_swapped" not in names, names
    record = journal(project, run_id)
    assert record["status"] == "failed" and record["exit_code"] == 1
    assert record["hosts"]["db1"]["swap"]["state"] == "dropped"
    assert_nothing_left(project, run_id)


def test_swap_restore_of_a_copy_that_fails_verification_changes_nothing(swap_project: Project) -> None:
    """The restored copy fails a verification query: it is dropped before the swap, the database and
    its sessions are untouched (exit 1)."""
    project = swap_project
    project.upgrade_to("0001")
    backup = _backup(project)
    project.db.psql("INSERT INTO collections (name, description) VALUES ('written-later', 'after')")
    count = int(project.db.psql("SELECT count(*) FROM collections").strip())
    project.write_inventory(verify=[{"name": "the newest collections are there",
                                     "sql": "SELECT count(*) FROM collections", "expect": count}])
    before = project.state()
    app = project.db.connect(autocommit=True, application_name="rag-api")
    try:
        logs = set(project.run_logs())
        result = project.run("prod", "rollback", "--restore", backup.name)
        run_id = _new_run(project, logs)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "fails 1 of" in result.stderr and "the newest collections are there" in result.stderr
        assert app.execute("SELECT 1").fetchone() == (1,), "the application's session was never ended"
    finally:
        app.close()
    assert project.state() == before
    assert _copies(project) == [] and _kept(project) == []
    names = [e["event"] for e in _events(project, run_id)]
    assert "sessions_ended" not in names and "restore_copy_dropped" in names
    assert journal(project, run_id)["status"] == "failed"
    assert_nothing_left(project, run_id)


def test_a_killed_swap_restores_copy_is_dropped_by_the_next_run(swap_project: Project) -> None:
    """SIGKILL of runbook while pg_restore fills the copy: the database is untouched; the next run
    (a backup) ends what the dead run left and drops its copy, saying so."""
    project = swap_project
    project.start_at_0002()
    _big_table(project, 300_000)
    backup = _backup(project)
    before = project.state()
    logs = set(project.run_logs())

    proc = project.start("prod", "rollback", "--restore", backup.name)
    try:
        _wait_for_process(_pg_restore_of(project), proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    run_id = _new_run(project, logs)
    assert project.state() == before
    record = journal(project, run_id)
    assert record["status"] == "running" and record["hosts"]["db1"]["swap"]["state"] == "restoring"
    copy = record["hosts"]["db1"]["swap"]["copy"]

    logs = set(project.run_logs())
    nxt = project.run("prod", "backup")
    assert nxt.returncode == 0, nxt.stdout + nxt.stderr
    events = _events(project, _new_run(project, logs))
    dropped = [e for e in events if e["event"] == "restore_copy_dropped"]
    assert [(e["database"], e["previous_run"]) for e in dropped] == [(copy, run_id)], dropped
    assert _copies(project) == [] and project.state() == before
    assert_nothing_left(project, run_id)


def test_swap_restore_without_the_rights_is_refused_before_anything(project: Project) -> None:
    """restore.mode swap for a role without CREATEDB and pg_signal_backend: rollback --restore and
    migrate are refused (exit 2), one line naming what to grant; no backup taken, nothing changed."""
    project.write_inventory(backup={"dir": str(project.backup_dir), "keep": 10, **DIRECTORY},
                            restore={"mode": "swap"})
    project.upgrade_to("0001")
    folder = _backup(project)
    before = project.state()
    taken = set(_dumpdirs(project))

    for args in (("rollback", "--restore", folder.name), ("migrate",)):
        logs = set(project.run_logs())
        result = project.run("prod", *args)
        run_id = _new_run(project, logs)
        assert result.returncode == 2, result.stdout + result.stderr
        error = [ln for ln in result.stderr.splitlines() if ln.startswith("runbook:") and "swap needs" in ln]
        assert len(error) == 1, result.stderr
        assert "restore.mode: swap needs" in error[0] and "CREATEDB" in error[0] and "pg_signal_backend" in error[0]
        assert "Nothing was done" in error[0] and "restore.mode: in-place" in error[0]
        assert project.state() == before and set(_dumpdirs(project)) == taken
        assert _copies(project) == []
        record = journal(project, run_id)
        assert record["status"] == "refused" and record["exit_code"] == 2
        assert_nothing_left(project, run_id)


def test_a_failed_migrate_rolls_back_by_swap_restore(swap_project: Project) -> None:
    """migrate through a revision without a downgrade whose verification fails: the automatic rollback
    restores the run's backup by swap (the application's session ended), exit 1, the database as
    before the run, the run lock held to the end."""
    project = swap_project
    project.add_revision("0003", "0002", 'op.create_table("tags", sa.Column("id", sa.Integer, primary_key=True))',
                         "raise NotImplementedError()", doc="tags, no way back",
                         verify=[{"name": "impossible", "sql": "SELECT 1", "expect": 2}])
    project.start_at_0002()
    before = project.state()
    app = project.db.connect(autocommit=True, application_name="rag-api")
    try:
        logs = set(project.run_logs())
        result = project.run("prod", "migrate")
        run_id = _new_run(project, logs)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "restored from the backup" in result.stderr, result.stderr
        assert "rag-api" in result.stderr
        with pytest.raises(psycopg.OperationalError):
            app.execute("SELECT 1")
    finally:
        app.close()
    assert project.state() == before
    assert _copies(project) == [] and len(_kept(project)) == 1
    events = _events(project, run_id)
    names = [e["event"] for e in events]
    assert "database_swapped" in names and "run_lock_lost" not in names, names
    restore = next(e for e in events if e["event"] == "step_finished" and e["step"] == "restore")
    assert restore["swap"]["before"] == _kept(project)[0]
    record = journal(project, run_id)
    assert record["status"] == "rolled_back" and record["exit_code"] == 1
    assert_nothing_left(project, run_id)


def test_sigterm_during_a_swap_restore_changes_nothing(swap_project: Project) -> None:
    """SIGTERM while pg_restore fills the copy: pg_restore is stopped on the host, the copy dropped,
    the database and the application's session untouched (exit 1)."""
    project = swap_project
    project.start_at_0002()
    _big_table(project, 300_000)
    backup = _backup(project)
    before = project.state()
    app = project.db.connect(autocommit=True, application_name="rag-api")
    logs = set(project.run_logs())
    proc = project.start("prod", "rollback", "--restore", backup.name)
    try:
        _wait_for_process(_pg_restore_of(project), proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=180)
        assert app.execute("SELECT 1").fetchone() == (1,), "the application's session was never ended"
    finally:
        app.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    run_id = _new_run(project, logs)
    assert proc.returncode == 1, out + err
    assert "failed before any change" in err, err
    assert project.state() == before
    assert _copies(project) == [] and _kept(project) == []
    record = journal(project, run_id)
    assert record["status"] == "failed" and record["interrupted"]["signal"] == "SIGTERM"
    assert record["hosts"]["db1"]["swap"]["state"] == "dropped"
    assert_nothing_left(project, run_id)


def test_swap_restore_of_a_custom_format_backup(swap_project: Project) -> None:
    """A custom-format file restores by swap too (pg_restore -j reads a -Fc file written to disk)."""
    project = swap_project
    project.write_inventory(backup={"dir": str(project.backup_dir), "keep": 10},
                            restore={"mode": "swap", "jobs": 2})
    project.upgrade_to("0001")
    at_backup = project.state()
    assert project.run("prod", "migrate").returncode == 0
    (backup,) = project.backups()
    result = project.run("prod", "rollback", "--restore", backup.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pg_restore -j 2" in result.stderr and "is now the restored copy" in result.stderr
    assert "database_swapped" in [e["event"] for e in project.events()]
    assert project.state() == at_backup
    assert _copies(project) == [] and len(_kept(project)) == 1


# -- the custom format: hashed in the same pass as it is written ---------------------------------
def test_a_custom_backup_is_hashed_as_it_is_written_and_restores_with_jobs(project: Project) -> None:
    """format: custom (the default): pg_dump -Fc goes through tee into the file and into the hasher
    (the file is never read back, and its table of contents has no data offsets): the recorded
    sha256 is the file's, and pg_restore -j 2 restores it into a new database, whole."""
    project.upgrade_to("0001")
    logs = set(project.run_logs())
    result = project.run("prod", "backup")
    assert result.returncode == 0, result.stdout + result.stderr
    run_id = _new_run(project, logs)
    (dump,) = project.backups()
    digest = hashlib.sha256(dump.read_bytes()).hexdigest()
    facts = next(e for e in _events(project, run_id) if e["event"] == "step_finished" and e["step"] == "backup")
    assert facts["backup_sha256"] == digest and facts["backup_size"] == dump.stat().st_size
    assert dump.with_name(dump.name + ".sha256").read_text() == f"{digest}  {dump.name}\n"
    assert stat.S_IMODE(dump.stat().st_mode) == 0o600
    assert not list(project.backup_dir.glob("*.partial*")), "no work files left"

    server, copy = project.db.server, f"{project.db.name}_jobs"
    with server.admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(copy)))
    try:
        restored = subprocess.run([str(server.bindir / "pg_restore"), "-j", "2", "--exit-on-error", "--no-owner",
                                   "-d", copy, str(dump)], env=server.client_env(), capture_output=True, text=True)
        assert restored.returncode == 0, restored.stderr
        assert server.schema_dump(copy) == project.db.schema_dump()
        assert server.row_counts(copy) == project.db.row_counts()
    finally:
        with server.admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(copy)))


def test_a_custom_backup_whose_pg_dump_dies_half_way_leaves_nothing(project: Project) -> None:
    """pg_dump killed in the middle of its data (its session terminated during the COPY): the bytes
    already written make a file whose table of contents pg_restore --list reads, so only pg_dump's
    own exit status (through the pipe) tells it is incomplete: exit 1 naming pg_dump, no backup, no
    work file, nothing of the run left, the database untouched."""
    project.upgrade_to("0001")
    project.db.psql("INSERT INTO collections (name, description) SELECT 'bulk-' || i, "
                    "repeat(md5(i::text), 8) FROM generate_series(1, 400000) AS i")
    before = project.state()
    logs = set(project.run_logs())
    killed: list[int] = []
    stop = False

    def terminate_the_copy() -> None:
        with project.db.server.admin() as conn:
            while not stop and not killed:
                row = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'runbook:backup%' "
                                   "AND query LIKE 'COPY public.collections%'").fetchone()
                if row is not None:
                    conn.execute("SELECT pg_terminate_backend(%s)", (row[0],))
                    killed.append(int(row[0]))
                time.sleep(0.01)

    import threading

    killer = threading.Thread(target=terminate_the_copy, daemon=True)
    killer.start()
    try:
        result = project.run("prod", "backup")
    finally:
        stop = True
        killer.join(10)
    assert killed, "the COPY of pg_dump was never seen: nothing was tested"
    assert result.returncode == 1, result.stdout + result.stderr
    assert "pg_dump" in result.stderr and "failed" in result.stderr, result.stderr
    assert project.backups() == []
    assert list(project.backup_dir.iterdir()) == [], "no backup, no .partial, no marker or checksum file"
    assert project.state() == before
    assert_nothing_left(project, _new_run(project, logs))
