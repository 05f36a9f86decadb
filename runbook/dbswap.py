"""The database-level SQL of the swap restore: names, privileges, properties, the swap itself.

A swap restore (``restore.mode: swap``, orchestrated by ``steps/swap.py``) restores a backup into a
new database on the same server and renames it into place. What a new database does not get from
``pg_restore`` (which restores what is *inside* a database) is read here from the live one and
given to the new one: its owner, encoding, locale and tablespace (at ``CREATE DATABASE``), its
connection limit, its grants (``GRANT CONNECT``...), its comment, and its settings
(``ALTER DATABASE ... SET`` and ``ALTER ROLE ... IN DATABASE ... SET``, from ``pg_db_role_setting``).
Every name goes through ``psycopg.sql.Identifier`` and every value through ``sql.Literal``: a
database, role or setting read from the server is data, never SQL.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

MAX_NAME = 63  # NAMEDATALEN - 1 bytes
STAMP = re.compile(r"\d{8}T\d{6}Z")
KINDS = ("restore", "before")  # the scratch database of a restore; the database it replaced

# pg_dump's list (variable_is_guc_list_quote): settings whose value is a list of quoted names
LIST_QUOTE = {"local_preload_libraries", "search_path", "session_preload_libraries",
              "shared_preload_libraries", "temp_tablespaces", "unix_socket_directories"}


def side_prefix(db: str, kind: str) -> str:
    """``<db>__runbook_<kind>_``: the name of a side database of ``db`` without its stamp. A
    database name too long for the suffix is cut and marked with a hash of the whole name, so two
    long names sharing a beginning never share side databases."""
    suffix = f"__runbook_{kind}_"
    if len((db + suffix).encode()) + 16 <= MAX_NAME:
        return db + suffix
    digest = hashlib.sha256(db.encode()).hexdigest()[:8]
    room = MAX_NAME - 16 - len(suffix) - len(digest) - 1
    head = db.encode()[:room].decode("utf-8", "ignore")
    return f"{head}~{digest}{suffix}"


def side_name(db: str, kind: str, stamp: str) -> str:
    return side_prefix(db, kind) + stamp


# -- what the swap needs --------------------------------------------------------------------------

PRIVILEGES_SQL = """
SELECT r.rolsuper, r.rolcreatedb, r.rolcreaterole, current_user,
       pg_has_role(d.datdba, 'MEMBER') AS owns, pg_get_userbyid(d.datdba) AS owner,
       pg_has_role('pg_signal_backend', 'MEMBER') AS signals,
       (SELECT m.datname FROM pg_database m
         WHERE m.datname IN ('postgres', 'template1') AND m.datallowconn
           AND has_database_privilege(m.oid, 'CONNECT')
         ORDER BY m.datname <> 'postgres' LIMIT 1) AS maintenance,
       t.spcname = 'pg_default' OR has_tablespace_privilege(t.oid, 'CREATE') AS tablespace_ok, t.spcname,
       (SELECT array_agg(DISTINCT pg_get_userbyid(s.setrole)) FROM pg_db_role_setting s
         WHERE s.setdatabase = d.oid AND s.setrole <> 0 AND s.setrole <> r.oid) AS role_settings,
       pg_database_size(d.oid) AS size
FROM pg_roles r, pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace
WHERE r.rolname = current_user AND d.datname = current_database()
"""


@dataclass(frozen=True)
class Rights:
    """What the database user may do, as far as the swap needs it."""

    user: str
    owner: str
    maintenance: str | None  # a database to run the swap from: postgres, else template1
    size: int
    missing: tuple[str, ...] = ()  # one phrase per missing right, with the grant that gives it


def rights(conn: Any, db: str) -> Rights:
    """One query: what is missing for a swap restore of ``db`` (the session's database)."""
    row = conn.execute(PRIVILEGES_SQL).fetchone()
    (superuser, createdb, createrole, user, owns, owner, signals, maintenance, tablespace_ok, spcname,
     role_settings, size) = row
    missing: list[str] = []
    u = sql.Identifier(user).as_string(conn)
    if not (superuser or createdb):
        missing.append(f"CREATEDB, to create the new database and rename both (ALTER ROLE {u} CREATEDB)")
    if not (superuser or owns):
        missing.append(f"ownership of {db} (owned by {owner}), to rename it: GRANT "
                       f"{sql.Identifier(owner).as_string(conn)} TO {u}")
    if not (superuser or signals):
        missing.append(f"the right to end other roles' sessions at the swap (GRANT pg_signal_backend TO {u})")
    if not maintenance:
        missing.append("CONNECT on the postgres (or template1) database, to run the rename from "
                       f"outside {db} (GRANT CONNECT ON DATABASE postgres TO {u})")
    if not tablespace_ok:
        missing.append(f"CREATE on tablespace {spcname}")
    if role_settings and not (superuser or createrole):
        missing.append(f"CREATEROLE, to carry over the settings of role(s) {', '.join(role_settings)} "
                       f"in {db} (ALTER ROLE ... IN DATABASE ... SET)")
    return Rights(str(user), str(owner), maintenance, int(size or 0), tuple(missing))


# -- the live database's properties ---------------------------------------------------------------

PROPERTIES_SQL = """
SELECT to_jsonb(d) - 'datacl' AS props, pg_get_userbyid(d.datdba) AS owner,
       pg_encoding_to_char(d.encoding) AS encoding, t.spcname AS tablespace,
       shobj_description(d.oid, 'pg_database') AS comment, d.datacl IS NULL AS default_acl,
       (SELECT json_agg(json_build_object(
                  'grantee', CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END,
                  'privilege', a.privilege_type, 'grantable', a.is_grantable))
          FROM aclexplode(d.datacl) a) AS acl,
       (SELECT json_agg(json_build_object(
                  'role', CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole) END,
                  'config', s.setconfig))
          FROM pg_db_role_setting s WHERE s.setdatabase = d.oid) AS settings
FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace
WHERE d.datname = current_database()
"""


@dataclass(frozen=True)
class Properties:
    """A database's own properties (those pg_dump writes only with ``--create``)."""

    owner: str
    encoding: str
    tablespace: str
    props: dict[str, Any]
    comment: str | None = None
    default_acl: bool = True
    acl: list[dict[str, Any]] = field(default_factory=list)
    settings: list[dict[str, Any]] = field(default_factory=list)


def properties(conn: Any) -> Properties:
    row = conn.execute(PROPERTIES_SQL).fetchone()
    props, owner, encoding, tablespace, comment, default_acl, acl, settings = row
    return Properties(owner, encoding, tablespace, dict(props), comment, bool(default_acl),
                      list(acl or []), list(settings or []))


DATABASE_PRIVILEGES = {"CREATE", "TEMPORARY", "CONNECT"}
_PROVIDERS = {"c": "libc", "i": "icu", "b": "builtin"}


def create_sql(p: Properties, name: str) -> sql.Composed:
    """``CREATE DATABASE name`` like the live one: owner, encoding, locale, tablespace, limit."""
    opts: list[sql.Composable] = [
        sql.SQL("OWNER = {}").format(sql.Identifier(p.owner)),
        sql.SQL("TEMPLATE = template0"),
        sql.SQL("ENCODING = {}").format(sql.Literal(p.encoding)),
        sql.SQL("LC_COLLATE = {}").format(sql.Literal(p.props["datcollate"])),
        sql.SQL("LC_CTYPE = {}").format(sql.Literal(p.props["datctype"])),
        sql.SQL("CONNECTION LIMIT = {}").format(sql.Literal(int(p.props.get("datconnlimit", -1)))),
    ]
    if p.tablespace != "pg_default":  # named, even pg_default needs CREATE on it
        opts.append(sql.SQL("TABLESPACE = {}").format(sql.Identifier(p.tablespace)))
    provider = _PROVIDERS.get(str(p.props.get("datlocprovider") or "c"), "libc")
    if "datlocprovider" in p.props:  # PostgreSQL 15+
        opts.append(sql.SQL("LOCALE_PROVIDER = {}").format(sql.SQL(provider)))
    locale = p.props.get("daticulocale") or p.props.get("datlocale")  # 15-16 / 17+
    if provider == "icu" and locale:
        opts.append(sql.SQL("ICU_LOCALE = {}").format(sql.Literal(locale)))
    if provider == "icu" and p.props.get("daticurules"):
        opts.append(sql.SQL("ICU_RULES = {}").format(sql.Literal(p.props["daticurules"])))
    if provider == "builtin" and locale:
        opts.append(sql.SQL("BUILTIN_LOCALE = {}").format(sql.Literal(locale)))
    return sql.SQL("CREATE DATABASE {} WITH ").format(sql.Identifier(name)) + sql.SQL(" ").join(opts)


def split_guc_list(value: str) -> list[str]:
    """A list setting as PostgreSQL stores it (``"$user", public``) -> its elements (pg_dump's
    SplitGUCList: double-quoted elements with ``""`` for a quote, or bare words)."""
    items: list[str] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i].isspace():
            i += 1
        if i >= n:
            break
        if value[i] == '"':
            i += 1
            word = []
            while i < n:
                if value[i] == '"':
                    if i + 1 < n and value[i + 1] == '"':
                        word.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                word.append(value[i])
                i += 1
            items.append("".join(word))
        else:
            start = i
            while i < n and value[i] != "," and not value[i].isspace():
                i += 1
            items.append(value[start:i])
        while i < n and value[i].isspace():
            i += 1
        if i < n and value[i] == ",":
            i += 1
    return items


def _set(target: sql.Composable, entry: str) -> sql.Composed:
    name, _, value = entry.partition("=")
    if name.lower() in LIST_QUOTE:
        values: list[sql.Composable] = [sql.Literal(v) for v in split_guc_list(value)] or [sql.Literal("")]
    else:
        values = [sql.Literal(value)]
    return target + sql.SQL(" SET {} TO ").format(sql.Identifier(name)) + sql.SQL(", ").join(values)


def carry_over_sql(p: Properties, name: str) -> list[sql.Composed]:
    """What ``name`` (a new database) needs to become like the live one: grants, comment,
    database and role-in-database settings. Run after the restore, whose sessions must not get
    the settings (a ``default_transaction_read_only``, a ``statement_timeout``)."""
    db = sql.Identifier(name)
    out: list[sql.Composed] = []
    if not p.default_acl:  # explicit grants: exactly those (the defaults first taken away)
        out.append(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db))
        out.append(sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(db, sql.Identifier(p.owner)))
        for a in p.acl:
            if a["privilege"] not in DATABASE_PRIVILEGES:
                raise ValueError(f"unknown database privilege {a['privilege']!r}")
            grantee = sql.SQL("PUBLIC") if a["grantee"] is None else sql.Identifier(a["grantee"])
            out.append(sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                sql.SQL(a["privilege"]), db, grantee, sql.SQL(" WITH GRANT OPTION" if a["grantable"] else "")))
    if p.comment is not None:
        out.append(sql.SQL("COMMENT ON DATABASE {} IS {}").format(db, sql.Literal(p.comment)))
    for s in p.settings:
        target = (sql.SQL("ALTER DATABASE {}").format(db) if s["role"] is None else
                  sql.SQL("ALTER ROLE {} IN DATABASE {}").format(sql.Identifier(s["role"]), db))
        out.extend(_set(target, entry) for entry in s["config"] or [])
    return out


# -- the swap -------------------------------------------------------------------------------------

def swap_sql(db: str, scratch: str, before: str) -> sql.Composed:
    """One statement string, one implicit transaction, one round trip: end every client session of
    ``db`` and ``scratch`` (the application's, and runbook's own), wait (5 ms steps, 1 s at most) for
    them to exit, rename ``db`` to ``before`` and ``scratch`` to ``db``. The first rename locks
    ``db``: a session connecting meanwhile waits, then fails and reconnects to the new ``db``. The
    rename itself waits for sessions of ``db`` to exit, but looks again only every 100 ms: hence the
    shorter wait before it. Any error (a session it could not end, one that connected in between)
    rolls both renames back."""
    names = sql.SQL("{}, {}").format(sql.Literal(db), sql.Literal(scratch))
    others = sql.SQL("SELECT FROM pg_stat_activity WHERE datname IN ({}) AND pid <> pg_backend_pid() "
                     "AND backend_type = 'client backend'").format(names)
    wait = sql.SQL("BEGIN FOR i IN 1..200 LOOP PERFORM pg_stat_clear_snapshot(); EXIT WHEN NOT EXISTS ({}); "
                   "PERFORM pg_sleep(0.005); END LOOP; END").format(others)
    return sql.SQL(
        "SELECT pid, usename, application_name, client_addr::text, state, left(query, 200), "
        "datname, pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname IN ({names}) AND pid <> pg_backend_pid() AND backend_type = 'client backend'; "
        "DO {wait}; "
        "ALTER DATABASE {db} RENAME TO {before}; "
        "ALTER DATABASE {scratch} RENAME TO {db}").format(
        names=names, wait=sql.Literal(wait.as_string(None)), db=sql.Identifier(db), before=sql.Identifier(before),
        scratch=sql.Identifier(scratch))


def drop_sql(name: str, *, force: bool) -> sql.Composed:
    return sql.SQL("DROP DATABASE IF EXISTS {}{}").format(
        sql.Identifier(name), sql.SQL(" WITH (FORCE)" if force else ""))


SIDE_SQL = """
SELECT datname, CASE WHEN has_database_privilege(oid, 'CONNECT') THEN pg_database_size(oid) END
FROM pg_database WHERE starts_with(datname, %(restore)s) OR starts_with(datname, %(before)s)
ORDER BY datname
"""


def side_params(db: str) -> dict[str, str]:
    return {"restore": side_prefix(db, "restore"), "before": side_prefix(db, "before")}


def side_databases(rows: list[Any], db: str) -> list[dict[str, Any]]:
    """The rows of ``SIDE_SQL`` that are side databases of ``db``: kind, name, stamp, size."""
    out = []
    for name, size in rows:
        for kind in KINDS:
            prefix = side_prefix(db, kind)
            if name.startswith(prefix) and STAMP.fullmatch(name[len(prefix):]):
                out.append({"kind": kind, "name": name, "stamp": name[len(prefix):], "size": size})
    return out


def side_of(conn: Any, db: str) -> list[dict[str, Any]]:
    return side_databases(conn.execute(SIDE_SQL, side_params(db)).fetchall(), db)
