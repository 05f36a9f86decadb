"""What a migration's SQL touches: the tables, the lock each statement takes, what it destroys.

The SQL is the offline rendering of the pending revisions (``alembic upgrade --sql``), parsed with
pglast (PostgreSQL's own parser). Tables feed the pre-flight blocker check and ``--dry-run``; the
rules that judge the statements (``runbook lint``) are in ``runbook.lint.rules`` and read the parsed
statement (``node``) and whether it runs inside a transaction from here.

A ``DROP INDEX`` names no table: its table comes from ``index_tables`` (index -> table, from the
history's ``CREATE INDEX`` statements) or from a ``CREATE INDEX`` earlier in the same SQL; an index
found in neither is listed in ``unresolved`` for the caller to look up in the database.
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
    destroys: list[str] = field(default_factory=list)  # "drops table t: its data is gone", ...
    node: Any = None  # the pglast statement, for the lint rules
    start: int = 0  # offset of the statement in the analysed SQL
    in_transaction: bool = False  # between BEGIN and COMMIT (False: an autocommit_block section)
    transaction: int = 0  # which BEGIN ... COMMIT of the SQL (0: outside any)
    unresolved: list[str] = field(default_factory=list)  # dropped indexes whose table is unknown here

    def fact(self) -> dict[str, Any]:
        return {"sql": self.sql, "kind": self.kind, "tables": self.tables, "lock": self.lock}


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


def analyze(sql: str, index_tables: dict[str, str] | None = None) -> list[Statement]:
    """Parse ``sql`` and describe every statement; raises ValueError if it does not parse.

    ``index_tables`` (index -> table) is read to map a ``DROP INDEX`` to its table, and completed
    with the indexes this SQL creates."""
    import pglast
    from pglast import ast, enums

    try:
        raws = pglast.parse_sql(sql)
    except pglast.parser.ParseError as exc:
        raise ValueError(f"cannot parse the rendered SQL: {exc}") from None
    indexes = index_tables if index_tables is not None else {}
    created: set[str] = set()
    out: list[Statement] = []
    in_tx = False
    tx = 0
    for raw in raws:
        stmt = raw.stmt
        start = raw.stmt_location or 0
        text = sql[start:start + raw.stmt_len].strip() if raw.stmt_len else sql[start:].strip()
        start += len(sql[start:]) - len(sql[start:].lstrip())
        kind = type(stmt).__name__
        if isinstance(stmt, ast.TransactionStmt):
            K = enums.TransactionStmtKind
            if stmt.kind in (K.TRANS_STMT_BEGIN, K.TRANS_STMT_START):
                in_tx, tx = True, tx + 1
            elif stmt.kind in (K.TRANS_STMT_COMMIT, K.TRANS_STMT_ROLLBACK, K.TRANS_STMT_COMMIT_PREPARED,
                               K.TRANS_STMT_PREPARE, K.TRANS_STMT_ROLLBACK_PREPARED):
                in_tx = False
            continue
        if isinstance(stmt, ast.VariableSetStmt):
            continue
        tables: list[str] = []
        for node in _walk(stmt):
            if isinstance(node, ast.RangeVar):
                name = _name(node)
                if name not in tables and name not in IGNORED_TABLES:
                    tables.append(name)
        info = Statement(text, kind, tables, node=stmt, start=start, in_transaction=in_tx,
                         transaction=tx if in_tx else 0)
        if isinstance(stmt, ast.DropStmt):
            info.lock = ACCESS_EXCLUSIVE
            names = [_strings(o) for o in stmt.objects or ()]
            if stmt.removeType == enums.ObjectType.OBJECT_INDEX:
                info.tables = []
                for index in names:
                    table = indexes.get(index)
                    if table is None:
                        info.unresolved.append(index)
                    elif table not in info.tables:
                        info.tables.append(table)
                if stmt.concurrent:
                    info.lock = SHARE_UPDATE_EXCLUSIVE
            elif stmt.removeType in (enums.ObjectType.OBJECT_TABLE, enums.ObjectType.OBJECT_VIEW,
                                     enums.ObjectType.OBJECT_MATVIEW):
                info.tables = [n for n in names if n not in IGNORED_TABLES]
                if stmt.removeType == enums.ObjectType.OBJECT_TABLE and info.tables:
                    info.destroys.append(f"drops table {', '.join(info.tables)}: its data is gone")
        elif isinstance(stmt, ast.CreateStmt):
            own = _name(stmt.relation)
            created.add(own)
            info.tables = [t for t in tables if t != own]
            info.lock = SHARE_ROW_EXCLUSIVE if info.tables else None  # foreign keys lock the referenced table
        elif isinstance(stmt, ast.IndexStmt):
            table = _name(stmt.relation)
            if stmt.idxname:
                schema = stmt.relation.schemaname if stmt.relation is not None else None
                key = f"{schema}.{stmt.idxname}" if schema and schema != "public" else stmt.idxname
                indexes[key] = table
            info.lock = SHARE_UPDATE_EXCLUSIVE if stmt.concurrent else SHARE
        elif isinstance(stmt, ast.AlterTableStmt):
            info.lock = _alter_table(stmt, info, created)
        elif isinstance(stmt, ast.RenameStmt):
            info.lock = ACCESS_EXCLUSIVE
        elif isinstance(stmt, (ast.UpdateStmt, ast.DeleteStmt, ast.InsertStmt)):
            info.lock = ROW_EXCLUSIVE
        elif isinstance(stmt, ast.TruncateStmt):
            info.lock = ACCESS_EXCLUSIVE
            info.destroys.append(f"truncates {', '.join(tables)}: its data is gone")
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
    """The strongest lock of the subcommands, and the columns an existing table loses."""
    from pglast import ast, enums

    table = _name(stmt.relation)
    lock: str | None = None
    for cmd in stmt.cmds or ():
        if not isinstance(cmd, ast.AlterTableCmd):
            continue
        lock = _stronger(lock, _subcommand_lock(cmd))
        if cmd.subtype == enums.AlterTableType.AT_DropColumn and table not in created:
            info.destroys.append(f"drops column {table}.{cmd.name}: its data is gone")
    return lock or ACCESS_EXCLUSIVE


def touched_tables(sql: str, index_tables: dict[str, str] | None = None) -> list[str]:
    """Every table the statements of ``sql`` touch (alembic_version left out)."""
    seen: list[str] = []
    for st in analyze(sql, index_tables):
        for t in st.tables:
            if t not in seen:
                seen.append(t)
    return seen
