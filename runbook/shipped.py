"""What runbook ships inside its package, and the one place that knows where it is.

The shipped playbooks (``runbook/playbooks/``), the example application (RAG Memory's Alembic
project: ``runbook/example/alembic.ini`` and ``alembic/`` with its verification files; its sample
data is ``runbook/data/sample_data.sql``) and the built-in inventory (``runbook/example/inventory.yaml``:
the embedded ``local`` environment) travel in the wheel and the sdist, so a ``uv tool install`` or
``pipx install`` works from any directory, and a clone works exactly the same way. They are found
with ``importlib.resources``; Alembic and the playbook loader need real files, so a runbook imported
from a zip archive is refused with one line rather than failing later.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from .errors import ConfigError

BUILTIN_NOTE = ("runbook: no inventory.yaml here: running the built-in example (RAG Memory on a throwaway "
                "local PostgreSQL under ./.runbook); `runbook init` writes an inventory for your Alembic project")


def package_dir() -> Path:
    """The installed ``runbook`` package, as a folder on disk."""
    found = resources.files("runbook")
    if not isinstance(found, Path) or not found.is_dir():
        raise ConfigError(f"runbook's shipped files are not on disk ({found}): install runbook as files "
                          "(pip install, uv tool install, pipx install), not in a zip archive")
    return found


def playbooks_dir() -> Path:
    """The playbooks shipped with runbook (a playbook next to the inventory wins over these)."""
    return package_dir() / "playbooks"


def example_dir() -> Path:
    """The example application's folder: ``alembic.ini``, ``alembic/``, the built-in inventory."""
    return package_dir() / "example"


def example_alembic_ini() -> Path:
    """The example application's ``alembic.ini``: what an environment without one of its own runs."""
    return example_dir() / "alembic.ini"


def is_example(ini: Path | None) -> bool:
    """Whether ``ini`` is the example application's (its sample data fits no other schema)."""
    return ini is not None and Path(ini).resolve() == example_alembic_ini().resolve()


def in_checkout() -> bool:
    """runbook runs from its source tree (a clone, an editable install), not an installed copy."""
    return (package_dir().parent / "pyproject.toml").is_file()


def builtin_inventory() -> Path:
    """The inventory used where there is none: the embedded ``local`` environment only."""
    return example_dir() / "inventory.yaml"


def wants_builtin(path: Path) -> bool:
    """``path`` is the default ``./inventory.yaml`` (no ``--inventory``, no ``$RUNBOOK_INVENTORY``),
    it does not exist, and no Alembic project is here either: a first try of runbook, which gets the
    built-in example. An ``alembic.ini`` here means a project of your own: ``runbook init`` first."""
    return (str(path) == "inventory.yaml" and not os.environ.get("RUNBOOK_INVENTORY")
            and not path.exists() and not Path("alembic.ini").exists())
