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
