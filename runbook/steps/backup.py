"""``backup``: a verified ``pg_dump`` on the database host, in one host command.

``backup.format: custom`` (the default): ``pg_dump -Fc``, one file ``<name>.dump``. ``directory``:
``pg_dump -Fd -j backup.jobs``, a folder ``<name>.dumpdir`` hashed file by file as it is written
(``dumpdir``). Either is written under ``<name>.partial`` first, checked with ``pg_restore --list``,
then renamed, so a dump with the final name is always complete and readable; mode 0600 (0700 for
a folder) from the start (umask 077); its size and sha256 are recorded in the run journal and in a
``.sha256`` file beside it (for a folder: the manifest of its files, whose own sha256 is recorded).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import sys

from ..context import Backup, Context
from ..progress import Progress
from ..errors import BackupError, CommandFailed, CommandTimedOut
from ..migrations import fmt
from .. import dumpcustom, dumpdir
from ..postgres import pg_dump_cmd, pg_restore_list_cmd
from ..transports.base import quote
from ..hostcmd import backup_dir, pg_env


def take(ctx: Context, label: str = "") -> Backup:
    """Dump the database now; returns the verified backup."""
    revision = fmt(ctx.current_at_start()).replace(",", "+")
    for _ in range(3):
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        try:
            return _dump(ctx, label, revision, stamp)
        except _NameTaken:  # another backup of this database and revision within the same second
            ctx.sleep(1.0)
    raise BackupError("three backups named alike in a row: is another process writing to the backup folder?",
                      step="backup", host=ctx.host.name)


class _NameTaken(Exception):
    pass


NAME_TAKEN = 75  # EX_TEMPFAIL


def _dump(ctx: Context, label: str, revision: str, stamp: str) -> Backup:
    db = ctx.database
    folder = backup_dir(ctx)
    directory = ctx.env.config.backup.format == "directory"
    name = f"{db.name}_{ctx.env.name}_{stamp}_{revision}{label}{dumpdir.SUFFIX if directory else '.dump'}"
    path = f"{folder}/{name}"
    partial = path + ".partial"
    # pg_dump -Fd writes the folder itself; pg_dump -Fc writes to stdout, into the same-pass hasher
    dump = pg_dump_cmd(db.host, db.port, db.name, db.user, partial if directory else None, ctx.pg_bin,
                       directory=directory, jobs=ctx.env.config.backup.jobs)
    script = (dumpdir if directory else dumpcustom).dump_script(
        folder=folder, path=path, name_taken=NAME_TAKEN, pg_dump=dump,
        pg_restore_list=pg_restore_list_cmd(partial, ctx.pg_bin))
    try:
        env, secret = pg_env(ctx)
        with progress(ctx, "pg_dump", partial, directory=directory):
            if ctx.kinds & PARSES_SQL:
                _prewarm()
            result = ctx.transport.run(script, env=env, secret=secret, timeout=ctx.env.config.backup.timeout)
    except CommandFailed as exc:
        if exc.result is not None and exc.result.exited == NAME_TAKEN:
            raise _NameTaken() from None
        tail = exc.result.tail(5) if exc.result is not None else str(exc)
        raise BackupError(f"pg_dump of {db.name} on {ctx.host.name} failed: {tail}",
                          step="backup", host=ctx.host.name) from exc
    except CommandTimedOut as exc:
        raise BackupError(f"pg_dump of {db.name} on {ctx.host.name} timed out", step="backup",
                          host=ctx.host.name) from exc
    try:
        digest, size = result.stdout.split()[-2:]
        backup = Backup(path, int(size), digest, revision, stamp)
    except ValueError as exc:
        raise BackupError(f"backup on {ctx.host.name} did not report its checksum: {result.stdout!r}",
                          step="backup", host=ctx.host.name) from exc
    if directory:
        late = next((ln.split()[1] for ln in result.stdout.splitlines() if ln.startswith("hashed_after_dump ")), "")
        if late.isdigit():
            ctx.log.info("backup_hashed", backup=path, after_dump_bytes=int(late))
    ctx.backups.append(backup)
    return backup


# the steps that parse the migrations' SQL (the lint gate, the lock pre-flight)
PARSES_SQL = frozenset({"upgrade", "check_locks", "rehearse"})


def _prewarm() -> None:
    """Import pglast (check_locks' SQL parser, ~0.15 s of CPU) while this process only waits for
    pg_dump on the host, instead of on the run's critical path (bench/README.md). Only for a
    playbook that will parse SQL: a plain backup would take that CPU from pg_dump."""
    import threading

    def work() -> None:
        try:
            import pglast  # noqa: F401
        except Exception:  # noqa: BLE001 - the real import reports it, where it is needed
            pass

    threading.Thread(target=work, name="prewarm", daemon=True).start()


def progress(ctx: Context, label: str, path: str | None = None, *, directory: bool = False) -> Progress:
    """Elapsed time (and bytes written to ``path``, a file or a folder) on a TTY while a long
    command runs."""
    size = "du -sb {} 2>/dev/null | cut -f1" if directory else "stat -c %s {} 2>/dev/null"

    def measure() -> int | None:
        out = ctx.transport.run(size.format(quote(str(path))), check=False, timeout=5)
        return int(out.stdout.strip()) if out.ok and out.stdout.strip().isdigit() else None

    enabled = sys.stderr.isatty() and not ctx.options.json
    return Progress(label, measure=measure if path else None, enabled=enabled)


def run(ctx: Context, params: Any) -> dict[str, Any]:
    backup = take(ctx)
    ctx.backup = backup
    ctx.journal.host(ctx.host.name)["backup"] = backup.fact()
    ctx.journal.save()
    return backup.fact()
