"""``playbooks/*.yaml`` -> typed steps, validated before anything connects.

A playbook is the ordered list of steps of a run and the steps to run when one fails. Each entry is
either a bare step name (``- backup``) or a one-key mapping with its parameters
(``- upgrade: {to: head}``). Conditions (``if:`` / ``unless:``) refer to facts of the run so that
users can express "restore only if the downgrade failed" without Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import yamlfile
from .errors import ConfigError
from .inventory_keys import CheckConfig
from .shipped import playbooks_dir
from .units import Duration

Condition = Literal["downgrade_failed", "verify_failed", "rollback_failed", "restored",
                    "changed", "always"]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    if_: Condition | None = Field(None, alias="if")
    unless: Condition | None = None


class BackupParams(_Params):
    pass


class CheckLocksParams(_Params):
    blockers: Literal["wait", "abort", "terminate"] | None = None


class UpgradeParams(_Params):
    to: str = "head"


class DowngradeParams(_Params):
    to: str = "start"


class VerifyParams(_Params):
    checks: list[CheckConfig] = []


class RestoreParams(_Params):
    backup: str = "run"


class NoParams(_Params):
    pass


class RehearseParams(_Params):
    to: str = "head"
    backup: Literal["newest", "new"] = "newest"  # new: always take a fresh backup to rehearse on
    max_age: Duration = 86400.0  # "newest": an older backup (data drifts) is not used, a new one is taken


class ShellParams(_Params):
    command: str
    timeout: Duration = 600.0


PARAMS: dict[str, type[_Params]] = {
    "backup": BackupParams,
    "check_locks": CheckLocksParams,
    "upgrade": UpgradeParams,
    "downgrade": DowngradeParams,
    "verify": VerifyParams,
    "restore": RestoreParams,
    "shell": ShellParams,
    "rollback": NoParams,
    "prune": NoParams,
    "rehearse": RehearseParams,
}


@dataclass(frozen=True)
class Step:
    """One step of a playbook: its kind, validated parameters and where it was written."""

    kind: str
    params: Any
    line: int | None = None

    def wanted(self, facts: dict[str, bool]) -> bool:
        cond_if = getattr(self.params, "if_", None)
        cond_unless = getattr(self.params, "unless", None)
        if cond_if and cond_if != "always" and not facts.get(cond_if, False):
            return False
        if cond_unless and facts.get(cond_unless, False):
            return False
        return True

    def describe(self) -> str:
        shown = self.params.model_dump(exclude_defaults=True, by_alias=True, exclude={"checks"})
        args = ", ".join(f"{k}={v}" for k, v in shown.items())
        return f"{self.kind}({args})" if args else self.kind


@dataclass(frozen=True)
class Playbook:
    name: str
    path: Path
    description: str
    steps: tuple[Step, ...]
    on_failure: tuple[Step, ...] = field(default=())

    def kinds(self) -> set[str]:
        return {s.kind for s in (*self.steps, *self.on_failure)}


def search_path(inventory_dir: Path) -> list[Path]:
    """Playbooks next to the inventory win over the ones shipped with runbook."""
    dirs = [inventory_dir / "playbooks", playbooks_dir()]
    return [d for i, d in enumerate(dirs) if d not in dirs[:i]]


def find(name: str, inventory_dir: Path) -> Path:
    if "/" in name or name.startswith("."):
        raise ConfigError(f"playbook '{name}' must be a name like 'migrate', not a path")
    dirs = search_path(inventory_dir)
    for folder in dirs:
        for suffix in (".yaml", ".yml"):
            candidate = folder / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    known = sorted({p.stem for d in dirs if d.is_dir() for p in d.glob("*.y*ml")})
    from .suggest import did_you_mean

    builtin = ("status", "checklist", "history", "schedule")
    raise ConfigError(f"unknown playbook '{name}'{did_you_mean(name, [*known, *builtin])} "
                      f"(built in: {', '.join(builtin)}; playbooks: {', '.join(known) or 'none'}; "
                      f"looked in {', '.join(str(d) for d in dirs)})")


def _step(entry: Any, tree: Any, path: Path, loc: list[Any]) -> Step:
    line = yamlfile.line_of(tree, loc)
    raw: Any
    if isinstance(entry, str):
        kind, raw = entry, {}
    elif isinstance(entry, dict) and len(entry) == 1:
        kind, raw = next(iter(entry.items()))
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise ConfigError(f"parameters of step '{kind}' must be a mapping", path=str(path), line=line)
    else:
        raise ConfigError("a step is a name ('- backup') or one name with parameters "
                          "('- upgrade: {to: head}')", path=str(path), line=line)
    if kind not in PARAMS:
        raise ConfigError(f"unknown step '{kind}' (known: {', '.join(PARAMS)})", path=str(path), line=line)
    try:
        params = PARAMS[kind].model_validate(dict(raw))
    except ValidationError as exc:
        raise yamlfile.config_error(exc, tree, path, [*loc, kind] if raw else loc, model=PARAMS[kind]) from None
    return Step(kind, params, line)


def _rehearse_before_upgrade(steps: tuple[Step, ...], failure: tuple[Step, ...], path: Path) -> None:
    """A rehearsal tries what the upgrade will do: after it (or as a rollback step) it has nothing to try."""
    kinds = [s.kind for s in steps]
    for i, step in enumerate(steps):
        if step.kind == "rehearse" and "upgrade" in kinds[:i]:
            raise ConfigError("'rehearse' comes after 'upgrade': it tries the migrations before they reach "
                              "production, so it must come before the upgrade", path=str(path), line=step.line)
    for step in failure:
        if step.kind == "rehearse":
            raise ConfigError("'rehearse' cannot be an on_failure step: it tries migrations before the "
                              "upgrade", path=str(path), line=step.line)


def load(path: Path) -> Playbook:
    tree = yamlfile.load(path, "playbook")
    if not isinstance(tree, dict):
        raise ConfigError("a playbook must be a mapping with a 'steps' list", path=str(path))
    unknown = set(tree) - {"description", "steps", "on_failure"}
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(f"unknown key '{key}' (known: description, steps, on_failure)",
                          path=str(path), line=yamlfile.line_of(tree, [key]))
    if "steps" not in tree or not isinstance(tree["steps"], list) or not tree["steps"]:
        raise ConfigError("missing or empty 'steps' list", path=str(path),
                          line=yamlfile.line_of(tree, ["steps"]))
    on_failure = tree.get("on_failure") or []
    if not isinstance(on_failure, list):
        raise ConfigError("'on_failure' must be a list of steps", path=str(path),
                          line=yamlfile.line_of(tree, ["on_failure"]))
    steps = tuple(_step(e, tree, path, ["steps", i]) for i, e in enumerate(tree["steps"]))
    failure = tuple(_step(e, tree, path, ["on_failure", i]) for i, e in enumerate(on_failure))
    _rehearse_before_upgrade(steps, failure, path)
    return Playbook(path.stem, path, str(tree.get("description") or ""), steps, failure)
