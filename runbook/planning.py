"""The plan: everything loaded and validated before anything connects.

The inventory, the playbook, the Alembic project, the verification files and the flags; the
guards that need no connection (the maintenance window); the confirmation of a protected
environment. A mistake is one line and exit 2, nothing touched. Meanwhile the first host is
reached in the background (``early.py``), which changes nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

READ_ONLY = ("status", "checklist")  # built in: no run lock, no journal of their own
ALEMBIC_STEPS = frozenset({"upgrade", "downgrade", "check_locks", "verify", "rollback", "rehearse"})


class Plan:
    """Everything loaded and validated before anything connects."""

    def __init__(self, env: Any, playbook: Any, migrations: Any, run_id: str, refusal: Any = None,
                 selection: dict[str, Any] | None = None) -> None:
        self.env = env
        self.playbook = playbook
        self.migrations = migrations
        self.run_id = run_id  # also names the sessions opened early
        self.refusal = refusal  # a guard's refusal, journaled by the run (nothing is touched)
        self.selection = selection or {}  # which hosts --limit/--shard (or rollback's journal) kept


def _plan(inventory_path: Path, env_name: str, playbook_name: str, options: Any, run_id: str,
          known: dict[str, Any] | None = None) -> Plan:
    from . import inventory, playbook
    from .errors import ConfigError
    from .log import REDACTOR
    from .migrations import backend_for
    from . import verifyfiles as verify

    from .early import connect_early
    from .selection import plan_hosts

    inv = inventory.load(inventory_path)
    env = inv.environment(env_name)
    if options.accept:
        from .lint.settings import check_rule

        for name in options.accept:
            check_rule(name, "--accept")
    if options.override:
        from .checklist import check_names

        check_names(options.override)
    REDACTOR.add(*env.secrets())
    known = {} if known is None else known
    known["env"] = env
    # status and checklist are built in: read-only, no run lock, no journal of their own
    pb = None if playbook_name in READ_ONLY else playbook.load(playbook.find(playbook_name, inv.path.parent))
    known["playbook"] = pb
    if pb is not None and not options.dry_run and env.config.notify:  # (urllib: only when it sends)
        from .notify import check

        check(env, inv)  # the webhook's variable, before a refusal would need it
    env, chosen = plan_hosts(env, pb, options)
    refusal = None
    if not options.dry_run and not options.ignore_window:
        from .guards import outside_window

        # refused by the run, in its journal, before it connects; there is nothing to confirm
        refusal = outside_window(env, pb)
    if refusal is None:
        # SSH, the tunnel and the sessions open while the rest of the plan is validated (early.py)
        connect_early(env, run_id, lock=playbook_name not in READ_ONLY and not options.dry_run,
                      name=playbook_name if playbook_name in READ_ONLY else "connect")
    migrations = backend_for(env)
    # a backup needs no Alembic: not loading it keeps a backup's fixed cost ~0.2 s lower
    needs_alembic = pb is None or bool(pb.kinds() & ALEMBIC_STEPS) or options.dry_run
    if needs_alembic and not env.config.alembic.remote:  # remote: history and verify files come from the host
        verify.load_all(migrations)
        if options.to:
            migrations.resolve(options.to)
        upgrade = [s for s in (pb.steps if pb is not None else []) if s.kind in ("upgrade", "rehearse")]
        if upgrade and not options.to:
            migrations.resolve(upgrade[0].params.to)  # e.g. 'head' with several heads: refused here
    if options.restore is not None and (pb is None or "rollback" not in pb.kinds()):
        raise ConfigError("--restore only applies to the rollback playbook")
    if pb is not None and "rollback" in pb.kinds() and not options.yes and not options.dry_run \
            and not sys.stdin.isatty():
        raise ConfigError(f"'{playbook_name}' needs --yes when there is no terminal to confirm on "
                          "(it says what it will do and asks before acting)")
    if refusal is None and env.hosts:
        _confirm(env, options, pb)
    return Plan(env, pb, migrations, run_id, refusal, chosen)


def _confirm(env: Any, options: Any, pb: Any) -> None:
    from .errors import ConfigError

    if not env.protected or options.yes or options.dry_run or pb is None or "rollback" in pb.kinds():
        return
    if not sys.stdin.isatty():
        raise ConfigError(f"environment '{env.name}' is protected: pass --yes to run without a terminal")
    try:
        typed = click.prompt(f"Environment '{env.name}' is protected. Type its name to go on", default="",
                             show_default=False)
    except click.Abort:  # Ctrl-C or end of input at the prompt: the same as a wrong answer
        typed = ""
    if typed.strip() != env.name:
        raise ConfigError(f"confirmation did not match '{env.name}': nothing was done")
