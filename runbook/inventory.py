"""``inventory.yaml`` -> typed environments, validated once before anything connects.

The keys are the contract of DESIGN.md. Every mistake becomes one ConfigError naming the file, the
line and the key; secrets are resolved here from the environment variable the inventory names, so
that the rest of runbook never sees where a password came from and never sees a literal one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import shipped, yamlfile
from .errors import ConfigError
from .inventory_keys import DatabaseConfig, EnvironmentConfig, InventoryFile, SSHConfig


@dataclass(frozen=True)
class Database:
    """Where the database is, as seen from its host, with the password resolved."""

    host: str
    port: int
    name: str
    user: str
    password: str | None = field(repr=False)  # a secret: never in a repr, a traceback or a log
    password_env: str | None = None


@dataclass(frozen=True)
class Host:
    """One database host of an environment: how to reach it and its database."""

    name: str
    ssh: SSHConfig | None
    database: Database | None  # None only for the embedded environment (known once started)


@dataclass(frozen=True)
class Environment:
    """One environment of the inventory, resolved: paths absolute, secrets read."""

    name: str
    config: EnvironmentConfig
    hosts: tuple[Host, ...]
    inventory_path: Path
    alembic_ini: Path
    state_dir: Path
    webhook: str | None = field(default=None, repr=False)  # notify's URL (a secret), if its variable is set
    every_host: tuple[Host, ...] = ()  # the inventory's hosts, when ``hosts`` is a selection of them

    @property
    def protected(self) -> bool:
        return self.config.protected

    @property
    def embedded(self) -> bool:
        return self.config.embedded

    @property
    def fleet(self) -> bool:
        """Several hosts in the inventory (whatever ``--limit``/``--shard`` selected): a fleet run."""
        return len(self.every_host or self.hosts) > 1

    def select(self, hosts: tuple[Host, ...]) -> "Environment":
        """This environment with only ``hosts`` run (``--limit``, ``--shard``); secrets stay known."""
        from dataclasses import replace

        return replace(self, hosts=tuple(hosts), every_host=self.every_host or self.hosts)

    def whole(self) -> "Environment":
        """This environment with all its hosts again (what a selection was taken from)."""
        from dataclasses import replace

        return replace(self, hosts=self.every_host, every_host=()) if self.every_host else self

    def secrets(self) -> list[str]:
        every = self.every_host or self.hosts  # a selection's secrets are the whole inventory's
        passwords = [h.database.password for h in every if h.database and h.database.password]
        return passwords + ([self.webhook] if self.webhook else [])

    def secret_vars(self) -> list[str]:
        """The names of the variables that hold this environment's secrets: passwords and the
        webhook URL (never inherited by the commands runbook starts on this machine)."""
        every = self.every_host or self.hosts
        names = {h.database.password_env for h in every if h.database and h.database.password_env}
        if self.config.notify:
            names.add(self.config.notify.webhook_env)
        return sorted(n for n in names if n)


@dataclass(frozen=True)
class Inventory:
    path: Path
    tree: Any
    file: InventoryFile
    builtin: bool = False  # no inventory.yaml here: the shipped one (shipped.builtin_inventory), path is ./inventory.yaml

    @property
    def names(self) -> list[str]:
        return list(self.file.environments)

    def config_of(self, name: str) -> EnvironmentConfig:
        """An environment's keys as written (no host resolved, no password read)."""
        envs = self.file.environments
        if name not in envs:
            from .suggest import did_you_mean

            known = ", ".join(sorted(envs)) or "none"
            if self.builtin:
                raise ConfigError(f"unknown environment '{name}'{did_you_mean(name, envs)}: there is no "
                                  f"inventory.yaml here, and the built-in example defines only: {known}",
                                  hint="runbook init writes an inventory.yaml for the Alembic project here")
            raise ConfigError(f"unknown environment '{name}'{did_you_mean(name, envs)} (defined: {known})",
                              path=str(self.path))
        return envs[name]

    @property
    def state_dir(self) -> Path:
        """``.runbook/`` next to the inventory: run journals and logs, the embedded cluster."""
        return self.path.parent / ".runbook"

    def environment(self, name: str, environ: dict[str, str] | None = None) -> Environment:
        environ = dict(os.environ) if environ is None else environ
        cfg = self.config_of(name)
        base = self.path.parent
        prefix: list[Any] = ["environments", name]
        if not cfg.embedded and not cfg.hosts:
            raise ConfigError(f"environment '{name}' has no hosts",
                              path=str(self.path), line=yamlfile.line_of(self.tree, prefix))
        hosts: list[Host] = []
        for i, host in enumerate(cfg.hosts):
            db = None
            if not cfg.embedded:
                merged = {**(cfg.database or {}), **(host.database or {})}
                host_where = [*prefix, "hosts", i, "database"]
                where = host_where if host.database else [*prefix, "database"]
                try:
                    dbc = DatabaseConfig.model_validate(merged)
                except ValidationError as exc:
                    # Point at the block the offending key was written in, not just the nearest one.
                    key = exc.errors()[0]["loc"][:1]
                    if key and cfg.database and key[0] in cfg.database and key[0] not in (host.database or {}):
                        where = [*prefix, "database"]
                    elif not cfg.database:
                        where = host_where
                    raise yamlfile.config_error(exc, self.tree, self.path, where, model=DatabaseConfig) from None
                password = None
                if dbc.password_env:
                    password = environ.get(dbc.password_env)
                    if password is None:
                        raise ConfigError(
                            f"environment variable {dbc.password_env} is not set "
                            f"(named by environments.{name}.database.password_env)",
                            path=str(self.path),
                            line=yamlfile.line_of(self.tree, [*where, "password_env"]))
                db = Database(dbc.host, dbc.port, dbc.name, dbc.user, password, dbc.password_env)
            ssh = host.ssh
            if ssh is not None:  # relative to the inventory, never to the cwd of whoever runs runbook
                ssh = ssh.model_copy(update={
                    "known_hosts": str(expand(ssh.known_hosts, base)),
                    "key": str(expand(ssh.key, base)) if ssh.key else None})
            hosts.append(Host(host.name, ssh, db))
        if cfg.embedded and not hosts:
            hosts.append(Host("localhost", None, None))
        alembic_ini = self._alembic_ini(cfg, name)
        self._own_textfile(cfg, name)
        if self.builtin:
            import sys

            print(shipped.BUILTIN_NOTE, file=sys.stderr)
        # Read here, checked by the runs that would send (notify.check): status and --dry-run
        # send nothing, so an operator's shell without the variable can still use them.
        webhook = (environ.get(cfg.notify.webhook_env) or None) if cfg.notify else None
        return Environment(name, cfg, tuple(hosts), self.path, alembic_ini, self.state_dir, webhook)

    def _own_textfile(self, cfg: EnvironmentConfig, name: str) -> None:
        """Each environment rewrites its whole metrics file after each run: two sharing one would
        erase each other's series."""
        if cfg.metrics is None:
            return
        mine = expand(cfg.metrics.textfile, self.path.parent)
        for other, ocfg in self.file.environments.items():
            if other != name and ocfg.metrics and expand(ocfg.metrics.textfile, self.path.parent) == mine:
                raise ConfigError(
                    f"environments.{name}.metrics.textfile: {mine} is also the file of environment '{other}': "
                    "give each environment its own .prom file", path=str(self.path),
                    line=yamlfile.line_of(self.tree, ["environments", name, "metrics", "textfile"]))

    def _alembic_ini(self, cfg: EnvironmentConfig, name: str) -> Path:
        if cfg.alembic.config:
            path = expand(cfg.alembic.config, self.path.parent)
            if not path.is_file() and not cfg.alembic.remote:
                raise ConfigError(
                    f"alembic config {path} not found (environments.{name}.alembic.config)",
                    path=str(self.path),
                    line=yamlfile.line_of(self.tree, ["environments", name, "alembic", "config"]))
            return path
        beside = self.path.parent / "alembic.ini"
        return beside if beside.is_file() else shipped.example_alembic_ini()


def expand(value: str, base: Path) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else (base / path)


def default_path() -> Path:
    return Path(os.environ.get("RUNBOOK_INVENTORY") or "inventory.yaml")


def load(path: Path) -> Inventory:
    """Read and validate an inventory file; every mistake is one located ConfigError. The default
    ./inventory.yaml missing where there is no Alembic project either: the built-in example's, and
    ``environment()`` says so in one line on stderr (shipped.wants_builtin)."""
    builtin = shipped.wants_builtin(path)
    if builtin:
        source, path = shipped.builtin_inventory(), path.absolute()
    elif not path.exists():  # absolute: cron's cwd is rarely what the person who wrote the job thought
        project = Path("alembic.ini").exists()
        raise ConfigError("inventory not found", path=str(path.absolute()),
                          hint="runbook init writes one for the Alembic project here" if project
                          else "pass --inventory PATH or set RUNBOOK_INVENTORY (runbook init writes one)")
    else:
        source = path = path.resolve()
    tree = yamlfile.load(source, "inventory")
    if not isinstance(tree, dict):
        raise ConfigError("an inventory must be a mapping with an 'environments' key", path=str(path))
    try:
        parsed = InventoryFile.model_validate(tree)
    except ValidationError as exc:
        raise yamlfile.config_error(exc, tree, path, model=InventoryFile) from None
    return Inventory(path, tree, parsed, builtin)
