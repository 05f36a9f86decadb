"""Alembic driven in-process: revisions, pending scripts, offline SQL, upgrade and downgrade.

The Config is built in code from the project's ``alembic.ini`` and the migration connection is handed
to env.py through ``config.attributes["connection"]`` (Alembic's cookbook "sharing a connection").
The connection is fresh (no transaction begun), so env.py's ``context.begin_transaction()`` owns the
transaction and ``autocommit_block`` sections work; session settings such as ``lock_timeout`` are
set when the connection is opened. Success is never assumed: callers read ``alembic_version`` back.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import ConfigError, MigrationError

LOCK_NOT_AVAILABLE = "55P03"


@dataclass(frozen=True)
class Revision:
    """One script of the history, as runbook reports it."""

    id: str
    doc: str
    down: tuple[str, ...]
    is_merge: bool
    irreversible: bool

    def fact(self) -> dict[str, Any]:
        return {"revision": self.id, "doc": self.doc}


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of the database error behind ``exc`` (SQLAlchemy wraps psycopg's)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        code = getattr(cur, "sqlstate", None)
        if code:
            return str(code)
        orig = getattr(cur, "orig", None)
        if isinstance(orig, BaseException):
            cur = orig
            continue
        cur = cur.__cause__ or cur.__context__
    return None


class Migrations:
    """One Alembic project (its alembic.ini) and the operations runbook needs from it."""

    def __init__(self, ini: Path) -> None:
        self.ini = ini
        if not ini.is_file():
            raise ConfigError(f"alembic config {ini} not found")
        self._script: Any = None

    def config(self, *, connection: Any = None, buffer: Any = None, **attributes: Any) -> Any:
        from alembic.config import Config

        cfg = Config(str(self.ini), output_buffer=buffer, stdout=io.StringIO())
        cfg.attributes["configure_logger"] = False  # runbook owns logging (structlog)
        if connection is not None:
            cfg.attributes["connection"] = connection
        cfg.attributes.update(attributes)
        return cfg

    @property
    def script(self) -> Any:
        if self._script is None:
            from alembic.script import ScriptDirectory
            from alembic.util import CommandError

            try:
                self._script = ScriptDirectory.from_config(self.config())
            except CommandError as exc:
                raise ConfigError(f"alembic project of {self.ini}: {exc}") from None
        return self._script

    @property
    def script_location(self) -> Path:
        return Path(self.script.dir)

    def heads(self) -> tuple[str, ...]:
        return tuple(sorted(self.script.get_heads()))

    def revision(self, rev_id: str) -> Revision:
        sc = self.script.get_revision(rev_id)
        down = sc.down_revision
        downs = tuple(down) if isinstance(down, (tuple, list)) else ((down,) if down else ())
        irreversible = bool(getattr(sc.module, "irreversible", False))
        return Revision(sc.revision, (sc.doc or "").strip(), downs, sc.is_merge_point, irreversible)

    def resolve(self, target: str) -> tuple[str, ...]:
        """The revision ids ``target`` names (``head``, ``heads``, an id or prefix, ``base``)."""
        from alembic.util import CommandError

        if target in ("base", ""):
            return ()
        if target in ("head", "heads"):
            return self.heads()
        try:
            revs = self.script.get_revisions(target)
        except CommandError as exc:
            raise ConfigError(f"unknown revision '{target}': {exc}") from None
        if not revs:
            raise ConfigError(f"unknown revision '{target}'")
        return tuple(sorted(r.revision for r in revs if r is not None))

    def pending(self, current: Iterable[str], target: str) -> list[Revision]:
        """The revisions an upgrade from ``current`` to ``target`` applies, in order."""
        upper = self.resolve(target)
        if not upper:
            return []
        lower = tuple(current) or None
        try:
            scripts = list(self.script.iterate_revisions(upper, lower))
        except Exception as exc:  # alembic raises several kinds for unrelated revisions
            raise MigrationError(f"cannot plan an upgrade from {fmt(tuple(current))} to {target}: {exc}") from exc
        return [self.revision(s.revision) for s in reversed(scripts)]

    def to_undo(self, current: Iterable[str], target: str) -> list[Revision]:
        """The revisions a downgrade from ``current`` to ``target`` undoes, newest first."""
        lower = self.resolve(target)
        cur = tuple(current)
        if not cur:
            return []
        try:
            scripts = list(self.script.iterate_revisions(cur, lower or None))
        except Exception as exc:
            raise MigrationError(f"cannot plan a downgrade from {fmt(cur)} to {target}: {exc}") from exc
        return [self.revision(s.revision) for s in scripts if s.revision not in lower]

    def offline_sql(self, current: Iterable[str], target: str) -> str:
        """The SQL ``alembic upgrade --sql`` renders for ``current -> target``."""
        from alembic import command

        cur = tuple(current)
        buf = io.StringIO()
        spec = f"{cur[0]}:{target}" if len(cur) == 1 else target
        command.upgrade(self.config(buffer=buf), spec, sql=True)
        return buf.getvalue()

    def offline_downgrade_sql(self, current: Iterable[str], target: str) -> str:
        from alembic import command

        cur = tuple(current)
        buf = io.StringIO()
        lower = target if target not in ("", None) else "base"
        command.downgrade(self.config(buffer=buf), f"{cur[0]}:{lower}", sql=True)
        return buf.getvalue()

    def run(self, direction: str, engine: Any, target: str,
            on_apply: Callable[..., None] | None = None) -> None:
        """Upgrade or downgrade in-process on a fresh connection of ``engine``."""
        from alembic import command

        with engine.connect() as conn:
            attrs: dict[str, Any] = {}
            if on_apply is not None:
                attrs["on_version_apply"] = on_apply
            cfg = self.config(connection=conn, **attrs)
            if direction == "upgrade":
                command.upgrade(cfg, target)
            else:
                command.downgrade(cfg, target or "base")
            # The cookbook contract: the caller owns a shared connection and commits it.
            if conn.in_transaction():
                conn.commit()

    def verify_file(self, revision: str) -> Path:
        return self.script_location / "verify" / f"{revision}.yaml"


def fmt(revs: Iterable[str]) -> str:
    revs = tuple(revs)
    return ",".join(revs) if revs else "base"
