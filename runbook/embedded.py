"""The embedded throwaway PostgreSQL behind ``runbook local migrate``.

``EmbeddedCluster(state_dir)`` keeps one local cluster under ``state_dir / "pg"`` (data directory,
socket directory, server log and the port chosen at creation): ``ensure()`` creates it if missing
(initdb), starts it if it is not running and creates the ``raguser`` role and ``rag_memory``
database if missing; ``stop()`` stops the server only if this object started it, so a server
another run or a person started is left alone. Authentication is ``trust`` on the socket and on
127.0.0.1: the cluster holds sample data only and listens on loopback. As root, the server runs as
the ``postgres`` user through ``runuser``, as PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pwd
import re
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

import psycopg
from psycopg import sql

from runbook.errors import ConfigError

DB_NAME = "rag_memory"
DB_USER = "raguser"
SERVER_USER = "postgres"
_INSTALL_HINT = "apt-get install -y postgresql"
_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes on Linux, including the NUL


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

    @property
    def socket_dir(self) -> Path:
        """``pg/run``, or a short directory under the temp dir when that path is too long."""
        local = self.root / "run"
        if len(str(local / ".s.PGSQL.65535")) <= _SOCKET_PATH_MAX:
            return local
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"runbook-pg-{digest}"

    def ensure(self) -> EmbeddedDatabase:
        """Create, start and provision the cluster as needed; return how to reach the database."""
        bindir = find_bindir()
        if bindir is None:
            raise EmbeddedUnavailable(
                f"no PostgreSQL server binaries (initdb, pg_ctl) found: {_INSTALL_HINT}",
                hint=_INSTALL_HINT)
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock():
            self._prepare_dirs()
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb(bindir)
            port = self._running_port(bindir)
            if port is None:
                port = self._start(bindir)
            created = self._provision(port)
        return EmbeddedDatabase(host="127.0.0.1", port=port, name=DB_NAME, user=DB_USER,
                                password=None, created=created)

    def stop(self) -> None:
        """Stop the server if, and only if, this object started it."""
        if not self._started:
            return
        bindir = find_bindir()
        if bindir is not None:
            self._run([str(bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w",
                       "stop"], what="stop the embedded PostgreSQL")
        self._started = False

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
        socket_dir = self.socket_dir
        socket_dir.mkdir(parents=True, exist_ok=True)
        if not self._as_root:
            return
        try:
            owner = pwd.getpwnam(SERVER_USER)
        except KeyError:
            raise EmbeddedUnavailable(
                f"running as root, but there is no '{SERVER_USER}' user to run PostgreSQL as: "
                f"{_INSTALL_HINT}", hint=_INSTALL_HINT) from None
        for path in (self.root, socket_dir):
            os.chown(path, owner.pw_uid, owner.pw_gid)
            path.chmod(0o700)
        for path in (self.root, socket_dir):
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
        self._run([str(bindir / "initdb"), "-D", str(self.data_dir), "--no-sync", "-A", "trust",
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
        options = shlex.join(["-c", "listen_addresses=127.0.0.1", "-c", f"port={port}",
                              "-k", str(self.socket_dir), "-c", "fsync=off"])
        self._run([str(bindir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file),
                   "-w", "-o", options, "start"], what="start the embedded PostgreSQL")
        self._started = True
        return port

    def _provision(self, port: int) -> bool:
        with psycopg.connect(host="127.0.0.1", port=port, user=SERVER_USER, dbname="postgres",
                             autocommit=True, connect_timeout=10) as conn:
            role = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (DB_USER,))
            if role.fetchone() is None:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(DB_USER)))
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                            (DB_NAME,)).fetchone() is not None:
                return False
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(DB_NAME), sql.Identifier(DB_USER)))
            return True
