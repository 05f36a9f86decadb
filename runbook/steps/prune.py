"""``prune``: retention after a successful backup (``backup.keep``).

Keeps the newest ``keep`` backups of this database and environment, and never deletes the newest
verified backup, the backup this run took, or the backup the last successful migrate took.
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
        try:
            ctx.transport.run("rm -f -- " + " ".join(quote(p) for p in files), timeout=60)
        except Exception as exc:
            ctx.log.warning("backup_prune_failed", backups=[b.path for b in doomed], error=str(exc))
            return {"kept": len(found), "pruned": [], "keep": keep}
        for b in doomed:
            ctx.log.info("backup_pruned", backup=b.path, size=b.size, revision=b.revision)
    return {"kept": len(found) - len(doomed), "pruned": [b.name for b in doomed], "keep": keep}
