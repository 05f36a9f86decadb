"""Verification files: ``<script_location>/verify/<revision>.yaml``, loaded and validated.

Beside playbook loading (both are YAML a user writes, checked with file:line before anything
connects); the ``verify`` step runs what this loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from . import yamlfile
from .errors import ConfigError
from .inventory_keys import CheckConfig

_CHECKS = TypeAdapter(list[CheckConfig])


def load_file(path: Path) -> list[CheckConfig]:
    tree = yamlfile.load(path, "verification file")
    if tree is None:
        return []
    try:
        checks = _CHECKS.validate_python(tree)
    except ValidationError as exc:
        raise yamlfile.config_error(exc, tree, path, model=list[CheckConfig]) from None
    for i, check in enumerate(checks):
        validate(check, str(path), yamlfile.line_of(tree, [i]))
    return checks


def validate(check: CheckConfig, path: str, line: int | None) -> None:
    import psycopg.errors

    if (check.expect is None) == (check.expect_error is None):
        raise ConfigError(f"check '{check.name}' needs exactly one of 'expect' or 'expect_error'",
                          path=path, line=line)
    if check.expect_error is not None:
        try:
            psycopg.errors.lookup(check.expect_error.upper())
        except KeyError:
            raise ConfigError(f"check '{check.name}': unknown PostgreSQL condition "
                              f"'{check.expect_error}' (e.g. check_violation, not_null_violation)",
                              path=path, line=line) from None


def load_all(migrations: Any) -> dict[str, list[CheckConfig]]:
    """Every per-revision verification file of the project, validated before anything connects."""
    return {rev: load_file(path) for rev, path in migrations.verify_files().items()}


