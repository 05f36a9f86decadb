"""pytest wiring of the benchmarks: the suite's fixtures, the bench fixtures, the results table.

Run: ``cd /work/main && UV_PYTHON_DOWNLOADS=never uv run pytest bench -s -q -p no:cacheprovider``
(see bench/README.md). The helpers live in ``benchlib.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: tests.fixtures

import compileall  # noqa: E402

# Time a byte-compiled runbook (TESTING.md): `uv sync --compile-bytecode` compiles site-packages
# only, not the editable project, and PYTHONDONTWRITEBYTECODE keeps Python from caching it.
compileall.compile_dir(str(Path(__file__).resolve().parent.parent / "runbook"), quiet=1)

pytest_plugins = ["tests.fixtures.sshd", "tests.fixtures.pg", "tests.fixtures.project"]

from benchlib import bench, pytest_terminal_summary, report  # noqa: E402,F401  (fixtures and hook)
from benchlib import KEEP_PGDATA, kept_pg_server  # noqa: E402

if KEEP_PGDATA:
    import pytest

    @pytest.fixture(scope="session")
    def pg_server():  # type: ignore[no-untyped-def]  # overrides tests.fixtures.pg's (bench/README.md)
        yield from kept_pg_server(Path(KEEP_PGDATA))
