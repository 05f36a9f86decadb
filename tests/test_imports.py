"""What a run loads: a backup's fixed cost is mostly start-up (docs/benchmarks.md, "A database of
1.1 GB"), so a run imports only what its playbook uses.

- structlog is imported without rich's traceback and pretty-printer (``runbook/__init__.py``), which
  stay importable for anyone else afterwards;
- a ``backup`` run (real PostgreSQL behind the test sshd) never loads the SQL parser (pglast) or the
  migrate step, and a ``migrate`` run does: the check that the first is not vacuous; without a
  webhook it loads no HTTP client (``runbook.notify``, ``urllib.request``).

The modules are read from the run itself: a ``sitecustomize`` writes ``sys.modules`` at its exit.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.fixtures.project import Project


def _modules_of_run(project: Project, tmp_path: Path, *args: str) -> set[str]:
    """Run ``runbook`` with a ``sitecustomize`` that writes the names of every module loaded, at
    exit (runbook runs its atexit functions before ``os._exit``), and return them."""
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    out = tmp_path / f"modules-{args[-1]}.txt"
    (hook / "sitecustomize.py").write_text(
        "import atexit, os, sys\n"
        "atexit.register(lambda: open(os.environ['RUNBOOK_TEST_MODULES'], 'w').write('\\n'.join(sys.modules)))\n")
    done = project.run(*args, extra_env={"PYTHONPATH": str(hook), "RUNBOOK_TEST_MODULES": str(out)})
    assert done.returncode == 0, done.stdout + done.stderr
    return set(out.read_text().split())


def test_structlog_is_loaded_without_rich_tracebacks_which_stay_importable() -> None:
    code = (
        "import sys, runbook.log, runbook.console, structlog.dev\n"
        "print('traceback' if 'rich.traceback' in sys.modules else '-', "
        "'pretty' if 'rich.pretty' in sys.modules else '-', structlog.dev.rich)\n"
        "import rich.traceback, rich.pretty\n"
        "print(rich.traceback.Traceback.__name__, rich.pretty.Pretty.__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["- - None", "Traceback Pretty"]


def test_a_backup_run_loads_no_sql_parser_and_a_migrate_run_does(project: Project, tmp_path: Path) -> None:
    project.upgrade_to("0001")
    loaded = _modules_of_run(project, tmp_path, "prod", "backup")
    assert len(project.backups()) == 1
    assert "runbook.steps.backup" in loaded, "the module list was not written by the run"
    assert not {"pglast", "runbook.steps.migrate", "runbook.lint.preflight", "alembic"} & loaded
    assert not {"runbook.notify", "urllib.request"} & loaded, "no webhook configured: no HTTP client"

    loaded = _modules_of_run(project, tmp_path, "prod", "migrate")
    assert project.db.alembic_version() == {"0002"}
    assert {"pglast", "runbook.steps.migrate", "runbook.lint.preflight"} <= loaded
