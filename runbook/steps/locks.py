"""``check_locks``: the sessions that would block the pending DDL, handled by policy.

The tables come from the offline SQL of the pending revisions. A blocker is a session holding or
waiting for a lock on one of them (or, when the SQL cannot be rendered, any session in a transaction
older than ``locks.long_transaction``). Policy ``wait`` re-checks with backoff until ``max_wait``,
``abort`` refuses at once, ``terminate`` ends those sessions; every decision is logged with the pids
and queries involved. Long transactions and idle-in-transaction sessions elsewhere are reported.
"""

from __future__ import annotations

from typing import Any

from .. import postgres
from ..context import Context
from ..errors import GuardRefused
from ..migrations import fmt


def touched(ctx: Context, target: str) -> tuple[list[str] | None, list[str]]:
    """Tables the pending revisions touch (None if their SQL cannot be rendered) and the pending ids.

    The same analysis as the run's lint gate (``lint.preflight``): a DROP INDEX counts as its table."""
    from ..lint.preflight import for_run

    current = ctx.current_at_start()
    result = for_run(ctx, current, target)
    pending = [r.id for r in result.revisions]
    if not pending:
        return [], []
    tables = result.tables()
    if tables is None:  # a data migration may not render offline; fall back to the broad check
        ctx.log.warning("offline_sql_unavailable", revisions=sorted(result.unrenderable),
                        error=next(iter(result.unrenderable.values()))[:200])
    return tables, pending


def find_blockers(ctx: Context, tables: list[str] | None) -> tuple[list[postgres.Session], list[postgres.Session]]:
    with ctx.connect("check_locks") as conn:
        seen = postgres.sessions(conn)
    long_tx = ctx.locks.long_transaction
    if tables is None:
        blockers = [s for s in seen if (s.xact_age_s or 0) >= long_tx]
    else:
        blockers = [s for s in seen if postgres.touching(s, tables)]
    others = [s for s in seen if s not in blockers and ((s.xact_age_s or 0) >= long_tx
                                                       or (s.state or "").startswith("idle in transaction"))]
    return blockers, others


def run(ctx: Context, params: Any) -> dict[str, Any]:
    target = ctx.options.to or "head"
    tables, pending = touched(ctx, target)
    policy = (params.blockers if params is not None and getattr(params, "blockers", None)
              else ctx.locks.blockers)
    facts: dict[str, Any] = {"tables": tables, "pending": pending, "policy": policy}
    if not pending:
        facts["blockers"] = []
        return facts
    deadline = ctx.clock() + ctx.locks.max_wait
    delay = 0.5
    while True:
        blockers, others = find_blockers(ctx, tables)
        if others:
            ctx.log.warning("long_transactions_seen", sessions=[s.fact() for s in others])
        if not blockers:
            facts["blockers"] = []
            return facts
        info = [s.fact() for s in blockers]
        if policy == "abort":
            ctx.log.warning("blockers_abort", sessions=info)
            raise GuardRefused(_refusal(blockers, "policy abort"), step="check_locks", host=ctx.host.name)
        if policy == "terminate":
            with ctx.connect("terminate") as conn, conn.cursor() as cur:
                for s in blockers:
                    cur.execute("SELECT pg_terminate_backend(%s)", (s.pid,))
                    ctx.log.warning("blocker_terminated", **s.fact())
            facts["terminated"] = [s.pid for s in blockers]
            ctx.sleep(0.2)
            continue
        remaining = deadline - ctx.clock()
        if remaining <= 0:
            ctx.log.warning("blockers_wait_exhausted", sessions=info, max_wait_s=ctx.locks.max_wait)
            raise GuardRefused(_refusal(blockers, f"still there after max_wait {ctx.locks.max_wait:g}s"),
                               step="check_locks", host=ctx.host.name)
        pause = min(delay, remaining)
        ctx.log.info("lock_wait", sessions=info, sleep_s=round(pause, 2), remaining_s=round(remaining, 1),
                     revisions=fmt(pending))
        ctx.sleep(pause)
        delay = min(delay * 2, 10.0)


def _refusal(blockers: list[postgres.Session], why: str) -> str:
    shown = "; ".join(f"pid {s.pid} ({s.user}, {s.application or 'no application'}, {s.state}, "
                      f"{(s.xact_age_s or 0):.0f}s in transaction, locks {', '.join(s.locks) or 'none'}): "
                      f"{(s.query or '').strip()[:80]}" for s in blockers[:5])
    more = f" and {len(blockers) - 5} more" if len(blockers) > 5 else ""
    return f"refused: {len(blockers)} blocking session(s), {why}: {shown}{more}"
