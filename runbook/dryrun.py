"""``--dry-run``: the plan, the SQL Alembic would run, the tables and locks of each statement.

Reads the current revision over a read-only session and renders each pending revision offline
(Alembic's ``--sql`` mode); nothing is written to the database. A revision that cannot be rendered
offline (a data migration that needs a live connection) is named as such.
"""

from __future__ import annotations

import contextlib
from typing import Any

import click

from . import postgres
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
    """Each pending revision with its SQL, locks and lint findings, and what the history means.

    The analysis is the one a run's lint gate and lock pre-flight use (``lint.preflight``)."""
    from .lint.preflight import analyze_range, index_tables

    migrations = ctx.migrations
    want = migrations.resolve(target)

    def lookup(names: list[str]) -> dict[str, str]:
        with ctx.connect("dry-run") as conn:
            return index_tables(conn, names)

    from .steps.migrate import NEEDLESS_WITHOUT_PENDING, going_back

    refusal = going_back(migrations, current, target, getattr(getattr(ctx, "env", None), "name", "ENV"))
    if refusal is not None:  # what the run would refuse, the plan refuses the same way
        raise refusal
    result = analyze_range(migrations, current, target, lookup if hasattr(ctx, "connect") else None)
    revisions = []
    for rev in result.revisions:
        entry: dict[str, Any] = {"revision": rev.id, "doc": rev.doc, "merge": rev.is_merge,
                                 "down": list(rev.down), "branch_labels": list(rev.branch_labels),
                                 "irreversible": migrations.irreversible(rev)}
        mine = [f for f in result.findings if f.revision == rev.id]
        if rev.id in result.unrenderable:
            entry["unrenderable"] = result.unrenderable[rev.id]
        else:
            entry["statements"] = []
            for st in result.statements.get(rev.id, []):
                found = [f for f in mine if f.sql == st.sql]
                mine = [f for f in mine if f not in found]
                entry["statements"].append({**st.fact(), "warnings": [f.message for f in found],
                                            "findings": [f.fact() for f in found]})
        entry["findings"] = [f.fact() for f in mine]  # about the revision as a whole
        revisions.append(entry)
    errors = result.at_or_above("error")
    skipped = [] if revisions else list(NEEDLESS_WITHOUT_PENDING)
    said = notes(current, want, migrations.heads(), revisions)
    if skipped:
        said.insert(0, f"nothing pending: a run skips {' and '.join(skipped)} (no new backup) and verifies")
    return {"host": ctx.host.name, "database": ctx.database.name, "current": fmt(current),
            "target": fmt(want), "heads": list(migrations.heads()), "backend": migrations.kind,
            "revisions": revisions, "notes": said, "skipped": skipped,
            "lint": {"errors": len(errors), "findings": len(result.findings),
                     "refusing": sorted({f.rule for f in errors})}}


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
        from .log import machine_line

        click.echo(machine_line({"event": "dry_run", **report}))
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
        lint = hp.get("lint") or {}
        if lint.get("refusing"):
            out.append(f"  note: lint: {lint['errors']} error-level finding(s): migrate refuses to run unless "
                       f"accepted ({' '.join('--accept ' + r for r in lint['refusing'])})")
        for rev in hp["revisions"]:
            flags = [f for f, on in (("merge", rev["merge"]), ("NO DOWNGRADE", rev.get("irreversible"))) if on]
            labels = f" [{', '.join(rev['branch_labels'])}]" if rev.get("branch_labels") else ""
            out.append(f"\n  revision {rev['revision']}{labels}: {rev['doc']}"
                       + (f" ({', '.join(flags)})" if flags else ""))
            if "unrenderable" in rev:
                out.append(f"    cannot be rendered offline (needs a live connection): {rev['unrenderable']}")
                continue
            for f in rev.get("findings", []):
                out.append(f"    {f['level'].upper()}: {f['message']} [{f['rule']}]")
            for st in rev["statements"]:
                lock = st["lock"] or "no lock on existing tables"
                tables = ", ".join(st["tables"]) or "-"
                out.append(f"    {_one_line(st['sql'])}")
                out.append(f"      tables: {tables}; lock: {lock}")
                for f in st["findings"]:
                    out.append(f"      {f['level'].upper()}: {f['message']} [{f['rule']}]")
                    out.append(f"        safe: {f['safe']}")
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
