"""Running PostgreSQL client programs on the database host without exposing the password.

The password goes into a 0600 PGPASSFILE written for the command (over SFTP when remote) and removed
right after it; only the file's path is on the command line.
"""

from __future__ import annotations

import contextlib
import secrets
from typing import Any, Iterator

from .postgres import pgpass_line


def backup_dir(ctx: Any) -> str:
    from .backups import on_host

    return on_host(ctx.backup_dir, ctx.transport)


@contextlib.contextmanager
def pg_env(ctx: Any) -> Iterator[dict[str, str]]:
    """Environment for a PostgreSQL client program run on the host: its PGPASSFILE, and a
    PGAPPNAME naming runbook, the step and the run, so its session can be found and ended."""
    from .postgres import APP_NAME

    db = ctx.database
    named = {"PGAPPNAME": f"{APP_NAME}:{ctx.step or 'host'} {ctx.run_id}"[:63]}
    if not db.password:
        yield named
        return
    home = ctx.transport.home.rstrip("/")
    path = f"{home}/.runbook-pgpass-{ctx.run_id}-{secrets.token_hex(4)}"
    ctx.transport.put_bytes(pgpass_line("*", db.port, "*", "*", db.password).encode(), path, mode=0o600)
    try:
        yield {**named, "PGPASSFILE": path}
    finally:
        with contextlib.suppress(Exception):
            ctx.transport.remove(path)


def remove_pgpass_of(ctx: Any, run_id: str) -> int:
    """Remove the password files a killed run ``run_id`` left on the host; returns how many."""
    from .journal import RUN_ID
    from .transports.base import quote

    if not RUN_ID.fullmatch(run_id):  # it goes into a glob
        return 0
    home = ctx.transport.home.rstrip("/")
    gone = ctx.transport.run(f"rm -fv -- {quote(home)}/.runbook-pgpass-{run_id}-*", check=False, timeout=30)
    return len(gone.stdout.strip().splitlines()) if gone.ok else 0


def bin_path(ctx: Any, program: str) -> str:
    return f"{ctx.pg_bin}/{program}" if ctx.pg_bin else program


def cleanup_trap(*paths: str) -> str:
    """Shell lines that remove ``paths`` and the command's PGPASSFILE however the script ends
    (a signal from the remote ``timeout``, or from sshd when the session is torn down, included)."""
    from .transports.base import quote

    files = " ".join(quote(p) for p in paths)
    on_exit = f"rm -f -- {files} ${{PGPASSFILE:+\"$PGPASSFILE\"}}"
    return f"trap {quote(on_exit)} EXIT; trap 'exit 129' HUP INT TERM PIPE"
