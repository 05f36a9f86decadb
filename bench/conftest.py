"""pytest wiring of the benchmarks: the suite's fixtures, the bench fixtures, the results table.

Run: ``cd /work/main && UV_PYTHON_DOWNLOADS=never uv run pytest bench -s -q -p no:cacheprovider``
(see bench/README.md). The helpers live in ``benchlib.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: tests.fixtures

pytest_plugins = ["tests.fixtures.sshd", "tests.fixtures.pg", "tests.fixtures.project"]

from benchlib import bench, pytest_terminal_summary, report  # noqa: E402,F401  (fixtures and hook)
