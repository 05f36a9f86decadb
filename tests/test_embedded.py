"""The embedded throwaway PostgreSQL of ``runbook local migrate``, against real server binaries."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from runbook import embedded
from runbook.embedded import EmbeddedCluster, EmbeddedUnavailable
from runbook.errors import ConfigError


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A state directory the postgres user can reach (pytest's tmp_path parents are 0700)."""
    base = Path(tempfile.mkdtemp(prefix="runbook-embedded-"))
    base.chmod(0o755)
    try:
        yield base / ".runbook"
    finally:
        bindir = embedded.find_bindir()
        data_dir = base / ".runbook" / "pg" / "data"
        if bindir is not None and (data_dir / "postmaster.pid").exists():
            argv = [str(bindir / "pg_ctl"), "-D", str(data_dir), "-m", "immediate", "stop"]
            if os.geteuid() == 0:
                argv = ["runuser", "-u", "postgres", "--", *argv]
            subprocess.run(argv, capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)


def _is_running(cluster: EmbeddedCluster) -> bool:
    return (cluster.data_dir / "postmaster.pid").exists()


def test_ensure_creates_starts_and_stops(state_dir: Path) -> None:
    """ensure() creates the cluster and database (created=True), stop() stops what it started."""
    cluster = EmbeddedCluster(state_dir)
    db = cluster.ensure()
    assert (db.host, db.name, db.user, db.created) == ("127.0.0.1", "rag_memory", "raguser", True)
    assert db.password and db.password not in repr(db)
    assert (state_dir / "pg" / "port").read_text().strip() == str(db.port)
    with psycopg.connect(host=db.host, port=db.port, dbname=db.name, user=db.user,
                         password=db.password) as conn:
        row = conn.execute("SELECT current_user, current_database()").fetchone()
    assert row == ("raguser", "rag_memory")
    cluster.stop()
    assert not _is_running(cluster)


def test_second_ensure_reuses_the_database(state_dir: Path) -> None:
    """A second ensure() on the running cluster reports created=False and keeps the data."""
    with EmbeddedCluster(state_dir) as first:
        with psycopg.connect(host=first.host, port=first.port, dbname=first.name,
                             user=first.user, password=first.password) as conn:
            conn.execute("CREATE TABLE kept (id int)")
        second_cluster = EmbeddedCluster(state_dir)
        second = second_cluster.ensure()
        assert (second.created, second.port) == (False, first.port)
        second_cluster.stop()  # did not start it: must leave it running
        with psycopg.connect(host=second.host, port=second.port, dbname=second.name,
                             user=second.user, password=second.password) as conn:
            assert conn.execute("SELECT to_regclass('kept')::text").fetchone() == ("kept",)


def test_restart_after_stop_keeps_the_database(state_dir: Path) -> None:
    """After a stop, ensure() starts the same cluster again without recreating the database."""
    with EmbeddedCluster(state_dir) as first:
        assert first.created
    cluster = EmbeddedCluster(state_dir)
    again = cluster.ensure()
    try:
        assert again.created is False
        assert _is_running(cluster)
    finally:
        cluster.stop()


def test_sample_data_sql_is_shipped() -> None:
    """The sample data SQL ships inside the package and fills the three tables."""
    text = embedded.sample_data_sql()
    for table in ("collections", "documents", "chunks"):
        assert f"INSERT INTO {table}" in text


def test_missing_binaries_raise_embedded_unavailable(
        state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without initdb/pg_ctl, ensure() raises one line naming the package to install."""
    monkeypatch.setattr(embedded, "find_bindir", lambda: None)
    with pytest.raises(EmbeddedUnavailable) as caught:
        EmbeddedCluster(state_dir).ensure()
    assert isinstance(caught.value, ConfigError)
    assert "apt-get install -y postgresql" in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the cluster to the postgres user")
def test_unreachable_state_dir_is_a_config_error(tmp_path: Path) -> None:
    """As root, a state dir the postgres user cannot traverse is refused with a clear error."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="not reachable by the 'postgres' user"):
        EmbeddedCluster(private / ".runbook").ensure()


def test_tcp_login_without_the_password_is_refused(state_dir: Path) -> None:
    """Any local user can reach 127.0.0.1: without the generated password neither raguser nor postgres gets in."""
    with EmbeddedCluster(state_dir) as db:
        for user in (db.user, "postgres"):
            with pytest.raises(psycopg.OperationalError, match="password"):
                psycopg.connect(host=db.host, port=db.port, dbname=db.name, user=user,
                                connect_timeout=5).close()
            with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
                psycopg.connect(host=db.host, port=db.port, dbname=db.name, user=user,
                                password="guess", connect_timeout=5).close()


def test_password_and_socket_directory_are_private(state_dir: Path) -> None:
    """The generated password is a 0600 file under .runbook/pg; the socket sits in a 0700 directory."""
    cluster = EmbeddedCluster(state_dir)
    db = cluster.ensure()
    try:
        secret = state_dir / "pg" / "password"
        assert secret.read_text().strip() == db.password
        assert secret.stat().st_mode & 0o777 == 0o600
        pid_lines = (cluster.data_dir / "postmaster.pid").read_text().splitlines()
        socket_dir = Path(pid_lines[4])
        assert socket_dir.stat().st_mode & 0o777 == 0o700
        assert (state_dir / "pg").stat().st_mode & 0o777 == 0o700
    finally:
        cluster.stop()


def test_long_state_path_gets_a_fresh_private_socket_directory(tmp_path: Path) -> None:
    """A state path too long for a socket gets a mkdtemp directory (0700, unpredictable), removed at stop."""
    base = Path(tempfile.mkdtemp(prefix="runbook-embedded-"))
    base.chmod(0o755)
    deep = base / ("d" * 90)
    deep.mkdir(mode=0o755)
    cluster = EmbeddedCluster(deep / ".runbook")
    try:
        cluster.ensure()
        socket_dir = Path((cluster.data_dir / "postmaster.pid").read_text().splitlines()[4])
        assert not str(socket_dir).startswith(str(deep))
        assert socket_dir.name.startswith("runbook-pg-") and len(socket_dir.name) > len("runbook-pg-")
        assert socket_dir.stat().st_mode & 0o777 == 0o700
        cluster.stop()
        assert not socket_dir.exists()
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
