"""The kinds of steps a playbook can name; each module has ``run(ctx, params) -> facts``."""

from __future__ import annotations

from typing import Any, Callable


# kind -> (module, function): a run imports only the steps its playbook names (a backup does not
# load the SQL parser that check_locks and lint use)
STEPS: dict[str, tuple[str, str]] = {
    "backup": ("backup", "run"),
    "check_locks": ("locks", "run"),
    "upgrade": ("migrate", "upgrade"),
    "downgrade": ("migrate", "downgrade"),
    "verify": ("verify", "run"),
    "restore": ("restore", "run"),
    "shell": ("shell", "run"),
    "rollback": ("rollback", "run"),
    "prune": ("prune", "run"),
    "rehearse": ("rehearse", "run"),
}


def runner(kind: str) -> Callable[[Any, Any], dict[str, Any]]:
    from importlib import import_module

    module, function = STEPS[kind]
    run: Callable[[Any, Any], dict[str, Any]] = getattr(import_module(f".{module}", __name__), function)
    return run
