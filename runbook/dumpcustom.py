"""Custom-format backups (``backup.format: custom``, the default): the host script of a
``pg_dump -Fc`` whose file is hashed in the same pass as it is written.

pg_dump writes to a pipe; what reads the pipe writes the file and hashes the same bytes, so the
file is never read back (a dump bigger than the host's memory would come from disk again).
Written to a pipe, pg_dump cannot go back to store the data offsets in the table of contents:
pg_restore then finds each table's data by scanning the file, which is a regular file when it
restores it, with ``-j`` too (docs/benchmarks.md, measure 14).

What reads the pipe is, where the host has ``python3``, one small program (``hostprograms.WRITER``,
standard library only) that makes the pipe 1 MB and reads it a quarter full at a time: pg_dump's writes
(~4 kB each, zlib's buffer) then never wake a reader, and the file gets few big writes. Otherwise
``tee FILE | h`` (OpenSSL or coreutils), which wakes at every write of pg_dump, twice over (tee,
then the hasher): on the 1.1 GB database, pg_dump with the writer ran *faster* than
``pg_dump -Fc -f FILE`` alone (its small writes into the page cache cost more than into a pipe
nobody waits on), with ``tee`` about 1–2 s slower (docs/benchmarks.md, "The same pass, without the
wake-ups"). pg_dump's and the writer's success are markers beside the file (``sh`` has no
``pipefail``).
"""

from __future__ import annotations

from .hostcmd import HASHER, cleanup_trap
from .hostprograms import HAS_PYTHON, WRITER, python
from .transports.base import quote

# Shell function ``W FILE MARKER``: the dump on stdin written to FILE and hashed in the same pass,
# ``<sha256> ...`` on stdout, MARKER created when FILE was written whole. It returns 0 either way
# (the script's ``set -e`` would end it before it could say which side failed).
SAME_PASS = (f"{HASHER}; if {HAS_PYTHON}; then "
             f"W() {{ if {python(WRITER)} \"$1\"; then : > \"$2\"; fi; }}; "
             "else W() { { tee \"$1\" && : > \"$2\"; } | h; }; fi")


def dump_script(*, folder: str, path: str, pg_dump: str, pg_restore_list: str, name_taken: int) -> str:
    """The host script of one custom dump; prints ``<sha256> <bytes>`` on success.

    ``pg_dump`` (writing to stdout) goes to ``<path>.partial``, hashed as it is written; then
    ``pg_restore --list`` reads it, it gets mode 0600 and its final name, and the ``.sha256``
    file beside it (``sha256sum -c`` format). However the script ends, the partial file and the
    work files beside it (``.sum``, ``.dumped``, ``.written``) are removed."""
    name = path.rsplit("/", 1)[-1]
    partial = path + ".partial"
    summed, dumped, written = partial + ".sum", partial + ".dumped", partial + ".written"
    return "; ".join([
        "set -e",
        "umask 077",
        f"[ ! -e {quote(path)} ] || exit {name_taken}",
        cleanup_trap(partial, summed, dumped, written),
        f"mkdir -p {quote(folder)}",
        SAME_PASS,
        f"{{ {pg_dump} && : > {quote(dumped)}; }} | W {quote(partial)} {quote(written)} > {quote(summed)}",
        # the writer first: when it fails, pg_dump dies of the closed pipe, and the cause is the writer
        f"[ -e {quote(written)} ] || {{ echo 'runbook: writing the dump failed' >&2; exit 1; }}",
        f"[ -e {quote(dumped)} ] || {{ echo 'runbook: pg_dump failed' >&2; exit 1; }}",
        f"sum=$(cut -d' ' -f1 < {quote(summed)})",
        "[ ${#sum} -eq 64 ] || { echo 'runbook: the dump was not hashed' >&2; exit 1; }",
        pg_restore_list,
        f"chmod 600 {quote(partial)}",
        f"size=$(stat -c %s {quote(partial)})",
        f"mv {quote(partial)} {quote(path)}",
        f"printf '%s  %s\\n' \"$sum\" {quote(name)} > {quote(path + '.sha256')}",
        'echo "$sum $size"',
    ])
