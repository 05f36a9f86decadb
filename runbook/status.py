"""``runbook ENV status``: one screen on the state of each database, for a person or a machine.

Current and head revisions, the pending migrations by name, the last runs from the journal (an
incomplete one flagged with its last step), the backups on the host, and the lock holders and long
transactions right now. Read-only: it takes no run lock, so it works while a migrate is running.
"""

from __future__ import annotations

import contextlib
from typing import Any

import click

from . import dbswap, journal, postgres
from .background import Pending
from .backups import folder_of, human_age, human_size, list_backups, on_host
from .migrations import fmt


def host_status(viewer: Any, host: Any) -> dict[str, Any]:
    env = viewer.env
    migrations = viewer.migrations
    if env.embedded:
        from .embedded import DB_NAME, EmbeddedCluster

        if not (EmbeddedCluster(env.state_dir).data_dir / "PG_VERSION").exists():
            # Read-only: creating the cluster here would leave a database without the example data.
            return {"host": host.name, "database": DB_NAME, "current": "base", "head": fmt(migrations.heads()),
                    "pending": [{"revision": r.id, "doc": r.doc} for r in migrations.pending((), "heads")],
                    "backups": [], "backup_dir": folder_of(env), "run_lock": None, "sessions": [],
                    "note": f"the embedded cluster does not exist yet: runbook {env.name} migrate creates it "
                            "with the example data"}
    with contextlib.ExitStack() as stack:
        ctx = viewer.context(stack, host)  # its migration backend is bound to this host
        db, transport = ctx.database, ctx.transport
        # The backup listing (a host command) runs while the queries do: on a slow link their
        # round trips overlap instead of adding up.
        folder = on_host(folder_of(env), transport)
        listing = Pending(lambda: list_backups(transport, folder, db.name, env.name), "status-backups")
        with ctx.connect("status") as conn:  # only reads, in one round trip

            def queue() -> tuple[Any, Any, tuple[Any, Any]]:
                holder, side = conn.cursor(), conn.cursor()
                holder.execute(postgres.RUN_LOCK_HOLDER_SQL, postgres.RUN_LOCK, prepare=False)
                side.execute(dbswap.SIDE_SQL, dbswap.side_params(db.name), prepare=False)  # swap restores'
                return holder, side, postgres.queue_sessions(conn, runbook=True)

            (holder, side, queued), current = postgres.with_revisions(conn, queue)
            sessions = postgres.read_sessions(*queued)
            with holder, side:
                run_lock = _holder_fact(holder.fetchone())
                kept = dbswap.side_databases(side.fetchall(), db.name)
        found = listing.result()
        # with alembic.remote the history is read on this host
        pending = ctx.migrations.pending(current, "heads")
        heads = ctx.migrations.heads()
    long_tx = env.config.locks.long_transaction
    interesting = [s for s in sessions if s.locks or (s.state or "").startswith("idle in transaction")
                   or (s.xact_age_s or 0) >= long_tx]
    return {"host": host.name, "database": db.name, "current": fmt(current),
            "head": fmt(heads),
            "pending": [{"revision": r.id, "doc": r.doc} for r in pending],
            "backups": [b.fact() for b in found], "backup_dir": folder,
            "run_lock": run_lock, "sessions": [s.fact() for s in interesting], "databases": kept}


def _holder_fact(row: Any) -> dict[str, Any] | None:
    """The session holding runbook's run lock on this database (a run in progress), if any."""
    if row is None:
        return None
    pid, app, client, since = row
    return {"pid": pid, "holder": (app or "").removeprefix("runbook:lock ") or None,
            "client": client or "local", "since": since.isoformat() if since else None}


def runs_summary(env: Any, limit: int = 5) -> list[dict[str, Any]]:
    out = []
    for rec in journal.runs(env.state_dir, env.name)[:limit]:
        d = rec.data
        last = rec.last_step() or {}
        out.append({"run_id": d.get("run_id"), "playbook": d.get("playbook"), "status": d.get("status"),
                    "exit_code": d.get("exit_code"), "started": d.get("started"),
                    "finished": d.get("finished"), "duration_s": _duration(d),
                    "incomplete": rec.incomplete, "last_step": last.get("step"),
                    "last_step_outcome": last.get("outcome"), "last_step_phase": last.get("phase"),
                    "interrupted": d.get("interrupted"),
                    "hosts": {h: {k: v.get(k) for k in ("start_revision", "end_revision")}
                              for h, v in (d.get("hosts") or {}).items()}})
    return out


def _where_it_stopped(run: dict[str, Any]) -> str:
    """'its runner died during the rollback's restore, after SIGTERM during upgrade' and the like."""
    phase = "the rollback's " if run.get("last_step_phase") == "rollback" else ""
    where = f"its runner died during {phase}{run.get('last_step') or 'start-up'}"
    signal = run.get("interrupted") or {}
    if signal.get("signal"):
        where += f", after {signal['signal']} during {signal.get('step') or 'start-up'}"
    return where


def _duration(d: dict[str, Any]) -> float | None:
    from datetime import datetime

    try:
        return (datetime.fromisoformat(d["finished"]) - datetime.fromisoformat(d["started"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return None


def render(plan: Any, options: Any) -> int:
    from .context import Options
    from .hostsession import Viewer

    env = plan.env
    viewer = Viewer(env, plan.playbook, options or Options(), plan.migrations, plan.run_id)
    report = {"env": env.name, "hosts": [host_status(viewer, h) for h in env.hosts],
              "runs": runs_summary(env)}
    if options.json:
        from .log import machine_line

        click.echo(machine_line({"event": "status", **report}))
        return 0
    lines = [f"Environment {env.name}"]
    for hs in report["hosts"]:
        lines.append(f"\n{hs['host']}: {hs['database']} at {hs['current']} (head {hs['head']})")
        if hs.get("note"):
            lines.append(f"  note: {hs['note']}")
        if hs["pending"]:
            lines.append(f"  pending: " + "; ".join(f"{p['revision']} {p['doc']}" for p in hs["pending"]))
        else:
            lines.append("  pending: none, up to date")
        lines.append(f"  backups in {hs['backup_dir']}: {len(hs['backups'])}")
        for b in hs["backups"][:5]:
            mark = "" if b["verified"] else "  UNVERIFIED"
            label = f" [{b['label']}]" if b["label"] else ""
            lines.append(f"    {b['name']}  {human_size(b['size'])}  {human_age(b['age_s'])} old  "
                         f"sha256 {str(b['sha256'])[:12]}{label}{mark}")
        for d in hs.get("databases") or []:
            size = human_size(d["size"]) if d["size"] is not None else "size unknown"
            if d["kind"] == "before":
                lines.append(f"  kept database {d['name']}  {size}: {hs['database']} as it was before a swap "
                             f"restore (runbook {env.name} rollback --restore {d['name']} puts it back); "
                             "dropped by the next successful migrate or backup")
            else:
                lines.append(f"  RESTORE COPY {d['name']}  {size}: a swap restore in progress, or left by a "
                             "killed one (the next run drops it)")
        lock = hs["run_lock"]
        if lock:
            lines.append(f"  run lock: HELD by {lock['holder'] or 'another session'} (server pid {lock['pid']}, "
                         f"from {lock['client']}, since {str(lock['since'])[:19]}): a run is in progress")
        else:
            lines.append("  run lock: free (no run in progress)")
        if hs["sessions"]:
            lines.append(f"  sessions holding locks or in long/idle transactions: {len(hs['sessions'])}")
            for s in hs["sessions"][:8]:
                lines.append(f"    pid {s['pid']} {s['user']} {s['application'] or '-'} {s['state']} "
                             f"{s['xact_age_s']}s in tx; locks {', '.join(s['locks']) or '-'}; "
                             f"{(s['query'] or '').strip()[:60]}")
        else:
            lines.append("  lock holders and long transactions: none")
    lines.append("\nLast runs:")
    if not report["runs"]:
        lines.append("  none recorded")
    for r in report["runs"]:
        flag = f"  INCOMPLETE ({_where_it_stopped(r)})" if r["incomplete"] else ""
        dur = f"{r['duration_s']:.1f}s" if r["duration_s"] is not None else "-"
        revs = "; ".join(f"{h} {v['start_revision']}->{v['end_revision']}" for h, v in r["hosts"].items())
        lines.append(f"  {r['run_id']}  {r['playbook']:<9} {str(r['status']):<12} exit {r['exit_code']}  "
                     f"{dur}  {revs}{flag}")
    click.echo("\n".join(lines))
    return 0
