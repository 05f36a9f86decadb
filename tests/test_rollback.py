"""``runbook prod rollback``: downgrade or restore over a real SSH login, checked in the database."""

from __future__ import annotations

import os
import pty
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

from psycopg import sql

from tests.fixtures.project import PASSWORD_ENV, Project

TAGS_AND_COLOR_UP = """
op.create_table("tags", sa.Column("id", sa.Integer, primary_key=True), sa.Column("label", sa.Text))
op.add_column("collections", sa.Column("color", sa.Text, nullable=True))
op.execute("INSERT INTO tags (label) VALUES ('urgent'), ('archived')")
"""
TAGS_AND_COLOR_DOWN = """
op.drop_column("collections", "color")
op.drop_table("tags")
"""


def _migrate(project: Project) -> None:
    result = project.run("prod", "migrate")
    assert result.returncode == 0, result.stderr


def _dump_rows(project: Project, dump: Path) -> dict[str, int]:
    """Row counts of ``dump`` restored into a scratch database (dropped afterwards)."""
    server = project.db.server
    scratch = f"scratch_{uuid.uuid4().hex[:8]}"
    with server.admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
    try:
        subprocess.run([str(server.bindir / "pg_restore"), "--no-owner", "-d", scratch, str(dump)],
                       env=server.client_env(), capture_output=True, text=True, check=True)
        return server.row_counts(scratch)
    finally:
        with server.admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(scratch)))


def _new_backups(project: Project, before: list[Path]) -> list[Path]:
    return [p for p in project.backups() if p not in before]


def _wait_for_query(project: Project, text: str, proc: subprocess.Popen[str]) -> None:
    """Until a session of the test database runs a query containing ``text``."""
    deadline = time.monotonic() + 60
    while text not in project.db.psql("SELECT string_agg(query, ' ') FROM pg_stat_activity "
                                      "WHERE state = 'active' AND pid <> pg_backend_pid()"):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no query with {text!r} started"
        time.sleep(0.05)


def _run_on_a_terminal(project: Project, typed: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI without --yes, its stdin a pseudo-terminal on which ``typed`` is already waiting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOK_")}
    env[PASSWORD_ENV] = project.db.password
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "runbook", "--inventory", str(project.inventory), *args],
                                cwd=project.dir, env=env, stdin=slave, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        os.close(slave)
        os.write(master, typed.encode())
        out, err = proc.communicate(timeout=180)
    finally:
        os.close(master)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_rollback_after_migrate_returns_to_the_start_revision(project: Project) -> None:
    """migrate then rollback: back at the start revision, verified, schema and rows as before the migrate."""
    project.upgrade_to("0001")
    schema0, rows0, _ = project.state()
    _migrate(project)
    migrated = project.backups()

    result = project.run("prod", "rollback")
    assert result.returncode == 0, result.stderr
    assert "0002 -> 0001 (where the last successful migrate" in result.stderr
    assert "at 0001, verified" in result.stdout

    assert project.db.alembic_version() == {"0001"}
    assert project.db.schema_dump() == schema0
    assert project.db.row_counts() == rows0
    # 0002's data update is not reversed by design: the descriptions it filled in stay filled in
    filled = project.db.psql("SELECT count(*) FROM collections WHERE description = 'No description provided'")
    assert filled.strip() == "4"

    saved = _new_backups(project, migrated)
    assert len(saved) == 1 and saved[0].name.endswith("_0002_pre-rollback.dump")
    assert saved[0].with_name(saved[0].name + ".sha256").exists()
    finished = {e["step"]: e for e in project.events() if e["event"] == "step_finished"}
    assert finished["rollback"]["reverted"] == ["0002"] and finished["rollback"]["to"] == "0001"
    assert finished["verify"]["failed"] == 0 and finished["verify"]["revision"] == "0001"


def test_rollback_to_base_drops_the_tables_after_saving_them(project: Project) -> None:
    """rollback --to base: tables gone, alembic_version empty, a pre-rollback backup on the host holds the data."""
    project.upgrade_to("0001")
    _migrate(project)
    rows = project.db.row_counts()
    before = project.backups()

    result = project.run("prod", "rollback", "--to", "base")
    assert result.returncode == 0, result.stderr
    for table in ("chunks", "documents", "collections"):
        assert f"DESTROYS: drops table {table}: its data is gone" in result.stderr

    assert not project.db.alembic_version()  # empty, or no table at all
    assert set(project.db.row_counts()) <= {"alembic_version"}
    saved = _new_backups(project, before)
    assert len(saved) == 1 and saved[0].name.endswith("_0002_pre-rollback.dump")
    assert _dump_rows(project, saved[0]) == rows


def test_rollback_restore_a_named_backup_and_back_again(project: Project) -> None:
    """--restore NAME: the database equals that backup; the pre-restore backup brings the later rows back."""
    project.upgrade_to("0001")
    at_backup = project.state()
    _migrate(project)
    (chosen,) = project.backups()  # the migrate's backup, at 0001
    project.db.psql("INSERT INTO collections (name, description) VALUES ('written-later', 'after the backup')")
    latest = project.state()
    before = project.backups()

    result = project.run("prod", "rollback", "--restore", chosen.name)
    assert result.returncode == 0, result.stderr
    assert f"<- {chosen.name} (revision 0001" in result.stderr
    assert project.state() == at_backup
    assert project.db.psql("SELECT count(*) FROM collections WHERE name = 'written-later'").strip() == "0"

    (saved,) = _new_backups(project, before)
    assert saved.name.endswith("_0002_pre-restore.dump")
    again = project.run("prod", "rollback", "--restore", saved.name)
    assert again.returncode == 0, again.stderr
    assert project.state() == latest  # nothing written after the backup was lost
    assert project.db.psql("SELECT count(*) FROM collections WHERE name = 'written-later'").strip() == "1"


def test_rollback_restore_defaults_to_the_newest_verified_backup(project: Project) -> None:
    """--restore without a name takes the newest verified backup, never a safety copy."""
    project.upgrade_to("0001")
    _migrate(project)
    assert project.run("prod", "backup").returncode == 0
    newest = project.backups()[-1]
    at_newest = project.state()
    project.db.psql("DELETE FROM chunks")

    result = project.run("prod", "rollback", "--restore")
    assert result.returncode == 0, result.stderr
    assert f"<- {newest.name}" in result.stderr
    assert project.state() == at_newest
    # the pre-restore copy is now the newest file, but a second --restore still takes the real backup
    again = project.run("prod", "rollback", "--restore")
    assert again.returncode == 0, again.stderr
    assert f"<- {newest.name}" in again.stderr
    assert project.state() == at_newest


def test_rollback_without_a_journal_goes_one_revision_back(project: Project) -> None:
    """No run journal (a fresh control machine): rollback undoes one revision, not the whole last migrate."""
    project.add_revision("0003", "0002", TAGS_AND_COLOR_UP, TAGS_AND_COLOR_DOWN, doc="tags and colors")
    project.upgrade_to("0001")
    _migrate(project)
    assert project.db.alembic_version() == {"0003"}
    shutil.rmtree(project.dir / ".runbook" / "runs")

    result = project.run("prod", "rollback")
    assert result.returncode == 0, result.stderr
    assert "0003 -> 0002 (one revision back" in result.stderr
    assert project.db.alembic_version() == {"0002"}
    assert "tags" not in project.db.row_counts()
    constraint = project.db.psql("SELECT count(*) FROM pg_constraint WHERE conname = 'description_not_empty'")
    assert constraint.strip() == "1", "0002 stays applied"


def test_rollback_with_a_journal_undoes_the_whole_last_migrate(project: Project) -> None:
    """With the journal, rollback goes back to where the last migrate started, several revisions down."""
    project.add_revision("0003", "0002", TAGS_AND_COLOR_UP, TAGS_AND_COLOR_DOWN, doc="tags and colors")
    project.upgrade_to("0001")
    schema0, rows0, _ = project.state()
    _migrate(project)

    result = project.run("prod", "rollback")
    assert result.returncode == 0, result.stderr
    assert "0003 -> 0001 (where the last successful migrate" in result.stderr
    assert project.db.alembic_version() == {"0001"}
    assert project.db.schema_dump() == schema0
    assert project.db.row_counts() == rows0


def test_rollback_refused_without_yes_and_without_a_terminal(project: Project) -> None:
    """No TTY and no --yes: exit 2 before anything connects; no backup, no journal, the database untouched."""
    project.upgrade_to("0001")
    _migrate(project)
    state, backups = project.state(), project.backups()
    runs = sorted((project.dir / ".runbook" / "runs").iterdir())

    for args in (["rollback"], ["rollback", "--restore"], ["rollback", "--to", "base"]):
        result = project.run("prod", *args, yes=False)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "--yes" in result.stderr
    assert project.state() == state
    assert project.backups() == backups
    assert sorted((project.dir / ".runbook" / "runs").iterdir()) == runs


def test_rollback_says_what_the_downgrade_destroys(project: Project) -> None:
    """A downgrade that drops a table and a column says so, by name, before it acts."""
    project.add_revision("0003", "0002", TAGS_AND_COLOR_UP, TAGS_AND_COLOR_DOWN, doc="tags and colors")
    project.start_at_0002()
    _migrate(project)
    assert project.db.row_counts()["tags"] == 2

    preview = project.run("prod", "rollback", "--dry-run", yes=False)
    assert preview.returncode == 0, preview.stderr
    assert "drops table tags" in preview.stdout and "drops column collections.color" in preview.stdout
    assert project.db.alembic_version() == {"0003"}

    result = project.run("prod", "rollback")
    assert result.returncode == 0, result.stderr
    assert "0003 -> 0002" in result.stderr
    assert "DESTROYS: drops table tags: its data is gone" in result.stderr
    assert "DESTROYS: drops column collections.color: its data is gone" in result.stderr
    assert project.db.alembic_version() == {"0002"}
    assert "tags" not in project.db.row_counts()
    color = project.db.psql("SELECT count(*) FROM information_schema.columns WHERE column_name = 'color'")
    assert color.strip() == "0"


def test_rollback_asks_on_a_terminal(project: Project) -> None:
    """On a TTY without --yes: the plan, then the protected env's name to type; a wrong answer changes nothing."""
    project.upgrade_to("0001")
    _migrate(project)
    state, backups = project.state(), project.backups()

    declined = _run_on_a_terminal(project, "staging\n", "prod", "rollback")
    assert declined.returncode == 2, declined.stderr
    assert "0002 -> 0001" in declined.stderr and "Type its name to go ahead" in declined.stderr
    assert "not confirmed: nothing was done" in declined.stderr
    assert project.state() == state and project.backups() == backups

    accepted = _run_on_a_terminal(project, "prod\n", "prod", "rollback")
    assert accepted.returncode == 0, accepted.stderr
    assert project.db.alembic_version() == {"0001"}
    assert len(_new_backups(project, backups)) == 1


def test_rollback_twice_does_not_go_further(project: Project) -> None:
    """A second rollback after a successful one has nothing to do: it says so and how to go further."""
    project.upgrade_to("0001")
    _migrate(project)
    assert project.run("prod", "rollback").returncode == 0
    state, backups = project.state(), project.backups()

    again = project.run("prod", "rollback")
    assert again.returncode == 0, again.stderr
    assert "nothing to do, 0001 is the target (already where the last successful migrate" in again.stderr
    assert "rollback --to REV" in again.stderr
    assert project.state() == state and project.backups() == backups


def test_rollback_never_drops_the_first_revision_unless_named(project: Project) -> None:
    """At the first revision without a journal, 'one revision back' would drop everything: exit 2, untouched."""
    project.upgrade_to("0001")
    state = project.state()

    result = project.run("prod", "rollback")
    assert result.returncode == 2, result.stderr
    assert "0001 is the first revision" in result.stderr and "--to base" in result.stderr
    assert project.state() == state and project.backups() == []


def test_rollback_restore_of_an_unknown_backup_is_refused(project: Project) -> None:
    """--restore with a name that is not on the host: exit 2, the known ones listed, nothing touched."""
    project.upgrade_to("0001")
    _migrate(project)
    state, backups = project.state(), project.backups()

    result = project.run("prod", "rollback", "--restore", "no_such_backup.dump")
    assert result.returncode == 2, result.stderr
    assert "backup 'no_such_backup.dump' not found" in result.stderr and backups[0].name in result.stderr
    assert project.state() == state and project.backups() == backups


def test_rollback_after_a_killed_migrate_goes_to_where_it_started(project: Project) -> None:
    """A migrate killed after committing part of its work: rollback reads the journal and returns to its start."""
    project.add_revision("0003", "0002", TAGS_AND_COLOR_UP, TAGS_AND_COLOR_DOWN, doc="tags and colors")
    project.add_revision("0004", "0003", 'op.execute("SELECT pg_sleep(30)")', 'pass', doc="a slow one")
    project.start_at_0002()
    schema0, rows0, _ = project.state()
    project.write_playbook("migrate", """\
        steps:
          - upgrade: {to: "0003"}
          - upgrade: {to: head}
        """)
    proc = project.start("prod", "migrate")
    try:
        _wait_for_query(project, "pg_sleep(30)", proc)  # the second upgrade: the first has committed
    finally:
        proc.kill()
        proc.communicate()
    assert project.db.alembic_version() == {"0003"}, "the first upgrade committed"

    result = project.run("prod", "rollback")
    assert result.returncode == 0, result.stderr
    assert "0003 -> 0002 (where the last migrate" in result.stderr and "interrupted" in result.stderr
    assert project.db.alembic_version() == {"0002"}
    assert project.db.schema_dump() == schema0 and project.db.row_counts() == rows0


def test_rollback_through_an_irreversible_revision_restores_the_migrates_backup(project: Project) -> None:
    """0003 has no downgrade: rollback restores the backup the migrate took at 0002, after saving the present."""
    project.add_revision("0003", "0002", TAGS_AND_COLOR_UP, "pass", doc="tags, no way back")
    project.start_at_0002()
    at_start = project.state()
    _migrate(project)
    (taken,) = project.backups()
    project.db.psql("INSERT INTO tags (label) VALUES ('written after the migrate')")
    latest = project.state()

    result = project.run("prod", "rollback")
    assert result.returncode == 0, result.stderr
    assert "CANNOT DOWNGRADE: 0003 (tags, no way back) has no downgrade" in result.stderr
    assert f"INSTEAD: restore {taken.name} (taken at 0002" in result.stderr
    assert project.state() == at_start
    (saved,) = [p for p in project.backups() if p.name.endswith("_0003_pre-restore.dump")]
    assert _dump_rows(project, saved) == latest[1]


def test_rollback_through_an_irreversible_revision_without_a_backup_changes_nothing(project: Project) -> None:
    """No backup at the target revision to restore: the rollback says so and touches nothing."""
    project.add_revision("0003", "0002", TAGS_AND_COLOR_UP, "pass", doc="tags, no way back")
    project.start_at_0002()
    project.upgrade_to("0003", sample=False)
    state = project.state()

    result = project.run("prod", "rollback")
    assert result.returncode == 1, result.stderr
    assert "0003 (tags, no way back) cannot be downgraded and no verified backup at 0002" in result.stderr
    assert project.state() == state and project.backups() == []


def test_rollback_to_a_revision_above_the_current_one_is_refused(project: Project) -> None:
    """--to a revision that is not below the current one is bad input: exit 2, nothing touched."""
    project.upgrade_to("0001")
    state = project.state()
    result = project.run("prod", "rollback", "--to", "0002")
    assert result.returncode == 2, result.stderr
    assert "a rollback only goes down" in result.stderr
    assert project.state() == state and project.backups() == []
