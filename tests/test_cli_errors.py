"""Errors in one voice, per-command options and --help, Ctrl-C at a prompt, shell completion.

Every error form once, through the real ``runbook`` command in a subprocess: a usage mistake click
catches reads like runbook's own errors (``runbook: error: ...`` and ``runbook: next: ...``, exit 2);
"did you mean" for environments, playbooks, inventory keys and revisions; a flag that does not apply
to a command is refused; Ctrl-C at a confirmation prompt (a real pseudo-terminal) touches nothing and
prints no traceback; completion answers through click's own protocol.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.project import PASSWORD_ENV, ROOT, Project, dump_yaml


def runbook(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            project: Project | None = None) -> subprocess.CompletedProcess[str]:
    """The real command, no terminal on stdin (as cron runs it)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("RUNBOOK_", "_RUNBOOK"))}
    if project is not None:
        environ[PASSWORD_ENV] = project.db.password
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "runbook", *args], cwd=cwd or (project.dir if project else ROOT),
                          env=environ, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
                          check=False)


def usage(result: subprocess.CompletedProcess[str]) -> tuple[str, str]:
    """Assert exit 2 and exactly ``runbook: error: ...`` + ``runbook: next: ...`` on stderr, no traceback;
    return the error and the next step."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("runbook: error: ") and lines[1].startswith("runbook: next: "), lines
    return lines[0].removeprefix("runbook: error: "), lines[1].removeprefix("runbook: next: ")


def untouched(project: Project, before: object, backups: list[Path]) -> None:
    assert project.state() == before
    assert project.backups() == backups


# -- usage errors click catches --------------------------------------------------------------------

@pytest.mark.parametrize(("args", "error", "hint"), [
    (("prod", "migrate", "--bogus"), "no such option --bogus", "runbook prod migrate --help"),
    (("prod", "migrate", "--dry-rn"), "no such option --dry-rn; did you mean '--dry-run'?",
     "runbook prod migrate --help"),
    (("prod", "migrate", "--parallel", "0"), "--parallel: 0 is not in the range x>=1", "runbook prod migrate --help"),
    (("prod", "migrate", "extra"), "unexpected extra argument 'extra'", "runbook prod migrate --help"),
    (("revision",), "missing argument 'MESSAGE'", "runbook revision --help"),
    (("prod", "migrate", "--to"), "option '--to' requires an argument", "runbook prod migrate --help"),
    (("lint", "--format", "xml"), "--format: 'xml' is not one of 'text', 'json', 'github'", "runbook lint --help"),
    (("--to", "0002", "prod", "migrate"), "--to goes after the playbook, as in runbook ENV PLAYBOOK --to ... "
     "(it is an option of migrate, migrate-rehearsed, rehearse, rollback, checklist)", "runbook ENV PLAYBOOK --help"),
    ((), "missing ENV and PLAYBOOK (e.g. runbook prod status)", "runbook --help"),
    (("prod",), "missing PLAYBOOK after 'prod' (e.g. runbook prod status)", "runbook prod --help"),
])
def test_click_usage_errors_in_runbooks_voice(args: tuple[str, ...], error: str, hint: str) -> None:
    """What click catches reads like runbook's own errors: one line, the next step, exit 2."""
    assert usage(runbook(*args)) == (error, hint)


def test_usage_error_with_json_is_json() -> None:
    """With --json a usage error goes through the same printer as every other error: JSON on stdout."""
    result = runbook("--json", "prod", "verify", "--to", "0002")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert lines and "--to does not apply to verify" in json.dumps(lines)
    assert "runbook prod verify --help" in json.dumps(lines)


@pytest.mark.parametrize(("args", "option", "playbook"), [
    (("local", "verify", "--to", "0002"), "--to", "verify"),
    (("local", "status", "--dry-run"), "--dry-run", "status"),
    (("local", "history", "--parallel", "2"), "--parallel", "history"),
    (("local", "backup", "--accept", "x"), "--accept", "backup"),
    (("local", "migrate", "--install"), "--install", "migrate"),
])
def test_a_flag_that_does_not_apply_is_refused(args: tuple[str, ...], option: str, playbook: str,
                                               tmp_path: Path) -> None:
    """Not silently ignored: exit 2 before anything is loaded (the inventory does not even exist here)."""
    error, hint = usage(runbook("--inventory", str(tmp_path / "inventory.yaml"), *args, cwd=tmp_path))
    assert error.startswith(f"{option} does not apply to {playbook} (it is an option of ")
    assert hint == f"runbook local {playbook} --help"
    assert not (tmp_path / ".runbook").exists()


def test_global_options_after_the_playbook(tmp_path: Path) -> None:
    """--inventory, --json (the global options) are taken after the playbook too, as before ENV."""
    inv = tmp_path / "elsewhere.yaml"
    result = runbook("local", "history", "--json", "--inventory", str(inv), cwd=tmp_path)
    assert result.returncode == 2
    assert str(inv) in result.stdout and json.loads(result.stdout.splitlines()[0])


# -- per-command --help ----------------------------------------------------------------------------

def options_of(text: str) -> set[str]:
    """The options the help's "Options:" section lists."""
    section = text.split("\nOptions:\n", 1)[1].split("\n\n", 1)[0]
    return {word.rstrip(",") for line in section.splitlines() for word in line.split()[:3]
            if word.startswith("--") and line.lstrip().startswith("-")}


@pytest.mark.parametrize(("args", "present", "absent"), [
    (("prod", "migrate"), {"--to", "--dry-run", "--accept", "--override", "--ignore-window", "--limit",
                           "--parallel", "--canary", "--rollback-all"}, {"--restore", "--install", "--user"}),
    (("prod", "rollback"), {"--to", "--restore", "--dry-run", "--limit", "--shard", "--parallel"},
     {"--accept", "--ignore-window", "--rollback-all", "--canary", "--install"}),
    (("prod", "status"), {"--limit", "--shard"}, {"--to", "--dry-run", "--parallel", "--restore"}),
    (("prod", "checklist"), {"--to", "--ignore-window", "--accept", "--override", "--limit", "--shard"},
     {"--dry-run", "--parallel", "--restore"}),
    (("prod", "verify"), {"--limit", "--shard", "--parallel"}, {"--to", "--dry-run"}),
    (("prod", "history"), {"--limit"}, {"--shard", "--to"}),
    (("prod", "schedule"), {"--install", "--user"}, {"--to", "--dry-run", "--limit"}),
    (("lint",), {"--format", "--fail-on", "--rules", "--config"}, {"--to", "--dry-run"}),
])
def test_each_command_help_shows_its_own_options(args: tuple[str, ...], present: set[str],
                                                 absent: set[str]) -> None:
    result = runbook(*args, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: runbook {' '.join(args)} [OPTIONS]")
    shown = options_of(result.stdout)
    assert present <= shown, present - shown
    assert not (absent & shown), absent & shown
    globals_ = {"--json", "--yes", "--verbose", "--no-color"} | ({"--inventory"} if args[0] != "lint" else set())
    assert not (globals_ & shown), "global options are listed once, in runbook --help"


def test_top_help_shows_the_global_options_and_exit_codes() -> None:
    result = runbook("--help")
    assert result.returncode == 0
    shown = options_of(result.stdout)
    assert {"--inventory", "--yes", "--json", "--verbose", "--no-color", "--version"} <= shown
    assert "--parallel" not in shown and "Exit codes" in result.stdout and "lint" in result.stdout
    assert runbook("--version").stdout.startswith("runbook, version ")


# -- did you mean ----------------------------------------------------------------------------------

@pytest.fixture
def at_0002(project: Project) -> tuple[Project, object, list[Path]]:
    project.own_migrations()
    project.upgrade_to("0001")
    project.upgrade_to("0002", sample=False)
    return project, project.state(), project.backups()


def refused(project: Project, *args: str) -> str:
    result = runbook("--inventory", str(project.inventory), "--yes", *args, project=project)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and project.db.password not in result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("runbook: error: ")]
    return line.removeprefix("runbook: error: ")


def test_did_you_mean(at_0002: tuple[Project, object, list[Path]]) -> None:
    """Environment, playbook, inventory key, revision: the close name is suggested; nothing touched."""
    project, before, backups = at_0002
    assert refused(project, "prd", "migrate") == \
        f"{project.inventory}: unknown environment 'prd'; did you mean 'prod'? (defined: prod)"
    assert refused(project, "prod", "migrat").startswith("unknown playbook 'migrat'; did you mean 'migrate'? (")
    assert refused(project, "prod", "statsu").startswith("unknown playbook 'statsu'; did you mean 'status'? (")
    line = refused(project, "prod", "migrate", "--to", "00002")
    assert line.startswith("unknown or ambiguous revision '00002'; did you mean '0002'? (Alembic: "), line
    assert "did you mean" not in refused(project, "prod", "migrate", "--to", "zzzzzz")

    env = project.environment()
    env["database"]["pasword_env"] = env["database"].pop("password_env")
    project.inventory.write_text(dump_yaml({"environments": {"prod": env}}))
    line = refused(project, "prod", "status")
    assert line.endswith("unknown key 'pasword_env' in environments.prod.database; did you mean 'password_env'?")
    env = project.environment()
    env["hosts"][0]["shh"] = env["hosts"][0].pop("ssh")
    project.inventory.write_text(dump_yaml({"environments": {"prod": env}}))
    assert refused(project, "prod", "status").endswith(
        "unknown key 'shh' in environments.prod.hosts[0]; did you mean 'ssh'?")
    untouched(project, before, backups)
    assert not project.run_logs(), "refused before any run: no run log"


def test_pydantic_wording_never_reaches_the_user(project: Project) -> None:
    """A validator's own message without pydantic's "Value error, " prefix; locations dotted, not tuples."""
    env = project.environment(notify={"webhook_env": "HOOK", "on": []})
    project.inventory.write_text(dump_yaml({"environments": {"prod": env}}))
    line = refused(project, "prod", "status")
    assert "names no event" in line
    assert "Value error" not in line and "('" not in line and "environments.prod.notify" in line


# -- Ctrl-C at a confirmation prompt ---------------------------------------------------------------

def at_prompt(argv: list[str], cwd: Path, env: dict[str, str], prompt: bytes, *,
              how: str = "pty") -> tuple[int, str]:
    """Run ``argv`` on a pseudo-terminal, wait for ``prompt``, then Ctrl-C: the terminal's ^C (SIGINT to
    the foreground process group), or ``how="kill"``: SIGINT sent to the process. Exit code, output."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal, stdin a TTY
        os.chdir(cwd)
        os.execve(sys.executable, [sys.executable, *argv], env)
    out = b""
    sent = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                data = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            out += data
        if not sent and prompt in out:
            time.sleep(0.2)  # the prompt is printed just before the read
            if how == "pty":
                os.write(fd, b"\x03")
            else:
                os.kill(pid, signal.SIGINT)
            sent = True
    else:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert sent, out.decode(errors="replace")
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


@pytest.mark.parametrize(("protected", "how"), [(True, "pty"), (False, "pty"), (False, "kill")])
def test_ctrl_c_at_the_rollback_prompt(at_0002: tuple[Project, object, list[Path]], protected: bool,
                                       how: str) -> None:
    """Ctrl-C at rollback's prompt (typing a protected environment's name, or "Go ahead?") is "not
    confirmed": one line, exit 2 (README: like answering no), no traceback, no backup, no change."""
    project, before, backups = at_0002
    project.write_inventory(protected=protected)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOK_")}
    env.update({PASSWORD_ENV: project.db.password, "NO_COLOR": "1", "TERM": "dumb"})
    prompt = b"Type its name to go ahead" if protected else b"Go ahead?"
    code, out = at_prompt(["-m", "runbook", "--inventory", str(project.inventory), "prod", "rollback"],
                          project.dir, env, prompt, how=how)
    assert code == 2, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    assert "rollback not confirmed: nothing was done" in out
    untouched(project, before, backups)


def test_ctrl_c_at_the_protected_environment_prompt(at_0002: tuple[Project, object, list[Path]]) -> None:
    """The same at a protected environment's "type its name" before a migrate: nothing touched."""
    project, before, backups = at_0002
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOK_")}
    env.update({PASSWORD_ENV: project.db.password, "NO_COLOR": "1", "TERM": "dumb"})
    code, out = at_prompt(["-m", "runbook", "--inventory", str(project.inventory), "prod", "backup"],
                          project.dir, env, b"Type its name to go on")
    assert code == 2, out
    assert "Traceback" not in out and "confirmation did not match 'prod': nothing was done" in out
    untouched(project, before, backups)


# -- shell completion ------------------------------------------------------------------------------

def complete(words: str, folder: Path, shell: str = "bash") -> list[str]:
    """click's completion protocol, as the shell's completion function calls it."""
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    result = runbook(cwd=folder, env={"_RUNBOOK_COMPLETE": f"{shell}_complete", "COMP_WORDS": words,
                                      "COMP_CWORD": str(cword)})
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return [line.split(",", 1)[1] for line in result.stdout.splitlines() if line]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """An inventory with two environments, a playbook of its own, a run journal with one backup."""
    (tmp_path / "inventory.yaml").write_text(dump_yaml({"environments": {
        "staging": {"embedded": True}, "production": {"embedded": True}}}))
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "playbooks" / "nightly.yaml").write_text("steps: [backup]\n")
    runs = tmp_path / ".runbook" / "runs"
    runs.mkdir(parents=True)
    record = {"run_id": "20261201T020000Z-abcdef", "env": "staging", "playbook": "migrate", "status": "succeeded",
              "exit_code": 0, "started": "2026-12-01T02:00:00+00:00", "finished": "2026-12-01T02:00:09+00:00",
              "hosts": {"localhost": {"start_revision": "0001", "end_revision": "0002",
                                      "backup": {"backup_path": "/b/rag_memory_staging_20261201T020003Z_0001.dump"}}}}
    (runs / "20261201T020000Z-abcdef.json").write_text(json.dumps(record))
    return tmp_path


def test_completion_of_environments_playbooks_revisions_backups(folder: Path) -> None:
    assert complete("runbook ", folder) == ["production", "staging", "lint", "revision", "init"]
    assert complete("runbook st", folder) == ["staging"]
    playbooks = complete("runbook staging ", folder)
    assert playbooks[:4] == ["status", "checklist", "history", "schedule"]
    assert {"migrate", "rollback", "rehearse", "nightly"} <= set(playbooks)
    assert complete("runbook staging mi", folder) == ["migrate", "migrate-rehearsed"]
    assert complete("runbook staging schedule n", folder) == ["nightly"]
    assert complete("runbook staging migrate --to ", folder) == ["head", "heads", "base", "0002", "0001"]
    assert complete("runbook staging migrate --to 00", folder) == ["0002", "0001"]
    assert complete("runbook staging rollback --restore ", folder) == ["rag_memory_staging_20261201T020003Z_0001.dump"]
    assert "--dry-run" not in complete("runbook staging status --", folder)
    assert "--dry-run" in complete("runbook staging migrate --", folder)


def test_completion_follows_the_inventory_option(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    other = tmp_path_factory.mktemp("other") / "ops.yaml"
    other.write_text(dump_yaml({"environments": {"eu-west": {"embedded": True}}}))
    assert complete(f"runbook --inventory {other} ", folder) == ["eu-west", "lint", "revision", "init"]
    assert complete(f"runbook -i {other} e", folder) == ["eu-west"]
    # no inventory.yaml (nor alembic.ini) here: the built-in example's, as a command would use
    assert complete("runbook ", folder / "playbooks") == ["local", "lint", "revision", "init"]
    assert complete("runbook --inventory missing.yaml ", folder) == ["lint", "revision", "init"]  # no error


@pytest.mark.parametrize(("shell", "marker"), [("bash", "complete -o nosort -F"), ("zsh", "compdef"),
                                               ("fish", "complete --no-files --command runbook")])
def test_completion_scripts(shell: str, marker: str, tmp_path: Path) -> None:
    """The scripts the README tells people to source: click's own, for runbook."""
    result = runbook(cwd=tmp_path, env={"_RUNBOOK_COMPLETE": f"{shell}_source"})
    assert result.returncode == 0 and marker in result.stdout, result.stdout
