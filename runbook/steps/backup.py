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
from .. import dumpdir
from ..postgres import pg_dump_cmd, pg_restore_list_cmd
from ..transports.base import quote
from ..hostcmd import HASHER, backup_dir, cleanup_trap, pg_env


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
    if directory:
        script = dumpdir.dump_script(
            folder=folder, path=path, name_taken=NAME_TAKEN,
            pg_dump=pg_dump_cmd(db.host, db.port, db.name, db.user, partial, ctx.pg_bin, directory=True,
                                jobs=ctx.env.config.backup.jobs),
            pg_restore_list=pg_restore_list_cmd(partial, ctx.pg_bin))
    else:
        script = _custom_script(ctx, folder, name)
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


def _custom_script(ctx: Context, folder: str, name: str) -> str:
    """The host script of a ``pg_dump -Fc``: the dump hashed in the same pass as it is written,
    ``pg_restore --list``, rename.

    pg_dump writes to a pipe, ``tee`` copies it into the file and into the hasher, so the file is
    never read back (a dump bigger than the host's memory would be read from disk again). Written to
    a pipe, pg_dump cannot go back to store the data offsets in the table of contents: pg_restore
    then finds each table's data by scanning the file, which is a regular file when it restores it,
    with ``-j`` too (docs/benchmarks.md, measure 14). pg_dump's and tee's success are markers beside
    the file (``sh`` has no ``pipefail``)."""
    db = ctx.database
    path = f"{folder}/{name}"
    partial = path + ".partial"
    summed, dumped, written = partial + ".sum", partial + ".dumped", partial + ".written"
    return "; ".join([
        "set -e",
        "umask 077",
        f"[ ! -e {quote(path)} ] || exit {NAME_TAKEN}",
        cleanup_trap(partial, summed, dumped, written),
        f"mkdir -p {quote(folder)}",
        HASHER,
        f"{{ {pg_dump_cmd(db.host, db.port, db.name, db.user, None, ctx.pg_bin)} && : > {quote(dumped)}; }} | "
        f"{{ tee {quote(partial)} && : > {quote(written)}; }} | h > {quote(summed)}",
        f"[ -e {quote(dumped)} ] || {{ echo 'runbook: pg_dump failed' >&2; exit 1; }}",
        f"[ -e {quote(written)} ] || {{ echo 'runbook: writing the dump failed (tee)' >&2; exit 1; }}",
        f"sum=$(cut -d' ' -f1 < {quote(summed)})",
        "[ ${#sum} -eq 64 ] || { echo 'runbook: the dump was not hashed' >&2; exit 1; }",
        pg_restore_list_cmd(partial, ctx.pg_bin),
        f"chmod 600 {quote(partial)}",
        f"size=$(stat -c %s {quote(partial)})",
        f"mv {quote(partial)} {quote(path)}",
        f"printf '%s  %s\\n' \"$sum\" {quote(name)} > {quote(path + '.sha256')}",
        'echo "$sum $size"',
    ])


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
