"""``runbook lint [RANGE]``: judge revisions offline, no database, no host: made for CI.

Which Alembic project: ``--config alembic.ini``; else the one the inventory's environments use
(in-process ones; they must agree); else ``./alembic.ini``; else the example application's.

Which revisions (RANGE):
- ``all``: every revision, base to the heads;
- ``A:B``: the revisions after A up to B (``base:0003``, ``0002:head``, ``0002:`` = to the heads),
  as ``alembic upgrade A:B --sql`` renders them;
- default: the revisions some environment has not applied yet, by the journal (each host's
  revision after its newest run that read one back); without any such record (CI), ``all``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError
from ..inprocess import Migrations
from ..migrations import Revision
from ..outcome import LINT_FINDINGS, OK
from . import report
from .analysis import Analysis, Finding, analyze, render
from .rules import LEVELS, RULES
from .settings import load as load_settings


def run(inventory_path: Path, config: str | None, spec: str | None, fmt: str, fail_on: str | None,
        echo: Callable[[str], None]) -> int:
    migrations = project(inventory_path, config)
    settings = load_settings(migrations.ini.parent)
    revisions, target = choose(migrations, spec, inventory_path)
    texts, failed = render(migrations, _lower(migrations, revisions), target, revisions)
    result = analyze(migrations, revisions, texts, failed, settings, scope="revision")
    result.findings[:0] = heads(migrations, settings)
    level = fail_on or settings.fail_on or "error"
    code = LINT_FINDINGS if result.at_or_above(level) else OK
    if fmt == "json":
        echo(report.as_json(revisions, result.findings, level, code, result.unrenderable))
    elif fmt == "github":
        echo(report.github(revisions, result.findings, level, code))
    else:
        echo(report.text(revisions, result.findings, level, code))
    return code


def rules_table() -> str:
    """``runbook lint --rules``: every rule, its level, and whether it is opt-in."""
    width = max(len(n) for n in RULES)
    return "\n".join(f"{r.name:<{width}}  {r.level:<7}  {'opt-in  ' if r.opt_in else ''}{r.why}"
                     for r in sorted(RULES.values(), key=lambda r: (-LEVELS.index(r.level), r.name)))


def project(inventory_path: Path, config: str | None) -> Migrations:
    if config:
        path = Path(config)
        if not path.is_file():
            raise ConfigError("alembic config not found (--config)", path=str(path.absolute()))
        return Migrations(path.resolve())
    if inventory_path.is_file():
        from .. import inventory

        inv = inventory.load(inventory_path)
        found: dict[Path, str] = {}
        for name in inv.names:
            cfg = inv.config_of(name)
            if not cfg.alembic.remote:
                found.setdefault(inv._alembic_ini(cfg, name).resolve(), name)
        if len(found) > 1:
            listed = ", ".join(f"{env}: {path}" for path, env in found.items())
            raise ConfigError(f"the environments use different Alembic projects ({listed}): name one "
                              "with --config PATH/alembic.ini", path=str(inv.path))
        if found:
            return Migrations(next(iter(found)))
        if inv.names and not Path("alembic.ini").is_file():
            raise ConfigError("every environment runs Alembic on its host (alembic.remote): name a checkout "
                              "of the migrations with --config PATH/alembic.ini", path=str(inv.path))
    here = Path("alembic.ini")
    if here.is_file():
        return Migrations(here.resolve())
    from ..shipped import example_alembic_ini

    return Migrations(example_alembic_ini())


def choose(migrations: Migrations, spec: str | None, inventory_path: Path) -> tuple[list[Revision], str]:
    """The revisions of RANGE, oldest first, and the target to render them to."""
    heads = migrations.heads()
    target = "heads" if len(heads) > 1 else "head"
    if spec in (None, ""):
        return _pending(migrations, inventory_path, target), target
    if spec == "all":
        return migrations.pending((), target), target
    if ":" not in spec:
        raise ConfigError(f"range '{spec}': expected all or A:B (e.g. base:head, 0002:head, 0002:)")
    low, _, high = spec.partition(":")
    high = high or target
    lower = migrations.resolve(low) if low not in ("", "base") else ()
    migrations.resolve(high)  # unknown or ambiguous: one line, exit 2
    revisions = migrations.pending(lower, high)
    return revisions, high


def _pending(migrations: Migrations, inventory_path: Path, target: str) -> list[Revision]:
    """The revisions some host has not applied, by the newest run of each host that read one back."""
    from .. import journal

    state = inventory_path.parent / ".runbook"
    seen: dict[tuple[str, str], tuple[str, ...]] = {}
    for record in journal.runs(state):
        for host, rec in (record.data.get("hosts") or {}).items():
            key = (str(record.data.get("env")), host)
            if key not in seen and rec.get("end_revision") not in (None, "?"):
                end = rec["end_revision"]
                seen[key] = () if end == "base" else tuple(end.split(","))
    everything = migrations.pending((), target)
    if not seen:
        return everything
    wanted: set[str] = set()
    for current in seen.values():
        try:
            wanted.update(r.id for r in migrations.pending(current, target))
        except Exception:  # noqa: BLE001 - a revision the project no longer has: lint everything
            return everything
    return [r for r in everything if r.id in wanted]


def _lower(migrations: Migrations, revisions: list[Revision]) -> tuple[str, ...]:
    """Where the range starts: the parents of its first revisions that are not in it."""
    ids = {r.id for r in revisions}
    return tuple(sorted({d for r in revisions for d in r.down if d not in ids}))


def heads(migrations: Migrations, settings: Any) -> list[Finding]:
    found = migrations.heads()
    if len(found) < 2 or not settings.active("multiple-heads"):
        return []
    first = migrations.revision(found[-1])
    return [Finding("multiple-heads", settings.level("multiple-heads"),
                    f"the history has {len(found)} heads ({migrations.describe_heads()})",
                    RULES["multiple-heads"].safe, first.id, first.path, 1)]


__all__ = ["run", "rules_table", "Analysis"]
