"""One analysis of a range of revisions, shared by ``runbook lint``, ``--dry-run`` and ``migrate``.

The SQL is rendered offline in one go from base to the target (so the history's ``CREATE INDEX``
statements tell which table a later ``DROP INDEX`` is on, and the ``BEGIN``/``COMMIT`` Alembic writes
say which statements share a transaction), parsed with pglast (``sqlscan``), and each statement is
given to its revision by Alembic's ``-- Running upgrade a -> b`` markers. If the whole history does
not render (a data migration that needs a live connection), the range is rendered alone, then each
revision alone, so the ones that cannot render are named and the others still judged.

``scope`` says which tables count as new (empty, unseen by the application): ``"run"`` for a
migrate, where every revision of the range runs in the same transaction after the ones before it;
``"revision"`` for lint in CI, where each revision may be deployed on its own, so only a table
created by the same revision is new.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import sqlscan
from ..migrations import Revision
from . import rules as R
from . import source as S
from .settings import Settings, ignores

_RUNNING = re.compile(r"^-- Running upgrade (.*?) -> ([^,\s]+)", re.M)


@dataclass
class Finding:
    """A rule broken by a revision: what, where (file and line), and the safe way."""

    rule: str
    level: str
    message: str
    safe: str
    revision: str | None = None
    path: str | None = None
    line: int | None = None
    sql: str | None = None

    def fact(self) -> dict[str, Any]:
        return {"rule": self.rule, "level": self.level, "message": self.message, "safe": self.safe,
                "revision": self.revision, "path": self.path, "line": self.line, "sql": self.sql}


@dataclass
class Analysis:
    """The range's statements per revision, the findings, and the tables it touches."""

    revisions: list[Revision]
    statements: dict[str, list[sqlscan.Statement]] = field(default_factory=dict)
    unrenderable: dict[str, str] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    index_tables: dict[str, str] = field(default_factory=dict)

    def tables(self) -> list[str] | None:
        """Every table the range touches (None when a revision could not be rendered)."""
        if self.unrenderable:
            return None
        seen: list[str] = []
        for rev in self.revisions:
            for st in self.statements.get(rev.id, []):
                seen.extend(t for t in st.tables if t not in seen)
        return seen

    def unresolved(self) -> list[str]:
        """Dropped indexes whose table the rendered history does not tell."""
        return sorted({i for sts in self.statements.values() for st in sts for i in st.unresolved})

    def resolve(self, found: dict[str, str]) -> None:
        """Tables of dropped indexes looked up elsewhere (the database)."""
        for sts in self.statements.values():
            for st in sts:
                for index in list(st.unresolved):
                    if index in found:
                        st.unresolved.remove(index)
                        if found[index] not in st.tables:
                            st.tables.append(found[index])

    def at_or_above(self, level: str) -> list[Finding]:
        floor = R.LEVELS.index(level)
        return [f for f in self.findings if R.LEVELS.index(f.level) >= floor]


def render(migrations: Any, current: tuple[str, ...], target: str,
           revisions: list[Revision]) -> tuple[list[str], dict[str, str]]:
    """The SQL texts to scan (the whole history when it renders) and the revisions that do not."""
    ids = {r.id for r in revisions}
    for lower in ((), current) if current else ((),):
        try:
            sql = migrations.offline_sql(lower, target)
        except Exception:  # noqa: BLE001 - some revision cannot render: narrow it down
            continue
        if ids <= {m.group(2) for m in _RUNNING.finditer(sql)}:
            return [sql], {}
    texts: list[str] = []
    failed: dict[str, str] = {}
    for rev in revisions:
        try:
            texts.append(migrations.offline_sql(rev.down, rev.id))
        except Exception as exc:  # noqa: BLE001 - reported per revision
            text = str(exc).strip()
            failed[rev.id] = text.splitlines()[-1][:300] if text else type(exc).__name__
    return texts, failed


def analyze(migrations: Any, revisions: list[Revision], texts: list[str], failed: dict[str, str],
            settings: Settings, *, scope: str = "revision",
            lookup: Callable[[list[str]], dict[str, str]] | None = None) -> Analysis:
    """Judge the statements of ``revisions`` (the range) found in the rendered ``texts``;
    ``lookup`` finds the tables of dropped indexes the rendered history does not create."""
    out = Analysis(list(revisions), unrenderable=dict(failed))
    in_range = {r.id for r in revisions}
    for number, text in enumerate(texts):
        try:
            stmts = sqlscan.analyze(text, out.index_tables)
        except ValueError as exc:
            for rev_id in _revisions_in(text) & in_range:
                out.unrenderable[rev_id] = str(exc)[:300]
            continue
        marks = [(m.start(), m.group(2)) for m in _RUNNING.finditer(text)]
        for st in stmts:
            st.transaction += number << 20 if st.in_transaction else 0  # unique across the texts
            owner = next((r for pos, r in reversed(marks) if pos <= st.start), None)
            if owner is None and marks:
                owner = marks[0][1]  # before the first marker: the version table's creation
            if owner in in_range:
                out.statements.setdefault(owner, []).append(st)
    missing = out.unresolved()
    if missing and lookup is not None:
        out.resolve(lookup(missing))
    sources = {r.id: migrations.source(r) for r in revisions}
    judge = _Judge(out, settings, sources, scope)
    for rev in revisions:
        judge.revision(rev)
    judge.transactions()
    for rev in revisions:
        judge.about(migrations, rev)
    return out


def _revisions_in(text: str) -> set[str]:
    return {m.group(2) for m in _RUNNING.finditer(text)}


class _Judge:
    """Applies the rules, with the state they need across statements (new tables, transactions)."""

    def __init__(self, out: Analysis, settings: Settings, sources: dict[str, str | None], scope: str) -> None:
        self.out = out
        self.settings = settings
        self.sources = sources
        self.scope = scope
        self.created_in_run: set[str] = set()
        self.ignored = {rid: ignores(src, _path(out, rid)) for rid, src in sources.items()}

    def add(self, rule: str, message: str, rev: Revision | None, *, names: tuple[Any, ...] = (),
            sql: str | None = None, line: int | None = None, level: str | None = None) -> None:
        if not self.settings.active(rule):
            return
        if rev is not None and rule in self.ignored.get(rev.id, set()):
            return
        src = self.sources.get(rev.id) if rev is not None else None
        if line is None and src is not None:
            line = S.locate(src, names, sql)
        self.out.findings.append(Finding(rule, level or self.settings.level(rule), message, R.RULES[rule].safe,
                                         rev.id if rev else None, rev.path if rev else None, line, sql))

    def revision(self, rev: Revision) -> None:
        created: set[str] = set()
        for st in self.out.statements.get(rev.id, []):
            new = created | self.created_in_run if self.scope == "run" else created

            def is_new(table: str, new: set[str] = new) -> bool:
                return table in new

            for hit in R.statement_hits(st, is_new):
                self.add(hit.rule, hit.message, rev, names=hit.names, sql=st.sql)
            if st.kind == "CreateStmt":
                own = sqlscan._name(st.node.relation)
                created.add(own)
                self.created_in_run.add(own)

    def transactions(self) -> None:
        """NOT VALID then VALIDATE in one transaction; data changes in the same transaction as DDL."""
        groups: dict[int, list[tuple[Revision, sqlscan.Statement]]] = {}
        for rev in self.out.revisions:
            for st in self.out.statements.get(rev.id, []):
                if st.in_transaction:
                    groups.setdefault(st.transaction, []).append((rev, st))
        for tx in groups.values():
            self._one_transaction(tx)

    def _one_transaction(self, tx: list[tuple[Revision, sqlscan.Statement]]) -> None:
        from pglast import ast, enums

        T = enums.AlterTableType
        not_valid: dict[tuple[str, str], Revision] = {}
        ddl_tables: set[str] = set()
        data: list[tuple[Revision, sqlscan.Statement, list[str]]] = []
        created: dict[str, set[str]] = {}  # revision -> tables it created
        for rev, st in tx:
            node = st.node
            # new: created in this transaction (a run) or by this revision (lint in CI)
            new = set().union(*created.values()) if self.scope == "run" else created.get(rev.id, set())
            if isinstance(node, ast.CreateStmt):
                created.setdefault(rev.id, set()).add(sqlscan._name(node.relation))
            elif isinstance(node, ast.AlterTableStmt):
                table = sqlscan._name(node.relation)
                if table not in new:
                    ddl_tables.add(table)
                for cmd in node.cmds or ():
                    if not isinstance(cmd, ast.AlterTableCmd):
                        continue
                    if cmd.subtype == T.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint) \
                            and cmd.def_.skip_validation and cmd.def_.conname:
                        not_valid[(table, cmd.def_.conname)] = rev
                    elif cmd.subtype == T.AT_ValidateConstraint and (table, str(cmd.name)) in not_valid:
                        added = not_valid[(table, str(cmd.name))]
                        where = "the same revision" if added.id == rev.id else f"revision {added.id}"
                        self.add("not-valid-validate-same-transaction",
                                 f"validates {cmd.name} on {table}, added NOT VALID by {where}, in the same "
                                 "transaction: the validation scan runs under the ADD's lock", rev,
                                 names=(cmd.name, table), sql=st.sql)
            elif isinstance(node, (ast.IndexStmt, ast.DropStmt, ast.RenameStmt, ast.TruncateStmt)):
                ddl_tables.update(t for t in st.tables if t not in new)
            elif isinstance(node, (ast.UpdateStmt, ast.DeleteStmt)) or (
                    isinstance(node, ast.InsertStmt) and isinstance(node.selectStmt, ast.SelectStmt)
                    and node.selectStmt.fromClause):
                tables = [t for t in st.tables if t not in new]
                if tables:
                    data.append((rev, st, tables))
        if not ddl_tables:
            return
        for rev, st, tables in data:
            big = [t for t in tables if t in self.settings.big_tables]
            verb = type(st.node).__name__.replace("Stmt", "").upper()
            self.add("data-migration-with-ddl",
                     f"{verb} on {', '.join(tables)} in the same transaction as DDL on "
                     f"{', '.join(sorted(ddl_tables))}: every lock is held until the whole upgrade commits"
                     + (f" ({', '.join(big)} listed in big_tables)" if big else ""),
                     rev, names=tuple(tables), sql=st.sql, level=R.ERROR if big else None)

    def about(self, migrations: Any, rev: Revision) -> None:
        """What the revision as a whole lacks: a renderable SQL, a downgrade, a verification file."""
        if rev.id in self.out.unrenderable:
            self.add("unrenderable-revision", f"revision {rev.id} cannot be rendered offline: "
                     f"{self.out.unrenderable[rev.id]}", rev, line=S.def_line(self.sources.get(rev.id), "upgrade"))
        why = migrations.why_irreversible(rev)
        if why and why != "it is declared irreversible":
            self.add("missing-downgrade", f"revision {rev.id} has no usable downgrade: {why}", rev,
                     line=S.def_line(self.sources.get(rev.id), "downgrade"))
        if migrations.kind == "in-process" and not rev.is_merge:
            path = migrations.verify_file(rev.id)
            if not path.exists():
                self.add("missing-verification-file", f"revision {rev.id} has no verification file: "
                         f"create {path}", rev, line=1)


def _path(out: Analysis, rev_id: str) -> str | None:
    for rev in out.revisions:
        if rev.id == rev_id:
            return rev.path
    return None
