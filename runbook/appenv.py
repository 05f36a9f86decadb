"""What an application's env.py sees when runbook runs it in-process.

A URL of the database (through runbook's tunnel) without the password, in ``sqlalchemy.url`` and in
the variable ``alembic.url_env`` names; ``PGPASSFILE`` (a 0600 file of this run), ``PGOPTIONS`` (the
session settings) and ``PGAPPNAME`` in ``os.environ`` only around the Alembic call, so libpq-based
drivers pick them up; the ini's relative paths taken from its folder; and a check, before any
revision runs, that the connection env.py configured is the one runbook targets.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import MigrationError


def choose_driver(raw_url: str | None) -> str:
    """``postgresql+<dbapi>``: the URL's DBAPI if importable; psycopg (3) otherwise.

    ``postgresql://`` means psycopg2 to SQLAlchemy; runbook ships psycopg 3, so a URL naming no
    driver, or psycopg2 when it is not installed, is handed over as ``postgresql+psycopg://``.
    """
    import importlib.util

    dbapi = ""
    if raw_url:
        m = re.match(r"\s*postgres(?:ql)?(?:\+(\w+))?://", raw_url)
        dbapi = (m.group(1) or "") if m else ""
    if dbapi in ("", "psycopg2", "psycopg2cffi") and importlib.util.find_spec(dbapi or "psycopg2") is None:
        dbapi = "psycopg"
    return f"postgresql+{dbapi}" if dbapi else "postgresql"


def database_url(driver: str, endpoint: Any) -> str:
    """A SQLAlchemy URL of ``endpoint`` without the password (libpq reads it from PGPASSFILE)."""
    from sqlalchemy.engine import URL

    if endpoint is None:
        return f"{driver}://"
    url = URL.create(driver, username=endpoint.user, host=endpoint.host, port=endpoint.port,
                     database=endpoint.dbname)
    return url.render_as_string(hide_password=False)


def pg_options(settings: dict[str, str]) -> str:
    return " ".join(f"-c {k}={v}" for k, v in settings.items())


@contextlib.contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of a block, then restore them exactly."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


SECRETS_DIR = "secrets"


def secrets_dir(state_dir: Path) -> Path:
    """``.runbook/secrets``: 0700, where a run's password files live while it needs them."""
    folder = state_dir / SECRETS_DIR
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)  # an existing folder too
    return folder


@contextlib.contextmanager
def local_pgpass(endpoint: Any, state_dir: Path, run_id: str) -> Iterator[str]:
    """A 0600 password file for ``endpoint`` on this machine, named by the run, removed after the
    block (an interrupt included); ``sweep`` removes what a killed run left."""
    from .postgres import pgpass_line

    folder = secrets_dir(state_dir)
    fd, path = tempfile.mkstemp(dir=folder, prefix=f"pgpass-{run_id}-")  # 0600, O_EXCL
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(pgpass_line("*", endpoint.port, "*", endpoint.user, endpoint.password))
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def sweep(state_dir: Path, run_id: str) -> list[str]:
    """Remove the password files run ``run_id`` left here (it was killed); returns their names."""
    folder = state_dir / SECRETS_DIR
    removed = []
    for path in folder.glob(f"pgpass-{run_id}-*") if folder.is_dir() else ():
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(path.name)
    return removed


def absolute_paths(cfg: Any, base: Path) -> None:
    """Relative paths of the ini are relative to its folder (where the application runs alembic)."""
    def absolute(value: str) -> str:
        value = value.strip()
        if not value or os.path.isabs(value) or ("://" in value):
            return value
        if ":" in value and not os.path.exists(base / value):  # "package:folder" resource form
            return value
        return str(base / value)

    loc = cfg.get_main_option("script_location")
    if loc:
        cfg.set_main_option("script_location", absolute(loc).replace("%", "%%"))
    versions = cfg.get_version_locations_list() if cfg.get_main_option("version_locations") else None
    prepend = cfg.get_prepend_sys_paths_list() if cfg.get_main_option("prepend_sys_path") else None
    if versions is None and prepend is None:
        return
    # Rewritten one per line, so the separator no longer matters (nor its deprecation warnings).
    cfg.set_main_option("path_separator", "newline")
    if versions:
        cfg.set_main_option("version_locations", "\n".join(absolute(v) for v in versions if v)
                            .replace("%", "%%"))
    if prepend:
        cfg.set_main_option("prepend_sys_path", "\n".join(absolute(p) for p in prepend if p)
                            .replace("%", "%%"))


def check_connection(connection: Any, expect: Any) -> None:
    """Refuse to migrate if env.py connected somewhere else than the database runbook targets."""
    if connection is None or expect is None:
        return
    try:
        info = connection.connection.dbapi_connection.info
        host, port, dbname = info.host, int(info.port), info.dbname
    except Exception:  # not a libpq driver: nothing to compare
        return
    if (str(port), dbname) != (str(expect.port), expect.dbname) or host not in (expect.host, "localhost"):
        raise MigrationError(
            f"env.py connected to {host}:{port}/{dbname}, not to {expect.dbname} through runbook's "
            f"tunnel: nothing was run; set alembic.url_env to the variable env.py reads its URL from")
