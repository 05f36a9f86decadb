"""The host script of a directory dump (``dumpdir.dump_script``), run by ``sh`` on this machine
with a stand-in ``pg_dump`` that writes a folder the way ``pg_dump -Fd`` does, at a pace the test
sets: small files at once, one big file over seconds (held open, appended to), ``toc.dat`` last.

The real ``pg_dump -Fd -j 2`` runs through the same script in tests/test_bigdb.py over SSH; here the
timing is the test's, so what the script does while a file is being written is certain: the file
is followed (hashed as it grows) and nothing of it is left to hash once pg_dump ends; a file that
changes behind the follower's back is hashed again; a pg_dump that fails half-way leaves no folder,
no work files and no process. Each script runs in a session of its own, and the test checks that
no process of that session outlives it (the followers' ``tail``, their ``sleep`` sentinels).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from runbook import dumpdir
from runbook.transports.base import quote

# A stand-in for pg_dump -Fd: named pg_dump (the script watches the files of the job's processes of
# that name), it creates the folder, writes a small file and closes it, then writes the big file in
# CHUNKS pieces PAUSE s apart on one open descriptor, then toc.dat. MODE=truncate: the big file is
# cut back to nothing half-way and written again (what no pg_dump does: the follower must notice
# that its count does not match). FAIL=N: exits 1 after N pieces, the big file still open.
FAKE_PG_DUMP = r"""#!/bin/sh
set -e
mkdir -m 700 "$1"
head -c 3000 /dev/urandom > "$1/3001.dat.gz"
exec 3> "$1/3002.dat.gz"
i=0
while [ $i -lt ${CHUNKS:-20} ]; do
  head -c 250000 /dev/urandom >&3
  i=$((i + 1))
  if [ "${FAIL:-0}" -eq $i ]; then echo "pg_dump: error: connection lost" >&2; exit 1; fi
  if [ "${MODE:-}" = truncate ] && [ $i -eq $((${CHUNKS:-20} / 2)) ]; then
    sleep 1.2; exec 3> "$1/3002.dat.gz"
  fi
  sleep ${PAUSE:-0.15}
done
exec 3>&-
head -c 700 /dev/urandom > "$1/toc.dat"
"""


def _script(tmp_path: Path) -> tuple[str, Path]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "pg_dump"
    fake.write_text(FAKE_PG_DUMP)
    fake.chmod(0o755)
    folder = tmp_path / "backups"
    path = folder / "app_prod_20261202T000000Z_0001.dumpdir"
    script = dumpdir.dump_script(folder=str(folder), path=str(path),
                                 pg_dump=f"{quote(str(fake))} {quote(str(path) + '.partial')}",
                                 pg_restore_list=f"test -s {quote(str(path) + '.partial')}/toc.dat",
                                 name_taken=75)
    return script, path


def _session_processes(sid: int) -> list[str]:
    """The processes of session ``sid`` still running: their command lines."""
    left = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            # the fields after the command name: state ppid pgrp session ...
            if int(stat.rsplit(")", 1)[1].split()[3]) == sid:
                left.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, ValueError, IndexError):
            continue
    return left


def _run(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env}, start_new_session=True)
    out, err = proc.communicate(timeout=60)
    deadline = time.monotonic() + 3
    while (left := _session_processes(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"processes of the dump outlived it: {left}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _manifest_is_right(path: Path) -> None:
    lines = Path(str(path) + ".sha256").read_text().splitlines()
    sums = {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in lines}
    files = sorted(path.iterdir())
    assert sorted(sums) == [f"{path.name}/{f.name}" for f in files]
    for f in files:
        assert sums[f"{path.name}/{f.name}"] == hashlib.sha256(f.read_bytes()).hexdigest(), f.name


def _after_dump(out: str) -> int:
    (line,) = [ln for ln in out.splitlines() if ln.startswith("hashed_after_dump ")]
    return int(line.split()[1])


def test_a_file_being_written_is_hashed_as_it_grows(tmp_path: Path) -> None:
    """The big file is written over ~3 s: a look finds it open and follows it, so once pg_dump
    ends only toc.dat (written last, 700 bytes) is left to hash, not the 5 MB file."""
    script, path = _script(tmp_path)
    result = _run(script)
    assert result.returncode == 0, result.stderr
    digest, size = result.stdout.split()[-2:]
    assert digest == hashlib.sha256(Path(str(path) + ".sha256").read_bytes()).hexdigest()
    assert int(size) == sum(f.stat().st_size for f in path.iterdir()) + path.stat().st_size
    _manifest_is_right(path)
    assert (path / "3002.dat.gz").stat().st_size == 20 * 250000
    assert _after_dump(result.stdout) <= 3000 + 700, result.stdout
    assert not list(path.parent.glob("*.partial*")), "no work files left"


def test_a_file_cut_back_behind_the_follower_is_hashed_again(tmp_path: Path) -> None:
    """The follower reads more bytes than the file ends up holding: its sum is thrown away and
    the file hashed after the dump, so the manifest is still right."""
    script, path = _script(tmp_path)
    result = _run(script, MODE="truncate")
    assert result.returncode == 0, result.stderr
    _manifest_is_right(path)
    assert _after_dump(result.stdout) >= (path / "3002.dat.gz").stat().st_size, result.stdout


@pytest.mark.parametrize("fail", [1, 8])
def test_a_pg_dump_failing_while_a_file_is_followed_leaves_nothing(tmp_path: Path, fail: int) -> None:
    """pg_dump fails with the big file open (followed, after a look or two): its exit status
    comes back, and no folder, work file or process of the dump remains."""
    script, path = _script(tmp_path)
    result = _run(script, FAIL=str(fail), PAUSE="0.3")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "connection lost" in result.stderr
    assert not path.exists() and list(path.parent.iterdir()) == []
