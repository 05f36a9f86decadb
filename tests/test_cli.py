"""The command line: bad usage, configuration or input is one located line, exit 2, nothing touched."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.fixtures.project import PASSWORD_ENV, PLAYBOOKS, Project, dump_yaml


def cli(project: Project, *args: str, yes: bool = True, password: bool = True,
        inventory: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real runbook command, as cron runs it: no terminal on stdin."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOK_") and k != PASSWORD_ENV}
    if password:
        env[PASSWORD_ENV] = project.db.password
    argv = [sys.executable, "-m", "runbook", "--inventory", str(inventory or project.inventory)]
    if yes:
        argv.append("--yes")
    return subprocess.run([*argv, *args], cwd=project.dir, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120, check=False)


def refused(project: Project, before: object, result: subprocess.CompletedProcess[str]) -> str:
    """Assert exit 2, one error line (plus at most a 'next:' line), no traceback, nothing touched."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    assert project.db.password not in output
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("runbook: error: ")]
    assert len(errors) == 1, result.stderr
    assert all(line.startswith("runbook: next: ") for line in lines if line not in errors), result.stderr
    assert project.state() == before
    assert project.backups() == []
    assert not (project.dir / ".runbook").exists(), "no run journal for a run that never started"
    return errors[0].removeprefix("runbook: error: ")


@pytest.fixture
def at_0001(project: Project) -> tuple[Project, object]:
    """The test database at revision 0001 with sample data, and its state."""
    project.upgrade_to("0001")
    return project, project.state()


def test_unknown_environment(at_0001: tuple[Project, object]) -> None:
    """An unknown environment names the inventory and the environments it defines."""
    project, before = at_0001
    line = refused(project, before, cli(project, "staging", "migrate"))
    assert line == f"{project.inventory}: unknown environment 'staging' (defined: prod)"


def test_malformed_inventory_yaml(at_0001: tuple[Project, object]) -> None:
    """A YAML syntax error in the inventory names file and line."""
    project, before = at_0001
    text = project.inventory.read_text().splitlines()
    text.insert(3, "      - [unclosed")
    project.inventory.write_text("\n".join(text) + "\n")
    line = refused(project, before, cli(project, "prod", "migrate"))
    assert line.startswith(f"{project.inventory}:") and "malformed YAML" in line
    assert line.split(":")[1].isdigit()


def test_malformed_playbook_next_to_the_inventory(at_0001: tuple[Project, object]) -> None:
    """playbooks/ next to the inventory wins over the shipped one, and its syntax error names file:line."""
    project, before = at_0001
    own = project.dir / "playbooks" / "migrate.yaml"
    own.parent.mkdir()
    own.write_text("steps:\n  - backup\n  - upgrade: {to: head\n  - verify\n")
    line = refused(project, before, cli(project, "prod", "migrate"))
    assert line.startswith(f"{own}:") and "malformed YAML" in line


def test_unknown_step_in_a_playbook(at_0001: tuple[Project, object]) -> None:
    """An unknown step names the step, the playbook file and the line."""
    project, before = at_0001
    own = project.dir / "playbooks" / "nightly.yaml"
    own.parent.mkdir()
    own.write_text("description: nightly\nsteps:\n  - backup\n  - vacuum_full\n")
    line = refused(project, before, cli(project, "prod", "nightly"))
    assert line.startswith(f"{own}:4: unknown step 'vacuum_full' (known: backup, ")


def test_unknown_playbook(at_0001: tuple[Project, object]) -> None:
    """An unknown playbook lists the available ones and where it looked."""
    project, before = at_0001
    line = refused(project, before, cli(project, "prod", "migrat"))
    assert "unknown playbook 'migrat'" in line and "migrate" in line and str(PLAYBOOKS) in line


def test_missing_database_name(at_0001: tuple[Project, object]) -> None:
    """A database block without 'name' names the missing key and its block's line."""
    project, before = at_0001
    env = project.environment()
    del env["database"]["name"]
    project.inventory.write_text(dump_yaml({"environments": {"prod": env}}))
    line = refused(project, before, cli(project, "prod", "migrate"))
    assert line.startswith(f"{project.inventory}:")
    assert "missing key 'name' in environments.prod.database" in line


def test_unknown_key_typo(at_0001: tuple[Project, object]) -> None:
    """A typo like 'databse' names the key, the file and the line."""
    project, before = at_0001
    env = project.environment()
    env["databse"] = env.pop("database")
    project.inventory.write_text(dump_yaml({"environments": {"prod": env}}))
    text = project.inventory.read_text().splitlines()
    lineno = next(i for i, t in enumerate(text, 1) if t.strip().startswith("databse:"))
    line = refused(project, before, cli(project, "prod", "migrate"))
    assert line == f"{project.inventory}:{lineno}: unknown key 'databse' in environments.prod; did you mean 'database'?"


def test_password_variable_unset(at_0001: tuple[Project, object]) -> None:
    """An unset password variable names the variable and the inventory line, never a password."""
    project, before = at_0001
    line = refused(project, before, cli(project, "prod", "migrate", password=False))
    assert line.startswith(f"{project.inventory}:") and f"{PASSWORD_ENV} is not set" in line


def test_bad_target_revision(at_0001: tuple[Project, object]) -> None:
    """--to with a revision the project does not have names it."""
    project, before = at_0001
    line = refused(project, before, cli(project, "prod", "migrate", "--to", "0099"))
    assert "revision '0099'" in line and "unknown" in line


def test_malformed_verification_file(at_0001: tuple[Project, object]) -> None:
    """A verification file with a YAML error names file and line, before anything connects."""
    project, before = at_0001
    project.own_migrations()
    bad = project.alembic_dir / "verify" / "0002.yaml"
    bad.write_text("- name: ok\n  sql: SELECT 1\n  expect: 1\n- name: broken\n  sql: [SELECT\n")
    line = refused(project, before, cli(project, "prod", "migrate"))
    assert line.startswith(f"{bad}:") and "malformed YAML" in line


def test_verification_check_without_expectation(at_0001: tuple[Project, object]) -> None:
    """A check with neither expect nor expect_error names the check, the file and its line."""
    project, before = at_0001
    project.own_migrations()
    bad = project.alembic_dir / "verify" / "0002.yaml"
    bad.write_text("- name: ok\n  sql: SELECT 1\n  expect: 1\n- name: forgot\n  sql: SELECT 2\n")
    line = refused(project, before, cli(project, "prod", "migrate"))
    assert line == f"{bad}:4: check 'forgot' needs exactly one of 'expect' or 'expect_error'"


def test_protected_environment_without_yes_and_without_a_terminal(at_0001: tuple[Project, object]) -> None:
    """cron cannot confirm: a protected environment without --yes is refused and says to pass --yes."""
    project, before = at_0001
    line = refused(project, before, cli(project, "prod", "migrate", yes=False))
    assert "protected" in line and "--yes" in line


def test_missing_inventory_names_the_path(at_0001: tuple[Project, object]) -> None:
    """No inventory file at all: one line naming the path looked at."""
    project, before = at_0001
    missing = project.dir / "nowhere" / "inventory.yaml"
    line = refused(project, before, cli(project, "prod", "migrate", inventory=missing))
    assert line == f"{missing}: inventory not found"


def test_default_inventory_is_in_the_current_directory(at_0001: tuple[Project, object]) -> None:
    """Without --inventory (nor $RUNBOOK_INVENTORY), ./inventory.yaml of the cwd is read."""
    project, before = at_0001
    elsewhere = project.dir / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOK_")}
    result = subprocess.run([sys.executable, "-m", "runbook", "prod", "migrate"], cwd=elsewhere, env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    # no inventory.yaml (nor alembic.ini) there: the built-in example's inventory, which has no prod
    assert result.stderr.strip().splitlines() == [
        "runbook: error: unknown environment 'prod': there is no inventory.yaml here, and the built-in "
        "example defines only: local",
        "runbook: next: runbook init writes an inventory.yaml for the Alembic project here"]
    assert project.state() == before and os.listdir(elsewhere) == []


def test_help_lists_the_exit_codes() -> None:
    """runbook --help exits 0 and documents the exit codes cron wrappers rely on."""
    result = subprocess.run([sys.executable, "-m", "runbook", "--help"], capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "ENV PLAYBOOK" in out and "--dry-run" in out and "--yes" in out and "--inventory" in out
    assert "Exit codes" in out
    for code, words in [(0, "done, verified"), (1, "rolled back"), (2, "bad usage"), (3, "person"),
                        (4, "refused")]:
        assert any(line.strip().startswith(f"{code} ") and words in line for line in out.splitlines()), code


@pytest.mark.parametrize("args", [["--bogus", "prod", "migrate"], ["prod"], ["prod", "migrate", "extra"]])
def test_bad_command_line_exits_2(args: list[str]) -> None:
    """An unknown option or a wrong number of arguments is a usage error: exit 2, no traceback."""
    result = subprocess.run([sys.executable, "-m", "runbook", *args], capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("runbook: error: ") and lines[1].startswith("runbook: next: runbook "), lines


def test_dry_run_shows_plan_sql_and_locks_and_changes_nothing(at_0001: tuple[Project, object]) -> None:
    """--dry-run prints the steps, each pending revision's SQL with tables, locks and warnings; no change."""
    project, before = at_0001
    result = cli(project, "prod", "migrate", "--dry-run", yes=False)  # no confirmation needed to look
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "nothing will be changed" in out
    assert "backup -> check_locks -> upgrade" in out
    assert f"{project.db.name} at 0001, target 0002" in out
    assert "revision 0002" in out
    assert "ALTER TABLE collections ALTER COLUMN description SET NOT NULL" in out
    assert "UPDATE collections SET description" in out
    assert "lock: ACCESS EXCLUSIVE" in out and "lock: ROW EXCLUSIVE" in out
    assert "tables: collections" in out
    assert "WARNING: sets NOT NULL on collections.description" in out
    assert "Traceback" not in out + result.stderr
    assert project.state() == before
    assert project.backups() == []


def test_dry_run_from_base_shows_every_revision(project: Project) -> None:
    """On an empty database the plan covers 0001 (new tables, no warnings about them) then 0002."""
    before = project.state()
    result = cli(project, "prod", "migrate", "--dry-run")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "at base, target 0002" in out
    assert out.index("revision 0001") < out.index("revision 0002")
    assert "CREATE TABLE collections" in out
    assert "WARNING: index on existing table" not in out
    assert project.state() == before


def test_dry_run_json(at_0001: tuple[Project, object]) -> None:
    """--json --dry-run is one JSON object with the statements and their locks."""
    import json

    project, before = at_0001
    result = cli(project, "--json", "prod", "migrate", "--dry-run")
    assert result.returncode == 0, result.stderr
    (plan,) = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    (host,) = plan["hosts"]
    assert (host["current"], host["target"]) == ("0001", "0002")
    locks = {st["lock"] for rev in host["revisions"] for st in rev["statements"]}
    assert "ACCESS EXCLUSIVE" in locks
    assert project.state() == before


def test_errors_never_print_the_password(at_0001: tuple[Project, object]) -> None:
    """A bad key whose value is the password itself is reported without the value."""
    project, before = at_0001
    env = project.environment()
    env["database"]["password"] = project.db.password
    project.inventory.write_text(dump_yaml({"environments": {"prod": env}}))
    line = refused(project, before, cli(project, "prod", "migrate"))
    assert "unknown key 'password'" in line


def test_usage_error_lines_are_single(tmp_path: Path) -> None:
    """Config errors from the in-process entry point are single lines too (used by other tools)."""
    from runbook.cli import execute
    from runbook.context import Options

    inv = tmp_path / "inventory.yaml"
    inv.write_text(textwrap.dedent("""\
        environments:
          prod:
            hosts: [{name: db1}]
            database: {name: x, user: y, port: high}
        """))
    import io
    from contextlib import redirect_stderr

    import structlog

    buf = io.StringIO()
    try:
        with redirect_stderr(buf):
            code = execute(inv, "prod", "migrate", Options())
    finally:
        structlog.reset_defaults()
    assert code == 2
    assert buf.getvalue().strip().splitlines() == [
        f"runbook: error: {inv}:4: environments.prod.database.port: "
        "Input should be a valid integer, unable to parse string as an integer"]


def test_final_lines_are_one_line_and_redacted() -> None:
    """What the CLI prints last is one line, whatever the library message, and never a secret."""
    from runbook.cli import log_safe
    from runbook.log import REDACTOR

    before = set(REDACTOR.secrets)
    REDACTOR.add("pa55:word")
    try:
        text = log_safe('runbook: error: connection failed\nFATAL:  password "pa55:word" rejected\n\n')
    finally:
        REDACTOR.secrets = before
    assert text == 'runbook: error: connection failed / FATAL:  password "***" rejected'


@pytest.mark.parametrize("body, expected", [
    ("def upgrade(:\n    pass\n", "0003_test.py:3: revision file does not compile"),
    ("import no_such_module_here\n", "No module named 'no_such_module_here'"),
    ("1 / 0\n", "raised ZeroDivisionError"),
])
def test_broken_revision_file_is_bad_input(project: Project, body: str, expected: str) -> None:
    """A revision file that does not compile or import is one located line, exit 2, nothing touched."""
    project.own_migrations()
    project.upgrade_to("0001")
    before = project.state()
    (project.alembic_dir / "versions" / "0003_test.py").write_text(
        f'revision = "0003"\ndown_revision = "0002"\n{body}')
    line = refused(project, before, cli(project, "prod", "migrate"))
    assert expected in line
