"""What a run checks on a host between taking the run lock and its first step.

After the lock (``after_lock``): what a dead earlier run left is ended (``cleanup``), and a
rehearsal's privileges are known to be there. Before the first step (``before_steps``): a
protected environment's checklist, the lint gate of the pending revisions (error-level findings
refuse the run before its backup), and the upgrade's connection opened ahead (``steps.migrate.
prepare``). Each refusal is a ``GuardRefused``: exit 4, nothing touched.
"""

from __future__ import annotations

from typing import Any


def after_lock(ctx: Any, playbook: Any) -> None:
    from . import cleanup
    from .steps.rehearse import preflight as rehearsal

    cleanup.dead_runs(ctx)
    rehearsal(ctx, playbook.steps)  # a rehearsal's privileges, a killed one's leftovers


# the steps that run migrations: the lint gate and the connection opened ahead are for them alone
MIGRATING = frozenset({"upgrade", "downgrade", "rollback", "rehearse"})


def before_steps(ctx: Any, playbook: Any) -> None:
    from .checklist import preflight as checklist

    refuse_going_back(ctx, playbook.steps)  # migrate --to an older revision: exit 2, before the backup
    checklist(ctx, playbook)  # a protected environment's checklist, before the backup
    if not playbook.kinds() & MIGRATING:
        return  # a backup, a restore, a shell step: the SQL parser and Alembic are not even loaded
    from .lint.preflight import gate, upgrade_target
    from .steps.migrate import prepare

    target = upgrade_target(ctx, playbook.steps)
    if target is not None:  # error-level lint findings refuse the run before its backup
        gate(ctx, target)
    prepare(ctx, playbook.steps)


def refuse_going_back(ctx: Any, steps: Any) -> None:
    """An upgrade to a revision below the current one is refused before anything runs (exit 2)."""
    for step in steps:
        if step.kind in ("upgrade", "rehearse"):
            from .steps.migrate import going_back

            refusal = going_back(ctx.migrations, ctx.start, ctx.options.to or step.params.to, ctx.env.name)
            if refusal is not None:
                raise refusal
