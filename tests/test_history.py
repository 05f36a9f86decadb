"""``runbook ENV history`` after a mix of real runs (real sshd and PostgreSQL).

Five runs, each started a different way, as a person, systemd and cron would start them: a success
on a terminal (a pty from ``script``, under a sudo user), a failure rolled back under systemd (the
variables systemd gives a unit's processes), a refusal from cron (the run's parent process is named
``cron``, as under the cron daemon), a run stopped by SIGTERM and one killed by SIGKILL mid-upgrade.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from runbook.inventory_keys import DAYS
from tests.fixtures.faults import newest_run_id, wait_for_session
from tests.fixtures.project import PASSWORD_ENV, Project

SLUG = 'op.add_column("collections", sa.Column("slug", sa.Text(), nullable=True))'
DROP_SLUG = 'op.drop_column("collections", "slug")'
FAILING_CHECK = [{"name": "a check that fails", "sql": "SELECT 1", "expect": 2}]


def _environ(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOK_")}
    env.update(extra)
    return env


def _command(project: Project, *args: str) -> list[str]:
    return [sys.executable, "-m", "runbook", "--inventory", str(project.inventory), "--yes", *args]


def _on_a_terminal(project: Project, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The run on a pseudo-terminal (``script``), as a person at a terminal starts it."""
    return subprocess.run(["script", "-qec", shlex.join(_command(project, *args)), "/dev/null"],
                          cwd=project.dir, env=_environ(**env), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=180, check=False)


def _from_cron(project: Project, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The run started by a process named ``cron`` through ``sh -c``, as the cron daemon starts a job
    (``cron`` is a copy of /bin/sh here: what the run sees is its parent's name)."""
    cron = project.dir / "bin" / "cron"
    cron.parent.mkdir(exist_ok=True)
    shutil.copy("/bin/sh", cron)
    return subprocess.run([str(cron), "-c", f"{shlex.join(_command(project, *args))}; exit $?"],
                          cwd=project.dir, env=_environ(**env), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=180, check=False)


def _history(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    return project.run("prod", "history", *args, password=False)  # history needs no password


def _closed_today() -> dict[str, Any]:
    today = DAYS[datetime.now(timezone.utc).weekday()]
    return {"days": [d for d in DAYS if d != today], "start": "00:00", "end": "23:59", "tz": "UTC"}


@pytest.fixture
def runs(project: Project, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The five runs; their run ids by kind."""
    for name in ("INVOCATION_ID", "JOURNAL_STREAM", "SUDO_USER"):
        monkeypatch.delenv(name, raising=False)  # the runs below say how they were started
    password = {PASSWORD_ENV: project.db.password}
    ids: dict[str, str] = {}
    project.own_migrations()
    project.upgrade_to("0001")

    ok = _on_a_terminal(project, "prod", "migrate", SUDO_USER="alice", **password)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    ids["succeeded"] = newest_run_id(project)

    project.add_revision("0003", "0002", SLUG, DROP_SLUG, verify=FAILING_CHECK)
    failed = project.run("prod", "migrate", extra_env={"INVOCATION_ID": "8c2d1e0f7a6b4c3d9e8f7a6b5c4d3e2f"})
    assert failed.returncode == 1, failed.stdout + failed.stderr
    ids["rolled_back"] = newest_run_id(project)

    project.write_inventory(window=_closed_today())
    refused = _from_cron(project, "prod", "migrate", **password)
    assert refused.returncode == 4, refused.stdout + refused.stderr
    ids["refused"] = newest_run_id(project)
    project.write_inventory()

    (project.alembic_dir / "verify" / "0003.yaml").unlink()
    project.add_revision("0003", "0002", f'{SLUG}\nop.execute("SELECT pg_sleep(30)")', DROP_SLUG)
    for kind, sig in (("interrupted", signal.SIGTERM), ("incomplete", signal.SIGKILL)):
        earlier = set(project.run_logs())
        proc = project.start("prod", "migrate")
        try:
            wait_for_session(project, "runbook:upgrade ", "pg_sleep", proc)
            ids[kind] = project.wait_event("run_started", proc=proc, since=earlier)["run_id"]
            proc.send_signal(sig)
            proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == (1 if sig == signal.SIGTERM else -signal.SIGKILL)
    return ids


def test_history_after_a_mix_of_runs(project: Project, runs: dict[str, str]) -> None:
    """--json: one object per run, newest first, each with the right outcome, flags, exit code,
    revisions, backup and who/how; the table says the same; history writes no journal of its own;
    --limit N shows the N newest, and anything but a positive whole number is one line, exit 2."""
    journals = sorted((project.dir / ".runbook" / "runs").glob("*.json"))
    result = _history(project, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted((project.dir / ".runbook" / "runs").glob("*.json")) == journals
    assert [r["event"] for r in rows] == ["run"] * 5
    by_id = {r["run_id"]: r for r in rows}
    assert [r["run_id"] for r in rows] == [runs[k] for k in
                                           ("incomplete", "interrupted", "refused", "rolled_back", "succeeded")]
    me = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()

    ok = by_id[runs["succeeded"]]
    assert (ok["outcome"], ok["flags"], ok["exit_code"]) == ("succeeded", [], 0)
    assert [(h["host"], h["from"], h["to"]) for h in ok["hosts"]] == [("db1", "0001", "0002")]
    assert ok["hosts"][0]["backup"] in {str(p) for p in project.backups()}
    assert ok["started_by"]["how"] == "terminal" and ok["started_by"]["tty"].startswith("/dev/")
    assert (ok["started_by"]["user"], ok["started_by"]["sudo_user"]) == (me, "alice")
    assert ok["started_by"]["control_host"] == os.uname().nodename
    assert ok["duration_s"] > 0

    back = by_id[runs["rolled_back"]]
    assert (back["outcome"], back["flags"], back["exit_code"]) == ("rolled_back", [], 1)
    assert [(h["from"], h["to"]) for h in back["hosts"]] == [("0002", "0002")]
    assert back["hosts"][0]["backup"] and back["started_by"]["how"] == "systemd"
    assert back["started_by"]["sudo_user"] is None

    refused = by_id[runs["refused"]]
    assert (refused["outcome"], refused["flags"], refused["exit_code"]) == ("refused", [], 4)
    assert refused["hosts"] == [] and refused["started_by"]["how"] == "cron"

    stopped = by_id[runs["interrupted"]]
    assert (stopped["outcome"], stopped["flags"], stopped["exit_code"]) == ("rolled_back", ["INTERRUPTED"], 1)
    assert stopped["interrupted"] == {"signal": "SIGTERM", "step": "upgrade", "phase": "run"}
    assert [(h["from"], h["to"]) for h in stopped["hosts"]] == [("0002", "0002")]
    assert stopped["started_by"]["how"] == "other"

    killed = by_id[runs["incomplete"]]
    assert (killed["outcome"], killed["flags"], killed["exit_code"]) == ("incomplete", ["INCOMPLETE"], None)
    assert killed["status"] == "running" and killed["duration_s"] is None
    assert killed["stopped"] == "its runner died during upgrade"
    assert [(h["host"], h["from"], h["to"]) for h in killed["hosts"]] == [("db1", "0002", None)]
    assert killed["hosts"][0]["backup"]

    table = _history(project)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == "Environment prod: the last 5 runs, newest first"
    header = lines[1].split()
    assert header[:4] == ["STARTED", "(UTC)", "PLAYBOOK", "OUTCOME"]

    def row(kind: str) -> str:
        line, = [l for l in lines[2:7] if l.rstrip().endswith(runs[kind])]
        return line

    assert " succeeded " in row("succeeded") and f"{me}@{os.uname().nodename} (sudo from alice)" in row("succeeded")
    assert " terminal " in row("succeeded") and "db1 0001->0002" in row("succeeded")
    assert " rolled_back " in row("rolled_back") and " systemd" in row("rolled_back")
    assert " refused " in row("refused") and " cron " in row("refused") and " 4 " in row("refused")
    assert " rolled_back INTERRUPTED " in row("interrupted") and " other " in row("interrupted")
    assert " INCOMPLETE " in row("incomplete") and "db1 0002->?" in row("incomplete")
    assert f"  {runs['incomplete']} INCOMPLETE: its runner died during upgrade" in lines
    assert f"  {runs['interrupted']} INTERRUPTED: SIGTERM during upgrade" in lines

    # --limit N: the N newest; anything but a positive whole number is one line, exit 2.
    two = _history(project, "--json", "--limit", "2")
    assert two.returncode == 0, two.stderr
    assert [json.loads(l)["run_id"] for l in two.stdout.splitlines()] == [runs["incomplete"], runs["interrupted"]]
    table = _history(project, "--limit", "1")
    assert table.stdout.splitlines()[0] == "Environment prod: the last 1 run, newest first"
    assert len(table.stdout.splitlines()) == 2 + 1 + 2  # title, header, one run, its note
    for bad in ("0", "-3", "x", "2.5", ""):
        result = _history(project, "--limit", bad)
        assert result.returncode == 2, (bad, result.stdout, result.stderr)
        assert result.stdout == "" and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines() == [
            f"runbook: error: --limit '{bad}': history takes a positive whole number of runs, e.g. --limit 50"]


def test_history_without_runs_and_limit_elsewhere(project: Project) -> None:
    """No runs yet: said plainly. --limit on a playbook selects hosts (a count is no host's name: exit 2,
    nothing run); an unknown environment is an error too."""
    result = _history(project)
    assert (result.returncode, result.stdout.strip()) == (0, "Environment prod: no runs recorded")
    assert _history(project, "--json").stdout == ""
    limited = project.run("prod", "migrate", "--limit", "3")
    assert limited.returncode == 2 and "--limit '3' matches no host of environment 'prod'" in limited.stderr
    assert not (project.dir / ".runbook" / "runs").exists() or not list((project.dir / ".runbook" / "runs").iterdir())
    unknown = project.run("nope", "history", password=False)
    assert unknown.returncode == 2 and "unknown environment 'nope'" in unknown.stderr
