"""The lint rules: stable names, a level, one line of why and the safe way; the statement checks.

Names follow squawk's PostgreSQL migration rules where one exists (so a team that knows squawk
knows them); the rules only an Alembic tool can see (revisions, runbook's one transaction) have
names of their own. Levels say what a finding does to a run:

- ``error``: the revision fails at run time as runbook runs it, destroys data, or rewrites or
  rebuilds a whole existing table while holding ACCESS EXCLUSIVE (nothing reads or writes it
  meanwhile, however long that takes). ``migrate`` refuses such a revision unless accepted.
- ``warning``: it scans an existing table under a strong lock, blocks writes while an index
  builds, or breaks the application code still running: fine on a small table or in a window,
  worth a look on a big one.
- ``info``: advice. The ``prefer-*`` style rules are opt-in (``enable`` in the settings).

The checks read one parsed statement (``sqlscan.Statement.node``, pglast's AST) and whether its
table is new (created earlier in the same scope, so empty and unseen by the application).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

ERROR, WARNING, INFO = "error", "warning", "info"
LEVELS = (INFO, WARNING, ERROR)  # in rising order


@dataclass(frozen=True)
class Rule:
    name: str
    level: str
    why: str
    safe: str
    opt_in: bool = False


_RULES = [
    # -- statements: squawk's names -----------------------------------------------------------
    Rule("adding-field-with-default", ERROR,
         "a volatile DEFAULT (random(), gen_random_uuid(), clock_timestamp(), ...) or a stored "
         "generated column rewrites the whole table under ACCESS EXCLUSIVE",
         "add the column without the default (or with a constant one), backfill it in batches in "
         "later runs, then SET DEFAULT"),
    Rule("adding-foreign-key-constraint", WARNING,
         "a foreign key checks every row while holding SHARE ROW EXCLUSIVE on both tables (writes "
         "blocked); an inline REFERENCES on ADD COLUMN cannot be NOT VALID",
         "add the column without REFERENCES, then ADD CONSTRAINT ... FOREIGN KEY ... NOT VALID; "
         "VALIDATE CONSTRAINT in a later run (or inside op.get_context().autocommit_block())"),
    Rule("adding-not-nullable-field", WARNING,
         "SET NOT NULL scans the whole table under ACCESS EXCLUSIVE (reads and writes blocked)",
         "ADD CONSTRAINT ... CHECK (col IS NOT NULL) NOT VALID; VALIDATE it in a later run; then "
         "SET NOT NULL (PostgreSQL 12+ uses the valid check, no scan) and drop the check"),
    Rule("adding-required-field", ERROR,
         "a NOT NULL column without a DEFAULT fails on a table that has rows",
         "add it nullable (or with a constant DEFAULT), backfill, then SET NOT NULL"),
    Rule("adding-serial-primary-key-field", ERROR,
         "a serial or identity column fills every row (table rewrite), and ADD PRIMARY KEY builds "
         "its index, both under ACCESS EXCLUSIVE",
         "CREATE UNIQUE INDEX CONCURRENTLY (in an autocommit_block), then ADD CONSTRAINT ... "
         "PRIMARY KEY USING INDEX; fill a new key column in batches"),
    Rule("ban-drop-column", ERROR,
         "the column's data is gone once the run succeeds, and running code that selects it fails",
         "stop using the column in the application first (a release before), then drop it; keep "
         "the backup; accept it by name once that is done"),
    Rule("ban-drop-table", ERROR,
         "the table's data is gone once the run succeeds, and running code that uses it fails",
         "stop using the table in the application first (a release before), then drop it; keep "
         "the backup; accept it by name once that is done"),
    Rule("changing-column-type", ERROR,
         "most type changes rewrite the table and its indexes under ACCESS EXCLUSIVE",
         "add a new column, backfill it in batches, switch the application, drop the old one "
         "(varchar(n) -> text or a longer varchar is safe: ignore it in that revision)"),
    Rule("constraint-missing-not-valid", WARNING,
         "adding a CHECK constraint scans the whole table under ACCESS EXCLUSIVE",
         "ADD CONSTRAINT ... NOT VALID here, VALIDATE CONSTRAINT in a later run (or inside "
         "op.get_context().autocommit_block()): in one transaction NOT VALID gains nothing"),
    Rule("disallowed-unique-constraint", ERROR,
         "ADD CONSTRAINT ... UNIQUE builds its index under ACCESS EXCLUSIVE (reads and writes "
         "blocked for the whole build)",
         "CREATE UNIQUE INDEX CONCURRENTLY (in an autocommit_block), then ADD CONSTRAINT ... "
         "UNIQUE USING INDEX"),
    Rule("renaming-column", WARNING,
         "the application code still running uses the old name and fails",
         "add the new column, write both, switch the application, drop the old one; or rename "
         "in a window with the application stopped"),
    Rule("renaming-table", WARNING,
         "the application code still running uses the old name and fails",
         "create a view under the old name until the application uses the new one; or rename in "
         "a window with the application stopped"),
    Rule("require-concurrent-index-creation", WARNING,
         "CREATE INDEX without CONCURRENTLY blocks writes to the table while it builds",
         "with op.get_context().autocommit_block(): op.create_index(..., "
         "postgresql_concurrently=True); runbook gives it locks.concurrently_timeout"),
    Rule("require-concurrent-index-deletion", WARNING,
         "DROP INDEX without CONCURRENTLY takes ACCESS EXCLUSIVE on the table (it queues behind "
         "every query and blocks them all)",
         "with op.get_context().autocommit_block(): op.drop_index(..., "
         "postgresql_concurrently=True)"),
    Rule("ban-concurrent-index-creation-in-transaction", ERROR,
         "CREATE/DROP INDEX CONCURRENTLY cannot run inside a transaction block: the upgrade fails "
         "at run time",
         "run it inside with op.get_context().autocommit_block(): (runbook gives it "
         "locks.concurrently_timeout)"),
    Rule("prefer-robust-stmts", INFO,
         "outside the transaction (an autocommit_block) a statement that failed half-way or is "
         "run again meets what the first try left",
         "IF NOT EXISTS / IF EXISTS on statements in an autocommit_block"),
    Rule("truncating-table", WARNING,
         "TRUNCATE takes ACCESS EXCLUSIVE and the table's data is gone once the run succeeds",
         "delete what must go in batches, or accept it by name when the data is disposable"),
    Rule("prefer-bigint-over-int", INFO, "a 32-bit (or 16-bit) integer key runs out",
         "bigint (changing it later rewrites the table)", opt_in=True),
    Rule("prefer-identity", INFO, "serial types make ownership, permissions and dumps awkward",
         "bigint GENERATED BY DEFAULT AS IDENTITY", opt_in=True),
    Rule("prefer-text-field", INFO,
         "changing a varchar(n) limit later takes ACCESS EXCLUSIVE (a shorter one rewrites)",
         "text with a CHECK (length(col) <= n) constraint", opt_in=True),
    Rule("prefer-timestamp-tz", INFO, "timestamp without time zone loses the zone of what it stores",
         "timestamptz (sa.DateTime(timezone=True))", opt_in=True),
    # -- what only runbook (an Alembic tool) sees ------------------------------------------------
    Rule("not-valid-validate-same-transaction", WARNING,
         "NOT VALID then VALIDATE in the same transaction holds the ADD's lock through the "
         "validation scan: it gains nothing (runbook runs the whole upgrade in one transaction)",
         "VALIDATE in a later run (runbook ENV migrate --to the revision before it, then migrate), "
         "or inside op.get_context().autocommit_block()"),
    Rule("data-migration-with-ddl", WARNING,
         "a data change (UPDATE, DELETE, INSERT ... SELECT) in the same transaction as DDL keeps "
         "the DDL's lock and the rows' locks until the whole upgrade commits",
         "a data migration on a big table gets a revision of its own, migrated in a separate run "
         "(or batched inside op.get_context().autocommit_block())"),
    Rule("missing-downgrade", WARNING,
         "a revision without a downgrade (missing, empty, raising) cannot be undone: a failed run "
         "after it restores the whole backup instead",
         "write its downgrade(); declare irreversible = True only when nothing can undo it"),
    Rule("missing-verification-file", WARNING,
         "without <script_location>/verify/<rev>.yaml a run checks nothing of this revision",
         "runbook revision creates it; add the checks that hold once the revision is applied"),
    Rule("multiple-heads", ERROR,
         "the history has several heads: 'migrate' (to head) refuses to run",
         "alembic merge heads (a merge revision), or rebase the new revision on the current head"),
    Rule("unrenderable-revision", WARNING,
         "the revision cannot be rendered offline (it needs a live connection): neither lint nor "
         "the lock pre-flight can see its SQL",
         "use op.execute() with SQL, or keep the data migration that needs a connection small and "
         "alone in its revision"),
]
RULES: dict[str, Rule] = {r.name: r for r in _RULES}


@dataclass
class Hit:
    """One rule firing on one statement: the specific message and the names to find its line by."""

    rule: str
    message: str
    names: tuple[Any, ...] = ()  # str, or None where the statement has no such name


STABLE_FUNCTIONS = frozenset({
    "now", "statement_timestamp", "transaction_timestamp", "current_timestamp", "current_date",
    "localtimestamp", "current_setting", "lower", "upper", "btrim", "trim", "to_jsonb", "jsonb_build_object",
    "jsonb_build_array", "json_build_object", "array", "concat", "coalesce", "length", "abs", "timezone",
    "make_interval", "to_timestamp", "date_trunc", "replace", "substring", "nullif",
})
VOLATILE_FUNCTIONS = frozenset({"random", "gen_random_uuid", "uuid_generate_v1", "uuid_generate_v4",
                                "clock_timestamp", "timeofday", "nextval", "txid_current", "uuidv7"})
SERIAL_TYPES = frozenset({"serial", "bigserial", "smallserial", "serial2", "serial4", "serial8"})


def _walk(node: Any) -> Iterator[Any]:
    from ..sqlscan import _walk as walk

    return walk(node)


def _type(column: Any) -> tuple[str, Any]:
    """The last part of a column's type name (``int4``, ``varchar``, ``serial``) and its typmods."""
    tn = column.typeName
    names = [str(n.sval) for n in (tn.names or ()) if hasattr(n, "sval")] if tn is not None else []
    return (names[-1].lower() if names else ""), (tn.typmods if tn is not None else None)


def default_problem(expr: Any) -> str | None:
    """Why a column DEFAULT rewrites the table (a volatile function), or None if it does not."""
    from pglast import ast

    for node in _walk(expr):
        if isinstance(node, ast.FuncCall):
            name = str(node.funcname[-1].sval).lower() if node.funcname else ""
            if name in VOLATILE_FUNCTIONS:
                return f"DEFAULT {name}() is volatile"
            if name not in STABLE_FUNCTIONS:
                return f"DEFAULT {name}() may be volatile"
    return None


def statement_hits(st: Any, is_new: Callable[[str], bool]) -> list[Hit]:
    """The rules one statement breaks (``is_new(table)``: created earlier in the same scope)."""
    from pglast import ast

    node = st.node
    hits: list[Hit] = []
    if isinstance(node, ast.AlterTableStmt) and node.relation is not None:
        from ..sqlscan import _name

        table = _name(node.relation)
        if not is_new(table):
            for cmd in node.cmds or ():
                if isinstance(cmd, ast.AlterTableCmd):
                    hits.extend(_alter(table, cmd))
        for cmd in node.cmds or ():  # style rules: new tables too
            if isinstance(cmd, ast.AlterTableCmd) and isinstance(cmd.def_, ast.ColumnDef):
                hits.extend(_style(table, cmd.def_))
    elif isinstance(node, ast.CreateStmt):
        from ..sqlscan import _name

        table = _name(node.relation)
        for elt in node.tableElts or ():
            if isinstance(elt, ast.ColumnDef):
                hits.extend(_style(table, elt))
    elif isinstance(node, ast.IndexStmt):
        hits.extend(_index(st, node, is_new))
    elif isinstance(node, ast.DropStmt):
        hits.extend(_drop(st, node, is_new))
    elif isinstance(node, ast.RenameStmt):
        hits.extend(_rename(node, is_new))
    elif isinstance(node, ast.TruncateStmt):
        tables = [t for t in st.tables if not is_new(t)]
        if tables:
            hits.append(Hit("truncating-table", f"truncates {', '.join(tables)}: its data is gone", tuple(tables)))
    elif isinstance(node, ast.ReindexStmt) and st.in_transaction and _concurrent_reindex(node):
        hits.append(Hit("ban-concurrent-index-creation-in-transaction",
                        "REINDEX CONCURRENTLY inside the transaction: fails at run time"))
    return hits


def _alter(table: str, cmd: Any) -> Iterator[Hit]:
    from pglast import ast, enums

    T, C = enums.AlterTableType, enums.ConstrType
    sub = cmd.subtype
    if sub == T.AT_AddColumn and isinstance(cmd.def_, ast.ColumnDef):
        col = cmd.def_
        where = f"{table}.{col.colname}"
        names = (col.colname, table)
        cons = [c for c in col.constraints or () if isinstance(c, ast.Constraint)]
        kinds = {c.contype for c in cons}
        type_name, _ = _type(col)
        if C.CONSTR_NOTNULL in kinds and C.CONSTR_DEFAULT not in kinds and C.CONSTR_IDENTITY not in kinds \
                and C.CONSTR_GENERATED not in kinds and type_name not in SERIAL_TYPES:
            yield Hit("adding-required-field", f"adds NOT NULL column {where} without a default: "
                      "fails on a table with rows", names)
        for c in cons:
            if c.contype == C.CONSTR_DEFAULT:
                why = default_problem(c.raw_expr)
                if why:
                    yield Hit("adding-field-with-default", f"adds column {where} with {why}: the whole "
                              "table is rewritten under ACCESS EXCLUSIVE", names)
            elif c.contype == C.CONSTR_GENERATED:
                yield Hit("adding-field-with-default", f"adds stored generated column {where}: the whole "
                          "table is rewritten under ACCESS EXCLUSIVE", names)
            elif c.contype == C.CONSTR_FOREIGN:
                target = c.pktable.relname if c.pktable is not None else "?"
                yield Hit("adding-foreign-key-constraint", f"adds column {where} with an inline REFERENCES "
                          f"{target}: SHARE ROW EXCLUSIVE on both tables, and it cannot be NOT VALID", names)
            elif c.contype == C.CONSTR_PRIMARY:
                yield Hit("adding-serial-primary-key-field", f"adds column {where} with an inline PRIMARY "
                          "KEY: its index is built under ACCESS EXCLUSIVE", names)
            elif c.contype == C.CONSTR_UNIQUE:
                yield Hit("disallowed-unique-constraint", f"adds column {where} with an inline UNIQUE: its "
                          "index is built under ACCESS EXCLUSIVE", names)
        if type_name in SERIAL_TYPES or C.CONSTR_IDENTITY in kinds:
            what = type_name if type_name in SERIAL_TYPES else "identity"
            yield Hit("adding-serial-primary-key-field", f"adds {what} column {where}: every row is filled "
                      "(the table is rewritten) under ACCESS EXCLUSIVE", names)
    elif sub == T.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint):
        c = cmd.def_
        names = (c.conname or "", table)
        label = f"constraint {c.conname} on {table}" if c.conname else f"a constraint on {table}"
        if c.contype == C.CONSTR_FOREIGN and not c.skip_validation:
            yield Hit("adding-foreign-key-constraint", f"adds foreign key {label} without NOT VALID: every "
                      "row is checked under SHARE ROW EXCLUSIVE on both tables", names)
        elif c.contype == C.CONSTR_CHECK and not c.skip_validation:
            yield Hit("constraint-missing-not-valid", f"adds {label} without NOT VALID: the whole table is "
                      "scanned under ACCESS EXCLUSIVE", names)
        elif c.contype == C.CONSTR_UNIQUE and not c.indexname:
            yield Hit("disallowed-unique-constraint", f"adds unique {label} by building its index under "
                      "ACCESS EXCLUSIVE", names)
        elif c.contype == C.CONSTR_PRIMARY and not c.indexname:
            yield Hit("adding-serial-primary-key-field", f"adds primary key {label} by building its index "
                      "under ACCESS EXCLUSIVE", names)
    elif sub == T.AT_SetNotNull:
        yield Hit("adding-not-nullable-field", f"sets NOT NULL on {table}.{cmd.name}: the whole table is "
                  "scanned under ACCESS EXCLUSIVE", (cmd.name, table))
    elif sub == T.AT_AlterColumnType:
        yield Hit("changing-column-type", f"changes the type of {table}.{cmd.name}: may rewrite the table "
                  "under ACCESS EXCLUSIVE", (cmd.name, table))
    elif sub == T.AT_DropColumn:
        yield Hit("ban-drop-column", f"drops column {table}.{cmd.name}: its data is gone", (cmd.name, table))


def _index(st: Any, node: Any, is_new: Callable[[str], bool]) -> Iterator[Hit]:
    from ..sqlscan import _name

    table = _name(node.relation)
    names = (node.idxname or "", table)
    if node.concurrent and st.in_transaction:
        yield Hit("ban-concurrent-index-creation-in-transaction",
                  f"CREATE INDEX CONCURRENTLY {node.idxname or ''} inside the transaction: fails at run "
                  "time (cannot run inside a transaction block)", names)
    elif node.concurrent and not node.if_not_exists:
        yield Hit("prefer-robust-stmts", f"CREATE INDEX CONCURRENTLY {node.idxname or ''} outside the "
                  "transaction without IF NOT EXISTS", names)
    elif not node.concurrent and not is_new(table):
        yield Hit("require-concurrent-index-creation", f"index on existing table {table} built without "
                  f"CONCURRENTLY ({node.idxname or 'unnamed'}): writes to it are blocked while it builds", names)


def _drop(st: Any, node: Any, is_new: Callable[[str], bool]) -> Iterator[Hit]:
    from pglast import enums

    from ..sqlscan import _strings

    objects = [_strings(o) for o in node.objects or ()]
    if node.removeType == enums.ObjectType.OBJECT_INDEX:
        names = tuple(objects) + tuple(st.tables)
        if node.concurrent and st.in_transaction:
            yield Hit("ban-concurrent-index-creation-in-transaction",
                      f"DROP INDEX CONCURRENTLY {', '.join(objects)} inside the transaction: fails at run "
                      "time (cannot run inside a transaction block)", names)
        elif node.concurrent and not node.missing_ok:
            yield Hit("prefer-robust-stmts", f"DROP INDEX CONCURRENTLY {', '.join(objects)} outside the "
                      "transaction without IF EXISTS", names)
        elif not node.concurrent and not all(is_new(t) for t in st.tables or ["?"]):
            on = f" on {', '.join(st.tables)}" if st.tables else ""
            yield Hit("require-concurrent-index-deletion", f"drops index {', '.join(objects)}{on} without "
                      "CONCURRENTLY: ACCESS EXCLUSIVE on the table", names)
    elif node.removeType == enums.ObjectType.OBJECT_TABLE:
        tables = [t for t in objects if not is_new(t) and t != "alembic_version"]
        if tables:
            yield Hit("ban-drop-table", f"drops table {', '.join(tables)}: its data is gone", tuple(tables))


def _rename(node: Any, is_new: Callable[[str], bool]) -> Iterator[Hit]:
    from pglast import enums

    from ..sqlscan import _name

    if node.relation is None:
        return
    table = _name(node.relation)
    if is_new(table):
        return
    if node.renameType == enums.ObjectType.OBJECT_COLUMN:
        yield Hit("renaming-column", f"renames column {table}.{node.subname} to {node.newname}: running "
                  "application code that uses the old name breaks", (node.subname, table))
    elif node.renameType == enums.ObjectType.OBJECT_TABLE:
        yield Hit("renaming-table", f"renames table {table} to {node.newname}: running application code "
                  "that uses the old name breaks", (table,))


def _concurrent_reindex(node: Any) -> bool:
    for param in node.params or ():
        if getattr(param, "defname", None) == "concurrently":
            return True
    return bool(getattr(node, "concurrent", False))


def _style(table: str, col: Any) -> Iterator[Hit]:
    """The opt-in prefer-* rules, for the columns of new and existing tables alike."""
    if table == "alembic_version":
        return
    type_name, typmods = _type(col)
    where = f"{table}.{col.colname}"
    names = (col.colname, table)
    if type_name in ("int4", "int2", "int", "integer", "smallint", "serial", "serial4", "serial2",
                     "smallserial"):
        yield Hit("prefer-bigint-over-int", f"column {where} is a {type_name}: use bigint", names)
    if type_name in SERIAL_TYPES:
        yield Hit("prefer-identity", f"column {where} is a {type_name}: use an identity column", names)
    if type_name == "varchar" and typmods:
        yield Hit("prefer-text-field", f"column {where} is a varchar with a limit: use text", names)
    if type_name == "timestamp":
        yield Hit("prefer-timestamp-tz", f"column {where} is a timestamp without time zone", names)
