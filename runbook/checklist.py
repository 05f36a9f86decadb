"""``runbook ENV checklist``: the pre-flight checklist of a production migration, one line each.

Seven lines per host, each ``ok``, ``FAILED`` or ``skipped`` with its reason: the migrations are
committed (git), the head was rehearsed since it last changed (the journal's rehearsal records the
sha256 of each rehearsed revision file), a verified backup younger than ``checklist.backup_max_age``
exists, the run is inside the maintenance window, notifications are configured, the pending
revisions lint clean, and no session holds a lock on a table they touch. Read-only, like
``status``: no run lock, no journal of its own. Exit 0 when every line is ok or skipped, 4 when
one failed.

A protected environment with a ``checklist`` block runs the same lines at the start of ``migrate``
(``preflight``: after the run lock, before the backup) and refuses the run on a failed line unless
that line is overridden by name (``--override LINE``, logged and journaled).
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import click

OK, FAILED, SKIPPED = "ok", "FAILED", "skipped"
LINES = ("committed", "rehearsed", "backup", "window", "notify", "lint", "blockers")
DEFAULT_BACKUP_MAX_AGE = 24 * 3600.0


@dataclass
class Line:
    name: str
    mark: str
    reason: str
    host: str | None = None
    overridden: bool = False

    def fact(self) -> dict[str, Any]:
        return asdict(self)


def check_names(names: Any, where: str = "--override") -> None:
    """Exit 2 on a name that is no line of the checklist."""
    from .errors import ConfigError

    for name in names:
        if name not in LINES:
            from .suggest import did_you_mean

            raise ConfigError(f"{where}: '{name}' is no line of the checklist{did_you_mean(name, LINES)} "
                              f"(one of {', '.join(LINES)})")


def max_age(env: Any) -> float:
    cfg = env.config.checklist
    return cfg.backup_max_age if cfg is not None else DEFAULT_BACKUP_MAX_AGE


# -- the lines -------------------------------------------------------------------------------------

def committed(migrations: Any) -> Line:
    """No uncommitted or untracked file under the Alembic project's folder (when it is in git)."""
    folder = getattr(migrations, "script_location", None)
    if folder is None:
        return Line("committed", SKIPPED, "alembic.remote: the migrations live on the host, not here")
    folder = Path(folder)

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=30,
                              check=False)

    try:
        inside = git("rev-parse", "--is-inside-work-tree")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Line("committed", SKIPPED, f"git could not be run ({exc})")
    if inside.returncode != 0 or inside.stdout.strip() != "true":
        return Line("committed", SKIPPED, f"{folder} is not in a git repository")
    status = git("status", "--porcelain", "--", ".")
    if status.returncode != 0:
        return Line("committed", FAILED, f"git status in {folder} failed: {status.stderr.strip()[:200]}")
    changed = [ln[3:] for ln in status.stdout.splitlines() if ln.strip()]
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        return Line("committed", FAILED, f"{len(changed)} uncommitted or untracked file(s) under {folder}: {shown}")
    return Line("committed", OK, f"{folder}: everything committed")


def last_rehearsal(env: Any, host: str) -> dict[str, Any] | None:
    """The newest rehearsal that passed on ``host``, from the journal, with its run id."""
    from . import journal

    for rec in journal.runs(env.state_dir, env.name):
        found = ((rec.data.get("hosts") or {}).get(host) or {}).get("rehearsal")
        if isinstance(found, dict) and found.get("outcome") == "passed":
            return {**found, "run_id": rec.data.get("run_id")}
    return None


def rehearsed(ctx: Any, current: tuple[str, ...], pending: list[Any], rehearses_first: bool) -> Line:
    """The last passed rehearsal reached the head, and no revision file changed since."""
    from .migrations import fmt

    if not pending:
        return Line("rehearsed", SKIPPED, f"nothing pending at {fmt(current)}: nothing to rehearse")
    if rehearses_first:
        return Line("rehearsed", SKIPPED, "this playbook rehearses before it upgrades")
    found = last_rehearsal(ctx.env, ctx.host.name)
    if found is None:
        return Line("rehearsed", FAILED, f"no passed rehearsal in the journal: runbook {ctx.env.name} rehearse")
    heads = fmt(ctx.migrations.heads())
    if found.get("to") != heads:
        return Line("rehearsed", FAILED, f"the last passed rehearsal ({found['run_id']}) went to {found.get('to')}, "
                    f"the head is now {heads}")
    sources = found.get("sources") or {}
    for rev in pending:
        if rev.id not in sources:
            return Line("rehearsed", FAILED, f"{rev.id} was not part of the last passed rehearsal ({found['run_id']})")
        text = ctx.migrations.source(rev)
        now = hashlib.sha256(text.encode("utf-8")).hexdigest() if text is not None else None
        if now is None or now != sources[rev.id]:
            return Line("rehearsed", FAILED, f"{rev.id}'s file changed since the last passed rehearsal "
                        f"({found['run_id']}): rehearse again")
    return Line("rehearsed", OK, f"{found['run_id']} rehearsed {found.get('from')} -> {heads}; files unchanged")


def backup(ctx: Any) -> Line:
    """A verified backup on the host younger than ``checklist.backup_max_age``."""
    from .backups import human_age, list_backups, on_host

    limit = max_age(ctx.env)
    folder = on_host(ctx.backup_dir, ctx.transport)
    found = [b for b in list_backups(ctx.transport, folder, ctx.database.name, ctx.env.name) if b.verified]
    if not found:
        return Line("backup", FAILED, f"no verified backup in {folder}")
    newest = min(found, key=lambda b: b.age_s())
    if newest.age_s() > limit:
        return Line("backup", FAILED, f"the newest verified backup ({newest.name}) is {human_age(newest.age_s())} "
                    f"old, older than {human_age(limit)} (checklist.backup_max_age)")
    return Line("backup", OK, f"{newest.name}, {human_age(newest.age_s())} old")


def window(env: Any, options: Any, now: datetime | None = None) -> Line:
    from .guards import closes_at, describe, in_window

    cfg = env.config.window
    if cfg is None:
        return Line("window", SKIPPED, "no window")
    now = now or datetime.now(timezone.utc)
    if in_window(cfg, now):
        closes = closes_at(cfg, now)
        left = f", closes at {closes:%H:%M} UTC" if closes else ""
        return Line("window", OK, f"inside {describe(cfg)}{left}")
    if getattr(options, "ignore_window", False):
        return Line("window", SKIPPED, f"outside {describe(cfg)}, --ignore-window given")
    return Line("window", FAILED, f"outside {describe(cfg)}")


def notify(env: Any) -> Line:
    from .notify import usable

    cfg = env.config.notify
    if cfg is None:
        return Line("notify", FAILED, "no notify block: nobody hears of a failure")
    if not env.webhook:
        return Line("notify", FAILED, f"{cfg.webhook_env} is not set")
    if not usable(env.webhook):
        return Line("notify", FAILED, f"{cfg.webhook_env} does not hold an http(s) URL")
    return Line("notify", OK, f"{cfg.format} webhook from {cfg.webhook_env}, on {', '.join(cfg.on)}")


def lint(ctx: Any, current: tuple[str, ...], target: str) -> Line:
    from .lint import rules as R
    from .lint.preflight import for_run

    result = for_run(ctx, current, target)
    if not result.revisions:
        return Line("lint", SKIPPED, "nothing pending")
    accepted = set(getattr(ctx.options, "accept", ()) or ())
    errors = [f for f in result.at_or_above(R.ERROR) if f.rule not in accepted]
    if errors:
        shown = "; ".join(f"{f.revision} [{f.rule}]" for f in errors[:3])
        return Line("lint", FAILED, f"{len(errors)} error-level finding(s): {shown} (runbook lint)")
    return Line("lint", OK, f"no error-level finding in {len(result.revisions)} pending revision(s)")


def blockers(ctx: Any, target: str) -> Line:
    from .steps.locks import find_blockers, touched

    tables, pending = touched(ctx, target)
    if not pending:
        return Line("blockers", SKIPPED, "nothing pending")
    found, _ = find_blockers(ctx, tables)
    if found:
        shown = "; ".join(f"pid {s.pid} ({s.application or s.user}, locks {', '.join(s.locks) or 'none'})"
                          for s in found[:3])
        return Line("blockers", FAILED, f"{len(found)} session(s) would block: {shown}")
    what = ", ".join(tables) if tables else "(long transactions: the SQL could not be rendered)"
    return Line("blockers", OK, f"no session holds a lock on {what}")


# -- all of them -----------------------------------------------------------------------------------

def _guarded(name: str, fn: Callable[[], Line]) -> Line:
    """A line that cannot be checked is a failed line saying why, not a crash of the checklist."""
    from .errors import RunbookError

    try:
        return fn()
    except RunbookError as exc:
        return Line(name, FAILED, f"could not be checked: {exc}")


def host_lines(ctx: Any, *, current: tuple[str, ...] | None = None, rehearses_first: bool = False) -> list[Line]:
    """The lines that need the host and its database, for ``ctx``'s host."""
    target = str(getattr(ctx.options, "to", None) or "head")
    if current is None:
        current = ctx.current()
    pending = ctx.migrations.pending(current, target)
    lines = [
        _guarded("rehearsed", lambda: rehearsed(ctx, tuple(current), pending, rehearses_first)),
        _guarded("backup", lambda: backup(ctx)),
        _guarded("lint", lambda: lint(ctx, tuple(current), target)),
        _guarded("blockers", lambda: blockers(ctx, target)),
    ]
    for line in lines:
        line.host = ctx.host.name
    return lines


def ordered(lines: list[Line]) -> list[Line]:
    return sorted(lines, key=lambda ln: (LINES.index(ln.name), ln.host or ""))


def apply_overrides(lines: list[Line], overrides: Any) -> None:
    wanted = set(overrides or ())
    for line in lines:
        if line.mark == FAILED and line.name in wanted:
            line.overridden = True


def failed(lines: list[Line]) -> list[Line]:
    return [ln for ln in lines if ln.mark == FAILED and not ln.overridden]


def shown(line: Line) -> str:
    mark = "FAILED (overridden)" if line.overridden else line.mark
    where = f" [{line.host}]" if line.host else ""
    return f"{mark:<8} {line.name:<10}{where} {line.reason}"


# -- ``runbook ENV checklist`` ---------------------------------------------------------------------

def render(plan: Any, options: Any) -> int:
    """Every line for every host; exit 0 (all ok or skipped) or 4 (a line failed)."""
    from .hostsession import Viewer
    from .outcome import OK as EXIT_OK, REFUSED

    env = plan.env
    lines = [_guarded("committed", lambda: committed(plan.migrations)), window(env, options), notify(env)]
    viewer = Viewer(env, None, options, plan.migrations, plan.run_id)
    for host in env.hosts:
        if env.embedded:
            from .embedded import EmbeddedCluster

            if not (EmbeddedCluster(env.state_dir).data_dir / "PG_VERSION").exists():
                lines += [Line(n, SKIPPED, "the embedded cluster does not exist yet", host.name)
                          for n in ("rehearsed", "backup", "lint", "blockers")]
                continue
        with contextlib.ExitStack() as stack:
            lines += host_lines(viewer.context(stack, host))
    lines = ordered(lines)
    apply_overrides(lines, options.override)
    bad = failed(lines)
    if options.json:
        from .log import machine_line

        for line in lines:
            click.echo(machine_line({"event": "checklist", "env": env.name, **line.fact()}))
    else:
        click.echo(f"Checklist of {env.name}")
        for line in lines:
            click.echo(shown(line))
        verdict = (f"{len(bad)} line(s) FAILED: {', '.join(sorted({b.name for b in bad}))}" if bad
                   else "every line ok or skipped")
        click.echo(f"runbook: {verdict}", err=bool(bad))
    return REFUSED if bad else EXIT_OK


# -- at the start of ``migrate`` -------------------------------------------------------------------

def applies(env: Any, playbook: Any, options: Any) -> bool:
    """A protected environment (unless its ``checklist`` block says ``before_migrate: false``), a
    playbook that upgrades, a real run."""
    block = env.config.checklist
    return (env.protected and (block is None or block.before_migrate)
            and playbook is not None and "upgrade" in playbook.kinds() and not options.dry_run)


def preflight(ctx: Any, playbook: Any) -> None:
    """Every line, for this host, on the run's own session; refuse (exit 4) on a failed line that
    is not overridden. Each line is logged (``checklist_line``) and the lines are journaled."""
    from .errors import GuardRefused

    if not applies(ctx.env, playbook, ctx.options):
        return
    kinds = [s.kind for s in playbook.steps]
    rehearses_first = "rehearse" in kinds and kinds.index("rehearse") < kinds.index("upgrade")
    lines = [_guarded("committed", lambda: committed(ctx.migrations)), window(ctx.env, ctx.options),
             notify(ctx.env)] + host_lines(ctx, current=ctx.start, rehearses_first=rehearses_first)
    lines = ordered(lines)
    apply_overrides(lines, ctx.options.override)
    for line in lines:
        ctx.log.info("checklist_line", line=line.name, mark=line.mark, reason=line.reason,
                     overridden=line.overridden)
    over = [ln.name for ln in lines if ln.overridden]
    if over:
        ctx.log.warning("checklist_overridden", lines=over)
    record = ctx.journal.host(ctx.host.name)
    record["checklist"] = [ln.fact() for ln in lines]
    if over:
        record["checklist_overridden"] = over
    ctx.journal.save()
    bad = failed(lines)
    if not bad:
        return
    names = sorted({b.name for b in bad}, key=LINES.index)
    raise GuardRefused(
        "refused by the checklist: " + "; ".join(f"{b.name}: {b.reason}" for b in bad) + ": nothing was done",
        step="checklist", host=ctx.host.name,
        hint=f"runbook {ctx.env.name} checklist shows every line; to run despite it, on purpose: "
             + " ".join(f"--override {n}" for n in names))
