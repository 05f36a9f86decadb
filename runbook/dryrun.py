"""``--dry-run``: the plan, the SQL Alembic would run, the tables and locks of each statement.

Reads the current revision over a read-only session and renders each pending revision offline
(Alembic's ``--sql`` mode); nothing is written to the database. A revision that cannot be rendered
offline (a data migration that needs a live connection) is named as such.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import click

from . import sqlscan
from .migrations import fmt


def host_plan(engine: Any, host: Any, target: str) -> dict[str, Any]:
    from . import postgres

    current, db = read_current(engine, host)
    if "rollback" in engine.playbook.kinds():
        return rollback_plan(engine, host, current, db)
    return upgrade_plan(engine, host, current, db, target)


def read_current(engine: Any, host: Any) -> tuple[tuple[str, ...], Any]:
    from . import postgres

    with contextlib.ExitStack() as stack:
        db, _bin, _created = engine._database(host, stack)
        transport = stack.enter_context(engine._transport(host))
        tunnel, endpoint = engine._connect(host, transport, db)
        stack.callback(tunnel.close)
        engine._check_reachable(endpoint, host)
        with postgres.connect(endpoint, purpose="dry-run") as conn:
            conn.execute("SET default_transaction_read_only = on")
            current = postgres.current_revisions(conn)
    return current, db


def rollback_plan(engine: Any, host: Any, current: tuple[str, ...], db: Any) -> dict[str, Any]:
    from types import SimpleNamespace

    from .steps import rollback

    if engine.options.restore is not None:
        return {"host": host.name, "database": db.name, "current": fmt(current),
                "lines": [f"Restore {engine.options.restore} over {db.name} at {fmt(current)} "
                          "(the current state is backed up first)."]}
    ctx = SimpleNamespace(options=engine.options, env=engine.env, host=host, migrations=engine.migrations,
                          log=engine.log)
    p = rollback.plan(ctx, current)
    return {"host": host.name, "database": db.name, "current": fmt(current), "target": p["to"],
            "why": p["why"], "undo": [r.id for r in p["undo"]], "destroys": p["destroys"],
            "irreversible": [r.id for r in p["irreversible"]], "lines": p["lines"]}


def upgrade_plan(engine: Any, host: Any, current: tuple[str, ...], db: Any, target: str) -> dict[str, Any]:
    migrations = engine.migrations
    pending = migrations.pending(current, target)
    revisions = []
    prev = current
    for rev in pending:
        entry: dict[str, Any] = {"revision": rev.id, "doc": rev.doc, "merge": rev.is_merge}
        try:
            sql = migrations.offline_sql(prev if len(prev) <= 1 else (), rev.id)
            stmts = sqlscan.analyze(sql)
            entry["statements"] = [s.fact() for s in stmts]
        except Exception as exc:
            entry["unrenderable"] = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__
        revisions.append(entry)
        prev = (rev.id,)
    return {"host": host.name, "database": db.name, "current": fmt(current),
            "target": fmt(migrations.resolve(target)), "revisions": revisions}


def render(plan: Any, options: Any) -> int:
    from .context import Options
    from .engine import Engine
    from .journal import Journal, new_run_id

    env = plan.env
    target = options.to or _playbook_target(plan.playbook)
    engine = Engine(env, plan.playbook, options or Options(),
                    Journal(env.state_dir, new_run_id(), env.name, plan.playbook.name, []), plan.migrations)
    report = {"env": env.name, "playbook": plan.playbook.name,
              "steps": [s.describe() for s in plan.playbook.steps],
              "on_failure": [s.describe() for s in plan.playbook.on_failure],
              "hosts": [host_plan(engine, h, target) for h in env.hosts]}
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
        out.append(f"\nHost {hp['host']}: {hp['database']} at {hp['current']}, target {hp['target']}")
        if not hp["revisions"]:
            out.append("  nothing to migrate")
        for rev in hp["revisions"]:
            out.append(f"\n  revision {rev['revision']}: {rev['doc']}" + (" (merge)" if rev["merge"] else ""))
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
