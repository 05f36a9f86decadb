"""Secrets never rest in a file, a log or a process list, and never go to another server.

The password reaches pg_dump/psql on the host only through a PGPASSFILE that is 0600 from its
creation; the journal and run log are redacted; a database name or user holding ``=``, spaces or
quotes is only a name (libpq would otherwise read ``-d "x host=evil"`` as a connection string).
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote, quote_plus

import psycopg
import pytest
from psycopg import sql

from tests.fixtures.pg import PgDatabase, PgServer
from tests.fixtures.project import Project, ProcessWatcher, host_dir
from tests.fixtures.sshd import SSHServer


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def other_server(pg_server: PgServer) -> Iterator[tuple[int, Path]]:
    """A second PostgreSQL cluster (port, log) that would accept raguser's password, logging every connection."""
    base = Path(tempfile.mkdtemp(prefix="runbook-pg-other-"))
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    if as_root:
        entry = pwd.getpwnam("postgres")
        os.chown(base, entry.pw_uid, entry.pw_gid)
    data, log = base / "data", base / "postgres.log"
    port = _free_port()
    subprocess.run([*prefix, str(pg_server.bindir / "initdb"), "-D", str(data), "--no-sync", "-U", "postgres",
                    "--auth-local=trust", "--auth-host=scram-sha-256"], check=True, capture_output=True, cwd=base)
    opts = shlex.join(["-c", "listen_addresses=127.0.0.1", "-c", f"port={port}", "-k", str(base),
                       "-c", "fsync=off", "-c", "log_connections=on"])
    subprocess.run([*prefix, str(pg_server.bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-o", opts,
                    "start"], check=True, capture_output=True, cwd=base)
    try:
        with psycopg.connect(host=str(base), port=port, user="postgres", dbname="postgres", autocommit=True) as c:
            c.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(pg_server.user), sql.Literal(pg_server.password)))
            c.execute(sql.SQL("CREATE DATABASE rag OWNER {}").format(sql.Identifier(pg_server.user)))
        yield port, log
    finally:
        subprocess.run([*prefix, str(pg_server.bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, cwd=base)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def role_db(pg_server: PgServer, request: pytest.FixtureRequest) -> Iterator[object]:
    """A factory: (role, password, database name) -> a PgDatabase owned by that new role; all dropped after."""
    made: list[tuple[str, str]] = []

    def make(role: str, password: str, name: str) -> PgDatabase:
        with pg_server.admin() as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(role)))
        made.append((role, name))
        return PgDatabase(server=replace(pg_server, user=role, password=password), name=name)

    try:
        yield make
    finally:
        with pg_server.admin() as conn:
            for role, name in made:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def _project(tmp_path: Path, db: PgDatabase, sshd: SSHServer, request: pytest.FixtureRequest) -> Project:
    backups = host_dir("runbook-backups-", sshd.user)
    request.addfinalizer(lambda: shutil.rmtree(backups, ignore_errors=True))
    proj = Project(tmp_path, db, sshd, backups / "rag_memory")
    proj.write_inventory()
    return proj


def test_database_name_and_user_holding_conninfo_are_just_names(
        tmp_path: Path, sshd: SSHServer, role_db: object, other_server: tuple[int, Path],
        request: pytest.FixtureRequest) -> None:
    """A database 'rag host=127.0.0.1 port=<other>' and a user with quotes and '=': migrate, backup and restore reach
    only that database; the other server (which would accept the password) sees no connection."""
    other_port, other_log = other_server
    tag = uuid.uuid4().hex[:6]
    role = f"o'rag \"u\" user=x {tag}"
    name = f"rag host=127.0.0.1 port={other_port} dbname=rag '{tag}'"
    db = role_db(role, "S3cr%t p@ss:w0rd/x", name)  # type: ignore[operator]
    project = _project(tmp_path, db, sshd, request)
    project.start_at_0002()
    project.add_revision("0003", "0002", 'op.add_column("collections", sa.Column("slug", sa.Text()))', "pass",
                         verify=[{"name": "fails", "sql": "SELECT 1", "expect": 0}])
    before = project.state()
    seen_before = other_log.read_text()
    result = project.run("prod", "migrate")  # backup (pg_dump), then the automatic restore (psql)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "restored from the backup" in result.stderr
    assert project.state() == before
    again = project.run("prod", "backup")
    assert again.returncode == 0, again.stderr
    assert other_log.read_text() == seen_before, "the other server saw a connection"
    assert "connection received: host=127.0.0.1" not in other_log.read_text()


def _forms(secret: str) -> list[str]:
    return [secret, quote(secret), quote(secret, safe=""), quote_plus(secret)]


class ModeWatcher:
    """Polls the SSH user's home for PGPASSFILEs and records every mode it sees them at."""

    def __init__(self, home: str) -> None:
        self.home = home
        self.modes: dict[str, set[int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for entry in os.scandir(self.home):
                if entry.name.startswith(".runbook-pgpass-"):
                    try:
                        mode = entry.stat(follow_symlinks=False).st_mode & 0o777
                    except FileNotFoundError:
                        continue
                    self.modes.setdefault(entry.name, set()).add(mode)

    def __enter__(self) -> "ModeWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


LEAK = """
import os
raise RuntimeError("cannot reach postgresql://raguser:" + os.environ["PRODUCTION_PASSWORD"] + "@db/x")
"""


def test_long_password_rests_nowhere(project: Project) -> None:
    """A failing migrate whose error quotes the password: it is in no .runbook file (journal included), no output,
    no host file afterwards, no process's command line; the host's PGPASSFILE is only ever seen at 0600."""
    assert project.ssh is not None
    secret = project.db.password
    assert set("%@:/ ") <= set(secret)
    project.start_at_0002()
    project.add_revision("0003", "0002", 'op.add_column("collections", sa.Column("slug", sa.Text()))', "pass",
                         verify=[{"name": "fails", "sql": "SELECT 1", "expect": 0}])
    project.add_revision("0004", "0003", LEAK)
    with ProcessWatcher() as procs, ModeWatcher(project.ssh.home) as modes:
        result = project.run("prod", "migrate")
        backup = project.run("prod", "backup")
    assert result.returncode == 1, result.stdout + result.stderr
    assert backup.returncode == 0, backup.stderr
    # the home is shared with other test sessions: only this project's runs count
    ours = {name: seen for name, seen in modes.modes.items()
            if any(name.startswith(f".runbook-pgpass-{log.stem}-") for log in project.run_logs())}
    assert ours, "the password files were never seen"
    assert all(seen == {0o600} for seen in ours.values()), ours
    output = result.stdout + result.stderr + backup.stdout + backup.stderr
    assert "cannot reach postgresql://raguser:***@db/x" in output
    files = [p for p in (project.dir / ".runbook").rglob("*") if p.is_file()]
    journal = [p for p in files if p.suffix == ".json"]
    assert journal and any("***@db/x" in p.read_text() for p in journal)
    on_host = [n for n in os.listdir(project.ssh.home)
               if any(n.startswith(f".runbook-pgpass-{log.stem}-") for log in project.run_logs())]
    assert on_host == []
    for form in _forms(secret):
        assert form not in output
        for path in files:
            assert form.encode() not in path.read_bytes(), path
        for path in project.backup_dir.iterdir():
            assert form.encode() not in path.read_bytes(), path
        assert not [cmd for cmd in procs.seen if form in cmd]


def test_one_character_password_garbles_nothing(
        tmp_path: Path, sshd: SSHServer, role_db: object, request: pytest.FixtureRequest) -> None:
    """With the password 'x', output keeps 'next', the host-key fingerprint and the suggested command intact."""
    tag = uuid.uuid4().hex[:6]
    db = role_db(f"rb_short_{tag}", "x", f"t_short_{tag}")  # type: ignore[operator]
    project = _project(tmp_path, db, sshd, request)
    project.upgrade_to("0001")
    ok = project.run("prod", "migrate")
    assert ok.returncode == 0, ok.stderr
    assert "***" not in ok.stdout + ok.stderr
    assert f"prod/db1: {db.name} at 0002, verified" in ok.stdout + ok.stderr
    known = tmp_path / "known_hosts.other"
    known.write_text(f"[{sshd.host}]:{sshd.port + 1} {sshd.host_pubkey_line}\n")
    host = project.environment()["hosts"][0]
    host["ssh"]["known_hosts"] = str(known)
    project.write_inventory(hosts=[host])
    refused = project.run("prod", "migrate")
    assert refused.returncode == 2
    import base64
    import hashlib

    blob = base64.b64decode(sshd.host_pubkey_line.split()[1])
    fingerprint = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    assert fingerprint in refused.stderr
    assert (f"runbook: next: check that fingerprint out of band, then: ssh-keyscan -p {sshd.port} -t ssh-ed25519 "
            f"{sshd.host} >> {known}") in refused.stderr
    assert "***" not in refused.stderr
    assert re.search(r"\bnext\b", refused.stderr)
