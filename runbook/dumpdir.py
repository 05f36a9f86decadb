"""Directory-format backups (``backup.format: directory``): ``pg_dump -Fd -j N`` with a manifest.

A directory dump is a folder of files (``toc.dat``, one ``<id>.dat.gz`` per table, blobs), written
by ``jobs`` pg_dump processes at once. Its checksum is a **manifest**: one ``sha256  <name>/<file>``
line per file, the ``.sha256`` file beside the folder, in ``sha256sum -c`` format (so a person can
check a backup by hand: ``cd BACKUP_DIR && sha256sum -c NAME.dumpdir.sha256``). The backup's single
sha256 (in the run log, the journal, ``status``) is the sha256 of that manifest.

Where the host has ``python3``, one small program (``hostprograms.WATCHER``) runs pg_dump and
follows its files as they are written: every ``FOLLOW`` s it reads what is new in each, from the
page cache, into that file's hash, and a file no pg_dump process holds open any more is complete.
It forks nothing while the dump runs (the open files are read from ``/proc/PID/fd`` of pg_dump and
its workers), and after the dump only pg_dump's last ``FOLLOW`` s of writes are left to hash.

Without ``python3``, each file is hashed once pg_dump has closed it, while the dump goes on: the
script polls the folder, and a file that no pg_dump process holds open any more (``/proc/PID/fd`` of the job's
process group) is complete, since pg_dump writes every file of a directory dump once, from open to
close. A look at the open files (``pgrep``, ``readlink``: a dozen processes) is taken when a new
file has appeared (a worker moved on to its next table), else every ``RECHECK`` polls while a file
is still open, never on an idle poll: a long table costs no CPU beside the dump. So the hashing
overlaps the dump, and reads each file while it is still in the page cache: a dump bigger than the
host's memory is never read back from disk, unlike a checksum taken after the dump. What is still
open when pg_dump ends (its last table, often the biggest) is hashed then, from the page cache;
the run log's ``backup_hashed`` says how many bytes that was. Following a file as it is written
with ``tail -f`` into the hasher left nothing to hash after the dump, but cost ~1.5 s more CPU per
220 MB beside pg_dump (a wake-up at every write), more than the ~0.2 s it saved at the end
(docs/benchmarks.md); the watcher reads twice a second instead. A tar stream
through ``tee``/``sha256sum`` would hash in the same pass too, but a tar cannot be restored with
``pg_restore -j``; ``pg_dump -Fd`` has no hook to hash the bytes it writes.

Everything runs as one host command (the round trip and the password file on its stdin as for a
custom dump): dump, hashes, ``pg_restore --list``, rename. With python3, ``pg_restore --list`` is
the one beside the pg_dump program that ran (the watcher saw it in ``/proc``): where ``pg_dump`` on
PATH is Debian's ``pg_wrapper`` (a Perl script that picks a version and execs it), that skips
~50 ms of Perl after the dump, and reads the dump with the release that wrote it. It needs Linux's
``/proc``, ``pgrep`` (procps, without python3) and GNU coreutils on the host; ``openssl`` hashes
faster than ``sha256sum`` where present (the shell sweeper).
"""

from __future__ import annotations

from .hostcmd import HASHER
from .hostprograms import HAS_PYTHON, WATCHER, python
from .transports.base import quote

SUFFIX = ".dumpdir"
# How often the folder is looked at while pg_dump writes (a shell glob: no process). A new file
# there, or RECHECK looks while a file is still open, make a full look (~12 processes): a file is
# hashed at most RECHECK * POLL s after pg_dump closed it, within POLL s when a new file follows it.
POLL = 1
RECHECK = 10
# How often the watcher (``hostprograms.WATCHER``, where the host has python3) reads what is new
# in the files: what pg_dump writes in its last FOLLOW s is all that is left to hash after it.
FOLLOW = 0.5


def dump_script(*, folder: str, path: str, pg_dump: str, pg_restore_list: str, name_taken: int) -> str:
    """The host script of one directory dump; prints ``<manifest sha256> <bytes>`` on success.

    ``pg_dump`` writes ``<path>.partial`` (a folder), hashed file by file as it goes, into
    ``<path>.partial.work/sums.*``; then ``pg_restore --list`` reads it, the manifest is written and
    the folder renamed to ``path``, the manifest to ``path.sha256``. On any failure or signal the
    trap removes the partial folder and the work files: a folder with the final name is always a
    complete, readable, checksummed dump.
    """
    name = path.rsplit("/", 1)[-1]
    partial, work = path + ".partial", path + ".partial.work"
    on_exit = f"rm -rf -- {quote(partial)} {quote(work)} ${{PGPASSFILE:+\"$PGPASSFILE\"}}"
    # The files pg_dump (the leader or a worker: the job's processes of that name) holds open now.
    # Listed *after* the folder, so a file created in between is never taken for a closed one: it
    # is not in the listing yet.
    open_now = ("for q in $(pgrep -g 0 -x pg_dump); do readlink /proc/$q/fd/* 2>/dev/null; done | "
                "P=\"$D/\" awk 'index($0, ENVIRON[\"P\"]) == 1 { print substr($0, length(ENVIRON[\"P\"]) + 1) }' | "
                "LC_ALL=C sort -u > \"$W/$1.open\"")
    sweep = (
        # sweep TAG: hash the files of the dump that are complete and not hashed yet, into a new
        # sums.TAG.N file (written under another name, then renamed: a sweep stopped half-way
        # leaves no partial line). TAG s: while pg_dump runs; f: after it ended, all files closed.
        "sweep() { "
        "[ -d \"$D\" ] || return 0; "
        # no new file since the last full look (a shell glob: no process started), and no file
        # left open by it, or not RECHECK polls yet -> nothing to do
        "t=$1; set -- \"$D\"/*; [ -e \"$1\" ] || return 0; "
        "if [ $# -eq $seen ]; then [ $pending -gt 0 ] || return 0; idle=$((idle + 1)); "
        f"[ $idle -ge {RECHECK} ] || return 0; fi; "
        "seen=$#; idle=0; set -- \"$t\"; "
        "ls -A \"$D\" | LC_ALL=C sort > \"$W/$1.ls\"; "
        f"if [ \"$1\" = f ]; then : > \"$W/$1.open\"; else {open_now}; fi; "
        "cat \"$W\"/sums.* 2>/dev/null | cut -d' ' -f2 | LC_ALL=C sort > \"$W/$1.done\"; "
        "LC_ALL=C comm -23 \"$W/$1.ls\" \"$W/$1.done\" > \"$W/$1.todo\"; "
        "pending=$(LC_ALL=C comm -12 \"$W/$1.todo\" \"$W/$1.open\" | wc -l); "
        "new=$(LC_ALL=C comm -23 \"$W/$1.todo\" \"$W/$1.open\"); "
        "[ -n \"$new\" ] || return 0; "
        # pg_dump names its files toc.dat, <id>.dat[.gz|.lz4|.zst], blobs.toc, blob_<oid>.dat...:
        # anything else is not its file, and would not survive the word splitting below.
        "if printf '%s\\n' \"$new\" | grep -q '[^A-Za-z0-9._]'; then "
        "echo \"runbook: unexpected file in the dump folder: $new\" >&2; exit 1; fi; "
        "n=$((n + 1)); "
        "(cd \"$D\" && h $new) | sed 's/^\\([0-9a-f]\\{64\\}\\) [ *]/\\1 /' > \"$W/tmp.$1.$n\"; "
        "mv \"$W/tmp.$1.$n\" \"$W/sums.$1.$n\"; "
        "}"
    )
    return "\n".join([
        "set -e",
        "umask 077",
        f"[ ! -e {quote(path)} ] || exit {name_taken}",
        f"trap {quote(on_exit)} EXIT; trap 'exit 129' HUP INT TERM PIPE",
        f"mkdir -p {quote(folder)}",
        # the path as the kernel names it in /proc/PID/fd (a symlinked backup folder included)
        f"D=\"$(cd {quote(folder)} && pwd -P)\"/{quote(name + '.partial')}",
        f"W={quote(work)}",
        "mkdir \"$W\"",
        # python3: the watcher runs pg_dump and follows its files as they are written; else the
        # sweeper hashes the closed files while pg_dump writes, stopped the moment pg_dump ends
        # (the run log's backup_hashed: the bytes hashed after pg_dump ended, in $late)
        f"if {HAS_PYTHON}; then",
        f"if {python(WATCHER)} \"$D\" \"$W\" {FOLLOW} {quote(pg_dump)}; then rc=0; else rc=$?; fi",
        "[ $rc -eq 0 ] || exit $rc",
        "read late < \"$W/late\"",
        # pg_restore --list from pg_dump's own folder, past a wrapper (hostprograms.WATCHER)
        "if [ -s \"$W/bin\" ]; then read b < \"$W/bin\"; [ ! -x \"$b/pg_restore\" ] || PATH=\"$b:$PATH\"; fi",
        "else",
        HASHER,
        "n=0; seen=0; pending=0; idle=0",
        sweep,
        f"( while :; do sweep s; sleep {POLL}; done ) & w=$!",
        f"if {pg_dump}; then rc=0; else rc=$?; fi",
        "kill $w 2>/dev/null || true",
        "wait $w 2>/dev/null || true",
        "[ $rc -eq 0 ] || exit $rc",
        # what is left now that pg_dump is done
        "seen=-1; sweep f",
        "late=$(cat \"$W\"/sums.f.* 2>/dev/null | cut -d' ' -f2 | (cd \"$D\" && xargs -r stat -c %s) "
        "| awk '{ s += $1 } END { print s + 0 }')",
        "fi",
        # every file hashed exactly once
        "cat \"$W\"/sums.* | cut -d' ' -f2 | LC_ALL=C sort > \"$W/f.done\"",
        "ls -A \"$D\" | LC_ALL=C sort > \"$W/f.ls\"",
        "if ! cmp -s \"$W/f.ls\" \"$W/f.done\"; then echo 'runbook: the manifest does not match the dump folder' >&2; exit 1; fi",
        pg_restore_list,
        f"cat \"$W\"/sums.* | LC_ALL=C sort -k2 | N={quote(name)} awk '{{ print $1 \"  \" ENVIRON[\"N\"] \"/\" $2 }}' > \"$W/manifest\"",
        "sum=$(sha256sum < \"$W/manifest\" | cut -d' ' -f1)",  # a few kB: sha256sum starts faster than openssl
        "[ ${#sum} -eq 64 ]",
        "size=$(du -sb \"$D\" | cut -f1)",
        f"mv \"$D\" {quote(path)}",
        f"mv \"$W/manifest\" {quote(path + '.sha256')}",
        'echo "hashed_after_dump $late"',
        'echo "$sum $size"',
    ])


def check_script(folder: str, name: str, jobs: int) -> str:
    """Host script: re-hash every file of the directory dump ``name`` against its manifest
    (``jobs`` ``sha256sum -c`` at once, each on a share of the lines) and print the manifest's own
    sha256. Fails naming the first file that is missing or differs."""
    jobs = max(1, jobs)
    manifest = quote(name + ".sha256")
    checks = [f"awk 'NR % {jobs} == {i}' {manifest} | sha256sum -c --quiet --strict - > \"$t.{i}\" 2>&1 & p{i}=$!"
              for i in range(jobs)]
    return "\n".join([
        "set -e",
        f"cd {quote(folder)}",
        f"[ -d {quote(name)} ] || {{ echo 'runbook: no such backup folder: {name}' >&2; exit 1; }}",
        f"[ -s {manifest} ] || {{ echo 'runbook: no manifest beside {name}' >&2; exit 1; }}",
        "t=$(mktemp)",
        "trap 'rm -f \"$t\" \"$t\".*' EXIT",
        *checks,
        "ok=0",
        *[f"wait $p{i} || ok=1" for i in range(jobs)],
        "if [ $ok -ne 0 ]; then cat \"$t\".* | grep -v '^$' | head -5 >&2; exit 1; fi",
        f"sha256sum < {manifest} | cut -d' ' -f1",
    ])
