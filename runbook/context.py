"""What a step sees of its run: the host, its transport and database, the facts gathered so far."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .inventory import Database, Environment, Host
from .journal import Journal
from .migrations import MigrationBackend
from .postgres import Endpoint
from .transports.base import Transport


@dataclass
class Options:
    """Command-line choices that change what steps do."""

    to: str | None = None
    dry_run: bool = False
    yes: bool = False
    restore: str | None = None
    json: bool = False
    install: bool = False  # schedule: write the units (never enable them)
    user: bool = False     # schedule: the user's systemd instance, not the system's
    ignore_window: bool = False  # run outside the maintenance window (or past its end) on purpose
    limit: str | None = None  # history: how many runs (parsed by the command that reads it)
    hosts: tuple[str, ...] = ()  # a fleet's --limit: host names or globs (see selection.py)
    shard: str | None = None     # a fleet's --shard K/N
    parallel: int = 1            # a fleet's hosts at once
    canary: bool = False         # a fleet's first host alone, verified, before any other
    rollback_all: bool = False   # a fleet that stops rolls back every host it migrated
    accept: tuple[str, ...] = ()  # migrate: error-level lint rules to run despite (by name)
    override: tuple[str, ...] = ()  # checklist lines to run despite (by name: checklist.LINES)
    verbose: bool = False  # -v: the console shows every event (structlog's key=value lines)
    no_color: bool = False  # --no-color (or NO_COLOR, TERM=dumb): no escape sequence on the console


@dataclass
class Backup:
    """A verified backup on the database host; or (``database``) a database a swap restore kept
    on the server, ``path`` its name: the state it replaced, put back by swapping it in again."""

    path: str
    size: int
    sha256: str
    revision: str
    created: str
    database: bool = False

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def fact(self) -> dict[str, Any]:
        return {"backup_path": self.path, "backup_size": self.size, "backup_sha256": self.sha256,
                "backup_revision": self.revision}


@dataclass
class Context:
    """One run on one host."""

    run_id: str
    env: Environment
    host: Host
    options: Options
    journal: Journal
    session: Any  # hostsession.HostSession: transport and endpoint change when it reconnects
    migrations: MigrationBackend
    log: Any
    backup_dir: str = ""
    step: str = ""  # the step running now: it names the database sessions runbook opens
    last_read: tuple[str, ...] | None = None  # what ``current()`` last read back
    start: tuple[str, ...] = ()
    facts: dict[str, bool] = field(default_factory=dict)
    backup: Backup | None = None
    backups: list[Backup] = field(default_factory=list)
    swap_rights: Any = None  # dbswap.Rights, once checked (restore.mode: swap)
    lint: dict[Any, Any] = field(default_factory=dict)  # the run's lint analysis (lint/preflight.py)
    kinds: frozenset[str] = frozenset()  # the kinds of step the run's playbook has
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        # The steps' migration backend works on this host: remote Alembic runs through its
        # transport, in-process Alembic through its tunnel (both read live, so a reconnect holds).
        if getattr(self.migrations, "_ctx", None) is not self:
            self.migrations = self.migrations.bind(self)

    @property
    def transport(self) -> Transport:
        transport: Transport = self.session.transport
        return transport

    @property
    def endpoint(self) -> Endpoint:
        endpoint: Endpoint = self.session.endpoint
        return endpoint

    @property
    def database(self) -> Database:
        database: Database = self.session.database
        return database

    @property
    def pg_bin(self) -> str | None:
        pg_bin: str | None = self.session.pg_bin
        return pg_bin

    @property
    def locks(self) -> Any:
        return self.env.config.locks

    def settings(self, lock_timeout: float | None = None) -> dict[str, str]:
        """Session settings of every connection that may take locks."""
        from .units import pg_ms

        from .postgres import client_check

        out = {"lock_timeout": pg_ms(self.locks.lock_timeout if lock_timeout is None else lock_timeout)}
        if self.locks.statement_timeout:
            out["statement_timeout"] = pg_ms(self.locks.statement_timeout)
        # Also for sessions runbook does not open itself (the remote alembic, an env.py reading its
        # URL): a statement whose client died is cancelled instead of running on with its locks.
        out.update(client_check(self.endpoint))
        return out

    def connect(self, purpose: str, **kw: Any) -> Any:
        """A database session for ``with``: the run's shared one (``HostSession.db``, named after
        the step), or with ``kw`` (session settings, a transaction mode) one of its own, closed after."""
        from . import postgres

        if not kw:
            return self.session.db(self.step or purpose)
        name = f"{self.step}/{purpose}" if self.step and self.step != purpose else purpose
        return postgres.connect(self.endpoint, purpose=f"{name} {self.run_id}", **kw)

    def current_at_start(self) -> tuple[str, ...]:
        """alembic_version as read by the step's first round trip, together with the run-lock
        check (``HostSession.begin_step``), before the step did anything; read now if there is none."""
        revisions, self.session.step_revisions = self.session.step_revisions, None
        if revisions is None:
            return self.current()
        self.last_read = revisions
        return revisions

    def current(self) -> tuple[str, ...]:
        """alembic_version read back from the database (on the run's shared session), kept in
        ``last_read``."""
        from . import postgres

        with self.connect("read") as conn:
            self.last_read = postgres.current_revisions(conn)
        return self.last_read
