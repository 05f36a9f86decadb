"""runbook installed like any tool: the wheel and the sdist, each in a fresh virtualenv.

``uv build`` once for the module; each artifact pip-installed (``python3 -m venv`` + ``pip install
FILE``, dependencies from the package registry) into its own virtualenv. Then, from an empty
directory and through the installed ``runbook`` script only (no checkout on any path): ``--help``,
``local migrate`` twice (the built-in example on a throwaway PostgreSQL, said in one line; the second
has nothing to migrate), and next to a copied Alembic project of another application
(tests/fixtures/byo.py, env.py reading its URL from a variable) ``runbook init`` then
``runbook local migrate``, the database read back at the project's head.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from runbook.embedded import EmbeddedCluster
from runbook.shipped import BUILTIN_NOTE
from tests.fixtures import byo
from tests.fixtures.pg import stop_embedded

ROOT = Path(__file__).resolve().parent.parent
PYTHON = shutil.which("python3") or sys.executable


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The wheel and the sdist, built once from this checkout."""
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([str(ROOT / "bin" / "uv"), "build", "--quiet", "--wheel", "--sdist", "-o", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    (wheel,) = out.glob("runbook-*.whl")
    (sdist,) = out.glob("runbook-*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


@pytest.fixture(scope="module", params=["wheel", "sdist"])
def installed(request: pytest.FixtureRequest, dist: dict[str, Path],
              tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runbook installed from one built file into a fresh virtualenv; its ``bin/runbook``.

    The wheel as the README's ``uv tool install`` does it (a tool virtualenv of uv's own, in a
    temporary UV_TOOL_DIR); the sdist as ``pipx install`` does it: ``python3 -m venv`` and pip, which
    builds the sdist first (hatchling from the registry). uv for one of the two keeps the test short
    (pip resolves the dependencies in about a minute here, uv from its cache in seconds)."""
    base = tmp_path_factory.mktemp(f"install-{request.param}")
    env = _clean_env()
    if request.param == "wheel":
        env.update(UV_TOOL_DIR=str(base / "tools"), UV_TOOL_BIN_DIR=str(base / "bin"), UV_COMPILE_BYTECODE="1",
                   UV_PYTHON_DOWNLOADS="never")
        done = subprocess.run([str(ROOT / "bin" / "uv"), "tool", "install", "--quiet", "--compile-bytecode",
                               "--python", PYTHON, str(dist["wheel"])], capture_output=True, text=True, timeout=600, check=False,
                              env=env, cwd=base)
        assert done.returncode == 0, done.stderr[-3000:]
        script = (base / "bin" / "runbook").resolve()  # a link into the tool's virtualenv
        assert script.is_relative_to(base / "tools"), script
        return script
    venv = base / "venv"
    subprocess.run([PYTHON, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                           "--disable-pip-version-check", str(dist["sdist"])],
                          capture_output=True, text=True, timeout=600, check=False, env=env, cwd=base)
    assert done.returncode == 0, done.stderr[-3000:]
    return venv / "bin" / "runbook"


def _clean_env() -> dict[str, str]:
    """No RUNBOOK_* settings, no PYTHONPATH: only what is installed counts."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOK_") and k != "PYTHONPATH"}


@pytest.fixture
def empty_dirs() -> Iterator[Callable[[], Path]]:
    """Empty folders (reachable by the postgres user when root); servers stopped, folders removed."""
    made: list[Path] = []

    def make() -> Path:
        folder = Path(tempfile.mkdtemp(prefix="runbook-install-"))
        folder.chmod(0o755)
        made.append(folder)
        return folder

    yield make
    for folder in made:
        stop_embedded(folder / ".runbook" / "pg" / "data")
        shutil.rmtree(folder, ignore_errors=True)


def run(runbook: Path, folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(runbook), *args], cwd=folder, env=_clean_env(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300, check=False)


def head_of(folder: Path) -> str:
    cluster = EmbeddedCluster(folder / ".runbook")
    db = cluster.ensure()
    try:
        with psycopg.connect(host=db.host, port=db.port, user=db.user, dbname=db.name, password=db.password) as conn:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
            return str(row[0]) if row else ""
    finally:
        cluster.stop()


def test_installed_runbook_from_an_empty_directory(installed: Path, empty_dirs: Callable[[], Path]) -> None:
    """--help; local migrate twice on the built-in example; init next to another application's
    Alembic project, then local migrate there: every file from the installed package."""
    make = empty_dirs
    site = installed.parent.parent  # the virtualenv

    # The script and the package come from the virtualenv, not from this checkout.
    where = subprocess.run([str(site / "bin" / "python"), "-c", "import runbook; print(runbook.__file__)"],
                           cwd=tempfile.gettempdir(), env=_clean_env(), capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(site)), where.stdout

    first_dir = make()
    helped = run(installed, first_dir, "--help")
    assert helped.returncode == 0 and "runbook init" in helped.stdout and "Exit codes" in helped.stdout

    first = run(installed, first_dir, "local", "migrate")
    assert first.returncode == 0, first.stderr[-3000:]
    assert BUILTIN_NOTE in first.stderr.splitlines(), first.stderr[:2000]
    assert "local/localhost: rag_memory at 0002, verified" in first.stdout + first.stderr
    (log,) = (first_dir / ".runbook" / "runs").glob("*.jsonl")
    requested = next(json.loads(line) for line in log.read_text().splitlines()
                     if json.loads(line)["event"] == "run_requested")
    assert requested["playbook_file"].startswith(str(site)), requested["playbook_file"]

    second = run(installed, first_dir, "local", "migrate")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "local/localhost: rag_memory at 0002: nothing to migrate, no backup needed, verified" in second.stdout + second.stderr
    assert sorted(os.listdir(first_dir)) == [".runbook"], "the built-in example writes only under ./.runbook"

    app = make()
    byo.write_app(app, "url_env")
    for path in app.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    made = run(installed, app, "init")
    assert made.returncode == 0, made.stderr
    text = (app / "inventory.yaml").read_text()
    assert f"url_env: {byo.URL_ENV}" in text and "embedded: true" in text and "# prod:" in text

    migrated = run(installed, app, "local", "migrate")
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    assert BUILTIN_NOTE not in migrated.stderr
    assert f"local/localhost: rag_memory at {byo.HEAD}, verified" in migrated.stdout + migrated.stderr
    assert head_of(app) == byo.HEAD

    again = run(installed, app, "init")
    assert again.returncode == 2 and again.stderr.count("\n") <= 2 and "never overwrites" in again.stderr
    assert (app / "inventory.yaml").read_text() == text
