"""``prune``: retention after a successful backup (``backup.keep``).

Keeps the newest ``keep`` backups of this database and environment, and never deletes the newest
verified backup, the backup this run took, or the backup the last successful migrate took. It also
drops the databases earlier swap restores replaced (``<db>__runbook_before_<stamp>``), each one
logged (under ``restore.mode: swap``: they are kept until the next successful run).
"""

from __future__ import annotations

from typing import Any

from .. import journal
from ..backups import list_backups, to_prune
from ..context import Context
from ..transports.base import quote
from ..hostcmd import backup_dir


def run(ctx: Context, params: Any) -> dict[str, Any]:
    keep = ctx.env.config.backup.keep
    kept_dropped = _prune_kept_databases(ctx)
    try:
        found = list_backups(ctx.transport, backup_dir(ctx), ctx.database.name, ctx.env.name)
    except Exception as exc:
        ctx.log.warning("backup_prune_failed", error=str(exc))
        return {"pruned": [], "keep": keep}
    protected = {b.name for b in ctx.backups}
    last = journal.last_successful(ctx.env.state_dir, ctx.env.name, ctx.host.name)
    if last and (last.get("backup") or {}).get("backup_path"):
        protected.add(str(last["backup"]["backup_path"]).rsplit("/", 1)[-1])
    doomed = to_prune(found, keep, protected)
    if doomed:
        # one command for all of them (a round trip each adds up on a slow link); a retention
        # hiccup must never fail (and roll back) a run that did its job
        files = [p for b in doomed for p in (b.path, b.path + ".sha256")]
        # a directory dump is a folder (its names come from the listing, which matched them
        # against this database's backup pattern: nothing else is ever removed here)
        try:
            ctx.transport.run("rm -rf -- " + " ".join(quote(p) for p in files), timeout=600)
        except Exception as exc:
            ctx.log.warning("backup_prune_failed", backups=[b.path for b in doomed], error=str(exc))
            return {"kept": len(found), "pruned": [], "keep": keep}
        for b in doomed:
            ctx.log.info("backup_pruned", backup=b.path, size=b.size, revision=b.revision)
    return {"kept": len(found) - len(doomed), "pruned": [b.name for b in doomed], "keep": keep,
            **({"databases_dropped": kept_dropped} if kept_dropped else {})}


def _prune_kept_databases(ctx: Context) -> list[str]:
    """The databases earlier swap restores left (a retention hiccup never fails the run). Only
    looked for under ``restore.mode: swap`` (a query: no round trip is spent otherwise)."""
    from .swap import prune_kept

    if ctx.env.config.restore.mode != "swap":
        return []
    try:
        return prune_kept(ctx)
    except Exception as exc:  # noqa: BLE001 - said, and tried again by the next run
        ctx.log.warning("kept_database_prune_failed", error=str(exc).strip()[:200])
        return []
