"""What a migration's SQL touches: tables, the lock each statement takes, and dangerous operations.

The SQL is the offline rendering of the pending revisions (``alembic upgrade --sql``), parsed with
pglast (PostgreSQL's own parser). Tables feed the pre-flight blocker check; locks and warnings feed
``--dry-run``, in the spirit of squawk's rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

ACCESS_EXCLUSIVE = "ACCESS EXCLUSIVE"
SHARE = "SHARE"
SHARE_UPDATE_EXCLUSIVE = "SHARE UPDATE EXCLUSIVE"
SHARE_ROW_EXCLUSIVE = "SHARE ROW EXCLUSIVE"
ROW_EXCLUSIVE = "ROW EXCLUSIVE"
ACCESS_SHARE = "ACCESS SHARE"
IGNORED_TABLES = {"alembic_version"}


@dataclass
class Statement:
    """One statement of the rendered SQL with what it touches and the lock it takes."""

    sql: str
    kind: str
    tables: list[str] = field(default_factory=list)
    lock: str | None = None
    warnings: list[str] = field(default_factory=list)

    def fact(self) -> dict[str, Any]:
        return {"sql": self.sql, "kind": self.kind, "tables": self.tables, "lock": self.lock,
                "warnings": self.warnings}


def _walk(node: Any) -> Iterator[Any]:
    from pglast import ast

    if isinstance(node, ast.Node):
        yield node
        for name in getattr(node, "__slots__", ()):
            yield from _walk(getattr(node, name, None))
    elif isinstance(node, (list, tuple)):
        for item in node:
            yield from _walk(item)


def _name(rv: Any) -> str:
    return f"{rv.schemaname}.{rv.relname}" if rv.schemaname and rv.schemaname != "public" else rv.relname


def _strings(obj: Any) -> str:
    from pglast import ast

    parts = [str(n.sval) for n in _walk(obj) if isinstance(n, ast.String)]
    parts = [p for p in parts if p != "public"] if len(parts) > 1 else parts
    return ".".join(parts)


def analyze(sql: str) -> list[Statement]:
    """Parse ``sql`` and describe every statement; raises ValueError if it does not parse."""
    import pglast
    from pglast import ast, enums

    try:
        raws = pglast.parse_sql(sql)
    except pglast.parser.ParseError as exc:
        raise ValueError(f"cannot parse the rendered SQL: {exc}") from None
    created: set[str] = set()
    out: list[Statement] = []
    for raw in raws:
        stmt = raw.stmt
        start = raw.stmt_location or 0
        text = sql[start:start + raw.stmt_len].strip() if raw.stmt_len else sql[start:].strip()
        kind = type(stmt).__name__
        if isinstance(stmt, (ast.TransactionStmt, ast.VariableSetStmt)):
            continue
        tables: list[str] = []
        for node in _walk(stmt):
            if isinstance(node, ast.RangeVar):
                name = _name(node)
                if name not in tables and name not in IGNORED_TABLES:
                    tables.append(name)
        info = Statement(text, kind, tables)
        if isinstance(stmt, ast.DropStmt):
            if stmt.removeType in (enums.ObjectType.OBJECT_TABLE, enums.ObjectType.OBJECT_INDEX,
                                   enums.ObjectType.OBJECT_VIEW, enums.ObjectType.OBJECT_MATVIEW):
                names = [_strings(o) for o in stmt.objects or ()]
                info.tables = [n for n in names if n not in IGNORED_TABLES]
                info.lock = ACCESS_EXCLUSIVE
                if stmt.removeType == enums.ObjectType.OBJECT_TABLE:
                    info.warnings.append(f"drops table {', '.join(names)}: its data is gone")
                if stmt.removeType == enums.ObjectType.OBJECT_INDEX and stmt.concurrent:
                    info.lock = SHARE_UPDATE_EXCLUSIVE
            else:
                info.lock = ACCESS_EXCLUSIVE
        elif isinstance(stmt, ast.CreateStmt):
            own = _name(stmt.relation)
            created.add(own)
            info.tables = [t for t in tables if t != own]
            info.lock = SHARE_ROW_EXCLUSIVE if info.tables else None  # foreign keys lock the referenced table
        elif isinstance(stmt, ast.IndexStmt):
            table = _name(stmt.relation)
            info.lock = SHARE_UPDATE_EXCLUSIVE if stmt.concurrent else SHARE
            if not stmt.concurrent and table not in created:
                info.warnings.append(f"index on existing table {table} built without CONCURRENTLY: "
                                     "writes to it are blocked while it builds")
        elif isinstance(stmt, ast.AlterTableStmt):
            info.lock = _alter_table(stmt, info, created)
        elif isinstance(stmt, ast.RenameStmt):
            info.lock = ACCESS_EXCLUSIVE
            info.warnings.append("renames an object: running application code that uses the old name breaks")
        elif isinstance(stmt, (ast.UpdateStmt, ast.DeleteStmt, ast.InsertStmt)):
            info.lock = ROW_EXCLUSIVE
        elif isinstance(stmt, ast.TruncateStmt):
            info.lock = ACCESS_EXCLUSIVE
            info.warnings.append("truncates a table: its data is gone")
        elif isinstance(stmt, ast.CreateTrigStmt):
            info.lock = SHARE_ROW_EXCLUSIVE
        elif isinstance(stmt, ast.SelectStmt):
            info.lock = ACCESS_SHARE if tables else None
        elif tables:
            info.lock = ACCESS_EXCLUSIVE
        out.append(info)
    return out


_STRENGTH = [None, ACCESS_SHARE, ROW_EXCLUSIVE, SHARE_UPDATE_EXCLUSIVE, SHARE, SHARE_ROW_EXCLUSIVE,
             ACCESS_EXCLUSIVE]


def _stronger(a: str | None, b: str | None) -> str | None:
    return a if _STRENGTH.index(a) >= _STRENGTH.index(b) else b


def _subcommand_lock(cmd: Any) -> str:
    """The lock one ALTER TABLE subcommand takes (PostgreSQL's ALTER TABLE reference)."""
    from pglast import ast, enums

    names = {getattr(enums.AlterTableType, n, None) for n in (
        "AT_SetStatistics", "AT_ClusterOn", "AT_DropCluster", "AT_SetRelOptions", "AT_ResetRelOptions",
        "AT_ValidateConstraint", "AT_AttachPartition")}
    if cmd.subtype in names:
        return SHARE_UPDATE_EXCLUSIVE
    if "Trig" in cmd.subtype.name:  # ENABLE/DISABLE TRIGGER
        return SHARE_ROW_EXCLUSIVE
    if cmd.subtype == enums.AlterTableType.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint) \
            and cmd.def_.contype == enums.ConstrType.CONSTR_FOREIGN:
        return SHARE_ROW_EXCLUSIVE
    return ACCESS_EXCLUSIVE


def _alter_table(stmt: Any, info: Statement, created: set[str]) -> str:
    """The strongest lock of the subcommands, and the warnings for an existing table."""
    from pglast import ast, enums

    T = enums.AlterTableType
    C = enums.ConstrType
    table = _name(stmt.relation)
    new_table = table in created
    lock: str | None = None
    for cmd in stmt.cmds or ():
        if not isinstance(cmd, ast.AlterTableCmd):
            continue
        lock = _stronger(lock, _subcommand_lock(cmd))
        sub = cmd.subtype
        if new_table:
            continue
        if sub == T.AT_AddColumn and isinstance(cmd.def_, ast.ColumnDef):
            cons = cmd.def_.constraints or ()
            kinds = {c.contype for c in cons if isinstance(c, ast.Constraint)}
            if C.CONSTR_NOTNULL in kinds and C.CONSTR_DEFAULT not in kinds:
                info.warnings.append(f"adds NOT NULL column {table}.{cmd.def_.colname} without a default: "
                                     "fails on a table with rows")
        elif sub == T.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint):
            c = cmd.def_
            if c.contype in (C.CONSTR_CHECK, C.CONSTR_FOREIGN) and not c.skip_validation:
                info.warnings.append(
                    f"adds constraint {c.conname or ''} on {table} without NOT VALID: the whole table is "
                    f"scanned under a {_subcommand_lock(cmd)} lock (add it NOT VALID, then VALIDATE)")
            elif c.contype in (C.CONSTR_PRIMARY, C.CONSTR_UNIQUE) and not c.indexname:
                info.warnings.append(
                    f"adds constraint {c.conname or ''} on {table} by building its index under an "
                    "ACCESS EXCLUSIVE lock (CREATE UNIQUE INDEX CONCURRENTLY first, then USING INDEX)")
        elif sub == T.AT_SetNotNull:
            info.warnings.append(f"sets NOT NULL on {table}.{cmd.name}: the whole table is scanned "
                                 "under an ACCESS EXCLUSIVE lock")
        elif sub == T.AT_AlterColumnType:
            info.warnings.append(f"changes the type of {table}.{cmd.name}: may rewrite the table "
                                 "under an ACCESS EXCLUSIVE lock")
        elif sub == T.AT_DropColumn:
            info.warnings.append(f"drops column {table}.{cmd.name}: its data is gone")
    return lock or ACCESS_EXCLUSIVE


def touched_tables(sql: str) -> list[str]:
    """Every table the statements of ``sql`` touch (alembic_version left out)."""
    seen: list[str] = []
    for st in analyze(sql):
        for t in st.tables:
            if t not in seen:
                seen.append(t)
    return seen
