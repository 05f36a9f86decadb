"""The embedded throwaway PostgreSQL behind ``runbook local migrate``.

``EmbeddedCluster(state_dir)`` keeps one local cluster under ``state_dir / "pg"`` (data directory,
socket directory, server log and the port chosen at creation): ``ensure()`` creates it if missing
(initdb), starts it if it is not running and creates the ``raguser`` role (with CREATEDB, for the
scratch database of ``local rehearse``) and ``rag_memory`` database if missing; ``stop()`` stops the server only if this object started it, so a server
another run or a person started is left alone. As root, the server runs as the ``postgres`` user
through ``runuser``, as PostgreSQL refuses to run as root.

The cluster is private. Its socket is in a 0700 directory of the server's user (``pg/run``, or a
``mkdtemp`` directory when that path is too long for a socket: never a predictable /tmp path), and
only there is a login trusted. On 127.0.0.1, where every local user can connect, logins need a
password (scram-sha-256): one generated at creation, kept in ``pg/password`` (0600, never logged)
and handed to runbook only.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from psycopg import sql

from runbook.errors import ConfigError

DB_NAME = "rag_memory"
DB_USER = "raguser"
SERVER_USER = "postgres"
_INSTALL_HINT = "apt-get install -y postgresql"
_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes on Linux, including the NUL
# Written at every start (a cluster made by an older runbook trusted every 127.0.0.1 login).
PG_HBA = """\
# written by runbook: the socket directory is 0700, TCP logins need the password in ../password
local all all trust
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
"""


class EmbeddedUnavailable(ConfigError):
    """No PostgreSQL server binaries (initdb, pg_ctl) on this machine."""


@dataclass(frozen=True)
class EmbeddedDatabase:
    """How to reach the embedded database; ``created`` is True when this call created it."""

    host: str
    port: int
    name: str
    user: str
    password: str | None = field(repr=False)
    created: bool = False

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{self.name}"


def find_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl: PATH first, else the newest /usr/lib/postgresql."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        bindir = Path(on_path).resolve().parent
        if (bindir / "initdb").exists():
            return bindir

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (0,)

    candidates = [p for p in Path("/usr/lib/postgresql").glob("*/bin")
                  if (p / "initdb").exists() and (p / "pg_ctl").exists()]
    return max(candidates, key=version) if candidates else None


def sample_data_sql() -> str:
    """The SQL that fills a fresh database at revision 0001 with RAG Memory sample data."""
    return resources.files("runbook").joinpath("data/sample_data.sql").read_text(encoding="utf-8")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class EmbeddedCluster:
    """A throwaway local PostgreSQL cluster under ``state_dir / "pg"``."""

    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir).absolute() / "pg"
        self.data_dir = self.root / "data"
        self.log_file = self.root / "postgres.log"
        self.port_file = self.root / "port"
        self._started = False
        self._as_root = os.geteuid() == 0
        self._temp_socket_dir: Path | None = None

    def _socket_dir(self) -> Path:
        """A 0700 directory for the server's socket: ``pg/run`` (inside the private ``pg``), or a
        fresh ``mkdtemp`` directory when that path is too long for a socket."""
        local = self.root / "run"
        if len(str(local / ".s.PGSQL.65535")) <= _SOCKET_PATH_MAX:
            local.mkdir(mode=0o700, exist_ok=True)
            local.chmod(0o700)
            return local
        made = Path(tempfile.mkdtemp(prefix="runbook-pg-"))  # 0700, a name nobody could plant
        self._temp_socket_dir = made
        return made

    def _running_socket_dir(self) -> Path:
        """The socket directory of the running server (line 5 of postmaster.pid)."""
        lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        return Path(lines[4]) if len(lines) > 4 and lines[4] else self.root / "run"

    def _password(self) -> str:
        """The generated password of the database role, created once (0600) beside the cluster."""
        path = self.root / "password"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            value = path.read_text(encoding="utf-8").strip()
            if value:
                return value
            path.unlink()
            return self._password()
        value = secrets.token_urlsafe(24)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(value + "\n")
        return value

    def ensure(self) -> EmbeddedDatabase:
        """Create, start and provision the cluster as needed; return how to reach the database."""
        bindir = find_bindir()
        if bindir is None:
            raise EmbeddedUnavailable(
                f"no PostgreSQL server binaries (initdb, pg_ctl) found: {_INSTALL_HINT}",
                hint=_INSTALL_HINT)
        from .log import REDACTOR

        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.root.chmod(0o700)
        with self._lock():
            self._prepare_dirs()
            password = self._password()
            REDACTOR.add(password)
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb(bindir)
            hba_changed = self._write_hba()
            port = self._running_port(bindir)
            if port is None:
                port = self._start(bindir)
            elif hba_changed:
                self._run([str(bindir / "pg_ctl"), "-D", str(self.data_dir), "reload"],
                          what="reload the embedded PostgreSQL")
            created = self._provision(port, password)
        return EmbeddedDatabase(host="127.0.0.1", port=port, name=DB_NAME, user=DB_USER,
                                password=password, created=created)

    def _write_hba(self) -> bool:
        """Write runbook's pg_hba.conf; True if it changed (a running server must reload it)."""
        path = self.data_dir / "pg_hba.conf"
        try:
            if path.read_text() == PG_HBA:
                return False
        except OSError:
            pass
        path.write_text(PG_HBA)  # an existing file keeps its owner (the server user) and mode
        return True

    def stop(self) -> None:
        """Stop the server if, and only if, this object started it."""
        if not self._started:
            return
        bindir = find_bindir()
        if bindir is not None:
            self._run([str(bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w",
                       "stop"], what="stop the embedded PostgreSQL")
        self._started = False
        if self._temp_socket_dir is not None:
            shutil.rmtree(self._temp_socket_dir, ignore_errors=True)
            self._temp_socket_dir = None

    def __enter__(self) -> EmbeddedDatabase:
        return self.ensure()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @contextmanager
    def _lock(self) -> Iterator[None]:
        # Two runs ensuring at once must not both initdb or both start the server.
        with open(self.root / "lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _prepare_dirs(self) -> None:
        if not self._as_root:
            return
        try:
            owner = pwd.getpwnam(SERVER_USER)
        except KeyError:
            raise EmbeddedUnavailable(
                f"running as root, but there is no '{SERVER_USER}' user to run PostgreSQL as: "
                f"{_INSTALL_HINT}", hint=_INSTALL_HINT) from None
        os.chown(self.root, owner.pw_uid, owner.pw_gid)
        for path in (self.root,):
            probe = subprocess.run(["runuser", "-u", SERVER_USER, "--", "test", "-w", str(path)],
                                   capture_output=True, check=False)
            if probe.returncode != 0:
                raise ConfigError(
                    f"{path} is not reachable by the '{SERVER_USER}' user that runs the embedded "
                    "PostgreSQL: a parent directory is not traversable",
                    hint=f"chmod o+x the parents of {path}, or use a state directory elsewhere")

    def _run(self, argv: Sequence[str], *, what: str) -> subprocess.CompletedProcess[str]:
        if self._as_root:
            argv = ["runuser", "-u", SERVER_USER, "--", *argv]
        result = subprocess.run(list(argv), capture_output=True, text=True, check=False,
                                stdin=subprocess.DEVNULL, cwd=self.root)
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
            log_hint = f" (server log: {self.log_file})" if self.log_file.exists() else ""
            raise ConfigError(f"could not {what}: {' / '.join(tail)}{log_hint}")
        return result

    def _initdb(self, bindir: Path) -> None:
        if self.data_dir.exists():  # a half-made data directory from an interrupted initdb
            shutil.rmtree(self.data_dir)
        self._run([str(bindir / "initdb"), "-D", str(self.data_dir), "--no-sync", "--auth-local=trust",
                   "--auth-host=scram-sha-256",
                   f"--username={SERVER_USER}", "-E", "UTF8", "--no-locale"],
                  what="create the embedded PostgreSQL cluster (initdb)")
        self.port_file.write_text(f"{_free_port()}\n")

    def _running_port(self, bindir: Path) -> int | None:
        status = self._status(bindir)
        if not status:
            return None
        pid_file = (self.data_dir / "postmaster.pid").read_text().splitlines()
        return int(pid_file[3]) if len(pid_file) > 3 else self._stored_port()

    def _status(self, bindir: Path) -> bool:
        argv = [str(bindir / "pg_ctl"), "-D", str(self.data_dir), "status"]
        if self._as_root:
            argv = ["runuser", "-u", SERVER_USER, "--", *argv]
        return subprocess.run(argv, capture_output=True, check=False,
                              stdin=subprocess.DEVNULL).returncode == 0

    def _stored_port(self) -> int:
        try:
            return int(self.port_file.read_text().strip())
        except (OSError, ValueError):
            return 0

    def _start(self, bindir: Path) -> int:
        port = self._stored_port()
        if not port or not _port_is_free(port):  # taken since creation: move, and remember
            port = _free_port()
            self.port_file.write_text(f"{port}\n")
        socket_dir = self._socket_dir()
        if self._as_root:  # a directory just made (pg/run inside the private pg, or mkdtemp's)
            owner = pwd.getpwnam(SERVER_USER)
            os.chown(socket_dir, owner.pw_uid, owner.pw_gid)
        options = shlex.join(["-c", "listen_addresses=127.0.0.1", "-c", f"port={port}",
                              "-k", str(socket_dir), "-c", "unix_socket_permissions=0700",
                              "-c", "fsync=off"])
        self._run([str(bindir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file),
                   "-w", "-o", options, "start"], what="start the embedded PostgreSQL")
        self._started = True
        return port

    def _provision(self, port: int, password: str) -> bool:
        """Role (with the password) and database, over the private socket as the superuser."""
        with psycopg.connect(host=str(self._running_socket_dir()), port=port, user=SERVER_USER,
                             dbname="postgres", autocommit=True, connect_timeout=10) as conn:
            role = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (DB_USER,))
            if role.fetchone() is None:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(DB_USER)))
            # The verifier, computed here: the password itself never reaches the server's log.
            verifier = conn.pgconn.encrypt_password(password.encode(), DB_USER.encode(), b"scram-sha-256")
            # CREATEDB: `runbook local rehearse` restores a copy into a scratch database beside it.
            conn.execute(sql.SQL("ALTER ROLE {} LOGIN CREATEDB PASSWORD {}").format(
                sql.Identifier(DB_USER), sql.Literal(verifier.decode())))
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                            (DB_NAME,)).fetchone() is not None:
                return False
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(DB_NAME), sql.Identifier(DB_USER)))
            return True


def load_sample(ctx: Any, migrations: Any) -> None:
    """A fresh embedded database gets the example data at the first revision: the example
    application's only (``runbook init``'s inventory runs your own project on it, starting empty)."""
    from . import postgres
    from .shipped import is_example

    if not is_example(getattr(migrations, "ini", None)):
        return
    first = [r for r in migrations.script.walk_revisions() if not r.down_revision]
    if not first:
        return
    rev = first[0].revision
    eng = postgres.engine(ctx.endpoint, purpose=f"sample {ctx.run_id}")
    try:
        migrations.run("upgrade", eng, rev)
    finally:
        eng.dispose()
    with ctx.connect("sample") as conn:
        conn.execute(sample_data_sql())
    ctx.log.info("sample_data_loaded", revision=rev)
