"""Where in a revision file a finding belongs: the line of the ``op`` call that wrote the statement.

Alembic's rendered SQL does not say which Python line wrote it, so the statement's names (column,
index, constraint, then table) are looked up among the string constants of ``upgrade()``: the
first constant equal to the most specific name, or an ``op.execute`` SQL string naming it, is the
line (an ``op.execute`` string equal to the statement comes first). Without a match the finding points at ``def upgrade``.
"""

from __future__ import annotations

import ast
import re
from typing import Any


def _function(tree: ast.Module, name: str) -> ast.FunctionDef | None:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    return None


def def_line(source: str | None, name: str) -> int | None:
    """The line of ``def name`` in the revision file (None if absent or unparsable)."""
    if not source:
        return None
    try:
        fn = _function(ast.parse(source), name)
    except SyntaxError:
        return None
    return fn.lineno if fn is not None else None


def locate(source: str, names: tuple[Any, ...], sql: str | None = None) -> int | None:
    """The line of ``upgrade()`` that most likely wrote the statement naming ``names``."""
    try:
        fn = _function(ast.parse(source), "upgrade")
    except SyntaxError:
        return None
    if fn is None:
        return None
    constants = [(n.lineno, n.value) for n in ast.walk(fn)
                 if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    constants.sort()
    if sql:  # op.execute("...") wrote it as it is
        want = _norm(sql)
        for line, value in constants:
            if _norm(value) == want:
                return line
    for name in (str(n) for n in names if n):
        bare = name.rsplit(".", 1)[-1]
        for line, value in constants:
            if value == bare:
                return line
        word = re.compile(rf"(?<![\w$]){re.escape(bare)}(?![\w$])", re.I)
        for line, value in constants:
            if " " in value and word.search(value):
                return line
    return fn.lineno


def _norm(text: str) -> str:
    return " ".join(text.replace('"', "").split()).rstrip(";").lower()
