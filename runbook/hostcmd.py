"""Running PostgreSQL client programs on the database host without exposing the password.

The password goes into a 0600 PGPASSFILE that the command's own script writes from its stdin and
removes when it ends (``transports.base.HostSecret``); only the file's path is in its environment.
"""

from __future__ import annotations

from typing import Any

from .postgres import pgpass_line
from .transports.base import HostSecret

# Shell function ``h [FILE...]``: ``<sha256> <name>`` lines (``*`` before the name with OpenSSL),
# or of its stdin. OpenSSL's SHA-256 uses the CPU's SHA extensions: ~4x coreutils' sha256sum
# (bench/README.md, measure 4), which is the fallback where openssl is missing.
HASHER = ("if openssl dgst -sha256 -r /dev/null >/dev/null 2>&1; then "
          "h() { openssl dgst -sha256 -r \"$@\"; }; else h() { sha256sum \"$@\"; }; fi")


def backup_dir(ctx: Any) -> str:
    from .backups import on_host

    return on_host(ctx.backup_dir, ctx.transport)


def pg_env(ctx: Any) -> tuple[dict[str, str], HostSecret | None]:
    """Environment for a PostgreSQL client program run on the host: a PGAPPNAME naming runbook,
    the step and the run (so its session can be found and ended), and the password as a
    ``HostSecret``: a 0600 PGPASSFILE the command's own script writes from its stdin and removes."""
    from .postgres import APP_NAME

    db = ctx.database
    named = {"PGAPPNAME": f"{APP_NAME}:{ctx.step or 'host'} {ctx.run_id}"[:63]}
    if not db.password:
        return named, None
    return named, HostSecret("PGPASSFILE", pgpass_line("*", db.port, "*", "*", db.password).encode())


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
