"""The small Python programs runbook runs on the database host (``python3 -I -S -c PROGRAM``),
where a shell tool would wake at every write of pg_dump or fork a dozen processes to look at its
open files. Standard library only, Python 3.4 and later (no f-strings), Linux's ``/proc``.

A host without ``python3`` gets the shell version of each (``tee`` into the hasher; the polling
loop of ``dumpdir``), which does the same work with more CPU beside pg_dump (docs/benchmarks.md).
"""

from __future__ import annotations

from .transports.base import quote

# A shell test: whether the host can run these programs (the script then uses them, else its
# shell version).
HAS_PYTHON = "command -v python3 >/dev/null 2>&1"


def python(program: str) -> str:
    """The shell words that run ``program`` on the host's python3 (its arguments to follow), with
    ``-I -S``: no user site, no ``PYTHON*`` variables of the login user."""
    return "python3 -I -S -c " + quote(program)


# The same-pass writer, run as ``python3 -I -S -c WRITER FILE`` with the dump on its stdin: writes
# FILE (0600), prints ``<sha256>  -``. Python 3.4+ and Linux's F_SETPIPE_SZ (elsewhere the pipe
# keeps its size and the program works the same). After a read that found the pipe less than a
# quarter full, it sleeps until about a quarter more should be there at the rate just seen (at most
# 20 ms), so the pipe is never near full and pg_dump never waits for it.
WRITER = r"""
import fcntl, hashlib, os, sys, time
def main():
    try:
        size = fcntl.fcntl(0, 1031, 1 << 20)
    except (OSError, ValueError):
        size = 1 << 16
    quarter = size // 4
    out = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    digest = hashlib.sha256()
    before = time.monotonic()
    while True:
        now = time.monotonic()
        chunk = os.read(0, size)
        if not chunk:
            break
        digest.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(out, view):]
        if len(chunk) < quarter:
            rate = len(chunk) / max(now - before, 1e-6)
            time.sleep(min(0.02, quarter / rate))
        before = now
    os.close(out)
    sys.stdout.write(digest.hexdigest() + "  -\n")
main()
"""

# The directory dump's watcher, run as ``python3 -I -S -c WATCHER FOLDER WORK POLL PG_DUMP``: runs
# the shell command PG_DUMP (``pg_dump -Fd -j N ... -f FOLDER``) and, while it runs, every POLL s,
# reads what is new in each of FOLDER's files into that file's SHA-256 (a file is followed as it is
# written, each poll's bytes read at once, from the page cache). A file is complete, and its
# ``<sha256> <name>`` line appended to WORK/sums.p, once it was in no pg_dump process's open files
# (``/proc/PID/fd`` of the leader and its workers) *before* it was read to its end: pg_dump -Fd
# writes every file once, from open to close. After pg_dump ends, the rest of every file is read
# and WORK/late gets how many bytes that was. Between looks it waits for pg_dump to exit, so it
# goes on the moment pg_dump ends, not up to POLL s later at its next look. WORK/bin gets the folder
# of the pg_dump program that ran (``/proc/PID/exe`` of the leader, seen at a look: the real binary
# where ``pg_dump`` is a wrapper that execs it, as Debian's Perl ``pg_wrapper`` does), so the
# script's ``pg_restore --list`` comes from the same installation without the wrapper's ~50 ms.
# Reads go into one buffer, reused (a new 1 MiB bytes object per read cost a page fault per 4 kB).
# Exits with pg_dump's status (at once when it failed); a file name pg_dump would not write ends it
# with 1, pg_dump stopped.
WATCHER = r"""
import hashlib, os, subprocess, sys
BUFFER = bytearray(1 << 20)
VIEW = memoryview(BUFFER)
OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._")
def dumpers(leader):
    try:
        with open("/proc/%d/task/%d/children" % (leader, leader)) as f:
            return [leader] + [int(p) for p in f.read().split()]
    except OSError:
        pass
    pids = [leader]
    for entry in os.listdir("/proc"):
        try:
            with open("/proc/%s/stat" % entry) as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == leader:
                    pids.append(int(entry))
        except (OSError, ValueError, IndexError):
            pass
    return pids
def held(pids, prefix):
    names = set()
    for pid in pids:
        fds = "/proc/%d/fd" % pid
        try:
            entries = os.listdir(fds)
        except OSError:
            continue
        for fd in entries:
            try:
                target = os.readlink(fds + "/" + fd)
            except OSError:
                continue
            if target.startswith(prefix):
                names.add(target[len(prefix):])
    return names
def program(pid, known):
    try:
        exe = os.readlink("/proc/%d/exe" % pid)
    except OSError:
        return known
    return exe if os.path.basename(exe) == "pg_dump" else known
def watch(leader, prefix, work, poll):
    files, done, ended, late, exe = {}, set(), None, 0, None
    while True:
        if leader.poll() is not None:
            ended = leader.returncode
            if ended != 0:
                return ended
        else:
            exe = program(leader.pid, exe)
        try:
            names = sorted(set(os.listdir(prefix)) - done)
        except OSError:
            names = []
        open_now = held(dumpers(leader.pid), prefix) if ended is None else set()
        for name in names:
            if not set(name) <= OK:
                sys.stderr.write("runbook: unexpected file in the dump folder: %s\n" % name)
                return 1
            entry = files.get(name)
            if entry is None:
                entry = files[name] = [os.open(prefix + name, os.O_RDONLY), hashlib.sha256()]
            while True:
                n = os.readv(entry[0], [BUFFER])
                if not n:
                    break
                entry[1].update(VIEW[:n])
                if ended is not None:
                    late += n
            if name not in open_now:
                os.close(entry[0])
                del files[name]
                done.add(name)
                with open(work + "/sums.p", "a") as out:
                    out.write("%s %s\n" % (entry[1].hexdigest(), name))
        if ended is not None:
            with open(work + "/late", "w") as out:
                out.write("%d\n" % late)
            if exe is not None:
                with open(work + "/bin", "w") as out:
                    out.write(os.path.dirname(exe) + "\n")
            return 0
        try:
            leader.wait(poll)  # the next look, or at once when pg_dump ends
        except subprocess.TimeoutExpired:
            pass
def main():
    folder, work, poll = os.path.realpath(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    leader = subprocess.Popen(["sh", "-c", "exec " + sys.argv[4]])
    try:
        code = watch(leader, folder + "/", work, poll)
    except BaseException:
        leader.terminate()
        leader.wait()
        raise
    if code != 0 and leader.poll() is None:
        leader.terminate()
        leader.wait()
    sys.exit(code)
main()
"""
