"""The lint analysis inside a run: one render per run, shared by the refusal, the lock pre-flight
and ``--dry-run``.

``gate`` runs before the first step of a playbook that upgrades (so before the backup): the pending
revisions, judged with ``scope="run"`` (they run in one transaction, after one another), and any
error-level finding whose rule is not accepted (``--accept RULE``) refuses the run (exit 4,
nothing touched). ``check_locks`` then takes its tables from the same analysis: a ``DROP INDEX`` is
on its table, found in the rendered history or, failing that, in the database's catalog.
"""

from __future__ import annotations

from typing import Any, Callable

from ..errors import GuardRefused
from ..migrations import fmt
from . import rules as R
from .analysis import Analysis, analyze, render
from .settings import Settings
from .settings import load as load_settings

INDEX_TABLE_SQL = """
SELECT tn.nspname, t.relname FROM pg_class ic
JOIN pg_namespace n ON n.oid = ic.relnamespace
JOIN pg_index i ON i.indexrelid = ic.oid
JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace tn ON tn.oid = t.relnamespace
WHERE ic.relname = %(index)s AND (n.nspname = %(schema)s
      OR (%(schema)s IS NULL AND n.nspname = ANY (current_schemas(false))))
ORDER BY array_position(current_schemas(false), n.nspname) LIMIT 1
"""


def settings_of(migrations: Any) -> Settings:
    """The project's settings: beside its alembic.ini when in-process (remote: the defaults)."""
    ini = getattr(migrations, "ini", None)
    return load_settings(ini.parent if ini is not None else None)


def analyze_range(migrations: Any, current: tuple[str, ...], target: str,
                  lookup: Callable[[list[str]], dict[str, str]] | None = None) -> Analysis:
    """The pending revisions from ``current`` to ``target``, rendered once and judged as one run."""
    revisions = migrations.pending(current, target)
    if not revisions:
        return Analysis([])
    texts, failed = render(migrations, current, target, revisions)
    return analyze(migrations, revisions, texts, failed, settings_of(migrations), scope="run", lookup=lookup)


def index_tables(conn: Any, names: list[str]) -> dict[str, str]:
    """The table of each index, from the catalog (read-only, one query per index)."""
    found: dict[str, str] = {}
    for name in names:
        schema, _, index = name.rpartition(".")
        row = conn.execute(INDEX_TABLE_SQL, {"index": index, "schema": schema or None}).fetchone()
        if row:
            found[name] = row[1] if row[0] == "public" else f"{row[0]}.{row[1]}"
    return found


def for_run(ctx: Any, current: tuple[str, ...], target: str) -> Analysis:
    """The analysis of this run's pending range, computed once (the gate, then check_locks)."""
    key = (tuple(current), target)
    cached = ctx.lint.get(key)
    if cached is None:
        def lookup(names: list[str]) -> dict[str, str]:
            with ctx.connect("lint") as conn:
                return index_tables(conn, names)

        cached = ctx.lint[key] = analyze_range(ctx.migrations, tuple(current), target, lookup)
    return cached


def gate(ctx: Any, target: str) -> None:
    """Refuse (exit 4, before the backup) on error-level findings not accepted by name."""
    result = for_run(ctx, ctx.start, target)
    if not result.revisions:
        return
    accepted = set(ctx.options.accept or ())
    errors = result.at_or_above(R.ERROR)
    refused = [f for f in errors if f.rule not in accepted]
    for f in result.findings:  # "severity": the log pipeline owns "level" (the event's own)
        fact = {k: v for k, v in f.fact().items() if k != "level"}
        ctx.log.info("lint_finding", **fact, severity=f.level, accepted=f.rule in accepted and f.level == R.ERROR)
    if result.unrenderable:
        ctx.log.warning("offline_sql_unavailable", revisions=sorted(result.unrenderable),
                        error=next(iter(result.unrenderable.values())))
    ctx.log.info("lint_checked", revisions=fmt(r.id for r in result.revisions),
                 errors=len(errors), refused=len(refused),
                 warnings=len(result.findings) - len(result.at_or_above(R.ERROR)))
    if not refused:
        if errors:
            ctx.log.warning("lint_accepted", rules=sorted({f.rule for f in errors}))
        return
    shown = "; ".join(f"{f.revision} [{f.rule}] {f.message}" for f in refused[:3])
    more = f" and {len(refused) - 3} more" if len(refused) > 3 else ""
    rules = sorted({f.rule for f in refused})
    raise GuardRefused(
        f"refused by lint: {len(refused)} error-level finding(s) in the pending revisions: {shown}{more}: "
        "nothing was done", step="lint", host=ctx.host.name,
        hint=f"runbook lint shows each with its safe way; to run it as it is, on purpose: "
             f"{' '.join('--accept ' + r for r in rules)}")


def upgrade_target(ctx: Any, steps: Any) -> str | None:
    """The target of the playbook's upgrade step (``--to`` first), or None if it upgrades nothing."""
    for step in steps:
        if step.kind == "upgrade":
            return str(ctx.options.to or step.params.to)
    return None
