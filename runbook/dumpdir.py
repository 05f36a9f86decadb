"""Directory-format backups (``backup.format: directory``): ``pg_dump -Fd -j N`` with a manifest.

A directory dump is a folder of files (``toc.dat``, one ``<id>.dat.gz`` per table, blobs), written
by ``jobs`` pg_dump processes at once. Its checksum is a **manifest**: one ``sha256  <name>/<file>``
line per file, the ``.sha256`` file beside the folder, in ``sha256sum -c`` format (so a person can
check a backup by hand: ``cd BACKUP_DIR && sha256sum -c NAME.dumpdir.sha256``). The backup's single
sha256 (in the run log, the journal, ``status``) is the sha256 of that manifest.

Each file is hashed while the dump goes on: the script polls the folder (every ``POLL`` s), and
pg_dump writes every file of a directory dump once, from open to close, appending. A file that no
pg_dump process holds open any more (``/proc/PID/fd`` of the job's process group) is complete and
is hashed then. A file still open at a look is **followed**: ``tail -c +1 -f`` reads it as pg_dump
appends to it, into the hasher, until a later look finds it closed (or pg_dump has ended), and its
bytes are counted against the file's size at the end (a follower that missed any leaves the file
to be hashed again after the dump). So a big table's file, the one that ends last, is hashed in the
same pass as it is written, not read again once pg_dump is done; every file is read while it is
still in the page cache, and a dump bigger than the host's memory is never read back from disk.
The script reports the bytes it still had to hash after pg_dump ended (the run log's
``backup_hashed``). (A tar stream through ``tee``/``sha256sum`` would hash in the same pass too, but
a tar cannot be restored with ``pg_restore -j``; ``pg_dump -Fd`` has no hook to hash what it writes.)

Everything runs as one host command (the round trip and the password file on its stdin as for a
custom dump): dump, hashes, ``pg_restore --list``, rename. It needs Linux's ``/proc``, ``pgrep``
(procps) and GNU coreutils on the host; ``openssl`` hashes faster than ``sha256sum`` where present.
"""

from __future__ import annotations

from .hostcmd import HASHER
from .transports.base import quote

SUFFIX = ".dumpdir"
# How often the folder is looked at while pg_dump writes (a look costs ~10 processes when a file is
# new or still open; none otherwise): a closed file waits at most this long to be hashed, a file
# being written this long to be followed.
POLL = 1
# How often a follower's ``tail`` checks whether it should stop (its file closed): the lag of the
# last hash after pg_dump ends.
FOLLOW_POLL = 0.1


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
    # The files pg_dump (the leader or a worker: the job's process group, named pg_dump) holds open
    # now. Listed *after* the folder, so a file created in between is never taken for a closed one:
    # it is not in the listing yet.
    open_now = ("for q in $(pgrep -g 0 -x pg_dump); do readlink /proc/$q/fd/* 2>/dev/null; done | "
                "P=\"$D/\" awk 'index($0, ENVIRON[\"P\"]) == 1 { print substr($0, length(ENVIRON[\"P\"]) + 1) }' | "
                "LC_ALL=C sort -u > \"$W/$1.open\"")
    follow = (
        # follow NAME: hash the file as pg_dump appends to it. tail stops once its sentinel (a
        # sleep) is gone, after reading to the end; the sweeper kills the sentinel when pg_dump has
        # closed the file. The sum counts only if tail read as many bytes as the file holds (dd
        # counts them).
        "follow() { "
        "sleep 2147483647 & echo $! > \"$W/follow/$1\"; "
        f"( tail -c +1 -s {FOLLOW_POLL} -f --pid=$(cat \"$W/follow/$1\") \"$D/$1\" "
        "| LC_ALL=C dd bs=65536 2> \"$W/n.$1\" | h | cut -c1-64 > \"$W/t.$1\"; "
        "if [ \"$(sed -n 's/^\\([0-9]*\\) bytes.*/\\1/p' \"$W/n.$1\")\" = \"$(stat -c %s \"$D/$1\")\" ] "
        "&& [ $(wc -c < \"$W/t.$1\") -eq 65 ]; then "
        "printf '%s %s\\n' \"$(cat \"$W/t.$1\")\" \"$1\" > \"$W/t2.$1\"; mv \"$W/t2.$1\" \"$W/sums.t.$1\"; fi "
        ") & }; "
        # unfollow NAME: its file is complete; stop its follower (it reads to the end first)
        "unfollow() { kill $(cat \"$W/follow/$1\") 2>/dev/null || :; mv \"$W/follow/$1\" \"$W/followed/$1\"; }"
    )
    sweep = (
        # sweep TAG: hash the files of the dump that are complete and not hashed yet, into a new
        # sums.TAG.N file (written under another name, then renamed: a sweep stopped half-way
        # leaves no partial line), and follow the files being written. TAG s: while pg_dump runs;
        # f: after it ended, all files closed and every follower done.
        "sweep() { "
        "[ -d \"$D\" ] || return 0; "
        # nothing new since the last sweep and nothing followed (a shell glob: no process started)
        "t=$1; set -- \"$W\"/follow/*; f=$1; set -- \"$D\"/*; [ -e \"$1\" ] || return 0; "
        "[ $# -ne $taken ] || [ -e \"$f\" ] || return 0; set -- \"$t\"; "
        "ls -A \"$D\" | LC_ALL=C sort > \"$W/$1.ls\"; "
        f"if [ \"$1\" = f ]; then : > \"$W/$1.open\"; else {open_now}; fi; "
        # pg_dump names its files toc.dat, <id>.dat[.gz|.lz4|.zst], blobs.toc, blob_<oid>.dat...:
        # anything else is not its file, and would not survive the word splitting below.
        "if grep -q '[^A-Za-z0-9._]' \"$W/$1.ls\"; then "
        "echo \"runbook: unexpected file in the dump folder: $(grep '[^A-Za-z0-9._]' \"$W/$1.ls\" | head -1)\" >&2; "
        "exit 1; fi; "
        # followed files pg_dump has closed since: complete, their followers may stop
        "for g in $(ls \"$W/follow\"); do grep -Fqx \"$g\" \"$W/$1.open\" || unfollow \"$g\"; done; "
        "{ cat \"$W\"/sums.* 2>/dev/null | cut -d' ' -f2; [ \"$1\" = f ] || ls \"$W/follow\" \"$W/followed\"; } "
        "| LC_ALL=C sort > \"$W/$1.done\"; "
        "LC_ALL=C comm -23 \"$W/$1.ls\" \"$W/$1.done\" > \"$W/$1.todo\"; "
        "for g in $(LC_ALL=C comm -12 \"$W/$1.todo\" \"$W/$1.open\"); do follow \"$g\"; taken=$((taken + 1)); done; "
        "new=$(LC_ALL=C comm -23 \"$W/$1.todo\" \"$W/$1.open\"); "
        "[ -n \"$new\" ] || return 0; "
        "n=$((n + 1)); taken=$((taken + $(printf '%s\\n' \"$new\" | wc -l))); "
        "(cd \"$D\" && h $new) | sed 's/^\\([0-9a-f]\\{64\\}\\) [ *]/\\1 /' > \"$W/tmp.$1.$n\"; "
        "mv \"$W/tmp.$1.$n\" \"$W/sums.$1.$n\"; "
        "}"
    )
    # The sweeper: a look every POLL s while pg_dump runs. Told to stop (TERM), it ends the look it
    # is in (never half-way: every follower it started is on record), stops its followers, waits for
    # them, and exits; its sleep is waited for, so the signal ends it at once.
    sweeper = ("( stop=; sl=; trap 'stop=1; [ -z \"$sl\" ] || kill $sl 2>/dev/null || :' TERM; "
               "while [ -z \"$stop\" ]; do sweep s; [ -n \"$stop\" ] && break; "
               f"sleep {POLL} & sl=$!; wait $sl || :; sl=; done; "
               "for g in $(ls \"$W/follow\"); do unfollow \"$g\"; done; wait ) & w=$!")
    return "\n".join([
        "set -e",
        "umask 077",
        f"[ ! -e {quote(path)} ] || exit {name_taken}",
        f"trap {quote(on_exit)} EXIT; trap 'exit 129' HUP INT TERM PIPE",
        f"mkdir -p {quote(folder)}",
        # the path as the kernel names it in /proc/PID/fd (a symlinked backup folder included)
        f"D=\"$(cd {quote(folder)} && pwd -P)\"/{quote(name + '.partial')}",
        f"W={quote(work)}",
        "mkdir \"$W\" \"$W/follow\" \"$W/followed\"",
        "n=0; taken=0",
        HASHER,
        follow,
        sweep,
        # the sweeper hashes while pg_dump writes; stopped the moment pg_dump ends
        sweeper,
        f"if {pg_dump}; then rc=0; else rc=$?; fi",
        "kill $w 2>/dev/null || true",
        "wait $w 2>/dev/null || true",
        "[ $rc -eq 0 ] || exit $rc",
        # what is left to hash now that pg_dump is done (the run log's backup_hashed)
        "taken=-1; sweep f",
        "late=0; for s in \"$W\"/sums.f.*; do [ -e \"$s\" ] || continue; "
        "for g in $(cut -d' ' -f2 \"$s\"); do late=$((late + $(stat -c %s \"$D/$g\"))); done; done",
        # every file hashed exactly once
        "cat \"$W\"/sums.* | cut -d' ' -f2 | LC_ALL=C sort > \"$W/f.done\"",
        "ls -A \"$D\" | LC_ALL=C sort > \"$W/f.ls\"",
        "if ! cmp -s \"$W/f.ls\" \"$W/f.done\"; then echo 'runbook: the manifest does not match the dump folder' >&2; exit 1; fi",
        pg_restore_list,
        f"cat \"$W\"/sums.* | LC_ALL=C sort -k2 | N={quote(name)} awk '{{ print $1 \"  \" ENVIRON[\"N\"] \"/\" $2 }}' > \"$W/manifest\"",
        "sum=$(h \"$W/manifest\" | cut -d' ' -f1)",
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
