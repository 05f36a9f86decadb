"""``rollback``: the incident command. Says what it will do, asks, backs up, then acts.

Without ``--restore``: an ``alembic downgrade`` to ``--to REV``, or else to the revision the last
successful migrate started from (run journal), or else one revision back. Before acting it shows
the revisions it undoes and what their downgrade SQL destroys (dropped tables and columns). With
``--restore [BACKUP]``: the named (or newest verified) backup is restored after the current state
is saved. Either way a TTY run asks for confirmation; without a TTY, ``--yes`` was required up front.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from .. import backups as backups_mod
from .. import journal, sqlscan
from ..context import Backup, Context
from ..errors import ConfigError, MigrationError, RestoreError
from ..migrations import fmt
from ..playbook import DowngradeParams
from . import backup as backup_step
from . import migrate, restore
from .hostcmd import backup_dir


def choose_target(ctx: Any, current: tuple[str, ...]) -> tuple[str, str]:
    """The revision to go back to, and why (``ctx`` needs options, env, host, migrations)."""
    if ctx.options.to:
        return ctx.options.to, "named with --to"
    last = journal.last_successful(ctx.env.state_dir, ctx.env.name, ctx.host.name)
    if last and last.get("end_revision") == fmt(current):
        return (last.get("start_revision") or "base",
                f"where the last successful migrate ({last['run_id']}) started")
    if not current:
        return "base", "already at base"
    if len(current) != 1:
        raise ConfigError(f"the database is at {fmt(current)}: name the target with --to REV")
    rev = ctx.migrations.revision(current[0])
    if len(rev.down) > 1:
        raise ConfigError(f"{rev.id} is a merge of {fmt(rev.down)}: name the target with --to REV")
    return (rev.down[0] if rev.down else "base"), "one revision back (no journal of a migrate to this revision)"


def destroyed(ctx: Context, current: tuple[str, ...], target: str) -> list[str] | None:
    """Tables and columns whose data the downgrade drops (None if its SQL cannot be rendered)."""
    try:
        sql = ctx.migrations.offline_downgrade_sql(current, target)
        found: list[str] = []
        for st in sqlscan.analyze(sql):
            found.extend(w for w in st.warnings if w.startswith(("drops ", "truncates ")))
        return found
    except Exception as exc:
        ctx.log.warning("downgrade_sql_unavailable", error=str(exc).strip().splitlines()[-1][:200])
        return None


def confirm(ctx: Context, plan: list[str]) -> None:
    ctx.log.info("rollback_plan", plan=plan)
    if not ctx.options.json:
        click.echo("\n".join(plan), err=True)
    if ctx.options.yes:
        return
    if not sys.stdin.isatty():
        raise ConfigError("rollback needs --yes when there is no terminal to confirm on")
    if ctx.env.protected:
        typed = click.prompt(f"Environment '{ctx.env.name}' is protected. Type its name to go ahead",
                             default="", show_default=False, err=True)
        if typed.strip() != ctx.env.name:
            raise ConfigError("rollback not confirmed: nothing was done")
    elif not click.confirm("Go ahead?", default=False, err=True):
        raise ConfigError("rollback not confirmed: nothing was done")


def plan(ctx: Any, current: tuple[str, ...]) -> dict[str, Any]:
    """What a downgrade rollback would do from ``current``: target, why, revisions, what it destroys."""
    target, why = choose_target(ctx, current)
    target_ids = ctx.migrations.resolve(target)
    undo = ctx.migrations.to_undo(current, target)
    out: dict[str, Any] = {"from": fmt(current), "to": fmt(target_ids), "target_ids": target_ids,
                           "why": why, "undo": undo, "destroys": [], "irreversible": []}
    if set(current) == set(target_ids) or not undo:
        out["undo"] = []
        out["lines"] = [f"Rollback {ctx.env.name}/{ctx.host.name}: already at {fmt(current)}; nothing to do."]
        return out
    out["irreversible"] = [r for r in undo if migrate.irreversible(ctx, r)]
    drops = destroyed(ctx, current, fmt(target_ids) if target_ids else "base") \
        if not out["irreversible"] else None
    out["destroys"] = drops
    lines = [f"Rollback {ctx.env.name}/{ctx.host.name}: {fmt(current)} -> {fmt(target_ids)} ({why}).",
             "  undoes: " + "; ".join(f"{r.id} {r.doc}" for r in undo)]
    for r in out["irreversible"]:
        lines.append(f"  CANNOT DOWNGRADE: {r.id} ({r.doc}) has no downgrade: restore a backup instead")
    if drops is None and not out["irreversible"]:
        lines.append("  destroys: unknown (the downgrade SQL cannot be rendered offline)")
    elif drops:
        lines.extend(f"  DESTROYS: {d}" for d in drops)
    elif drops is not None:
        lines.append("  destroys: no table or column")
    out["lines"] = lines
    return out


def run(ctx: Context, params: Any) -> dict[str, Any]:
    if ctx.options.restore is not None:
        return _restore(ctx)
    current = ctx.current()
    p = plan(ctx, current)
    target_ids = p["target_ids"]
    facts: dict[str, Any] = {"from": p["from"], "to": p["to"], "why": p["why"],
                             "undo": [r.id for r in p["undo"]]}
    if not p["undo"]:
        ctx.log.info("nothing_to_roll_back", revision=fmt(current))
        return facts
    if p["irreversible"]:
        blocked = p["irreversible"][0]
        hint = _restore_hint(ctx, target_ids)
        raise MigrationError(f"revision {blocked.id} ({blocked.doc}) cannot be downgraded; "
                             f"restore a backup instead{hint}", step="rollback", host=ctx.host.name)
    confirm(ctx, [*p["lines"], "  A backup of the current state is taken first."])
    facts["destroys"] = p["destroys"]
    ctx.backup = backup_step.take(ctx, label="_pre-rollback")
    ctx.log.info("current_state_saved", **ctx.backup.fact())
    ctx.facts["changed"] = True
    facts.update(migrate.downgrade(ctx, DowngradeParams.model_validate({"to": fmt(target_ids) if target_ids else "base"})))
    return facts


def _restore_hint(ctx: Context, target: tuple[str, ...]) -> str:
    try:
        found = backups_mod.list_backups(ctx.transport, backup_dir(ctx), ctx.database.name, ctx.env.name)
    except Exception:
        return ""
    for b in found:
        if b.verified and not b.safety_copy and b.revision == fmt(target).replace(",", "+"):
            return f": runbook {ctx.env.name} rollback --restore {b.name}"
    return ""


def _restore(ctx: Context) -> dict[str, Any]:
    found = backups_mod.list_backups(ctx.transport, backup_dir(ctx), ctx.database.name, ctx.env.name)
    wanted = ctx.options.restore
    if wanted in ("newest", ""):
        chosen = backups_mod.newest_restorable(found)
        if chosen is None:
            raise RestoreError(f"no verified backup of {ctx.database.name} in {backup_dir(ctx)} on "
                               f"{ctx.host.name}", step="rollback", host=ctx.host.name)
    else:
        name = str(wanted).rsplit("/", 1)[-1]
        matches = [b for b in found if b.name == name]
        if not matches:
            known = ", ".join(b.name for b in found[:5]) or "none"
            raise ConfigError(f"backup '{name}' not found in {backup_dir(ctx)} on {ctx.host.name} "
                              f"(newest: {known})")
        chosen = matches[0]
    if not chosen.verified:
        raise RestoreError(f"backup {chosen.name} has no checksum file: it was never verified",
                           step="rollback", host=ctx.host.name)
    current = ctx.current()
    plan = [f"Restore {ctx.env.name}/{ctx.host.name}: {ctx.database.name} at {fmt(current)} <- "
            f"{chosen.name} (revision {chosen.revision}, {chosen.size / 1_048_576:.1f} MB, "
            f"{chosen.age_s() / 3600:.1f} h old).",
            "  Everything written since that backup is replaced; the current state is backed up first."]
    confirm(ctx, plan)
    target = Backup(chosen.path, chosen.size, chosen.sha256 or "", chosen.revision, chosen.stamp)
    ctx.facts["changed"] = True
    saved = restore.restore(ctx, target)
    ctx.backup = saved
    ctx.facts["restored"] = True
    return {"from": fmt(current), "restored": chosen.path, "restored_revision": chosen.revision,
            "saved_current_state": saved.path, "to": fmt(ctx.current())}
