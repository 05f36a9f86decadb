"""``runbook revision "message"``: Alembic's own revision (the project's template and naming) and
its verification file beside it; ``lint`` reports a revision without one until it exists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from alembic import command as alembic_command
from alembic.config import Config

from runbook import verifyfiles
from tests.fixtures.project import Project
from tests.test_lint import App


def run(app: App, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOK_")}
    return subprocess.run([sys.executable, "-m", "runbook", *args], cwd=app.dir, env=env, text=True,
                          capture_output=True, timeout=60, stdin=subprocess.DEVNULL, check=False)


def lint_rules(app: App) -> set[tuple[str, str]]:
    result = run(app, "lint", "--config", str(app.ini), "0002:head", "--format", "json")
    assert result.returncode in (0, 5), result.stderr
    return {(f["rule"], f["revision"]) for f in json.loads(result.stdout)["findings"]}


def test_revision_creates_the_revision_and_its_verification_file(tmp_path: Path) -> None:
    """Both files: the revision named by the project's file_template, from its script.py.mako, on top
    of head; the verification file a valid one whose check names the revision."""
    app = App(tmp_path)
    result = run(app, "revision", "--config", str(app.ini), "add collection slugs")
    assert result.returncode == 0, result.stderr
    (path,) = [p for p in (app.dir / "alembic" / "versions").glob("*.py") if not p.name.startswith("000")]
    rev = path.name.split("_", 1)[0]
    assert path.name == f"{rev}_add_collection_slugs.py"  # file_template = %(rev)s_%(slug)s
    text = path.read_text()
    assert '"""add collection slugs' in text and 'down_revision: str | Sequence[str] | None = \'0002\'' in text
    verify = app.dir / "alembic" / "verify" / f"{rev}.yaml"
    checks = verifyfiles.load_file(verify)
    assert [c.expect for c in checks] == [rev] and "alembic_version" in checks[0].sql
    assert f"created {path}" in result.stdout and f"created {verify}" in result.stdout
    assert ("missing-verification-file", rev) not in lint_rules(app)


def test_lint_reports_a_revision_without_its_verification_file_until_it_exists(tmp_path: Path) -> None:
    """A revision made with plain `alembic revision` has no checks: lint says so, then stops saying so."""
    app = App(tmp_path)
    cfg = Config(str(app.ini))
    alembic_command.revision(cfg, message="plain alembic", rev_id="0003")
    assert ("missing-verification-file", "0003") in lint_rules(app)
    run(app, "revision", "--config", str(app.ini), "--rev-id", "0004", "next one")
    assert ("missing-verification-file", "0004") not in lint_rules(app)
    assert ("missing-verification-file", "0003") in lint_rules(app)
    (app.dir / "alembic" / "verify" / "0003.yaml").write_text("- name: x\n  sql: SELECT 1\n  expect: 1\n")
    assert not {r for r in lint_rules(app) if r[0] == "missing-verification-file"}


def test_bad_input_writes_nothing(tmp_path: Path) -> None:
    """An empty message, an existing id, several heads: one line, exit 2, no file written."""
    app = App(tmp_path)
    versions = app.dir / "alembic" / "versions"
    before = sorted(p.name for p in versions.iterdir())
    for args, expected in ((["  "], "needs a message"), (["--rev-id", "0002", "again"], "revision 0002 exists"),):
        result = run(app, "revision", "--config", str(app.ini), *args)
        assert result.returncode == 2 and expected in result.stderr and "Traceback" not in result.stderr
    app.revision("0003", "0002", "pass")
    app.revision("0004", "0002", "pass")
    result = run(app, "revision", "--config", str(app.ini), "third")
    assert result.returncode == 2 and "Multiple heads" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in versions.iterdir()) == sorted(before + ["0003_case.py", "0004_case.py"])
    assert sorted(p.name for p in (app.dir / "alembic" / "verify").iterdir()) == ["0001.yaml", "0002.yaml",
                                                                                  "0003.yaml", "0004.yaml"]


def test_a_new_revision_migrates_and_its_skeleton_check_passes(project: Project) -> None:
    """The skeleton is a working check from the start: the new revision migrates and verifies."""
    project.start_at_0002()
    result = project.run("revision", "--rev-id", "0003", "nothing yet", yes=False)
    assert result.returncode == 0, result.stderr
    migrated = project.run("prod", "migrate")
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert project.db.alembic_version() == {"0003"}
    checks = [e for e in project.events() if e["event"] == "check_passed"]
    assert any(c.get("check") == "alembic_version records 0003" for c in checks), checks
