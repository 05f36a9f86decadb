"""Bring your own application: runbook on an external Alembic project, in-process, per env.py style.

Each test writes an application of its own (tests/fixtures/byo.py: 13 revisions with a branch, a
merge, a data migration and a revision without a downgrade) in one of the three common env.py
styles, and runs the real ``runbook`` command over the real sshd against the real PostgreSQL.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote
from typing import Any

import pytest

from runbook.appenv import choose_driver, database_url
from runbook.migrations import downgrade_missing
from runbook.postgres import Endpoint
from tests.fixtures import byo
from tests.fixtures.project import Project

STYLES = ["engine", "url_env", "shared"]


def setup_app(project: Project, style: str, *, start: str | None = None, irreversible: str = "raises",
              head_checks: list[dict[str, Any]] | None = None) -> Path:
    """The application written next to the inventory, and the database brought to ``start``."""
    app = project.dir / "shop"
    ini = byo.write_app(app, style, irreversible=irreversible, head_checks=head_checks)
    alembic: dict[str, Any] = {"config": "shop/alembic.ini"}
    if style == "url_env":
        alembic["url_env"] = byo.URL_ENV
    project.env_overrides.update(alembic=alembic, locks={
        "lock_timeout": "1s", "max_wait": "10s", "blockers": "wait", "statement_timeout": "30s"})
    project.write_inventory()
    project.write_playbook("up", byo.UP_PLAYBOOK)
    if start is not None:
        done = project.run("prod", "up", "--to", start)
        assert done.returncode == 0, done.stdout + done.stderr
        project.db.psql(byo.SAMPLE)
    return ini


def steps_of(project: Project) -> list[tuple[str, str, str]]:
    return [(e["phase"], e["step"], "ok" if e["event"] == "step_finished" else "failed")
            for e in project.events() if e["event"] in ("step_finished", "step_failed")]


def probe(project: Project) -> dict[str, tuple[str, str, str]]:
    rows = project.db.psql("SELECT rev, lock_timeout, statement_timeout, application_name "
                           "FROM migration_probe ORDER BY rev")
    return {r.split("|")[0]: tuple(r.split("|")[1:]) for r in rows.splitlines() if r}  # type: ignore[misc]


@pytest.mark.parametrize("style", STYLES)
def test_dry_run_then_migrate(project: Project, style: str) -> None:
    """--dry-run names merges, branches and the revision without a downgrade and changes nothing; migrate then applies all, through the tunnel, with lock_timeout."""
    setup_app(project, style, start="r03")
    before = project.state()

    plan = project.run("prod", "migrate", "--dry-run")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    out = plan.stdout
    for rev in byo.ALL[3:]:
        assert f"revision {rev}" in out
    assert "revision r06: merge billing and orders (merge)" in out
    assert "revision r04a [billing]" in out
    assert "revision r08: drop the legacy code (no way back) (NO DOWNGRADE)" in out
    assert "r08 (drop the legacy code (no way back)) has no downgrade" in out
    assert "restores the run's backup instead of downgrading" in out
    assert "ALTER TABLE accounts DROP COLUMN legacy_code" in out
    assert "cannot be rendered" not in out
    assert project.state() == before and not project.backups()

    result = project.run("prod", "migrate")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"at {byo.HEAD}, verified" in result.stdout
    assert project.db.alembic_version() == {byo.HEAD}
    assert project.db.row_counts()["accounts"] == 2
    columns = project.db.psql("SELECT column_name FROM information_schema.columns "
                              "WHERE table_name = 'accounts' ORDER BY 1").split()
    assert columns == ["display_name", "email", "id"]
    assert project.db.psql("SELECT DISTINCT status FROM orders").strip() == "paid"
    # The migration's own session: runbook's lock_timeout (first try: 1s/8), statement_timeout, name.
    lock_timeout, statement_timeout, app_name = probe(project)["r11"]
    assert (lock_timeout, statement_timeout) == ("125ms", "30s")
    assert app_name.startswith("runbook:upgrade ")

    events = project.events()
    applied = [e["revision"] for e in events if e["event"] == "revision_applied"]
    assert sorted(applied) == sorted(byo.ALL[3:]) and applied[-1] == byo.HEAD
    verify = next(e for e in events if e["event"] == "step_finished" and e["step"] == "verify")
    assert verify["checks"] == len(byo.HEAD_CHECKS) and verify["failed"] == 0
    password = project.db.password
    assert password not in result.stdout + result.stderr
    assert all(password not in log.read_text() for log in project.run_logs())


@pytest.mark.parametrize("style", STYLES)
def test_failure_rolls_back_by_downgrade(project: Project, style: str) -> None:
    """A failure after the upgrade downgrades to the start revision (past the branch point and the merge): exit 1, database as before."""
    setup_app(project, style, start="r08", head_checks=byo.FAILING_CHECKS)
    before = project.state()

    result = project.run("prod", "migrate")

    assert result.returncode == 1, result.stdout + result.stderr
    assert "downgraded" in result.stderr
    assert project.state() == before
    assert steps_of(project) == [("run", "backup", "ok"), ("run", "check_locks", "ok"),
                                 ("run", "upgrade", "ok"), ("run", "verify", "failed"),
                                 ("rollback", "downgrade", "ok"), ("rollback", "verify", "ok")]
    events = project.events()
    assert [e["revision"] for e in events if e["event"] == "revision_reverted"] == ["r11", "r10", "r09"]
    missing = next(e for e in events if e["event"] == "verify_file_missing")
    assert missing["revision"] == "r08"
    assert missing["path"] == str(project.dir / "shop" / "migrations" / "verify" / "r08.yaml")


@pytest.mark.parametrize(("style", "irreversible"), [("engine", "raises"), ("url_env", "empty"),
                                                     ("shared", "raises")])
def test_failure_across_the_irreversible_revision_restores(project: Project, style: str,
                                                           irreversible: str) -> None:
    """Rolling back across r08 (downgrade raising or empty) goes straight to the restore: exit 1, state as before."""
    setup_app(project, style, start="r03", irreversible=irreversible, head_checks=byo.FAILING_CHECKS)
    before = project.state()

    result = project.run("prod", "migrate")

    assert result.returncode == 1, result.stdout + result.stderr
    assert "restored from the backup" in result.stderr
    assert project.state() == before
    assert steps_of(project)[4:] == [("rollback", "downgrade", "failed"), ("rollback", "restore", "ok"),
                                     ("rollback", "verify", "ok")]
    events = project.events()
    failure = next(e for e in events if e["event"] == "step_failed" and e["step"] == "downgrade")
    assert "revision r08 (drop the legacy code (no way back)) has no downgrade" in failure["error"]
    assert ("legacy_code is gone for good" if irreversible == "raises" else "is empty") in failure["error"]
    assert not [e for e in events if e["event"] == "revision_reverted"]


def test_several_heads(project: Project) -> None:
    """Two heads: 'head' is refused before anything, --to heads applies both, and a rollback downgrades back to both."""
    app = project.dir / "shop"
    setup_app(project, "shared", start="r10")
    versions = app / "migrations" / "versions"
    (versions / "r12_coupons.py").write_text(byo.revision_source(
        "r12", "r10", ("promo",), "coupons", 'op.create_table("coupons", sa.Column("code", sa.Text))',
        'op.drop_table("coupons")'))
    before = project.state()

    refused = project.run("prod", "migrate")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "2 heads (r11, r12 (promo))" in refused.stderr and "--to heads" in refused.stderr
    assert project.state() == before and not project.backups()

    plan = project.run("--json", "prod", "migrate", "--dry-run", "--to", "heads")
    assert plan.returncode == 0, plan.stderr
    host = json.loads(plan.stdout.splitlines()[-1])["hosts"][0]
    assert host["target"] == "r11,r12" and [r["revision"] for r in host["revisions"]] in (
        ["r11", "r12"], ["r12", "r11"])
    assert any("2 heads" in note for note in host["notes"])

    done = project.run("prod", "migrate", "--to", "heads")
    assert done.returncode == 0, done.stdout + done.stderr
    assert project.db.alembic_version() == {"r11", "r12"}

    # A merge of the two heads, then a revision whose verification fails: back to both heads.
    (versions / "r13_merge.py").write_text(byo.revision_source("r13", ("r11", "r12"), None, "merge", "pass", "pass"))
    (versions / "r14_gifts.py").write_text(byo.revision_source(
        "r14", "r13", None, "gifts", 'op.create_table("gifts", sa.Column("id", sa.Integer))',
        'op.drop_table("gifts")'))
    byo.write_checks(app, "r14", byo.FAILING_CHECKS)
    two_heads = project.state()
    result = project.run("prod", "migrate")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "downgraded" in result.stderr
    assert project.state() == two_heads
    reverted = [e["revision"] for e in project.events() if e["event"] == "revision_reverted"]
    assert reverted == ["r14", "r13"]


def test_a_wrong_database_url_is_refused_before_any_revision(project: Project) -> None:
    """An env.py that reads its URL from a variable runbook was not told about connects elsewhere: refused, nothing run."""
    setup_app(project, "url_env", start="r03")
    project.env_overrides["alembic"] = {"config": "shop/alembic.ini"}  # url_env forgotten
    project.write_inventory()
    before = project.state()
    db = project.db
    other = pg_server_db(project)  # another database of the same server, reachable with credentials
    url = (f"postgresql+psycopg://{db.user}:{quote(db.password, safe='')}@{db.host}:{db.port}/{other}")
    result = project.run("prod", "migrate", extra_env={byo.URL_ENV: url})
    assert result.returncode == 1, result.stdout + result.stderr
    assert project.state() == before
    failure = next(e for e in project.events() if e["event"] == "step_failed" and e["step"] == "upgrade")
    assert f"env.py connected to {db.host}:{db.port}/{other}, not to {db.name}" in failure["error"]
    assert "alembic.url_env" in failure["error"]
    assert db.server.alembic_version(other) is None  # nothing ran there either


def pg_server_db(project: Project) -> str:
    """A second database owned by raguser (dropped with the server at the end of the session)."""
    name = f"{project.db.name}_other"
    with project.db.server.admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}" OWNER {project.db.user}')
    return name


def test_driver_and_url_for_env_py() -> None:
    """The URL handed to env.py names psycopg (3) for psycopg2-style URLs, keeps other drivers, and never holds the password."""
    assert choose_driver("postgresql://u@h/d") == "postgresql+psycopg"
    assert choose_driver("postgresql+psycopg2://u@h/d") == "postgresql+psycopg"
    assert choose_driver("postgres://u@h/d") == "postgresql+psycopg"
    assert choose_driver("postgresql+asyncpg://u@h/d") == "postgresql+asyncpg"
    assert choose_driver(None) == "postgresql+psycopg"
    ep = Endpoint("127.0.0.1", 5555, "my db/x", "us%er@x", "S3cr%t p@ss:w0rd/x")
    url = database_url("postgresql+psycopg", ep)
    assert "S3cr" not in url and url.startswith("postgresql+psycopg://us%25er%40x@127.0.0.1:5555/")
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    assert (parsed.username, parsed.database, parsed.password) == ("us%er@x", "my db/x", None)


def test_irreversible_revisions_are_recognised() -> None:
    """Missing, empty and raising downgrades cannot be undone; an empty merge revision can."""
    def src(up: str, down: str | None) -> str:
        text = f"def upgrade():\n    {up}\n"
        return text + (f"\n\ndef downgrade():\n    {down}\n" if down is not None else "")

    assert downgrade_missing(src("op.drop_table('t')", "pass")) == "its downgrade() is empty"
    assert downgrade_missing(src("op.drop_table('t')", None)) == "it has no downgrade()"
    assert "raises" in str(downgrade_missing(src("op.drop_table('t')", "raise NotImplementedError()")))
    assert downgrade_missing(src("pass", "pass")) is None
    assert downgrade_missing(src("op.drop_table('t')", "op.create_table('t')")) is None
    assert downgrade_missing("irreversible = True\n" + src("op.x()", "op.y()")) == "it is declared irreversible"
