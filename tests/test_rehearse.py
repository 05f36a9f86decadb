"""``runbook ENV rehearse`` and the ``rehearse`` step: the migrations on a scratch copy of production.

Real sshd and PostgreSQL. Each case checks production (schema dump, row counts and contents,
alembic_version), the journal, the exit code, that nothing of the run is left (password files, host
processes, sessions) and that no scratch database (``*__runbook_rehearse_*``) is left on the server.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from runbook import embedded, rehearsal
from tests.fixtures.faults import assert_nothing_left, finish, journal, newest_run_id, wait_for_host_process
from tests.fixtures.pg import PgServer
from tests.fixtures.project import EXAMPLE, Project

SLUG_AND_NOTE = """
op.add_column("collections", sa.Column("slug", sa.Text(), nullable=True))
op.add_column("collections", sa.Column("note", sa.Text(), nullable=True))
"""
FORGETS_SLUG = 'op.drop_column("collections", "note")'  # the downgrade forgets the slug column
SHORT_NAMES = 'op.create_check_constraint("name_short", "collections", "length(name) <= 12")'
DROP_SHORT_NAMES = 'op.drop_constraint("name_short", "collections", type_="check")'
SLOW_0003 = """
op.add_column("collections", sa.Column("slug", sa.Text(), nullable=True))
op.execute("SELECT pg_sleep(30)")
"""
DROP_SLUG = 'op.drop_column("collections", "slug")'
NEW_BACKUP_PLAYBOOK = """\
description: rehearse on a backup taken now
steps:
  - rehearse: {backup: new}
"""


# -- helpers ------------------------------------------------------------------------------------


def scratch_databases(server: PgServer) -> list[str]:
    with server.admin() as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE strpos(datname, %s) > 0 ORDER BY 1",
                            (rehearsal.SUFFIX,)).fetchall()
    return [str(r[0]) for r in rows]


def contents(project: Project) -> dict[str, str]:
    """An md5 of every row of every table of production: 'rows identical', not just as many."""
    with project.db.admin() as conn:
        tables = conn.execute("SELECT schemaname, tablename FROM pg_tables WHERE schemaname "
                              "NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2").fetchall()
        out = {}
        for schema, table in tables:
            ident = sql.Identifier(schema, table)
            row = conn.execute(sql.SQL("SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                                       "FROM {} t").format(ident)).fetchone()
            assert row is not None
            out[f"{schema}.{table}"] = str(row[0])
    return out


def snapshot(project: Project) -> tuple[Any, ...]:
    return (*project.state(), contents(project))


def events(project: Project, name: str) -> list[dict[str, Any]]:
    return [e for e in project.events() if e["event"] == name]


def steps_of(record: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(s["phase"], s["step"], s["outcome"]) for s in record["steps"]]


def assert_clean(project: Project, run_id: str) -> None:
    assert_nothing_left(project, run_id)
    assert scratch_databases(project.db.server) == []


# -- it passes, and production is only read --------------------------------------------------------


def test_rehearsal_of_the_example_migrations_passes_and_touches_nothing(project: Project, createdb: None) -> None:
    """At 0001 with data: the rehearsal of 0002 passes (upgrade, verify, downgrade, verify, schema
    equal, upgrade, verify), production is as it was to the row, the scratch database is gone, each
    phase's duration is journaled and logged as the estimate; a second rehearsal reuses that backup."""
    project.upgrade_to("0001")
    before = snapshot(project)
    result = project.run("prod", "rehearse")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "rehearsal 0001 -> 0002 passed on a copy" in result.stdout
    assert snapshot(project) == before
    assert project.db.alembic_version() == {"0001"}
    run_id = newest_run_id(project)
    assert_clean(project, run_id)

    record = journal(project, run_id)
    assert record["status"] == "succeeded" and record["exit_code"] == 0
    done = record["hosts"]["db1"]["rehearsal"]
    phases = [p["phase"] for p in done["phases"]]
    assert phases == ["backup", "restore", "schema_before", "upgrade", "verify", "downgrade",
                      "verify_downgraded", "schema_compare", "upgrade_again", "verify_again"]
    assert all(p["outcome"] == "ok" and p["duration_s"] >= 0 for p in done["phases"])
    assert done["outcome"] == "passed" and done["dropped"] is True
    assert done["database"] == rehearsal.scratch_name(project.db.name, run_id)
    assert set(done["estimate"]) == {"backup_s", "upgrade_s", "verify_s", "downgrade_s"}
    source = (EXAMPLE / "alembic" / "versions" / "0002_require_collection_description.py").read_bytes()
    assert done["sources"] == {"0002": hashlib.sha256(source).hexdigest()}
    [backup] = project.backups()
    assert done["backup"] == str(backup)  # no backup existed: one was taken, and it is an ordinary one
    estimate = events(project, "rehearsal_estimate")
    assert len(estimate) == 1 and estimate[0]["upgrade_s"] == done["estimate"]["upgrade_s"]
    logged = {e["rehearsal"]: e for e in events(project, "rehearsal_phase")}
    assert list(logged) == phases
    applied = [e for e in events(project, "revision_applied") if e.get("rehearsal") == "upgrade"]
    assert [e["revision"] for e in applied] == ["0002"]
    names = [e["event"] for e in project.events()]
    assert "rehearsal_schema_restored" in names and "rehearsal_database_dropped" in names

    again = project.run("prod", "rehearse")
    assert again.returncode == 0, again.stderr
    second = journal(project, newest_run_id(project))["hosts"]["db1"]["rehearsal"]
    assert second["backup"] == str(backup) and "backup" not in [p["phase"] for p in second["phases"]]
    assert project.backups() == [backup]
    assert snapshot(project) == before
    assert_clean(project, newest_run_id(project))


def test_nothing_pending_is_nothing_to_rehearse(project: Project, createdb: None) -> None:
    """At head: no backup, no scratch database, exit 0."""
    project.upgrade_to("0001")
    project.upgrade_to("0002", sample=False)
    result = project.run("prod", "rehearse")
    assert result.returncode == 0, result.stderr
    assert "nothing_to_rehearse" in [e["event"] for e in project.events()]
    assert project.backups() == []
    assert_clean(project, newest_run_id(project))


# -- it fails, names why, and production is as it was -----------------------------------------------


def test_a_downgrade_that_does_not_restore_the_schema_fails_and_names_the_difference(
        project: Project, createdb: None) -> None:
    """0003 adds slug and note, its downgrade drops only note: exit 1, the schema_compare phase and
    the slug column named, the diff in the log and the journal, production untouched at 0002."""
    project.start_at_0002()
    project.add_revision("0003", "0002", SLUG_AND_NOTE, FORGETS_SLUG)
    before = snapshot(project)
    result = project.run("prod", "rehearse")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "rehearsal failed in phase schema_compare" in result.stderr
    assert "slug" in result.stderr and "production was not touched" in result.stderr
    assert "failed before any change" in result.stderr
    assert snapshot(project) == before and project.db.alembic_version() == {"0002"}
    run_id = newest_run_id(project)
    record = journal(project, run_id)
    assert record["status"] == "failed" and record["exit_code"] == 1
    assert ("run", "rehearse", "failed") in steps_of(record)
    done = record["hosts"]["db1"]["rehearsal"]
    assert done["failed_phase"] == "schema_compare" and done["outcome"] == "failed" and done["dropped"]
    assert "+    slug text" in done["schema_diff"] and "note" not in done["schema_diff"]
    [differs] = events(project, "rehearsal_schema_differs")
    assert differs["diff"] == done["schema_diff"]
    assert "rollback_started" not in [e["event"] for e in project.events()]
    assert_clean(project, run_id)


def test_a_constraint_the_rows_violate_passes_empty_and_is_caught_on_the_copy(
        project: Project, createdb: None) -> None:
    """A CHECK the existing rows break: the rehearsal passes on an empty database, and on a copy
    with data fails in its upgrade phase with the check_violation named; production untouched."""
    project.own_migrations()
    project.upgrade_to("0002", sample=False)  # the schema at 0002, no rows
    project.add_revision("0003", "0002", SHORT_NAMES, DROP_SHORT_NAMES)
    project.write_playbook("rehearse-now", NEW_BACKUP_PLAYBOOK)
    empty = project.run("prod", "rehearse-now")
    assert empty.returncode == 0, empty.stderr
    assert_clean(project, newest_run_id(project))

    project.db.psql("INSERT INTO collections (name, description) VALUES "
                    "('engineering-rfcs', 'design documents'), ('faq', 'questions')")
    before = snapshot(project)
    result = project.run("prod", "rehearse-now")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "rehearsal failed in phase upgrade" in result.stderr
    assert "name_short" in result.stderr and "SQLSTATE 23514" in result.stderr
    assert snapshot(project) == before and project.db.alembic_version() == {"0002"}
    run_id = newest_run_id(project)
    done = journal(project, run_id)["hosts"]["db1"]["rehearsal"]
    assert done["failed_phase"] == "upgrade" and done["dropped"]
    assert [(p["phase"], p["outcome"]) for p in done["phases"]][-1] == ("upgrade", "failed")
    assert_clean(project, run_id)


def test_migrate_with_a_rehearse_step_stops_before_production(project: Project, createdb: None) -> None:
    """migrate-rehearsed: the rehearsal on the run's own backup fails, so check_locks and the
    upgrade never run; exit 1, alembic_version unchanged, one backup (the run's, rehearsed on)."""
    project.start_at_0002()
    project.add_revision("0003", "0002", SHORT_NAMES, DROP_SHORT_NAMES)
    before = snapshot(project)
    result = project.run("prod", "migrate-rehearsed")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "rehearsal failed in phase upgrade" in result.stderr and "23514" in result.stderr
    assert snapshot(project) == before and project.db.alembic_version() == {"0002"}
    run_id = newest_run_id(project)
    record = journal(project, run_id)
    assert record["status"] == "failed" and record["exit_code"] == 1
    assert steps_of(record) == [("run", "backup", "ok"), ("run", "rehearse", "failed")]
    [backup] = project.backups()
    host = record["hosts"]["db1"]
    assert host["backup"]["backup_path"] == str(backup) == host["rehearsal"]["backup"]
    assert host["end_revision"] == "0002"
    assert not [e for e in project.events() if e["event"] == "step_started" and e["step"] == "upgrade"]
    assert_clean(project, run_id)


def test_migrate_with_a_rehearse_step_passes_then_migrates(project: Project, createdb: None) -> None:
    """migrate-rehearsed from 0001: rehearsed on the run's backup, then production migrated and verified."""
    project.upgrade_to("0001")
    result = project.run("prod", "migrate-rehearsed")
    assert result.returncode == 0, result.stderr
    assert "at 0002, verified" in result.stdout and "rehearsal 0001 -> 0002 passed" in result.stdout
    assert project.db.alembic_version() == {"0002"}
    run_id = newest_run_id(project)
    record = journal(project, run_id)
    assert [s[1] for s in steps_of(record)] == ["backup", "rehearse", "check_locks", "upgrade", "verify", "prune"]
    [backup] = project.backups()
    assert record["hosts"]["db1"]["rehearsal"]["backup"] == str(backup)
    assert_clean(project, run_id)


# -- refusals ------------------------------------------------------------------------------------


def test_without_createdb_it_is_refused_before_anything(project: Project) -> None:
    """The user may not create databases: rehearse and migrate-rehearsed exit 2 saying so and how
    to grant it, before any backup or step; production untouched."""
    project.upgrade_to("0001")
    before = snapshot(project)
    for playbook in ("rehearse", "migrate-rehearsed"):
        result = project.run("prod", playbook)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stdout + result.stderr
        assert "may not create databases (no CREATEDB): nothing was done" in result.stderr
        assert f'ALTER ROLE "{project.db.user}" CREATEDB' in result.stderr
        record = journal(project, newest_run_id(project))
        assert record["status"] == "refused" and record["exit_code"] == 2 and record["steps"] == []
        assert project.backups() == []
        assert snapshot(project) == before
        assert_clean(project, newest_run_id(project))


def test_remote_alembic_is_refused(project: Project, createdb: None) -> None:
    """alembic.remote: the host's env.py may not honour the scratch database: exit 2, nothing done."""
    project.upgrade_to("0001")
    project.write_inventory(alembic={"remote": "false"})
    result = project.run("prod", "rehearse")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "rehearse needs in-process Alembic" in result.stderr
    assert project.backups() == [] and project.db.alembic_version() == {"0001"}
    assert_clean(project, newest_run_id(project))


def test_a_revision_without_downgrade_skips_the_downgrade_phases(project: Project, createdb: None) -> None:
    """An irreversible revision: upgrade and verify rehearsed, the downgrade phases skipped and said."""
    project.start_at_0002()
    project.add_revision("0003", "0002", SLUG_AND_NOTE, "raise NotImplementedError()")
    result = project.run("prod", "rehearse")
    assert result.returncode == 0, result.stderr
    run_id = newest_run_id(project)
    done = journal(project, run_id)["hosts"]["db1"]["rehearsal"]
    assert [p["phase"] for p in done["phases"]][-2:] == ["upgrade", "verify"]
    assert "0003" in done["downgrade_skipped"]
    assert events(project, "rehearsal_downgrade_skipped")[0]["revisions"] == ["0003"]
    assert project.db.alembic_version() == {"0002"}
    assert_clean(project, run_id)


# -- signals and leftovers ------------------------------------------------------------------------


def _wait_for_scratch_query(server: PgServer, app_prefix: str, query: str, proc: subprocess.Popen[str],
                            timeout: float = 60) -> str:
    """Until a session on a scratch database, named ``app_prefix``*, runs ``query``; its database."""
    deadline = time.monotonic() + timeout
    while True:
        with server.admin() as conn:
            row = conn.execute("SELECT datname FROM pg_stat_activity WHERE strpos(datname, %s) > 0 "
                               "AND application_name LIKE %s AND state = 'active' AND strpos(query, %s) > 0",
                               (rehearsal.SUFFIX, f"{app_prefix}%", query)).fetchone()
        if row:
            return str(row[0])
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (exit {proc.returncode}) too early:\n{out}\n{err}")
        assert time.monotonic() < deadline, f"no {app_prefix}* session running {query!r} on a scratch database"
        time.sleep(0.05)



def test_sigterm_during_the_rehearsal_drops_the_scratch_database(project: Project, createdb: None) -> None:
    """SIGTERM while the copy's upgrade runs: the statement is cancelled, the scratch database
    dropped (shielded), exit 1 ("failed before any change"), production untouched, nothing left."""
    project.start_at_0002()
    project.add_revision("0003", "0002", SLOW_0003, DROP_SLUG)
    before = snapshot(project)
    proc = project.start("prod", "rehearse")
    try:
        scratch = _wait_for_scratch_query(project.db.server, "runbook:upgrade ", "pg_sleep", proc)
        proc.send_signal(signal.SIGTERM)
        out, err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, out + err
    assert "Traceback" not in out + err and "interrupted by SIGTERM" in err
    assert snapshot(project) == before and project.db.alembic_version() == {"0002"}
    run_id = newest_run_id(project)
    assert scratch == rehearsal.scratch_name(project.db.name, run_id)
    record = journal(project, run_id)
    assert record["status"] == "failed" and record["exit_code"] == 1
    assert record["interrupted"] == {"signal": "SIGTERM", "step": "rehearse", "phase": "run"}
    done = record["hosts"]["db1"]["rehearsal"]
    assert done["outcome"] == "interrupted" and done["dropped"] is True
    assert done["phases"][-1]["phase"] == "upgrade" and done["phases"][-1]["outcome"] == "interrupted"
    assert_clean(project, run_id)


def test_sigterm_while_pg_restore_fills_the_copy(project: Project, createdb: None) -> None:
    """SIGTERM while pg_restore loads the copy on the host: pg_restore stopped there, the copy dropped,
    exit 1, production untouched, nothing left."""
    project.start_at_0002()
    project.add_revision("0003", "0002", SLUG_AND_NOTE, 'op.drop_column("collections", "note")\n'
                         'op.drop_column("collections", "slug")')
    project.db.psql("CREATE TABLE big AS SELECT g, repeat('x', 500) AS pad FROM generate_series(1, 300000) g; "
                    f'ALTER TABLE big OWNER TO "{project.db.user}"')
    before = snapshot(project)
    proc = project.start("prod", "rehearse")
    try:
        # this test's copy only (other sessions may rehearse at the same time)
        mine = rf"^\S*pg_restore --no-owner .*{re.escape(project.db.name[:30])}"
        wait_for_host_process(mine, proc, timeout=60)
        proc.send_signal(signal.SIGTERM)
        out, err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, out + err
    assert "interrupted by SIGTERM" in err and "Traceback" not in out + err
    run_id = newest_run_id(project)
    done = journal(project, run_id)["hosts"]["db1"]["rehearsal"]
    assert done["phases"][-1] == {**done["phases"][-1], "phase": "restore", "outcome": "interrupted"}
    assert done["dropped"] is True
    assert snapshot(project) == before
    assert_clean(project, run_id)  # waits for the host job (pg_restore's group) to be gone
    assert subprocess.run(["pgrep", "-f", mine], capture_output=True).returncode == 1


def test_a_killed_rehearsal_s_database_is_dropped_by_the_next_run(project: Project, createdb: None) -> None:
    """SIGKILL mid-rehearsal leaves the scratch database; the next run (any playbook) finds the dead
    run in the journal and drops it before anything else."""
    project.start_at_0002()
    project.add_revision("0003", "0002", SLOW_0003, DROP_SLUG)
    proc = project.start("prod", "rehearse")
    try:
        scratch = _wait_for_scratch_query(project.db.server, "runbook:upgrade ", "pg_sleep", proc)
        proc.kill()
        proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    killed = newest_run_id(project)
    assert scratch_databases(project.db.server) == [scratch]
    result = project.run("prod", "backup")
    assert result.returncode == 0, result.stderr
    dropped = events(project, "rehearsal_leftover_dropped")
    assert [(e["database"], e["previous_run"]) for e in dropped] == [(scratch, killed)]
    assert project.db.alembic_version() == {"0002"}
    assert_clean(project, killed)
    assert_clean(project, newest_run_id(project))


def test_a_scratch_database_of_an_unknown_run_is_dropped_by_the_next_rehearsal(
        project: Project, createdb: None) -> None:
    """A leftover no journal here knows (another control machine's run): the next rehearsal drops it
    before it starts (it holds the run lock: no other rehearsal of this database can be at work),
    and leaves another database's scratch copy alone."""
    project.upgrade_to("0001")
    mine = rehearsal.scratch_name(project.db.name, "20250101T000000Z-abc123")
    other = rehearsal.scratch_name("another_db", "20250101T000000Z-abc123")
    with project.db.server.connect("postgres", autocommit=True) as conn:
        for name in (mine, other):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        result = project.run("prod", "rehearse")
        assert result.returncode == 0, result.stderr
        assert [e["database"] for e in events(project, "rehearsal_leftover_dropped")] == [mine]
        assert scratch_databases(project.db.server) == [other]
    finally:
        with project.db.server.admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(other)))
    assert_clean(project, newest_run_id(project))


# -- the embedded database -----------------------------------------------------------------------


@pytest.fixture
def local_dir() -> Iterator[Path]:
    """A folder with an embedded-only inventory, reachable by the postgres user; its server stopped after."""
    base = Path(tempfile.mkdtemp(prefix="runbook-local-"))
    base.chmod(0o755)
    (base / "inventory.yaml").write_text("environments:\n  local: {embedded: true}\n")
    try:
        yield base
    finally:
        bindir = embedded.find_bindir()
        data_dir = base / ".runbook" / "pg" / "data"
        if bindir is not None and (data_dir / "postmaster.pid").exists():
            argv = [str(bindir / "pg_ctl"), "-D", str(data_dir), "-m", "immediate", "-w", "stop"]
            if os.geteuid() == 0:
                argv = ["runuser", "-u", "postgres", "--", *argv]
            subprocess.run(argv, capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)


def test_local_rehearse_on_the_embedded_database(local_dir: Path) -> None:
    """``runbook local rehearse`` from nothing: the embedded cluster with its sample data at 0001,
    0002 rehearsed on a scratch copy beside it, the local database left at 0001, the copy gone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOK_")}
    result = subprocess.run([sys.executable, "-m", "runbook", "local", "rehearse"], cwd=local_dir, env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr
    assert "rehearsal 0001 -> 0002 passed on a copy" in result.stdout
    cluster = embedded.EmbeddedCluster(local_dir / ".runbook")
    db = cluster.ensure()
    try:
        with psycopg.connect(host=db.host, port=db.port, user=db.user, dbname=db.name,
                             password=db.password) as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0001",)]
            assert conn.execute("SELECT count(*) FROM collections WHERE description IS NULL").fetchone() == (2,)
            left = conn.execute("SELECT datname FROM pg_database WHERE strpos(datname, %s) > 0",
                                (rehearsal.SUFFIX,)).fetchall()
        assert left == []
    finally:
        cluster.stop()
    runs = sorted((local_dir / ".runbook" / "runs").glob("*.json"))
    record = json.loads(runs[-1].read_text())
    assert record["hosts"]["localhost"]["rehearsal"]["outcome"] == "passed"


# -- narrow unit tests ----------------------------------------------------------------------------


def test_scratch_names_fit_and_are_recognised() -> None:
    run_id = "20261201T194109Z-0af705"
    long = "é" * 40
    name = rehearsal.scratch_name(long, run_id)
    assert len(name.encode()) <= 63 and name.endswith(f"__runbook_rehearse_{run_id}")
    assert rehearsal.run_of(name, long) == run_id
    assert rehearsal.run_of(rehearsal.scratch_name("rag_memory", run_id), "rag_memory") == run_id
    assert rehearsal.run_of("rag_memory__runbook_rehearse_x", "rag_memory") is None
    assert rehearsal.run_of(rehearsal.scratch_name("rag_memory_2", run_id), "rag_memory") is None


def test_schema_dumps_compare_without_their_noise() -> None:
    a = "--\n-- PostgreSQL database dump\n\\restrict abc\nSET x = 1;\n\n\nCREATE TABLE t (\n    a int\n);\n"
    b = "--\n\\restrict def\nSET x = 1;\nCREATE TABLE t (\n    a int\n);\n\\unrestrict def\n"
    assert rehearsal.comparable(a) == rehearsal.comparable(b)
    diff = rehearsal.schema_diff(rehearsal.comparable(a), rehearsal.comparable(a.replace("a int", "a int,\n    b text")),
                                 labels=("before", "after"))
    assert rehearsal.changed_lines(diff) == "-a int; +a int,; +b text"
    assert rehearsal.trimmed(diff, 2).endswith("more lines)")


def test_a_rehearse_step_after_the_upgrade_is_refused(project: Project) -> None:
    """A playbook with rehearse after upgrade (or in on_failure): exit 2 naming the file and line, nothing done."""
    project.upgrade_to("0001")
    path = project.write_playbook("late", "steps:\n  - backup\n  - upgrade\n  - rehearse\n")
    result = project.run("prod", "late")
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{path}:4: 'rehearse' comes after 'upgrade'" in result.stderr
    path = project.write_playbook("undo", "steps:\n  - upgrade\non_failure:\n  - rehearse\n")
    result = project.run("prod", "undo")
    assert result.returncode == 2 and f"{path}:4: 'rehearse' cannot be an on_failure step" in result.stderr
    assert project.backups() == [] and project.db.alembic_version() == {"0001"}
