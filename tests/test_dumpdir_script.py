"""The host script of a directory dump (``dumpdir.dump_script``), run by ``sh`` on this machine
with a stand-in ``pg_dump`` that writes a folder the way ``pg_dump -Fd`` does, at a pace the test
sets: a small file at once, then table files held open and appended to for seconds, ``toc.dat``
last.

The real ``pg_dump -Fd -j 2`` runs through the same script in tests/test_bigdb.py over SSH; here the
timing is the test's, so what the script does while the dump goes on is certain: a file pg_dump
has closed is hashed before the dump ends (when the next file appears, or a few polls later if
none does), only what is still open at the end is hashed after it (the ``hashed_after_dump`` the
run log reports), the manifest holds every file's sha256, and a pg_dump that fails half-way leaves
no folder, no work files and no process. Each script runs in a session of its own, and the test
checks that no process of that session outlives it.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from runbook import dumpdir
from runbook.postgres import pg_restore_list_cmd
from runbook.transports.base import quote
from tests.fixtures.hostscript import NOTING_PYTHON, host_bin, run_script
from tests.fixtures.pg import PgDatabase

# A stand-in for pg_dump -Fd, named pg_dump (the script watches the files that the job's processes
# of that name hold open): the folder, a small file written and closed at once, then table file A
# (A_CHUNKS pieces of 250 kB, PAUSE s apart, on one open descriptor), closed; IDLE s with no new
# file; table file B (B_CHUNKS pieces of 100 kB) the same way; toc.dat last. FAIL=N exits 1 after
# N pieces of A, with A still open.
FAKE_PG_DUMP = r"""#!/bin/sh
set -e
mkdir -m 700 "$1"
head -c 3000 /dev/urandom > "$1/3001.dat.gz"
exec 3> "$1/3002.dat.gz"
i=0
while [ $i -lt ${A_CHUNKS:-12} ]; do
  head -c 250000 /dev/urandom >&3
  i=$((i + 1))
  if [ "${FAIL:-0}" -eq $i ]; then echo "pg_dump: error: connection lost" >&2; exit 1; fi
  sleep ${PAUSE:-0.2}
done
exec 3>&-
sleep ${IDLE:-0}
exec 3> "$1/3004.dat.gz"
i=0
while [ $i -lt ${B_CHUNKS:-8} ]; do head -c 100000 /dev/urandom >&3; i=$((i + 1)); sleep ${PAUSE:-0.2}; done
exec 3>&-
head -c 700 /dev/urandom > "$1/toc.dat"
"""


def _script(tmp_path: Path, python: bool) -> tuple[str, Path, dict[str, str]]:
    """The script, the dump's final path and its environment: PATH with python3 (noting that it
    ran) when ``python``, else none."""
    bindir = host_bin(tmp_path, {"pg_dump": FAKE_PG_DUMP, **({"python3": NOTING_PYTHON} if python else {})})
    fake = bindir / "pg_dump"
    folder = tmp_path / "backups"
    path = folder / "app_prod_20261202T000000Z_0001.dumpdir"
    script = dumpdir.dump_script(folder=str(folder), path=str(path),
                                 pg_dump=f"{quote(str(fake))} {quote(str(path) + '.partial')}",
                                 pg_restore_list=f"test -s {quote(str(path) + '.partial')}/toc.dat",
                                 name_taken=75)
    return script, path, {"PATH": str(bindir), "USED": str(tmp_path / "used")}


def _checked(result: subprocess.CompletedProcess[str], path: Path) -> int:
    """The dump is complete and its manifest right; returns the bytes hashed after pg_dump ended."""
    assert result.returncode == 0, result.stderr
    digest, size = result.stdout.split()[-2:]
    manifest = Path(str(path) + ".sha256")
    assert digest == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert int(size) == sum(f.stat().st_size for f in path.iterdir()) + path.stat().st_size
    sums = dict(reversed(line.split("  ", 1)) for line in manifest.read_text().splitlines())
    files = sorted(path.iterdir())
    assert sorted(sums) == [f"{path.name}/{f.name}" for f in files]
    for f in files:
        assert sums[f"{path.name}/{f.name}"] == hashlib.sha256(f.read_bytes()).hexdigest(), f.name
    assert not list(path.parent.glob("*.partial*")), "no work files left"
    (line,) = [ln for ln in result.stdout.splitlines() if ln.startswith("hashed_after_dump ")]
    return int(line.split()[1])


BOTH = pytest.mark.parametrize("python", [True, False], ids=["watcher", "shell"])


@BOTH
def test_a_file_closed_when_the_next_one_appears_is_hashed_during_the_dump(tmp_path: Path, python: bool) -> None:
    """A (3 MB, open ~2.4 s) is closed as B appears: hashed then. After pg_dump ends, the shell
    sweeper has only B, open until just before the end, and toc.dat left to hash; the watcher
    (python3) followed B as it was written, so only its last pieces at most."""
    script, path, env = _script(tmp_path, python)
    late = _checked(run_script(script, **env), path)
    tail = (path / "3004.dat.gz").stat().st_size + (path / "toc.dat").stat().st_size
    if python:
        assert 0 <= late < (path / "3004.dat.gz").stat().st_size
    else:
        assert late == tail
    assert (tmp_path / "used").exists() == python, "the watcher runs where python3 is, only there"


@BOTH
def test_a_file_closed_with_no_file_after_it_is_hashed_a_few_polls_later(tmp_path: Path, python: bool) -> None:
    """After A, no new file for longer than RECHECK polls: A is hashed during that pause anyway
    (the watcher: at its next poll), and only toc.dat, written last, can be left."""
    script, path, env = _script(tmp_path, python)
    late = _checked(run_script(script, **env, IDLE=str(dumpdir.RECHECK * dumpdir.POLL + 2.5), B_CHUNKS="0"), path)
    assert (path / "3004.dat.gz").stat().st_size == 0
    assert late <= 700 if python else late == 700


@BOTH
@pytest.mark.parametrize("fail", [1, 8])
def test_a_pg_dump_failing_half_way_leaves_nothing(tmp_path: Path, fail: int, python: bool) -> None:
    """pg_dump fails with a table's file open (at once, or after a look or two): its exit status
    comes back, and no folder, work file or process of the dump remains."""
    script, path, env = _script(tmp_path, python)
    result = run_script(script, **env, FAIL=str(fail))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "connection lost" in result.stderr
    assert not path.exists() and list(path.parent.iterdir()) == []


@BOTH
def test_a_file_pg_dump_would_not_write_stops_the_dump(tmp_path: Path, python: bool) -> None:
    """A name outside pg_dump's own (letters, digits, dot, underscore) appears in the folder: the
    backup fails naming it (the watcher at once, stopping pg_dump; the shell sweeper once pg_dump
    has ended), and nothing is left."""
    script, path, env = _script(tmp_path, python)
    odd = f"{path}.partial/x y.dat"
    result = run_script(f"( sleep 1; : > {quote(odd)} ) & {script}", **env)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "unexpected file in the dump folder" in result.stderr
    assert not path.exists() and list(path.parent.iterdir()) == []


def test_the_watcher_goes_on_when_pg_dump_ends_not_at_its_next_look(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Between looks the watcher waits for pg_dump to exit rather than sleeping: with looks 45 s
    apart and a dump of about a second, the script is done well before the next look would be,
    the dump complete and its manifest right. (Sleeping, it took the whole 45 s; in the bench the
    average cost was half of the real FOLLOW after every dump.)"""
    monkeypatch.setattr(dumpdir, "FOLLOW", 45)
    script, path, env = _script(tmp_path, True)
    started = time.monotonic()
    result = run_script(script, **env, A_CHUNKS="3", B_CHUNKS="2", PAUSE="0.1")
    took = time.monotonic() - started
    _checked(result, path)
    assert (tmp_path / "used").exists(), "the watcher ran"
    assert took < 30, f"the script took {took:.1f} s: it waited for its next look"


@pytest.mark.parametrize("beside", [True, False], ids=["pg_restore-beside-pg_dump", "none-beside"])
def test_pg_restore_list_comes_from_the_installation_of_the_pg_dump_that_ran(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_db: PgDatabase, beside: bool) -> None:
    """``pg_dump`` on PATH is a wrapper that execs the real program (as Debian's Perl pg_wrapper
    does, ~50 ms a start): the dump's ``pg_restore --list`` runs from the real pg_dump's folder,
    not through the wrapper; where that folder has no pg_restore, the one on PATH. A real
    ``pg_dump -Fd -j 2`` of a real database, looked at every 20 ms."""
    monkeypatch.setattr(dumpdir, "FOLLOW", 0.02)
    server = pg_db.server
    real = server.bindir
    if not beside:  # a pg_dump alone in its folder
        real = tmp_path / "alone"
        real.mkdir()
        shutil.copy2(server.bindir / "pg_dump", real / "pg_dump")
    used = tmp_path / "wrapper-pg_restore"
    bindir = host_bin(tmp_path, {
        "pg_dump": f"#!/bin/sh\nexec {quote(str(real / 'pg_dump'))} \"$@\"\n",
        "pg_restore": f"#!/bin/sh\necho ran >> {quote(str(used))}\nexec {quote(str(server.bindir / 'pg_restore'))} \"$@\"\n",
        "python3": NOTING_PYTHON})
    folder = tmp_path / "backups"
    path = folder / "app_prod_20261202T000000Z_0001.dumpdir"
    dump = quote("pg_dump", "-Fd", "-j", "2", "-h", str(server.socket_dir), "-p", str(server.port),
                 "-U", server.superuser, "-f", str(path) + ".partial", pg_db.name)
    script = dumpdir.dump_script(folder=str(folder), path=str(path), pg_dump=dump,
                                 pg_restore_list=pg_restore_list_cmd(str(path) + ".partial"), name_taken=75)
    _checked(run_script(script, PATH=str(bindir), USED=str(tmp_path / "used")), path)
    assert (tmp_path / "used").exists(), "the watcher ran"
    assert (path / "toc.dat").exists()
    assert used.exists() != beside, "the wrapper's pg_restore ran" if beside else "PATH's pg_restore did not run"
