"""runbook: production runbook automation for PostgreSQL databases managed with Alembic.

One thing happens on import: structlog is kept from loading rich's traceback and pretty-printer.
structlog imports them whenever rich is installed, for its development renderer's exceptions; runbook
prints plain tracebacks (``-v`` included) and never calls them, and they cost ~50 ms of every start
(pygments' lexers among them), a twentieth of a backup's fixed cost (docs/benchmarks.md). While
structlog's own import runs, importing them raises ImportError, which structlog handles as "rich not
installed"; any other import of them, before or after, is untouched.
"""

from __future__ import annotations

import sys
from typing import Any

_NOT_FOR_STRUCTLOG = frozenset({"rich.traceback", "rich.pretty"})


class _StructlogWithoutRichTracebacks:
    """A meta path finder that finds nothing, and refuses the two modules while structlog imports."""

    @staticmethod
    def find_spec(name: str, path: Any = None, target: Any = None) -> None:
        if name in _NOT_FOR_STRUCTLOG:
            importing = sys.modules.get("structlog")
            spec = getattr(importing, "__spec__", None)
            if spec is not None and getattr(spec, "_initializing", False):
                raise ImportError(f"{name} is not loaded for structlog by runbook")
        return None


if not any(isinstance(f, _StructlogWithoutRichTracebacks) for f in sys.meta_path):
    sys.meta_path.insert(0, _StructlogWithoutRichTracebacks())
