"""How an Alembic project's env.py finds its database, read from its source (never run).

runbook drives any env.py in-process (see migrations.py), but it must know which of the common
styles it is to hand it the database: ``config.attributes["connection"]`` (Alembic's cookbook
"sharing a connection": nothing to set), ``sqlalchemy.url`` from alembic.ini (the generic template:
nothing to set, the URL is replaced in memory), an environment variable (``alembic.url_env`` must
name it), or the application's own settings module (runbook can only reach it through an
environment variable those settings read, if any). ``runbook init`` writes the inventory keys this
finds. The source is parsed with ``ast``: importing env.py would run the migrations.
"""

from __future__ import annotations

import ast
import configparser
import re
from dataclasses import dataclass
from pathlib import Path

# What env.py imports that is not the application: a "settings" import is anything else.
_LIBRARIES = {"alembic", "sqlalchemy", "logging", "os", "sys", "typing", "__future__", "asyncio", "pathlib",
              "re", "configparser", "urllib", "dotenv", "decouple", "environs", "sqlmodel", "geoalchemy2",
              "psycopg", "psycopg2", "asyncpg", "contextlib", "dataclasses", "collections", "functools",
              "importlib", "json", "warnings"}
_URLISH = re.compile(r"URL|DSN|DATABASE|POSTGRES|PG|DB", re.IGNORECASE)


@dataclass(frozen=True)
class EnvStyle:
    """What env.py does for its database, in words and as inventory keys."""

    style: str                 # shared | url_env | config | settings | unknown
    says: str                  # one line for the person: what env.py does and what runbook does about it
    url_env: str | None = None  # alembic.url_env to write (None: nothing to set)
    settings: str | None = None  # the settings module env.py imports (style settings)


@dataclass(frozen=True)
class Project:
    """An Alembic project as its alembic.ini describes it."""

    ini: Path
    script_location: Path | None
    url: str | None  # sqlalchemy.url as written (may be empty)
    env_py: Path | None

    def style(self) -> EnvStyle:
        if self.env_py is None or not self.env_py.is_file():
            return EnvStyle("unknown", f"no env.py found (script_location {self.script_location}): "
                            "check alembic.url_env by hand")
        try:
            tree = ast.parse(self.env_py.read_text(encoding="utf-8"), str(self.env_py))
        except (SyntaxError, UnicodeDecodeError, OSError) as exc:
            return EnvStyle("unknown", f"{self.env_py} could not be read ({exc}): check alembic.url_env by hand")
        return detect(tree, self.ini.parent)


def read_project(ini: Path) -> Project:
    """script_location (``%(here)s`` and relative paths from the ini's folder) and sqlalchemy.url."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ini, encoding="utf-8")
    raw = parser.get("alembic", "script_location", fallback=None)
    url = parser.get("alembic", "sqlalchemy.url", fallback=None)
    location = None
    if raw:
        raw = raw.replace("%(here)s", str(ini.parent))
        if ":" not in raw or Path(raw).is_absolute():  # "package:folder" is a resource, not a path
            location = Path(raw) if Path(raw).is_absolute() else ini.parent / raw
    return Project(ini, location, url or None, location / "env.py" if location else None)


def detect(tree: ast.AST, base: Path) -> EnvStyle:
    """The style of one parsed env.py; ``base`` is where its own modules are looked for."""
    shared = config_url = False
    names: list[str] = []
    modules: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and _is_attributes(node.value) and _const(node.slice) == "connection":
            shared = True
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            func, first = node.func, _const(node.args[0]) if node.args else None
            if func.attr == "get" and _is_attributes(func.value) and first == "connection":
                shared = True
            elif func.attr in ("get_main_option", "get_section_option") and first == "sqlalchemy.url":
                config_url = True
            elif func.attr == "get_section":
                config_url = True
        if isinstance(node, ast.Call) and _calls(node, "engine_from_config", "async_engine_from_config"):
            config_url = True
        name = _env_var(node)
        if name and name not in names:
            names.append(name)
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.append(node.module)
        elif isinstance(node, ast.Import):
            modules.extend(alias.name for alias in node.names)
    var = _best(names)
    if shared:
        return EnvStyle("shared", "env.py uses config.attributes[\"connection\"]: runbook hands it its "
                        "connection, nothing to set")
    if var:
        return EnvStyle("url_env", f"env.py reads its URL from ${var}: alembic.url_env names it, and runbook "
                        "sets it (without the password) only around the Alembic call", url_env=var)
    if config_url:
        return EnvStyle("config", "env.py builds its engine from sqlalchemy.url: runbook replaces the URL in "
                        "memory, nothing to set")
    own = [m for m in modules if m.split(".")[0] not in _LIBRARIES]
    if own:
        found = _settings_variable(own, base)
        if found:
            return EnvStyle("settings", f"env.py takes its URL from the application's settings ({own[0]}), which "
                            f"read ${found}: alembic.url_env names it", url_env=found, settings=own[0])
        return EnvStyle("settings", f"env.py takes its URL from the application's settings ({own[0]}): name the "
                        "variable they read in alembic.url_env, or let env.py use config.attributes[\"connection\"]",
                        settings=own[0])
    return EnvStyle("unknown", "could not tell where env.py finds its database: check alembic.url_env by hand")


def _const(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _is_attributes(node: ast.AST) -> bool:
    """``config.attributes`` or ``context.config.attributes``."""
    return isinstance(node, ast.Attribute) and node.attr == "attributes"


def _calls(node: ast.Call, *names: str) -> bool:
    func = node.func
    return (isinstance(func, ast.Name) and func.id in names) or (isinstance(func, ast.Attribute)
                                                                 and func.attr in names)


def _env_var(node: ast.AST) -> str | None:
    """The variable of ``os.environ["X"]``, ``os.environ.get("X")``, ``os.getenv("X")``, ``environ[...]``."""
    if isinstance(node, ast.Subscript) and _is_environ(node.value):
        return _const(node.slice)
    if isinstance(node, ast.Call) and node.args:
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "get" and _is_environ(func.value):
            return _const(node.args[0])
        if _calls(node, "getenv"):
            return _const(node.args[0])
    return None


def _is_environ(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (isinstance(node, ast.Name)
                                                                            and node.id == "environ")


def _best(names: list[str]) -> str | None:
    """The variable most likely to hold the URL: one saying URL or DSN, else one naming a database."""
    for pattern in (r"URL|DSN", _URLISH.pattern):
        for name in names:
            if re.search(pattern, name, re.IGNORECASE):
                return name
    return None


def _settings_variable(modules: list[str], base: Path) -> str | None:
    """The URL variable the application's settings module reads, if its source says so plainly:
    ``os.environ``/``getenv`` calls, or a pydantic-settings field whose name says URL or DSN (its
    variable is the field's name in capitals; an ``env_prefix`` is not followed)."""
    for module in modules:
        parts = module.split(".")
        for candidate in (base.joinpath(*parts).with_suffix(".py"), base.joinpath(*parts, "__init__.py")):
            if not candidate.is_file():
                continue
            try:
                tree = ast.parse(candidate.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, OSError):
                continue
            names = [n for n in (_env_var(node) for node in ast.walk(tree)) if n]
            fields = [node.target.id.upper() for node in ast.walk(tree)
                      if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                      and re.search(r"url|dsn", node.target.id, re.IGNORECASE)]
            found = _best(names) or _best(fields)
            if found:
                return found
    return None
