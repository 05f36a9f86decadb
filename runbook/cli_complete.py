"""Shell completion (click's own protocol: ``_RUNBOOK_COMPLETE=bash_source runbook``, see README).

ENV completes from the inventory's environments (``--inventory`` as typed, else
``$RUNBOOK_INVENTORY`` or ./inventory.yaml), PLAYBOOK from the built-ins and the playbook files,
``--to`` from the Alembic project's revisions (its script directory, no database) and
``--restore`` from the backups the run journal recorded (no SSH). Everything here reads local files
only and answers nothing rather than fail: a completion must never print an error into the prompt.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click
from click.shell_completion import CompletionItem

BUILT_IN = ("status", "checklist", "history", "schedule")


def _inventory_path(ctx: click.Context) -> Path:
    from .cli_playbooks import merged_globals

    given = merged_globals(ctx)["inventory_path"]
    if given == "inventory.yaml" and os.environ.get("RUNBOOK_INVENTORY"):
        given = os.environ["RUNBOOK_INVENTORY"]
    return Path(given).expanduser()


def environment_names(path: Path) -> list[str]:
    """The environments an inventory defines, read as YAML only (no validation); the built-in
    example's where a command would use it (no inventory.yaml and no Alembic project here)."""
    try:
        from ruamel.yaml import YAML

        from .shipped import builtin_inventory, wants_builtin

        if wants_builtin(path):
            path = builtin_inventory()

        tree = YAML(typ="safe").load(path.read_text())
        return sorted(str(name) for name in (tree or {}).get("environments") or {})
    except Exception:
        return []


def playbook_names(inventory_path: str | Path) -> list[str]:
    """The built-ins and the playbook files (next to the inventory, then the shipped ones)."""
    try:
        from .playbook import search_path

        found = {p.stem for d in search_path(Path(inventory_path).expanduser().absolute().parent)
                 if d.is_dir() for p in d.glob("*.y*ml")}
    except Exception:
        found = set()
    return [*BUILT_IN, *sorted(found - set(BUILT_IN))]


def environments(ctx: click.Context, incomplete: str) -> list[CompletionItem]:
    from .cli import SUBCOMMANDS

    names = [*environment_names(_inventory_path(ctx)), *SUBCOMMANDS]
    return [CompletionItem(n) for n in names if n.startswith(incomplete)]


def playbooks(ctx: click.Context, param: Any, incomplete: str) -> list[CompletionItem]:
    names = [n for n in playbook_names(_inventory_path(ctx)) if n not in BUILT_IN]
    return [CompletionItem(n) for n in names if n.startswith(incomplete)]


def _env_name(ctx: click.Context) -> str | None:
    parent = ctx.parent
    return parent.info_name if parent is not None else None


def revisions(ctx: click.Context, param: Any, incomplete: str) -> list[CompletionItem]:
    """``--to``: head, heads, base and the revision ids of the environment's Alembic project."""
    names = ["head", "heads", "base"]
    try:
        from . import inventory
        from .inprocess import Migrations

        inv = inventory.load(_inventory_path(ctx))
        env_name = _env_name(ctx) or ""
        cfg = inv.config_of(env_name)
        if not cfg.alembic.remote:
            ini = inv._alembic_ini(cfg, env_name)
            rmap = Migrations(ini).revision_map
            revs = [r for r in rmap.iterate_revisions("heads", "base") if r is not None]
            names += [r.revision for r in revs]
            names += sorted({f"{label}@head" for r in revs for label in (r.branch_labels or ())})
    except Exception:
        pass
    return [CompletionItem(n) for n in names if n.startswith(incomplete)]


def backups(ctx: click.Context, param: Any, incomplete: str) -> list[CompletionItem]:
    """``--restore``: the backups the journal recorded for this environment, newest first."""
    names: list[str] = []
    try:
        from . import inventory, journal

        inv = inventory.load(_inventory_path(ctx))
        for record in journal.runs(inv.state_dir, _env_name(ctx) or ""):
            for host in (record.data.get("hosts") or {}).values():
                path = ((host or {}).get("backup") or {}).get("backup_path")
                if path:
                    name = str(path).rsplit("/", 1)[-1]
                    if name not in names:
                        names.append(name)
    except Exception:
        pass
    return [CompletionItem(n) for n in names if n.startswith(incomplete)]
