"""``rollback``: the incident command. Says what it will do, asks, backs up, then acts.

Without ``--restore``: an ``alembic downgrade`` to ``--to REV``, or else to the revision the last
successful migrate started from (run journal), or else one revision back. Before acting it shows
the revisions it undoes and what their downgrade SQL destroys (dropped tables and columns); through
a revision that has no downgrade it restores a backup taken at the target revision instead. With
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
from ..hostcmd import backup_dir


def choose_target(ctx: Any, current: tuple[str, ...]) -> tuple[str, str]:
    """The revision to go back to, and why (``ctx`` needs options, env, host, migrations).

    ``--to`` wins. Else the run journal: the newest migrate of this host that changed something
    tells where it started; a migrate that stopped half-way (killed, or its rollback failed) too.
    Else one revision back, but never implicitly to base: dropping the whole schema must be named.
    """
    if ctx.options.to:
        return ctx.options.to, "named with --to"
    here = fmt(current)
    last = last_migrate(ctx)
    if last is not None:
        data, rec = last
        start, run_id, status = rec["start_revision"], data.get("run_id"), data.get("status")
        desc = (f"the last successful migrate ({run_id})" if status == "succeeded" else
                f"the last migrate ({run_id}, {'interrupted' if status == journal.RUNNING else status})")
        if start == here:
            return start, f"already where {desc} started"
        if status == "succeeded" and rec.get("end_revision") == here:
            return start, f"where {desc} started"
        if status != "succeeded":
            return start, f"where {desc} started; it left the database at {here}"
    if not current:
        return "base", "already at base"
    if len(current) != 1:
        raise ConfigError(f"the database is at {here}: name the target with --to REV")
    rev = ctx.migrations.revision(current[0])
    if len(rev.down) > 1:
        raise ConfigError(f"{rev.id} is a merge of {fmt(rev.down)}: name the target with --to REV")
    if not rev.down:
        raise ConfigError(f"{rev.id} is the first revision: going one revision back drops the whole "
                          f"schema; if that is what you want, say so with --to base")
    return rev.down[0], "one revision back (no journal of a migrate to this revision)"


def last_migrate(ctx: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The newest migrate run on this host that changed, or may have changed, the database.

    Skipped: runs that never reached the database, found nothing to do, or ended back where they
    started (failed before any change, or rolled back). A run killed half-way counts.
    """
    for record in journal.runs(ctx.env.state_dir, ctx.env.name):
        data = record.data
        rec = (data.get("hosts") or {}).get(ctx.host.name) or {}
        if data.get("playbook") != "migrate" or not rec.get("start_revision"):
            continue
        if data.get("status") == journal.RUNNING and not record.incomplete:
            continue  # still running: the run lock refuses this rollback anyway
        if rec.get("end_revision") == rec["start_revision"] or data.get("status") == "refused":
            continue  # a refused run touched nothing (it may have ended before recording its end)
        return data, rec
    return None


def destroyed(ctx: Context, current: tuple[str, ...], target: str) -> list[str] | None:
    """Tables and columns whose data the downgrade drops (None if its SQL cannot be rendered)."""
    try:
        sql = ctx.migrations.offline_downgrade_sql(current, target)
        found: list[str] = []
        for st in sqlscan.analyze(sql):
            found.extend(st.destroys)
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
    try:
        if ctx.env.protected:
            typed = click.prompt(f"Environment '{ctx.env.name}' is protected. Type its name to go ahead",
                                 default="", show_default=False, err=True)
            agreed = typed.strip() == ctx.env.name
        else:
            agreed = click.confirm("Go ahead?", default=False, err=True)
    except click.Abort:  # Ctrl-C (or end of input) at the prompt: the same as answering no
        agreed = False
    if not agreed:
        raise ConfigError("rollback not confirmed: nothing was done")


def plan(ctx: Any, current: tuple[str, ...]) -> dict[str, Any]:
    """What a downgrade rollback would do from ``current``: target, why, revisions, what it destroys."""
    target, why = choose_target(ctx, current)
    target_ids = ctx.migrations.resolve(target)
    try:
        undo = ctx.migrations.to_undo(current, target)
    except MigrationError as exc:
        raise ConfigError(f"cannot roll back from {fmt(current)} to {target}: a rollback only goes down "
                          f"to a revision below the current one ({exc})") from None
    out: dict[str, Any] = {"from": fmt(current), "to": fmt(target_ids), "target_ids": target_ids,
                           "why": why, "undo": undo, "destroys": [], "irreversible": []}
    if set(current) == set(target_ids) or not undo:
        out["undo"] = []
        out["lines"] = [f"Rollback {ctx.env.name}/{ctx.host.name}: nothing to do, {fmt(current)} is the target "
                        f"({why}).",
                        f"  To go further back, name the revision: runbook {ctx.env.name} rollback --to REV"]
        return out
    out["irreversible"] = [r for r in undo if migrate.irreversible(ctx, r)]
    drops = destroyed(ctx, current, fmt(target_ids) if target_ids else "base") \
        if not out["irreversible"] else None
    out["destroys"] = drops
    lines = [f"Rollback {ctx.env.name}/{ctx.host.name}: {fmt(current)} -> {fmt(target_ids)} ({why}).",
             "  undoes: " + "; ".join(f"{r.id} {r.doc}" for r in undo)]
    for r in out["irreversible"]:
        lines.append(f"  CANNOT DOWNGRADE: {r.id} ({r.doc}) has no downgrade")
    if out["irreversible"]:
        chosen = out["restore_instead"] = backup_at(ctx, target_ids)
        if chosen is not None:
            lines.append(f"  INSTEAD: restore {chosen.name} (taken at {chosen.revision}, "
                         f"{backups_mod.human_age(chosen.age_s())} ago): everything written since then is "
                         "replaced; the current state is "
                         + ("kept" if ctx.env.config.restore.mode == "swap" else "backed up first"))
        else:
            lines.append(f"  and no verified backup at {fmt(target_ids)} is on the host: "
                         f"name one with runbook {ctx.env.name} rollback --restore BACKUP")
    if drops is None and not out["irreversible"]:
        lines.append("  destroys: unknown (the downgrade SQL cannot be rendered offline)")
    elif drops:
        lines.extend(f"  DESTROYS: {d}" for d in drops)
    elif drops is not None:
        lines.append("  destroys: no table or column")
    out["lines"] = lines
    return out


def run(ctx: Context, params: Any) -> dict[str, Any]:
    from . import swap

    if ctx.env.config.restore.mode == "swap":
        # Whichever way it goes back (its own restore, or the playbook's restore of the state it
        # started from if the downgrade fails), a swap restore's rights are checked first.
        ctx.swap_rights = swap.precheck(ctx)
    if ctx.options.restore is not None:
        return _restore(ctx)
    current = ctx.current_at_start()
    p = plan(ctx, current)
    target_ids = p["target_ids"]
    facts: dict[str, Any] = {"from": p["from"], "to": p["to"], "why": p["why"],
                             "undo": [r.id for r in p["undo"]]}
    if not p["undo"]:
        ctx.log.info("nothing_to_roll_back", revision=fmt(current), why=p["why"])
        if not ctx.options.json:
            click.echo("\n".join(p["lines"]), err=True)
        return facts
    if p["irreversible"]:
        blocked, chosen = p["irreversible"][0], p.get("restore_instead")
        if chosen is None:
            raise MigrationError(f"revision {blocked.id} ({blocked.doc}) cannot be downgraded and no "
                                 f"verified backup at {fmt(target_ids)} is in {backup_dir(ctx)}: restore "
                                 "an older backup with --restore BACKUP", step="rollback", host=ctx.host.name)
        ctx.log.warning("rollback_by_restore", irreversible=blocked.id, backup=chosen.path)
        return _restore_backup(ctx, chosen, current, p["lines"])
    confirm(ctx, [*p["lines"], "  A backup of the current state is taken first."])
    facts["destroys"] = p["destroys"]
    ctx.backup = backup_step.take(ctx, label="_pre-rollback")
    ctx.log.info("current_state_saved", **ctx.backup.fact())
    ctx.facts["changed"] = True
    facts.update(migrate.downgrade(ctx, DowngradeParams.model_validate({"to": fmt(target_ids) if target_ids else "base"})))
    return facts


def backup_at(ctx: Any, target: tuple[str, ...]) -> backups_mod.BackupFile | None:
    """A verified backup taken at revision ``target``: the last migrate's own, else the newest."""
    revision = fmt(target).replace(",", "+")
    try:
        found = backups_mod.list_backups(ctx.transport, backup_dir(ctx), ctx.database.name, ctx.env.name)
    except Exception as exc:  # the plan still shows, without a backup to offer
        ctx.log.warning("backup_listing_failed", error=str(exc))
        return None
    usable = [b for b in found if b.verified and not b.safety_copy and b.revision == revision]
    last = last_migrate(ctx)
    taken = ((last[1].get("backup") or {}).get("backup_path") if last else None)
    for b in usable:
        if b.path == taken:
            return b
    return usable[0] if usable else None


def choose_backup(ctx: Any) -> backups_mod.BackupFile:
    """The backup ``--restore`` names on the host (default: the newest verified one, no safety copy)."""
    folder = backup_dir(ctx)
    found = backups_mod.list_backups(ctx.transport, folder, ctx.database.name, ctx.env.name)
    wanted = ctx.options.restore
    if wanted in ("newest", ""):
        chosen = backups_mod.newest_restorable(found)
        if chosen is None:
            raise RestoreError(f"no verified backup of {ctx.database.name} in {folder} on "
                               f"{ctx.host.name}", step="rollback", host=ctx.host.name)
    else:
        name = str(wanted).rsplit("/", 1)[-1]
        matches = [b for b in found if b.name == name]
        if not matches:
            known = ", ".join(b.name for b in found[:5]) or "none"
            raise ConfigError(f"backup '{name}' not found in {folder} on {ctx.host.name} "
                              f"(newest: {known})")
        chosen = matches[0]
    if not chosen.verified:
        raise RestoreError(f"backup {chosen.name} has no checksum file: it was never verified",
                           step="rollback", host=ctx.host.name)
    return chosen


def restore_lines(ctx: Any, chosen: backups_mod.BackupFile, current: tuple[str, ...]) -> list[str]:
    lines = [f"Restore {ctx.env.name}/{ctx.host.name}: {ctx.database.name} at {fmt(current)} <- "
             f"{chosen.name} (revision {chosen.revision}, {backups_mod.human_size(chosen.size)}, "
             f"{backups_mod.human_age(chosen.age_s())} old).",
             "  Everything written since that backup is replaced; the current state is "
             + ("kept." if ctx.env.config.restore.mode == "swap" else "backed up first.")]
    return lines + how_lines(ctx)


def how_lines(ctx: Any) -> list[str]:
    """How the restore is done, when it is a swap (it ends sessions: a person must know first)."""
    from . import swap

    if ctx.env.config.restore.mode != "swap":
        return []
    return swap.plan_lines(ctx, ctx.swap_rights)


def _restore(ctx: Context) -> dict[str, Any]:
    kept = kept_database(ctx, str(ctx.options.restore or ""))
    if kept is not None:
        return _swap_back(ctx, kept)
    chosen = choose_backup(ctx)
    current = ctx.current_at_start()
    return _restore_backup(ctx, chosen, current, [])


def kept_database(ctx: Context, name: str) -> dict[str, Any] | None:
    """``--restore NAME`` naming a database a swap restore kept (``<db>__runbook_before_<stamp>``)."""
    from .. import dbswap

    if not name.startswith(dbswap.side_prefix(ctx.database.name, "before")):
        return None
    with ctx.connect("rollback") as conn:
        found = [d for d in dbswap.side_of(conn, ctx.database.name) if d["kind"] == "before" and d["name"] == name]
    if not found:
        raise ConfigError(f"no kept database {name} of {ctx.database.name} on {ctx.host.name} "
                          f"(runbook {ctx.env.name} status lists them)")
    return found[0]


def _swap_back(ctx: Context, kept: dict[str, Any]) -> dict[str, Any]:
    """``--restore`` of a database a swap restore kept: it is verified and swapped in again, the
    database it replaces kept in turn (always a swap, whatever ``restore.mode``: it needs its rights)."""
    from . import swap

    if ctx.swap_rights is None:
        ctx.swap_rights = swap.precheck(ctx)
    current = ctx.current_at_start()
    size = backups_mod.human_size(kept["size"]) if kept["size"] is not None else "size unknown"
    lines = [f"Restore {ctx.env.name}/{ctx.host.name}: {ctx.database.name} at {fmt(current)} <- the kept database "
             f"{kept['name']} ({size}, the state a swap restore replaced at {kept['stamp']}).",
             "  Everything written since then is replaced."]
    confirm(ctx, lines + swap.plan_lines(ctx, ctx.swap_rights, kept=kept["name"]))
    target = Backup(kept["name"], int(kept["size"] or 0), "", "?", kept["stamp"], database=True)
    return _restored(ctx, target, current, revision="?")


def _restore_backup(ctx: Context, chosen: backups_mod.BackupFile, current: tuple[str, ...],
                    plan_lines: list[str]) -> dict[str, Any]:
    confirm(ctx, [*plan_lines, *how_lines(ctx)] if plan_lines else restore_lines(ctx, chosen, current))
    target = Backup(chosen.path, chosen.size, chosen.sha256 or "", chosen.revision, chosen.stamp)
    return _restored(ctx, target, current, revision=chosen.revision)


def _restored(ctx: Context, target: Backup, current: tuple[str, ...], *, revision: str) -> dict[str, Any]:
    def saved_first(copy: Backup) -> None:
        # The state this rollback started from, saved before anything changes: from here on, a
        # failure (an interrupt included) makes on_failure put that copy back.
        ctx.backup = copy
        ctx.facts["changed"] = True

    swapped: dict[str, Any] = {}
    saved = restore.restore(ctx, target, on_saved=saved_first, facts=swapped)
    ctx.facts["restored"] = True
    return {"from": fmt(current), "restored": target.path, "restored_revision": revision,
            "saved_current_state": saved.path, "to": fmt(ctx.current()), **({"swap": swapped} if swapped else {})}
