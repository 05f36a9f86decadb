"""``runbook lint``: a corpus of revisions, one per rule, each firing and its safe variant not firing;
ignores, settings, the three output forms and the exit codes.

Each case is a real Alembic revision (0003, on top of the example application's 0001 and 0002) in a
copy of the project, rendered offline by Alembic and judged as ``runbook lint 0002:head`` judges it:
no database is involved, as in CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from runbook.lint import command
from runbook.lint.rules import RULES
from runbook.outcome import LINT_FINDINGS

ROOT = Path(__file__).resolve().parents[1] / "runbook" / "example"  # the example application
DOWN = 'op.execute("SELECT 1")'  # a downgrade that is not empty: missing-downgrade stays quiet
CHECKS = "- name: alembic_version records {rev}\n  sql: SELECT string_agg(version_num, ',') FROM alembic_version\n" \
         "  expect: \"{rev}\"\n"


class App:
    """A copy of the example Alembic project in a temporary folder, to add revisions to."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "app"
        self.dir.mkdir()
        shutil.copy(ROOT / "alembic.ini", self.dir / "alembic.ini")
        shutil.copytree(ROOT / "alembic", self.dir / "alembic", ignore=shutil.ignore_patterns("__pycache__"))

    @property
    def ini(self) -> Path:
        return self.dir / "alembic.ini"

    def revision(self, rev: str, down: str | tuple[str, ...], upgrade: str, downgrade: str = DOWN, *,
                 verify: bool = True, head: str = "") -> Path:
        def body(code: str) -> str:
            return textwrap.indent(textwrap.dedent(code).strip() or "pass", "    ")

        path = self.dir / "alembic" / "versions" / f"{rev}_case.py"
        path.write_text("\n".join([
            f'"""case {rev}"""{head}', "from alembic import op", "import sqlalchemy as sa", "",
            f"revision = {rev!r}", f"down_revision = {down!r}", "branch_labels = None", "depends_on = None", "",
            "", "def upgrade() -> None:", body(upgrade), "", "", "def downgrade() -> None:", body(downgrade), ""]))
        if verify:
            (self.dir / "alembic" / "verify" / f"{rev}.yaml").write_text(CHECKS.format(rev=rev))
        return path

    def settings(self, toml: str) -> None:
        (self.dir / "pyproject.toml").write_text(textwrap.dedent(toml))

    def lint(self, spec: str | None = "0002:head", fail_on: str | None = None) -> tuple[int, dict[str, Any]]:
        out: list[str] = []
        code = command.run(self.dir / "no-inventory.yaml", str(self.ini), spec, "json", fail_on, echo=out.append)
        (report,) = [json.loads(line) for line in out]
        return code, report

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOK_")}
        return subprocess.run([sys.executable, "-m", "runbook", *args], cwd=self.dir, env=env, text=True,
                              capture_output=True, timeout=60, stdin=subprocess.DEVNULL, check=False)


@pytest.fixture
def app(tmp_path: Path) -> App:
    return App(tmp_path)


def fired(report: dict[str, Any]) -> set[str]:
    return {f["rule"] for f in report["findings"]}


CIC_BLOCK = """
with op.get_context().autocommit_block():
    {}
"""
# rule -> (a revision body that breaks it, the safe way of doing the same that does not)
CORPUS: dict[str, tuple[str, str]] = {
    "adding-field-with-default": (
        'op.add_column("collections", sa.Column("token", sa.Text(), server_default=sa.text("gen_random_uuid()::text")))',
        'op.add_column("collections", sa.Column("token", sa.Text(), server_default="none"))'),
    "adding-foreign-key-constraint": (
        'op.create_foreign_key("fk_chunks_owner", "chunks", "collections", ["chunk_index"], ["id"])',
        'op.execute("ALTER TABLE chunks ADD CONSTRAINT fk_chunks_owner FOREIGN KEY (chunk_index) '
        'REFERENCES collections (id) NOT VALID")'),
    "adding-not-nullable-field": (
        'op.alter_column("chunks", "embedding", existing_type=sa.ARRAY(sa.REAL()), nullable=False)',
        'op.execute("ALTER TABLE chunks ADD CONSTRAINT embedding_not_null CHECK (embedding IS NOT NULL) NOT VALID")'),
    "adding-required-field": (
        'op.add_column("collections", sa.Column("slug", sa.Text(), nullable=False))',
        'op.add_column("collections", sa.Column("slug", sa.Text(), nullable=False, server_default=""))'),
    "adding-serial-primary-key-field": (
        'op.execute("ALTER TABLE chunks ADD COLUMN seq serial")',
        'op.add_column("chunks", sa.Column("seq", sa.BigInteger(), nullable=True))'),
    "ban-drop-column": (
        'op.drop_column("chunks", "embedding")',
        '# runbook: ignore[ban-drop-column] (the application stopped reading it in release 41)\n'
        'op.drop_column("chunks", "embedding")'),
    "ban-drop-table": (
        'op.drop_table("chunks")',
        'op.create_table("scratch", sa.Column("id", sa.BigInteger(), primary_key=True))\nop.drop_table("scratch")'),
    "changing-column-type": (
        'op.alter_column("chunks", "chunk_index", type_=sa.BigInteger(), existing_type=sa.Integer())',
        'op.add_column("chunks", sa.Column("chunk_index_big", sa.BigInteger(), nullable=True))'),
    "constraint-missing-not-valid": (
        'op.create_check_constraint("title_not_empty", "documents", "length(title) > 0")',
        'op.execute("ALTER TABLE documents ADD CONSTRAINT title_not_empty CHECK (length(title) > 0) NOT VALID")'),
    "disallowed-unique-constraint": (
        'op.create_unique_constraint("uq_documents_title", "documents", ["title"])',
        CIC_BLOCK.format('op.execute("CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS uq_documents_title '
                         'ON documents (title)")')
        + 'op.execute("ALTER TABLE documents ADD CONSTRAINT uq_documents_title UNIQUE USING INDEX uq_documents_title")'),
    "renaming-column": (
        'op.alter_column("documents", "title", new_column_name="headline", existing_type=sa.Text())',
        'op.add_column("documents", sa.Column("headline", sa.Text(), nullable=True))'),
    "renaming-table": (
        'op.rename_table("chunks", "passages")',
        'op.execute("CREATE VIEW passages AS SELECT * FROM chunks")'),
    "require-concurrent-index-creation": (
        'op.create_index("ix_documents_title", "documents", ["title"])',
        CIC_BLOCK.format('op.create_index("ix_documents_title", "documents", ["title"], '
                         'postgresql_concurrently=True, if_not_exists=True)')),
    "require-concurrent-index-deletion": (
        'op.drop_index("ix_documents_collection_id", table_name="documents")',
        CIC_BLOCK.format('op.drop_index("ix_documents_collection_id", table_name="documents", '
                         'postgresql_concurrently=True, if_exists=True)')),
    "ban-concurrent-index-creation-in-transaction": (
        'op.execute("CREATE INDEX CONCURRENTLY ix_documents_title ON documents (title)")',
        CIC_BLOCK.format('op.execute("CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_documents_title ON documents (title)")')),
    "prefer-robust-stmts": (
        CIC_BLOCK.format('op.execute("CREATE INDEX CONCURRENTLY ix_documents_title ON documents (title)")'),
        CIC_BLOCK.format('op.execute("CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_documents_title ON documents (title)")')),
    "truncating-table": (
        'op.execute("TRUNCATE chunks")',
        'op.execute("DELETE FROM chunks WHERE chunk_index < 0")'),
    "prefer-bigint-over-int": (
        'op.create_table("tags", sa.Column("id", sa.Integer(), primary_key=True))',
        'op.create_table("tags", sa.Column("id", sa.BigInteger(), primary_key=True))'),
    "prefer-identity": (
        'op.execute("CREATE TABLE tags (id bigserial PRIMARY KEY)")',
        'op.execute("CREATE TABLE tags (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY)")'),
    "prefer-text-field": (
        'op.add_column("documents", sa.Column("lang", sa.String(8), nullable=True))',
        'op.add_column("documents", sa.Column("lang", sa.Text(), nullable=True))'),
    "prefer-timestamp-tz": (
        'op.add_column("documents", sa.Column("seen_at", sa.DateTime(), nullable=True))',
        'op.add_column("documents", sa.Column("seen_at", sa.DateTime(timezone=True), nullable=True))'),
    "not-valid-validate-same-transaction": (
        'op.execute("ALTER TABLE documents ADD CONSTRAINT title_short CHECK (length(title) < 500) NOT VALID")\n'
        'op.execute("ALTER TABLE documents VALIDATE CONSTRAINT title_short")',
        'op.execute("ALTER TABLE documents ADD CONSTRAINT title_short CHECK (length(title) < 500) NOT VALID")\n'
        + CIC_BLOCK.format('op.execute("ALTER TABLE documents VALIDATE CONSTRAINT title_short")')),
    "data-migration-with-ddl": (
        'op.add_column("documents", sa.Column("lang", sa.Text(), nullable=True))\n'
        'op.execute("UPDATE documents SET title = trim(title)")',
        'op.execute("UPDATE documents SET title = trim(title)")'),
    "unrenderable-revision": (
        'count = op.get_bind().execute(sa.text("SELECT count(*) FROM documents")).scalar()',
        'op.execute("UPDATE documents SET title = trim(title) WHERE title <> trim(title)")'),
}
OPT_IN = "[tool.runbook.lint]\nenable = ['prefer-bigint-over-int', 'prefer-identity', 'prefer-text-field', " \
         "'prefer-timestamp-tz']\n"


@pytest.mark.parametrize("rule", sorted(CORPUS))
def test_each_rule_fires_and_its_safe_variant_does_not(app: App, rule: str) -> None:
    """The risky revision is reported under the rule's name, at its level; the safe way is not."""
    bad, good = CORPUS[rule]
    if RULES[rule].opt_in:
        app.settings(OPT_IN)
    path = app.revision("0003", "0002", bad)
    _, report = app.lint()
    found = [f for f in report["findings"] if f["rule"] == rule]
    assert found, report["findings"]
    assert all(f["revision"] == "0003" and f["level"] == RULES[rule].level and f["path"] == str(path)
               for f in found), found
    assert found[0]["safe"] == RULES[rule].safe and found[0]["line"]
    app.revision("0003", "0002", good)
    _, report = app.lint()
    assert rule not in fired(report), report["findings"]


def test_every_rule_has_a_case() -> None:
    """The corpus covers every rule (the revision-level ones have tests of their own below)."""
    own = {"missing-downgrade", "missing-verification-file", "multiple-heads"}
    assert set(RULES) == set(CORPUS) | own


def test_other_volatile_defaults_and_inline_references(app: App) -> None:
    """random() and clock_timestamp() rewrite the table; now() and a constant do not; an inline
    REFERENCES on ADD COLUMN is a foreign key that cannot be NOT VALID."""
    app.revision("0003", "0002", """
        op.execute("ALTER TABLE documents ADD COLUMN score float DEFAULT random()")
        op.execute("ALTER TABLE documents ADD COLUMN seen timestamptz DEFAULT clock_timestamp()")
        op.execute("ALTER TABLE documents ADD COLUMN added timestamptz DEFAULT now()")
        op.execute("ALTER TABLE documents ADD COLUMN lang text DEFAULT 'en'")
        op.execute("ALTER TABLE chunks ADD COLUMN owner_id bigint REFERENCES collections (id)")
        """)
    _, report = app.lint()
    defaults = [f["message"] for f in report["findings"] if f["rule"] == "adding-field-with-default"]
    assert len(defaults) == 2 and "random()" in defaults[0] and "clock_timestamp()" in defaults[1]
    (inline,) = [f for f in report["findings"] if f["rule"] == "adding-foreign-key-constraint"]
    assert "inline REFERENCES collections" in inline["message"]


def test_new_tables_are_not_judged_but_a_drop_index_of_the_history_is(app: App) -> None:
    """Changes to a table created by the same revision pass; a DROP INDEX of an index created by 0001
    is on documents (its table), not on a table named after the index."""
    app.revision("0003", "0002", """
        op.create_table("tags", sa.Column("id", sa.BigInteger(), primary_key=True), sa.Column("label", sa.Text()))
        op.add_column("tags", sa.Column("slug", sa.Text(), nullable=False))
        op.create_index("ix_tags_label", "tags", ["label"])
        op.create_check_constraint("label_set", "tags", "label IS NOT NULL")
        op.drop_index("ix_documents_collection_id", table_name="documents")
        """)
    _, report = app.lint()
    assert [f["rule"] for f in report["findings"]] == ["require-concurrent-index-deletion"]
    assert "on documents" in report["findings"][0]["message"]


def test_validate_in_a_later_revision_of_the_same_run_is_reported(app: App) -> None:
    """NOT VALID in 0003 and VALIDATE in 0004 still share one transaction when migrated in one run."""
    app.revision("0003", "0002", 'op.execute("ALTER TABLE documents ADD CONSTRAINT t CHECK (title <> \'\') NOT VALID")')
    app.revision("0004", "0003", 'op.execute("ALTER TABLE documents VALIDATE CONSTRAINT t")')
    _, report = app.lint()
    (f,) = [f for f in report["findings"] if f["rule"] == "not-valid-validate-same-transaction"]
    assert f["revision"] == "0004" and "added NOT VALID by revision 0003" in f["message"]
    _, alone = app.lint("0003:head")  # 0003 already applied: 0004 runs alone, its own transaction
    assert "not-valid-validate-same-transaction" not in fired(alone)


def test_missing_downgrade(app: App) -> None:
    """An empty or raising downgrade is reported; a real one, or a declared irreversible, is not."""
    app.revision("0003", "0002", 'op.add_column("documents", sa.Column("lang", sa.Text()))', "pass")
    _, report = app.lint()
    (f,) = [f for f in report["findings"] if f["rule"] == "missing-downgrade"]
    assert "downgrade() is empty" in f["message"] and f["line"] == 15  # def downgrade
    app.revision("0003", "0002", 'op.add_column("documents", sa.Column("lang", sa.Text()))',
                 'op.drop_column("documents", "lang")')
    assert "missing-downgrade" not in fired(app.lint()[1])


def test_missing_verification_file(app: App) -> None:
    """A revision without verify/<rev>.yaml is reported with the path to create; with it, not."""
    app.revision("0003", "0002", 'op.add_column("documents", sa.Column("lang", sa.Text()))', verify=False)
    _, report = app.lint()
    (f,) = [f for f in report["findings"] if f["rule"] == "missing-verification-file"]
    assert str(app.dir / "alembic" / "verify" / "0003.yaml") in f["message"]
    (app.dir / "alembic" / "verify" / "0003.yaml").write_text(CHECKS.format(rev="0003"))
    assert "missing-verification-file" not in fired(app.lint()[1])


def test_multiple_heads(app: App) -> None:
    """Two revisions on the same parent: an error (migrate to head would refuse); merged: fine."""
    app.revision("0003", "0002", 'op.add_column("documents", sa.Column("lang", sa.Text()))')
    app.revision("0004", "0002", 'op.add_column("documents", sa.Column("flag", sa.Boolean()))')
    code, report = app.lint("all")
    assert code == LINT_FINDINGS and "multiple-heads" in fired(report)
    app.revision("0005", ("0003", "0004"), "pass", "pass")
    code, report = app.lint("all")
    assert code == 0 and "multiple-heads" not in fired(report), report["findings"]


def test_ignores_are_per_revision_and_by_name(app: App) -> None:
    """``# runbook: ignore[rule]`` silences that rule in that revision only; an unknown name is exit 2."""
    app.revision("0003", "0002", '# runbook: ignore[ban-drop-column, truncating-table]\n'
                 'op.drop_column("chunks", "embedding")\nop.execute("TRUNCATE chunks")')
    app.revision("0004", "0003", 'op.drop_column("documents", "metadata")')
    code, report = app.lint()
    assert [(f["rule"], f["revision"]) for f in report["findings"]] == [("ban-drop-column", "0004")]
    assert code == LINT_FINDINGS
    app.revision("0004", "0003", '# runbook: ignore[ban-drop-colum]\nop.drop_column("documents", "metadata")')
    result = app.cli("lint", "--config", str(app.ini), "0002:head")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert ("0004_case.py:12: ignore comment: unknown lint rule 'ban-drop-colum'; did you mean 'ban-drop-column'?"
            in result.stderr)


def test_project_settings(app: App) -> None:
    """[tool.runbook.lint]: a rule off, a level changed, fail_on; a mistake there is exit 2."""
    app.revision("0003", "0002", 'op.drop_column("chunks", "embedding")\n'
                 'op.create_index("ix_documents_title", "documents", ["title"])')
    app.settings("[tool.runbook.lint]\ndisable = ['require-concurrent-index-creation']\n"
                 "levels = {ban-drop-column = 'warning'}\n")
    code, report = app.lint()
    assert code == 0 and [(f["rule"], f["level"]) for f in report["findings"]] == [("ban-drop-column", "warning")]
    app.settings("[tool.runbook.lint]\nfail_on = 'warning'\n")
    assert app.lint()[0] == LINT_FINDINGS
    app.settings("[tool.runbook.lint]\ndisabled = ['x']\n")
    result = app.cli("lint", "--config", str(app.ini))
    assert result.returncode == 2 and "pyproject.toml: [tool.runbook.lint]: unknown key 'disabled'" in result.stderr


RISKY = 'op.add_column("collections", sa.Column("token", sa.Text(), server_default=sa.text("random()::text")))\n' \
        'op.create_index("ix_documents_title", "documents", ["title"])'


def test_text_output_and_exit_codes(app: App) -> None:
    """Text: file:line, level, rule, message, the SQL and the safe way; exit 5 on an error, 0 below
    --fail-on, 5 again with --fail-on warning; a bad range is exit 2."""
    path = app.revision("0003", "0002", RISKY)
    result = app.cli("lint", "--config", str(app.ini), "0002:head")
    assert result.returncode == LINT_FINDINGS, result.stderr
    lines = result.stdout.splitlines()
    rel = os.path.relpath(path, app.dir)
    assert lines[0] == (f"{rel}:12: error [adding-field-with-default] adds column collections.token with "
                        "DEFAULT random() is volatile: the whole table is rewritten under ACCESS EXCLUSIVE")
    assert lines[1].startswith("    sql:  ALTER TABLE collections ADD COLUMN token TEXT DEFAULT random()::text")
    assert lines[2] == f"    safe: {RULES['adding-field-with-default'].safe}"
    assert lines[3].startswith(f"{rel}:13: warning [require-concurrent-index-creation]")
    assert lines[-1] == ("runbook lint: 1 revision (0003) checked: 1 error(s), 1 warning(s), 0 info; "
                         "findings at or above error: exit 5")
    app.revision("0003", "0002", 'op.create_index("ix_documents_title", "documents", ["title"])')
    assert app.cli("lint", "--config", str(app.ini), "0002:head").returncode == 0
    assert app.cli("lint", "--config", str(app.ini), "0002:head", "--fail-on", "warning").returncode == LINT_FINDINGS
    bad = app.cli("lint", "--config", str(app.ini), "0002:nope")
    assert bad.returncode == 2 and "unknown" in bad.stderr and "Traceback" not in bad.stderr
    assert app.cli("lint", "--format", "xml").returncode == 2


def test_json_output(app: App) -> None:
    """JSON: one object with the revisions, counts, exit code and every finding's facts."""
    app.revision("0003", "0002", RISKY)
    result = app.cli("lint", "--config", str(app.ini), "0002:head", "--format", "json")
    assert result.returncode == LINT_FINDINGS
    report = json.loads(result.stdout)
    assert report["revisions"] == ["0003"] and report["exit_code"] == LINT_FINDINGS
    assert report["counts"] == {"error": 1, "warning": 1, "info": 0}
    first = report["findings"][0]
    assert {k: first[k] for k in ("rule", "level", "revision", "line")} == {
        "rule": "adding-field-with-default", "level": "error", "revision": "0003", "line": 12}


def test_github_annotations(app: App) -> None:
    """GitHub: ::error / ::warning lines with the file (relative), line and a title naming the rule."""
    path = app.revision("0003", "0002", RISKY)
    result = app.cli("lint", "--config", str(app.ini), "0002:head", "--format", "github")
    assert result.returncode == LINT_FINDINGS
    rel = os.path.relpath(path, app.dir)
    first, second = result.stdout.splitlines()[:2]
    assert first.startswith(f"::error file={rel},line=12,title=adding-field-with-default (0003)::adds column "
                            "collections.token with DEFAULT random() is volatile")
    assert "Safe: add the column without the default" in first
    assert second.startswith(f"::warning file={rel},line=13,title=require-concurrent-index-creation (0003)::")


def test_default_range_is_what_the_journal_says_is_pending(app: App) -> None:
    """Without RANGE: every revision with no journal (CI); with one, what some host has not applied."""
    app.revision("0003", "0002", 'op.drop_column("chunks", "embedding")')
    inventory = app.dir / "inventory.yaml"
    inventory.write_text("environments:\n  local:\n    embedded: true\n    alembic: {config: alembic.ini}\n")
    out: list[str] = []
    command.run(inventory, None, None, "json", None, echo=out.append)
    assert json.loads(out[0])["revisions"] == ["0001", "0002", "0003"]
    runs = app.dir / ".runbook" / "runs"
    runs.mkdir(parents=True)
    (runs / "20261201T000000Z-000aaa.json").write_text(json.dumps({
        "run_id": "20261201T000000Z-000aaa", "env": "local", "playbook": "migrate", "status": "succeeded",
        "started": "2026-12-01T00:00:00+00:00", "hosts": {"localhost": {"start_revision": "0001",
                                                                        "end_revision": "0002"}}}))
    out.clear()
    code = command.run(inventory, None, None, "json", None, echo=out.append)
    report = json.loads(out[0])
    assert report["revisions"] == ["0003"] and code == LINT_FINDINGS


def test_help_lists_lint_and_revision() -> None:
    """runbook --help names both commands; runbook lint --help explains RANGE and the exit codes."""
    top = subprocess.run([sys.executable, "-m", "runbook", "--help"], capture_output=True, text=True, timeout=30)
    assert top.returncode == 0 and "runbook lint [RANGE]" in top.stdout and 'runbook revision "message"' in top.stdout
    assert "5  runbook lint: findings at or above --fail-on" in top.stdout
    sub = subprocess.run([sys.executable, "-m", "runbook", "lint", "--help"], capture_output=True, text=True,
                         timeout=30)
    assert sub.returncode == 0 and "RANGE" in sub.stdout and "--fail-on" in sub.stdout


# -- the same analysis inside migrate ----------------------------------------------------------------

from tests.fixtures.project import Project  # noqa: E402


def _events(project: Project, name: str) -> list[dict[str, Any]]:
    return [e for e in project.events() if e["event"] == name]


def test_migrate_refuses_an_error_level_finding_and_runs_when_accepted(project: Project) -> None:
    """A pending revision with a volatile DEFAULT: migrate exits 4 before the backup, nothing touched,
    the rule named with the flag that accepts it; --accept RULE runs it; --dry-run shows it first."""
    project.add_revision("0003", "0002", RISKY.replace("random()::text", "md5(random()::text)"),
                         'op.drop_index("ix_documents_title", table_name="documents")\n'
                         'op.drop_column("collections", "token")')
    project.start_at_0002()
    before = project.state()

    plan = project.run("prod", "migrate", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "ERROR: adds column collections.token with DEFAULT md5() may be volatile" in plan.stdout
    assert "[adding-field-with-default]" in plan.stdout and "--accept adding-field-with-default" in plan.stdout

    refused = project.run("prod", "migrate")
    assert refused.returncode == 4, refused.stdout + refused.stderr
    assert "refused by lint: 1 error-level finding(s)" in refused.stderr
    assert "0003 [adding-field-with-default]" in refused.stderr
    assert "runbook: next: " in refused.stderr and "--accept adding-field-with-default" in refused.stderr
    assert project.state() == before and project.backups() == []
    assert not _events(project, "step_started")  # not even the backup
    (record,) = [json.loads(p.read_text()) for p in (project.dir / ".runbook" / "runs").glob("*.json")]
    assert record["status"] == "refused" and record["exit_code"] == 4
    findings = _events(project, "lint_finding")
    assert {f["rule"] for f in findings} == {"adding-field-with-default", "require-concurrent-index-creation",
                                             "missing-verification-file"}

    typo = project.run("prod", "migrate", "--accept", "adding-field-with-defaults")
    assert typo.returncode == 2 and "--accept: unknown lint rule 'adding-field-with-defaults'" in typo.stderr

    accepted = project.run("prod", "migrate", "--accept", "adding-field-with-default")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert project.db.alembic_version() == {"0003"}
    assert _events(project, "lint_accepted")[0]["rules"] == ["adding-field-with-default"]


@pytest.mark.parametrize("where", ["history", "catalog"])
def test_drop_index_feeds_the_pre_flight_its_table(project: Project, where: str) -> None:
    """A pending DROP INDEX: check_locks looks at the index's table (from the rendered history, or
    from the catalog for an index made by hand), so a session holding a lock on it is a blocker."""
    project.start_at_0002()
    if where == "history":
        index, body = "ix_documents_collection_id", 'op.drop_index("ix_documents_collection_id", table_name="documents")'
    else:
        index, body = "ix_by_hand", 'op.execute("DROP INDEX ix_by_hand")'
        project.db.psql("CREATE INDEX ix_by_hand ON documents (title)")
    project.add_revision("0003", "0002", body, "pass")
    project.write_inventory(locks={"lock_timeout": "1s", "max_wait": "5s", "blockers": "abort"})
    before = project.state()
    holder = project.db.connect(autocommit=False, application_name="rag-report")
    try:
        holder.execute("SELECT count(*) FROM documents").fetchone()  # ACCESS SHARE on documents, held
        result = project.run("prod", "migrate")
    finally:
        holder.close()
    assert result.returncode == 4, result.stdout + result.stderr
    assert "rag-report" in result.stderr and project.state() == before
    (failed,) = [e for e in _events(project, "step_failed") if e["step"] == "check_locks"]
    (aborted,) = _events(project, "blockers_abort")
    assert [s["application"] for s in aborted["sessions"]] == ["rag-report"]
    deletion = [f for f in _events(project, "lint_finding") if f["rule"] == "require-concurrent-index-deletion"]
    assert deletion and f"drops index {index} on documents" in deletion[0]["message"]
    assert failed  # and with nothing holding documents it migrates
    ok = project.run("prod", "migrate")
    assert ok.returncode == 0, ok.stderr
    check = next(e for e in _events(project, "step_finished") if e["step"] == "check_locks")
    assert check["tables"] == ["documents"]


def test_migrate_refuses_what_would_fail_at_run_time(project: Project) -> None:
    """CREATE INDEX CONCURRENTLY through op.execute outside an autocommit_block would fail inside the
    upgrade's transaction: --dry-run says so, and migrate refuses it before the backup (exit 4)."""
    project.add_revision("0003", "0002", 'op.execute("CREATE INDEX CONCURRENTLY ix_documents_title ON documents (title)")',
                         'op.execute("DROP INDEX ix_documents_title")')
    project.start_at_0002()
    before = project.state()
    plan = project.run("prod", "migrate", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert ("ERROR: CREATE INDEX CONCURRENTLY ix_documents_title inside the transaction: fails at run time"
            in plan.stdout)
    result = project.run("prod", "migrate")
    assert result.returncode == 4, result.stdout + result.stderr
    assert "[ban-concurrent-index-creation-in-transaction]" in result.stderr
    assert project.state() == before and project.backups() == []
