"""The kinds of steps a playbook can name; each module has ``run(ctx, params) -> facts``."""

from __future__ import annotations

from typing import Any, Callable


def runner(kind: str) -> Callable[[Any, Any], dict[str, Any]]:
    from . import backup, locks, migrate, prune, rehearse, restore, rollback, shell, verify

    table: dict[str, Callable[[Any, Any], dict[str, Any]]] = {
        "backup": backup.run,
        "check_locks": locks.run,
        "upgrade": migrate.upgrade,
        "downgrade": migrate.downgrade,
        "verify": verify.run,
        "restore": restore.run,
        "shell": shell.run,
        "rollback": rollback.run,
        "prune": prune.run,
        "rehearse": rehearse.run,
    }
    return table[kind]
