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


def before_steps(ctx: Any, playbook: Any) -> None:
    from .checklist import preflight as checklist
    from .lint.preflight import gate, upgrade_target
    from .steps.migrate import prepare

    refuse_going_back(ctx, playbook.steps)  # migrate --to an older revision: exit 2, before the backup
    checklist(ctx, playbook)  # a protected environment's checklist, before the backup
    target = upgrade_target(ctx, playbook.steps)
    if target is not None:  # error-level lint findings refuse the run before its backup
        gate(ctx, target)
    prepare(ctx, playbook.steps)


def refuse_going_back(ctx: Any, steps: Any) -> None:
    """An upgrade to a revision below the current one is refused before anything runs (exit 2)."""
    from .steps.migrate import going_back

    for step in steps:
        if step.kind in ("upgrade", "rehearse"):
            refusal = going_back(ctx.migrations, ctx.start, ctx.options.to or step.params.to, ctx.env.name)
            if refusal is not None:
                raise refusal
