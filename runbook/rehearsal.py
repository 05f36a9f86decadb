"""The scratch database of a rehearsal: made beside production, reached like it, always dropped.

A rehearsal (``steps/rehearse.py``) restores a backup of production into a database of its own on the
same server, ``<db>__runbook_rehearse_<run id>``, made with ``CREATE DATABASE`` through the run's
session (the database user needs CREATEDB: checked before anything), from ``template0`` with
production's encoding and locale, so that sorting, ``lower()`` and unique indexes behave as they do
in production. It is reached through the run's own tunnel (``Endpoint.with_db``), and its database
name in ``COMMENT ON DATABASE`` says whose copy it is and which run made it.

It is dropped when the rehearsal ends, however it ends (``DROP DATABASE ... WITH (FORCE)``, shielded
from signals). One a killed run left (SIGKILL, a lost machine) is dropped by the next run: the one
that finds that run dead in the journal (``cleanup.py``), and every rehearsal before it starts (any
scratch database of this production database but its own: a rehearsal holds production's run lock
for its whole life, so while one holds it no other can be at work).
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import replace
from typing import Any, Iterator, cast

from psycopg import sql

from .journal import RUN_ID

SUFFIX = "__runbook_rehearse_"
NAME_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1: a longer name is silently truncated by the server
RUN_ID_LEN = 23  # 20261201T194109Z-0af705
PREFIX_BYTES = NAME_BYTES - len(SUFFIX) - RUN_ID_LEN


def scratch_name(db: str, run_id: str) -> str:
    """``<db>__runbook_rehearse_<run id>``, the database's name cut (at a character) to fit 63 bytes."""
    prefix = db.encode("utf-8")[:PREFIX_BYTES].decode("utf-8", "ignore")
    return f"{prefix}{SUFFIX}{run_id}"


def run_of(name: str, db: str) -> str | None:
    """The run id in a scratch database's name, if it is one of ``db``'s; None otherwise."""
    prefix = scratch_name(db, "")
    if not name.startswith(prefix):
        return None
    run_id = name[len(prefix):]
    return run_id if RUN_ID.fullmatch(run_id) else None


# -- privileges ---------------------------------------------------------------------------------

PRIVILEGE_SQL = "SELECT rolcreatedb OR rolsuper, current_user::text FROM pg_roles WHERE rolname = current_user"


def can_create_databases(conn: Any) -> tuple[bool, str]:
    """(whether the session's user may CREATE DATABASE, its name). CREATEDB is a role attribute:
    never inherited from a role it is a member of, so the user itself must have it."""
    row = conn.execute(PRIVILEGE_SQL).fetchone()
    return (bool(row[0]), str(row[1])) if row else (False, "?")


def grant_hint(conn: Any, user: str) -> str:
    return f"as a superuser: ALTER ROLE {sql.Identifier(user).as_string(conn)} CREATEDB"


# -- creating and dropping ----------------------------------------------------------------------

# Production's own encoding and locale (the provider's columns differ between versions: read as JSON)
DATABASE_SQL = """
SELECT pg_encoding_to_char(d.encoding), d.datcollate, d.datctype,
       to_jsonb(d) ->> 'datlocprovider',
       coalesce(to_jsonb(d) ->> 'datlocale', to_jsonb(d) ->> 'daticulocale')
FROM pg_database d WHERE d.datname = current_database()
"""


def create(conn: Any, name: str, *, of: str, run_id: str) -> None:
    """``CREATE DATABASE name`` like production's (``conn`` is on production, autocommit)."""
    row = conn.execute(DATABASE_SQL).fetchone()
    encoding, collate, ctype, provider, locale = row
    parts = [sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
        sql.Identifier(name), sql.Literal(encoding), sql.Literal(collate), sql.Literal(ctype))]
    if provider == "i" and locale:
        parts.append(sql.SQL("LOCALE_PROVIDER icu ICU_LOCALE {}").format(sql.Literal(locale)))
    elif provider == "b" and locale:
        parts.append(sql.SQL("LOCALE_PROVIDER builtin BUILTIN_LOCALE {}").format(sql.Literal(locale)))
    conn.execute(sql.SQL(" ").join(parts))
    note = json.dumps({"runbook": "rehearsal", "of": of, "run_id": run_id})
    conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(note)))


def drop(conn: Any, name: str) -> None:
    """Drop ``name`` if it exists, ending the sessions still on it (its own, or a dead run's)."""
    ident = sql.Identifier(name)
    if conn.info.server_version >= 130000:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        return
    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(ident))


LEFTOVERS_SQL = """
SELECT d.datname, shobj_description(d.oid, 'pg_database') FROM pg_database d
WHERE left(d.datname, length(%(prefix)s)) = %(prefix)s AND pg_get_userbyid(d.datdba) = current_user
"""


def leftovers(conn: Any, db: str, *, keep: str | None = None, run_id: str | None = None) -> list[str]:
    """Scratch databases of ``db`` this user owns (all of them, or those of run ``run_id``), but
    ``keep``. One whose comment names another database (a name cut alike) is not ``db``'s."""
    found = []
    for name, comment in conn.execute(LEFTOVERS_SQL, {"prefix": scratch_name(db, "")}).fetchall():
        owner = run_of(name, db)
        if owner is None or name == keep or (run_id is not None and owner != run_id):
            continue
        try:
            note = json.loads(comment) if comment else {}
        except ValueError:
            note = {}
        if isinstance(note, dict) and note.get("of") not in (None, db):
            continue
        found.append(str(name))
    return found


def drop_leftovers(conn: Any, db: str, *, keep: str | None = None, run_id: str | None = None) -> list[str]:
    """Drop what ``leftovers`` finds; returns the names dropped."""
    names = leftovers(conn, db, keep=keep, run_id=run_id)
    for name in names:
        drop(conn, name)
    return names


# -- comparing schemas --------------------------------------------------------------------------

# Lines of a schema dump that differ between two dumps of the same schema: comments, session
# settings, and the random key of pg_dump 15.14+'s \restrict / \unrestrict lines.
_NOISE = re.compile(r"^(--|SET |SELECT pg_catalog\.set_config|\\restrict|\\unrestrict)")
DIFF_LINES = 60


def comparable(dump: str) -> list[str]:
    """A schema-only dump as lines that are equal for equal schemas."""
    lines = [ln.rstrip() for ln in dump.splitlines() if not _NOISE.match(ln)]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):  # runs of blank lines as one
            out.append(line)
    while out and not out[-1]:
        out.pop()
    while out and not out[0]:
        out.pop(0)
    return out


def schema_diff(before: list[str], after: list[str], *, labels: tuple[str, str]) -> list[str]:
    """A unified diff (2 lines of context), empty when the schemas are equal."""
    import difflib

    return list(difflib.unified_diff(before, after, fromfile=labels[0], tofile=labels[1], n=2, lineterm=""))


def trimmed(diff: list[str], limit: int = DIFF_LINES) -> str:
    shown = diff[:limit]
    more = len(diff) - len(shown)
    return "\n".join(shown) + (f"\n... ({more} more lines)" if more > 0 else "")


def changed_lines(diff: list[str], limit: int = 6) -> str:
    """The first added/removed lines of a diff, for a one-line message."""
    picked = [ln[0] + " ".join(ln[1:].split()) for ln in diff
              if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
    text = "; ".join(picked[:limit])
    return text + (f"; ... ({len(picked) - limit} more)" if len(picked) > limit else "")


# -- what the steps see of the scratch database --------------------------------------------------

class ScratchSession:
    """A ``HostSession`` seen through the scratch database: the host's transport and tunnel, the
    scratch database's endpoint and a session of its own on it. No connection is opened ahead, no
    run lock is checked: production's stays with the run."""

    def __init__(self, base: Any, name: str) -> None:
        self.base = base
        self.run_id = base.run_id
        self.host = base.host
        self.database = replace(base.database, name=name)
        self.endpoint = base.endpoint.with_db(name)
        self.step_revisions: tuple[str, ...] | None = None
        self._conn: Any = None

    @property
    def transport(self) -> Any:
        return self.base.transport

    @property
    def pg_bin(self) -> str | None:
        return cast("str | None", self.base.pg_bin)

    @contextlib.contextmanager
    def db(self, name: str) -> Iterator[Any]:
        """The rehearsal's own session on the scratch database (autocommit, kept until ``close``)."""
        import psycopg

        from . import postgres

        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            conn = self._conn = postgres.connect(self.endpoint, purpose=f"rehearse {self.run_id}")
        try:
            yield conn
        except psycopg.OperationalError:
            self.close()
            raise
        if conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            self.close()

    def prepare_engine(self, purpose: str, settings: dict[str, str]) -> None:
        """Nothing opened ahead for the scratch database."""

    def take_engine(self, purpose: str, settings: dict[str, str]) -> Any | None:
        return None

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None


class ScratchJournal:
    """What the steps record while they run on the scratch database stays with the rehearsal: the
    real run's host record (its ``invalid_indexes_before``, for one) is production's alone."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.hosts: dict[str, dict[str, Any]] = {}

    def host(self, name: str) -> dict[str, Any]:
        return self.hosts.setdefault(name, {})

    def save(self) -> None:
        """Nothing to write: the rehearsal records its phases in the real journal itself."""


def scratch_context(ctx: Any, session: ScratchSession) -> Any:
    """A step context on the scratch database: same run, host, options and migrations; facts,
    backups and journal of its own, so nothing it does counts as a change of production."""
    from .context import Context

    scratch: Context = replace(ctx, session=session, journal=cast(Any, ScratchJournal(ctx.run_id)),
                               facts={}, backup=None, backups=[], last_read=None, start=())
    return scratch
