"""Project settings of the linter: ``[tool.runbook.lint]`` in the pyproject.toml beside alembic.ini,
and the per-revision ignores (``# runbook: ignore[rule-name, ...]`` in a revision file).

The settings live with the migrations (the application's repository, where CI lints a pull request),
not in the inventory (which belongs to whoever operates the databases): one place, read by ``lint``
and by ``migrate``'s pre-flight alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .rules import LEVELS, RULES

IGNORE = re.compile(r"#\s*runbook:\s*ignore\[([^\]]*)\]")


@dataclass
class Settings:
    """What the project changed: rules off, opt-in rules on, levels, the tables known to be big."""

    disable: set[str] = field(default_factory=set)
    enable: set[str] = field(default_factory=set)
    levels: dict[str, str] = field(default_factory=dict)
    fail_on: str | None = None
    big_tables: set[str] = field(default_factory=set)
    path: Path | None = None

    def active(self, rule: str) -> bool:
        if rule in self.disable:
            return False
        return not RULES[rule].opt_in or rule in self.enable

    def level(self, rule: str) -> str:
        return self.levels.get(rule, RULES[rule].level)


KEYS = {"disable", "enable", "levels", "fail_on", "big_tables"}


def load(folder: Path | None) -> Settings:
    """``[tool.runbook.lint]`` of ``folder/pyproject.toml`` (defaults without one); exit 2 on a mistake."""
    if folder is None:
        return Settings()
    path = folder / "pyproject.toml"
    if not path.is_file():
        return Settings()
    import tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", path=str(path)) from None
    table = data.get("tool", {}).get("runbook", {}).get("lint")
    if table is None:
        return Settings(path=path)
    where = "[tool.runbook.lint]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table", path=str(path))
    unknown = sorted(set(table) - KEYS)
    if unknown:
        from ..suggest import did_you_mean

        raise ConfigError(f"{where}: unknown key '{unknown[0]}'{did_you_mean(unknown[0], KEYS)} "
                          f"(known: {', '.join(sorted(KEYS))})", path=str(path))
    out = Settings(path=path)
    out.disable = _rules(table.get("disable", []), f"{where} disable", path)
    out.enable = _rules(table.get("enable", []), f"{where} enable", path)
    levels = table.get("levels", {})
    if not isinstance(levels, dict):
        raise ConfigError(f"{where} levels must be a table of rule = level", path=str(path))
    for rule, level in levels.items():
        _rules([rule], f"{where} levels", path)
        out.levels[rule] = _level(level, f"{where} levels.{rule}", path)
    if "fail_on" in table:
        out.fail_on = _level(table["fail_on"], f"{where} fail_on", path)
    big = table.get("big_tables", [])
    if not isinstance(big, list) or not all(isinstance(t, str) for t in big):
        raise ConfigError(f"{where} big_tables must be a list of table names", path=str(path))
    out.big_tables = set(big)
    return out


def _rules(value: Any, where: str, path: Path) -> set[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of rule names", path=str(path))
    for name in value:
        check_rule(name, where, str(path))
    return set(value)


def _level(value: Any, where: str, path: Path) -> str:
    if value not in LEVELS:
        raise ConfigError(f"{where}: '{value}' is not a level (error, warning or info)", path=str(path))
    return str(value)


def check_rule(name: str, where: str, path: str | None = None, line: int | None = None) -> None:
    """An unknown rule name is a mistake (a typo would silently ignore nothing): exit 2."""
    if name not in RULES:
        from ..suggest import did_you_mean

        raise ConfigError(f"{where}: unknown lint rule '{name}'{did_you_mean(name, RULES)} "
                          "(runbook lint --rules lists them)", path=path, line=line)


def ignores(source: str | None, path: str | None) -> set[str]:
    """The rules a revision file ignores with ``# runbook: ignore[rule, ...]`` comments."""
    found: set[str] = set()
    for number, text in enumerate((source or "").splitlines(), start=1):
        for match in IGNORE.finditer(text):
            for name in (n.strip() for n in match.group(1).split(",")):
                if name:
                    check_rule(name, "ignore comment", path, number)
                    found.add(name)
    return found
