"""Migration backends: what the steps need from an Alembic project, in-process or on the host.

``MigrationBackend`` is the seam: the revision graph (heads, pending, what a downgrade undoes, which
revisions cannot be downgraded), offline SQL, upgrade/downgrade and the per-revision verification
files. ``runbook.inprocess.Migrations`` drives any Alembic project in-process;
``runbook.remote.RemoteMigrations`` runs the application's own ``alembic`` inside its deployment on
the SSH host. A backend is bound to one host's run (``bind(ctx)``) before it migrates anything.
"""

from __future__ import annotations

import abc
import ast
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import ConfigError, MigrationError

LOCK_NOT_AVAILABLE = "55P03"
OnApply = Callable[[str, tuple[str, ...]], None]  # (revision applied or reverted, heads after it)


@dataclass(frozen=True)
class Revision:
    """One script of the history, as runbook reports it."""

    id: str
    doc: str
    down: tuple[str, ...]
    is_merge: bool
    irreversible: bool  # declared with a module-level ``irreversible = True``
    branch_labels: tuple[str, ...] = ()
    path: str | None = None

    def fact(self) -> dict[str, Any]:
        return {"revision": self.id, "doc": self.doc}


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of the database error behind ``exc`` (SQLAlchemy wraps psycopg's)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        code = getattr(cur, "sqlstate", None) or getattr(cur, "pgcode", None)
        if code:
            return str(code)
        orig = getattr(cur, "orig", None)
        if isinstance(orig, BaseException):
            cur = orig
            continue
        cur = cur.__cause__ or cur.__context__
    return None


def downgrade_missing(source: str) -> str | None:
    """Why a revision's source has no usable ``downgrade()`` (missing, empty, raising), or None.

    A body of ``pass`` / ``...`` / a docstring, or one that raises at its top level (``raise
    NotImplementedError``), cannot undo the upgrade; ``irreversible = True`` at module level says so.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    fn = up = None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "downgrade":
            fn = node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "upgrade":
            up = node
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "irreversible"
                                                   for t in node.targets):
            if isinstance(node.value, ast.Constant) and node.value.value is True:
                return "it is declared irreversible"
    if fn is None:
        return "it has no downgrade()"
    if _empty(fn):
        # A merge revision's upgrade is empty as well: there is nothing to undo.
        return None if up is None or _empty(up) else "its downgrade() is empty"
    body = _statements(fn)
    for stmt in body:
        if isinstance(stmt, ast.Raise):
            text = ast.get_source_segment(source, stmt) or "raise"
            return f"its downgrade() raises: {' '.join(text.split())[:200]}"
    return None


def _statements(fn: Any) -> list[Any]:
    return [s for s in fn.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]


def _empty(fn: Any) -> bool:
    return all(isinstance(s, ast.Pass) for s in _statements(fn))


class MigrationBackend(abc.ABC):
    """The operations steps call, the same for in-process and remote Alembic.

    The graph methods work on ``revision_map`` (Alembic's own ``RevisionMap``), so that targets such
    as ``head``, ``heads``, ``<branch>@head``, ids and unique prefixes mean exactly what they mean
    to Alembic. ``migrate`` and the host-side methods need ``bind(ctx)`` first.
    """

    kind = "backend"
    _ctx: Any = None

    # -- binding ------------------------------------------------------------------------------
    def bind(self, ctx: Any) -> "MigrationBackend":
        """A copy of this backend attached to one host's run (its transport, database, run id)."""
        bound = copy.copy(self)
        bound._ctx = ctx
        return bound

    def _bound(self) -> Any:
        if self._ctx is None:
            raise MigrationError(f"internal: the {self.kind} migration backend is not bound to a host")
        return self._ctx

    # -- the graph ----------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def revision_map(self) -> Any:
        """Alembic's RevisionMap of the project."""

    @abc.abstractmethod
    def revision(self, rev_id: str) -> Revision:
        """The revision ``rev_id`` as runbook reports it."""

    @abc.abstractmethod
    def source(self, rev: Revision) -> str | None:
        """The Python source of a revision, or None if it cannot be read."""

    def heads(self) -> tuple[str, ...]:
        return tuple(sorted(self.revision_map.heads))

    def describe_heads(self) -> str:
        heads = self.heads()
        labels = [f"{h} ({', '.join(self.revision(h).branch_labels)})" if self.revision(h).branch_labels
                  else h for h in heads]
        return ", ".join(labels) or "none"

    def resolve(self, target: str) -> tuple[str, ...]:
        """The revision ids ``target`` names (``head``, ``heads``, an id or prefix, ``base``)."""
        if target in ("base", ""):
            return ()
        if target == "heads":
            return self.heads()
        if target == "head" and len(self.heads()) > 1:
            raise ConfigError(
                f"the history has {len(self.heads())} heads ({self.describe_heads()}): 'head' is "
                "ambiguous; name one with --to REV or --to <branch>@head, migrate every branch with "
                "--to heads, or merge them first (alembic merge heads)")
        try:
            revs = self.revision_map.get_revisions(target)
        except Exception as exc:  # Alembic's RevisionError family, or CommandError
            raise ConfigError(f"unknown or ambiguous revision '{target}'{self._suggest(target)} "
                              f"(Alembic: {exc})") from None
        if not revs:
            raise ConfigError(f"unknown revision '{target}'{self._suggest(target)}")
        return tuple(sorted(r.revision for r in revs if r is not None))

    def _suggest(self, target: str) -> str:
        """"; did you mean '0002'?" for a mistyped revision (ids, branch labels, head/heads/base)."""
        from .suggest import did_you_mean

        try:
            revs = [r for r in self.revision_map.iterate_revisions("heads", "base") if r is not None]
        except Exception:
            return ""
        names = ["head", "heads", "base", *(r.revision for r in revs),
                 *(label for r in revs for label in (r.branch_labels or ()))]
        return did_you_mean(target, names)

    def pending(self, current: Iterable[str], target: str) -> list[Revision]:
        """The revisions an upgrade from ``current`` to ``target`` applies, in order."""
        upper = self.resolve(target)
        if not upper:
            return []
        lower = tuple(current) or None
        try:
            scripts = list(self.revision_map.iterate_revisions(upper, lower))
        except Exception as exc:  # alembic raises several kinds for unrelated revisions
            raise MigrationError(f"cannot plan an upgrade from {fmt(tuple(current))} to {target}: {exc}") from exc
        return [self.revision(s.revision) for s in reversed(scripts)]

    def to_undo(self, current: Iterable[str], target: str | tuple[str, ...]) -> list[Revision]:
        """The revisions a downgrade from ``current`` to ``target`` undoes, newest first."""
        lower = self.resolve(target) if isinstance(target, str) else tuple(target)
        cur = tuple(current)
        if not cur:
            return []
        try:
            scripts = list(self.revision_map.iterate_revisions(cur, lower or None))
        except Exception as exc:
            raise MigrationError(f"cannot plan a downgrade from {fmt(cur)} to {fmt(lower)}: {exc}") from exc
        return [self.revision(s.revision) for s in scripts if s.revision not in lower]

    def irreversible(self, rev: Revision) -> bool:
        """A revision whose downgrade is missing, empty, raising, or declared irreversible."""
        return self.why_irreversible(rev) is not None

    def why_irreversible(self, rev: Revision) -> str | None:
        """Why ``rev`` cannot be downgraded (None if it can, as far as its source tells)."""
        if rev.irreversible:
            return "it is declared irreversible"
        text = self.source(rev)
        return downgrade_missing(text) if text is not None else None

    # -- running ------------------------------------------------------------------------------
    @abc.abstractmethod
    def offline_sql(self, current: Iterable[str], target: str) -> str:
        """The SQL ``alembic upgrade --sql`` renders for ``current -> target``."""

    @abc.abstractmethod
    def offline_downgrade_sql(self, current: Iterable[str], target: str) -> str:
        """The SQL ``alembic downgrade --sql`` renders for ``current -> target``."""

    @abc.abstractmethod
    def migrate(self, direction: str, target: str, *, settings: dict[str, str],
                on_apply: OnApply | None = None) -> None:
        """Upgrade or downgrade on the bound host with these session settings (one try)."""

    def prepare(self, direction: str, settings: dict[str, str]) -> None:
        """Get ready, in the background, for a coming ``migrate`` with these settings (if it helps)."""

    @abc.abstractmethod
    def verify_file(self, revision: str) -> Path:
        """A local path holding the verification checks of ``revision`` (may not exist)."""

    def verify_location(self, revision: str) -> str:
        """Where a person should put the verification file of ``revision``."""
        return str(self.verify_file(revision))

    def verify_files(self) -> dict[str, Path]:
        """Every per-revision verification file the project has, by revision id."""
        folder = self.verify_file("x").parent
        return {p.stem: p for p in sorted(folder.glob("*.y*ml"))} if folder.is_dir() else {}


# -- in-process ---------------------------------------------------------------------------------


def fmt(revs: Iterable[str]) -> str:
    revs = tuple(revs)
    return ",".join(revs) if revs else "base"


def backend_for(env: Any) -> MigrationBackend:
    """The migration backend an environment's ``alembic`` block asks for."""
    cfg = env.config.alembic
    if cfg.remote:
        from .remote import RemoteMigrations

        return RemoteMigrations(cfg.remote, url_env=cfg.url_env, url_driver=cfg.url_driver,
                                timeout=cfg.timeout)
    from .inprocess import Migrations

    return Migrations(env.alembic_ini, url_env=cfg.url_env, url_driver=cfg.url_driver)
