"""The keys of ``inventory.yaml``, as pydantic models: what each key accepts and refuses.

The contract of DESIGN.md, validated once before anything connects (``inventory.py`` loads the file
and turns these into typed environments; ``yamlfile.config_error`` words a refusal as one line).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .units import Duration

Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SSHConfig(_Model):
    host: str
    port: int = Field(default=22, ge=1, le=65535)
    user: str | None = None
    key: str  # the only key tried (no agent, no ~/.ssh): required, so a missing one is a config error
    known_hosts: str = "~/.ssh/known_hosts"
    connect_timeout: Duration = 10.0
    keepalive: Duration = 15.0


class DatabaseConfig(_Model):
    host: str = "localhost"
    port: int = Field(default=5432, ge=1, le=65535)
    name: str
    user: str
    password_env: str | None = None

    @field_validator("password_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or not value.replace("_", "a").isalnum()):
            raise ValueError("must be the NAME of an environment variable (letters, digits, _)")
        return value


class BackupConfig(_Model):
    dir: str = "~/runbook-backups"
    keep: int = Field(default=10, ge=1)
    timeout: Duration = 6 * 3600.0
    format: Literal["custom", "directory"] = "custom"  # pg_dump -Fc (one file) | -Fd (a folder)
    jobs: int = Field(default=1, ge=1, le=64)            # pg_dump -j: directory format only

    @field_validator("jobs")
    @classmethod
    def _jobs_need_directory(cls, value: int, info: ValidationInfo) -> int:
        if value > 1 and info.data.get("format", "custom") != "directory":
            raise ValueError(f"jobs: {value} needs format: directory (pg_dump -j writes one file per "
                             "table in parallel; the custom format is one file written by one process)")
        return value


class RestoreConfig(_Model):
    """How a backup is put back: ``in-place`` (one psql transaction over the live database) or
    ``swap`` (``pg_restore -j`` into a new database on the same server, verified, then renamed
    into place in one transaction: see steps/swap.py)."""

    mode: Literal["in-place", "swap"] = "in-place"
    jobs: int | None = Field(default=None, ge=1, le=64)  # pg_restore -j (swap only; default backup.jobs)

    @field_validator("jobs")
    @classmethod
    def _jobs_need_swap(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and value > 1 and info.data.get("mode", "in-place") != "swap":
            raise ValueError(f"jobs: {value} needs mode: swap (the in-place restore is one psql "
                             "transaction, single-threaded)")
        return value


class WindowConfig(_Model):
    days: list[Day] = list(DAYS)
    start: str
    end: str
    tz: str = "UTC"
    reserve: Duration | None = None  # the end of the window kept for a rollback (``schedule``)

    @field_validator("start", "end")
    @classmethod
    def _clock_time(cls, value: str) -> str:
        hours, sep, minutes = str(value).partition(":")
        if not (sep and hours.isdigit() and minutes.isdigit() and len(minutes) == 2
                and int(hours) < 24 and int(minutes) < 60):
            raise ValueError(f"'{value}' is not a time like 02:00 (24-hour HH:MM)")
        return value

    @field_validator("tz")
    @classmethod
    def _time_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone '{value}' (e.g. UTC, Europe/Paris)") from None
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> "WindowConfig":
        if self.start == self.end:  # never open: surely not what was meant (all day is 00:00-23:59)
            raise ValueError(f"start and end are both {self.start}: a window of no time")
        return self


class LocksConfig(_Model):
    lock_timeout: Duration = 5.0
    max_wait: Duration = 120.0
    blockers: Literal["wait", "abort", "terminate"] = "wait"
    statement_timeout: Duration | None = None
    long_transaction: Duration = 60.0
    concurrently_timeout: Duration = 600.0  # lock_timeout of CREATE/DROP INDEX CONCURRENTLY, REINDEX CONCURRENTLY


class AlembicConfig(_Model):
    config: str | None = None
    remote: str | None = None      # the application's own alembic command on the host
    url_env: str | None = None     # the variable its env.py reads the database URL from
    url_driver: str | None = None  # e.g. postgresql+psycopg2 (default: detected; remote: +psycopg)
    timeout: Duration = 6 * 3600.0  # of one remote alembic command

    @field_validator("url_env")
    @classmethod
    def _url_env_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or not value.replace("_", "a").isalnum() or value[0].isdigit()):
            raise ValueError("must be the NAME of an environment variable (letters, digits, _)")
        return value

    @field_validator("remote")
    @classmethod
    def _remote_command(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must be the command that runs the application's alembic on the host")
        return value


def _variable_name(value: str) -> str:
    if not value or not value.replace("_", "a").isalnum() or value[0].isdigit():
        raise ValueError("must be the NAME of an environment variable (letters, digits, _)")
    return value


NOTIFY_EVENTS = ("started", "succeeded", "failed", "needs_person", "refused")


class NotifyConfig(_Model):
    """A webhook told how runs go (runbook/notify.py). The URL is a secret: only the name of the
    variable holding it is written here."""

    webhook_env: str
    format: Literal["json", "slack"] = "json"
    # the runs somebody must hear of: a success is news only to those who ask for it
    on: list[str] = ["failed", "needs_person", "refused"]
    timeout: Duration = 5.0  # of one HTTP attempt (3 attempts at most)

    @field_validator("webhook_env")
    @classmethod
    def _webhook_env(cls, value: str) -> str:
        return _variable_name(value)

    @field_validator("on")
    @classmethod
    def _events(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError(f"names no event: list some of {', '.join(NOTIFY_EVENTS)} (or remove the notify block)")
        for name in value:
            if name not in NOTIFY_EVENTS:
                raise ValueError(f"'{name}' is not an event (one of {', '.join(NOTIFY_EVENTS)})")
        return list(dict.fromkeys(value))

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: float) -> float:
        if not 0 < value <= 60:
            raise ValueError("must be more than 0 and at most 60s (a notification never holds a run up for long)")
        return value


class MetricsConfig(_Model):
    """The Prometheus textfile written after every run (runbook/metrics.py)."""

    textfile: str

    @field_validator("textfile")
    @classmethod
    def _prom(cls, value: str) -> str:
        if not value.endswith(".prom"):
            raise ValueError(f"'{value}' must end in .prom (node_exporter's textfile collector reads only *.prom files)")
        return value


class ChecklistConfig(_Model):
    """The pre-flight checklist (runbook/checklist.py): written, it also gates a protected migrate."""

    backup_max_age: Duration = 24 * 3600.0  # the newest verified backup must be younger
    before_migrate: bool = True  # a protected environment runs it at the start of migrate

    @field_validator("backup_max_age")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be more than 0 (e.g. 24h)")
        return value


class CheckConfig(_Model):
    name: str
    sql: str
    expect: Any = None
    expect_error: str | None = None


class HostConfig(_Model):
    name: str
    ssh: SSHConfig | None = None
    database: dict[str, Any] | None = None


class EnvironmentConfig(_Model):
    protected: bool = False
    embedded: bool = False
    hosts: list[HostConfig] = []
    database: dict[str, Any] | None = None
    backup: BackupConfig = BackupConfig()
    restore: RestoreConfig = RestoreConfig()
    window: WindowConfig | None = None
    locks: LocksConfig = LocksConfig()
    alembic: AlembicConfig = AlembicConfig()
    verify: list[CheckConfig] = []
    notify: NotifyConfig | None = None
    metrics: MetricsConfig | None = None
    checklist: ChecklistConfig | None = None


class InventoryFile(_Model):
    environments: dict[str, EnvironmentConfig]
