"""``--dry-run``: the plan, the SQL Alembic would run, the tables and locks of each statement.

Reads the current revision over a read-only session and renders each pending revision offline
(Alembic's ``--sql`` mode); nothing is written to the database. A revision that cannot be rendered
offline (a data migration that needs a live connection) is named as such.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

import click

from . import postgres, sqlscan
from .migrations import fmt


def host_plan(viewer: Any, host: Any, target: str) -> dict[str, Any]:
    if viewer.env.embedded and not _embedded_exists(viewer.env):
        return _plan_before_cluster(viewer, host, target)
    with contextlib.ExitStack() as stack:
        ctx = viewer.context(stack, host)
        with ctx.connect("dry-run") as conn:
            conn.execute("SET default_transaction_read_only = on")
            current = postgres.current_revisions(conn)
        if "rollback" in viewer.playbook.kinds():
            return rollback_plan(viewer, ctx, current)
        if "upgrade" not in viewer.playbook.kinds():  # backup, verify: no migration to show
            return {"host": host.name, "database": ctx.database.name, "current": fmt(current),
                    "lines": [f"Host {host.name}: {ctx.database.name} at {fmt(current)}; "
                              f"this playbook applies no migration."]}
        return upgrade_plan(ctx, current, target)


def _embedded_exists(env: Any) -> bool:
    from .embedded import EmbeddedCluster

    return (EmbeddedCluster(env.state_dir).data_dir / "PG_VERSION").exists()


def _plan_before_cluster(viewer: Any, host: Any, target: str) -> dict[str, Any]:
    """No embedded cluster yet: a run creates it with the example data at the first revision.

    Connecting would create it here, empty, and the run would then find no reason to load the data.
    """
    from types import SimpleNamespace

    from .embedded import DB_NAME

    first = tuple(r.revision for r in viewer.migrations.script.walk_revisions() if not r.down_revision)[:1]
    note = (f"the embedded cluster does not exist yet: the run creates it, upgrades it to {fmt(first)} "
            "and loads the example data there")
    if "upgrade" not in viewer.playbook.kinds():
        return {"host": host.name, "database": DB_NAME, "current": "base",
                "lines": [f"Host {host.name}: {note}."]}
    ctx = SimpleNamespace(migrations=viewer.migrations, host=host, database=SimpleNamespace(name=DB_NAME))
    plan = upgrade_plan(ctx, (), target)
    plan["notes"].insert(0, note)
    return plan


def rollback_plan(viewer: Any, ctx: Any, current: tuple[str, ...]) -> dict[str, Any]:
    from .steps import rollback

    host, db = ctx.host, ctx.database
    if viewer.options.restore is not None:
        chosen = rollback.choose_backup(ctx)
        return {"host": host.name, "database": db.name, "current": fmt(current), "restore": chosen.fact(),
                "lines": rollback.restore_lines(ctx, chosen, current)}
    p = rollback.plan(ctx, current)
    return {"host": host.name, "database": db.name, "current": fmt(current), "target": p["to"],
            "why": p["why"], "undo": [r.id for r in p["undo"]], "destroys": p["destroys"],
            "irreversible": [r.id for r in p["irreversible"]], "lines": p["lines"],
            "restore_instead": p["restore_instead"].fact() if p.get("restore_instead") else None}


def upgrade_plan(ctx: Any, current: tuple[str, ...], target: str) -> dict[str, Any]:
    """Each pending revision with its SQL and locks, and what the history means for this run."""
    migrations = ctx.migrations
    want = migrations.resolve(target)
    pending = migrations.pending(current, target)
    sql = render_sql(migrations, current, target, pending)
    revisions = []
    for rev in pending:
        entry: dict[str, Any] = {"revision": rev.id, "doc": rev.doc, "merge": rev.is_merge,
                                 "down": list(rev.down), "branch_labels": list(rev.branch_labels),
                                 "irreversible": migrations.irreversible(rev)}
        if isinstance(sql[rev.id], Exception):
            exc = sql[rev.id]
            entry["unrenderable"] = (str(exc).strip().splitlines()[-1][:300] if str(exc).strip()
                                     else type(exc).__name__)
        else:
            entry["statements"] = [s.fact() for s in sqlscan.analyze(sql[rev.id])]
        revisions.append(entry)
    return {"host": ctx.host.name, "database": ctx.database.name, "current": fmt(current),
            "target": fmt(want), "heads": list(migrations.heads()), "backend": migrations.kind,
            "revisions": revisions, "notes": notes(current, want, migrations.heads(), revisions)}


def render_sql(migrations: Any, current: tuple[str, ...], target: str, pending: list[Any]) -> dict[str, Any]:
    """The offline SQL of each pending revision (or the exception that kept it from rendering).

    One render of the whole range, split at Alembic's ``-- Running upgrade a -> b`` markers (one
    Alembic start-up when remote); if that fails, each revision alone from its own parents, so the
    ones that cannot render offline are named and the others still shown.
    """
    out: dict[str, Any] = {}
    if not pending:
        return out
    try:
        parts = split_by_revision(migrations.offline_sql(current, target))
        if all(r.id in parts for r in pending):
            return {r.id: parts[r.id] for r in pending}
    except Exception:  # noqa: BLE001 - some revision cannot render: find out which, one by one
        pass
    for rev in pending:
        try:
            out[rev.id] = migrations.offline_sql(rev.down, rev.id)
        except Exception as exc:  # noqa: BLE001 - reported per revision
            out[rev.id] = exc
    return out


_RUNNING = re.compile(r"^-- Running upgrade (.*?) -> ([^,\s]+)", re.M)


def split_by_revision(sql: str) -> dict[str, str]:
    found = list(_RUNNING.finditer(sql))
    parts: dict[str, str] = {}
    for i, m in enumerate(found):
        start = 0 if i == 0 else m.start()  # the first gets the version table's creation too
        parts[m.group(2)] = sql[start:found[i + 1].start() if i + 1 < len(found) else len(sql)]
    return parts


def notes(current: tuple[str, ...], want: tuple[str, ...], heads: tuple[str, ...],
          revisions: list[dict[str, Any]]) -> list[str]:
    """What the shape of the history means for this run, said plainly."""
    out = []
    if len(heads) > 1:
        out.append(f"the history has {len(heads)} heads ({', '.join(heads)}); this run goes to "
                   f"{', '.join(want) or 'base'}")
    if len(current) > 1:
        out.append(f"the database is at {len(current)} heads ({', '.join(current)}): a rollback "
                   "downgrades to each of them")
    for rev in revisions:
        if rev["merge"]:
            out.append(f"{rev['revision']} merges {', '.join(rev['down'])}")
    blocked = [r for r in revisions if r["irreversible"]]
    if blocked:
        first = blocked[0]
        out.append(f"{first['revision']} ({first['doc']}) has no downgrade: if the run fails after it "
                   "is applied, the rollback restores the run's backup instead of downgrading")
    elif revisions:
        out.append(f"on failure, the rollback downgrades to {fmt(current)}")
    unrenderable = [r["revision"] for r in revisions if "unrenderable" in r]
    if unrenderable:
        out.append(f"cannot render offline: {', '.join(unrenderable)} (the lock check then looks at "
                   "every long transaction instead of the tables touched)")
    return out


def render(plan: Any, options: Any) -> int:
    from .context import Options
    from .hostsession import Viewer

    env = plan.env
    target = options.to or _playbook_target(plan.playbook)
    viewer = Viewer(env, plan.playbook, options or Options(), plan.migrations, plan.run_id)
    report = {"env": env.name, "playbook": plan.playbook.name,
              "steps": [s.describe() for s in plan.playbook.steps],
              "on_failure": [s.describe() for s in plan.playbook.on_failure],
              "hosts": [host_plan(viewer, h, target) for h in env.hosts]}
    if options.json:
        click.echo(json.dumps({"event": "dry_run", **report}, default=str))
        return 0
    out = [f"Plan for {env.name} ({plan.playbook.name}): nothing will be changed.",
           "  steps:      " + " -> ".join(report["steps"]),
           "  on failure: " + (" -> ".join(report["on_failure"]) or "nothing")]
    for hp in report["hosts"]:
        if "lines" in hp:
            out.append("")
            out.extend(hp["lines"])
            continue
        out.append(f"\nHost {hp['host']}: {hp['database']} at {hp['current']}, target {hp['target']}"
                   + (" (alembic on the host)" if hp.get("backend") == "remote" else ""))
        if not hp["revisions"]:
            out.append("  nothing to migrate")
        out.extend(f"  note: {note}" for note in hp.get("notes", []))
        for rev in hp["revisions"]:
            flags = [f for f, on in (("merge", rev["merge"]), ("NO DOWNGRADE", rev.get("irreversible"))) if on]
            labels = f" [{', '.join(rev['branch_labels'])}]" if rev.get("branch_labels") else ""
            out.append(f"\n  revision {rev['revision']}{labels}: {rev['doc']}"
                       + (f" ({', '.join(flags)})" if flags else ""))
            if "unrenderable" in rev:
                out.append(f"    cannot be rendered offline (needs a live connection): {rev['unrenderable']}")
                continue
            for st in rev["statements"]:
                lock = st["lock"] or "no lock on existing tables"
                tables = ", ".join(st["tables"]) or "-"
                out.append(f"    {_one_line(st['sql'])}")
                out.append(f"      tables: {tables}; lock: {lock}")
                for warning in st["warnings"]:
                    out.append(f"      WARNING: {warning}")
    click.echo("\n".join(out))
    return 0


def _playbook_target(playbook: Any) -> str:
    for step in playbook.steps:
        if step.kind == "upgrade":
            return str(step.params.to)
    return "head"


def _one_line(sql: str, width: int = 110) -> str:
    text = " ".join(sql.split())
    return text if len(text) <= width else text[: width - 3] + "..."
