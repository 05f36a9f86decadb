"""The host script of a custom dump (``dumpcustom.dump_script``) and its same-pass writer, run by
``sh`` on this machine with a stand-in ``pg_dump`` that writes known bytes to stdout the way
``pg_dump -Fc`` does (small writes, with pauses), then a big piece at once.

The real ``pg_dump -Fc`` runs through the same script over SSH in tests/test_bigdb.py,
tests/test_signals.py and every backup of the suite; here the bytes are the test's, so the file can
be compared with them, and the host can be given no ``python3`` (the ``tee`` fallback) or a
``python3`` that fails. Each script runs in a session of its own, and the test checks that no
process of that session outlives it.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from runbook import dumpcustom, hostprograms
from runbook.transports.base import quote
from tests.fixtures.hostscript import NOTING_PYTHON, PYTHON, host_bin, run_script

# A stand-in for pg_dump -Fc writing to stdout: $DATA's first SMALL bytes in pieces of 4 kB (a
# pause every 32), then the rest at once. FAIL=N exits 1 after N pieces.
FAKE_PG_DUMP = r"""#!/bin/sh
i=0
while [ $i -lt $((SMALL / 4096)) ]; do
  dd if="$DATA" bs=4096 skip=$i count=1 status=none
  i=$((i + 1))
  if [ "${FAIL:-0}" -eq $i ]; then echo "pg_dump: error: connection lost" >&2; exit 1; fi
  [ $((i % 32)) -ne 0 ] || sleep 0.02
done
tail -c +$((SMALL + 1)) "$DATA"
"""

# python3 that reads a little of the dump and fails
BROKEN = "#!/bin/sh\nhead -c 100000 > /dev/null\necho 'python3: cannot write' >&2\nexit 1\n"


def _host(tmp_path: Path, python: str | None) -> dict[str, str]:
    """The script's environment: PATH with the stand-in pg_dump and ``python`` as python3 (None:
    no python3 at all), the dump's bytes (3 MB) in DATA."""
    bindir = host_bin(tmp_path, {"pg_dump": FAKE_PG_DUMP, **({"python3": python} if python else {})})
    data = os.urandom(3 << 20)
    (tmp_path / "data").write_bytes(data)
    return {"PATH": str(bindir), "DATA": str(tmp_path / "data"), "SMALL": str(1 << 20),
            "USED": str(tmp_path / "used")}


def _script(tmp_path: Path) -> tuple[str, Path]:
    folder = tmp_path / "backups"
    path = folder / "app_prod_20261202T000000Z_0001.dump"
    script = dumpcustom.dump_script(folder=str(folder), path=str(path), pg_dump="pg_dump",
                                    pg_restore_list=f"test -s {quote(str(path) + '.partial')}", name_taken=75)
    return script, path


@pytest.mark.parametrize("python", ["wrapper", "none"])
def test_the_dump_is_written_whole_and_hashed_as_it_is_written(tmp_path: Path, python: str) -> None:
    """With python3 on the host (the writer) or without (tee into the hasher): the file holds
    exactly pg_dump's bytes, mode 0600; the script prints their sha256 and size, and the .sha256
    file beside it names the file; no work file is left."""
    env = _host(tmp_path, NOTING_PYTHON if python == "wrapper" else None)
    script, path = _script(tmp_path)
    result = run_script(script, **env)
    assert result.returncode == 0, result.stderr
    data = Path(env["DATA"]).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    assert result.stdout.split() == [digest, str(len(data))]
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Path(f"{path}.sha256").read_text() == f"{digest}  {path.name}\n"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + ".sha256"]
    assert (tmp_path / "used").exists() == (python == "wrapper"), "python3 used where present, only there"


@pytest.mark.parametrize("python", ["wrapper", "none"])
def test_a_pg_dump_failing_half_way_leaves_nothing(tmp_path: Path, python: str) -> None:
    """pg_dump fails after some of its bytes: the writer has written them and succeeded, so only
    pg_dump's own status (its marker) tells; exit 1 naming pg_dump, no file, no work file."""
    env = _host(tmp_path, NOTING_PYTHON if python == "wrapper" else None)
    script, path = _script(tmp_path)
    result = run_script(script, **env, FAIL="40")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "connection lost" in result.stderr and "runbook: pg_dump failed" in result.stderr
    assert list(path.parent.iterdir()) == []


def test_a_writer_failing_half_way_leaves_nothing(tmp_path: Path) -> None:
    """python3 fails after reading some of the dump (pg_dump then dies of the closed pipe): the
    writer is named, not pg_dump; no file, no work file."""
    env = _host(tmp_path, BROKEN)
    script, path = _script(tmp_path)
    result = run_script(script, **env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "runbook: writing the dump failed" in result.stderr
    assert "pg_dump failed" not in result.stderr
    assert list(path.parent.iterdir()) == []


def test_the_writer_reads_a_slow_dump_in_few_reads(tmp_path: Path) -> None:
    """pg_dump writes ~4 kB at a time: a reader that read whenever there is something to read (tee)
    would wake up at every write. The writer lets the pipe fill first: 1,000 writes of 4 kB, 1 ms
    apart, take it a few dozen reads (counted by the kernel, /proc/PID/io), and the bytes it writes
    and hashes are all of them."""
    out = tmp_path / "dump"
    proc = subprocess.Popen([PYTHON, "-I", "-S", "-c", hostprograms.WRITER, str(out)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=False)
    assert proc.stdin is not None
    pieces = [os.urandom(4096) for _ in range(1000)]
    try:
        proc.stdin.write(pieces[0])
        proc.stdin.flush()
        time.sleep(0.5)  # the interpreter has started and read the first piece
        before = _reads(proc.pid)
        for piece in pieces[1:]:
            os.write(proc.stdin.fileno(), piece)
            time.sleep(0.001)
        time.sleep(0.1)
        reads = _reads(proc.pid) - before
    finally:
        printed = proc.communicate(timeout=10)[0].decode()  # closes its stdin: the end of the dump
    assert proc.returncode == 0
    data = b"".join(pieces)
    assert out.read_bytes() == data and printed == f"{hashlib.sha256(data).hexdigest()}  -\n"
    assert reads < 200, f"{reads} reads for 999 writes"


def _reads(pid: int) -> int:
    """The read system calls process ``pid`` has made."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["syscr"])
