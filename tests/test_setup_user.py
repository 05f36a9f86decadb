"""The README's two commands, run by a normal (non-root) user on this machine's Debian.

Root's ``python3`` on these machines is not the system one (pyenv), which hides what a normal user
meets: Debian's ``/usr/bin/python3`` refuses ``pip install --user`` (PEP 668). So the test creates a
user (``useradd``; removed afterwards), copies the working tree into a folder that user owns, and
runs, as that user, with a PATH that starts with /usr/bin (the system python3 first) and holds no
uv: ``bin/runbook local migrate`` (uv set up in the project's private .runbook/tools, the virtualenv,
the embedded PostgreSQL run as that user, migrated and verified), then ``bin/test``. The nested
``bin/test`` gets a narrow selection (``-n 0 tests/test_playbook.py``) passed through to pytest, so it
runs the whole set-up path but only one small test file: the suite itself is not run twice.

Packages the user would need sudo for (PostgreSQL, openssh-server, python3-venv) are already on
this machine, so no sudo happens here. Nothing is skipped: without root to create the user, the test
fails.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PATH = "/usr/bin:/bin:/usr/sbin:/sbin"  # the system python3 first; no uv anywhere on it
# What a user's login on this machine would have too (a proxy, a package index); never secrets of ours.
PASSED_THROUGH = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
                  "PIP_INDEX_URL", "UV_INDEX_URL", "SSL_CERT_FILE")
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", ".runbook", "__pycache__", ".mypy_cache",
                                     ".pytest_cache", "*.pyc")


@dataclass
class User:
    name: str
    home: Path
    uid: int
    repo: Path

    def run(self, command: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """``command`` in the copy of the repository, as this user, with a clean environment."""
        env = {"HOME": str(self.home), "USER": self.name, "LOGNAME": self.name, "PATH": PATH,
               "LANG": "C.UTF-8", "TERM": "dumb"}
        env.update({k: v for k, v in os.environ.items() if k in PASSED_THROUGH})
        argv = ["/usr/sbin/runuser", "-u", self.name, "--", "/usr/bin/env", "-i",
                *(f"{k}={v}" for k, v in env.items()), "/bin/bash", "-c", f"cd {self.repo} && {command}"]
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, check=False)


def _processes_of(uid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
            except FileNotFoundError:
                pass
    return pids


@pytest.fixture
def user() -> Iterator[User]:
    """A fresh user owning a copy of the working tree (no .venv, no .runbook, no .git)."""
    if os.geteuid() != 0:
        pytest.fail("creating a user needs root (the suite runs as root on these machines)")
    name = f"rbsetup{uuid.uuid4().hex[:6]}"
    subprocess.run(["/usr/sbin/useradd", "--create-home", "--shell", "/bin/bash", name], check=True,
                   capture_output=True)
    base = Path(tempfile.mkdtemp(prefix="runbook-setup-"))
    try:
        entry = pwd.getpwnam(name)
        base.chmod(0o755)
        repo = base / "runbook"
        shutil.copytree(ROOT, repo, symlinks=True, ignore=COPY_IGNORE)
        subprocess.run(["chown", "-R", f"{name}:{name}", str(base)], check=True)
        yield User(name, Path(entry.pw_dir), entry.pw_uid, repo)
    finally:
        uid = pwd.getpwnam(name).pw_uid
        for pid in _processes_of(uid):  # only this user's: what the test started as it
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["/usr/sbin/userdel", "--remove", name], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.timeout(1800)
def test_readme_commands_as_a_normal_user(user: User) -> None:
    """bin/runbook local migrate, then bin/test (one small test file passed through to pytest),
    as a non-root user with the system python3 and no uv: both exit 0."""
    # The premises: the system python3 is the one found, it is Debian's (PEP 668), and no uv.
    found = user.run("command -v python3; python3 -c 'import sys; print(sys.prefix)'; "
                     "ls \"$(python3 -c 'import sysconfig; print(sysconfig.get_path(\"stdlib\"))')/EXTERNALLY-MANAGED\"; "
                     "command -v uv || echo no-uv; id -u", timeout=60)
    assert found.returncode == 0, found.stderr
    lines = found.stdout.split()
    assert lines[0] == "/usr/bin/python3" and lines[1] == "/usr", lines
    assert lines[2].endswith("EXTERNALLY-MANAGED") and lines[3] == "no-uv" and lines[4] != "0", lines

    migrate = user.run("bin/runbook local migrate")
    out = migrate.stdout + migrate.stderr
    assert migrate.returncode == 0, out[-4000:]
    assert "local/localhost: rag_memory at 0002, verified" in out, out[-4000:]
    assert "Traceback" not in out and "externally-managed" not in out
    tools_uv = user.repo / ".runbook" / "tools" / "bin" / "uv"
    assert tools_uv.is_file() and tools_uv.stat().st_uid == user.uid, "uv is in the project's private tools"
    pg_version = user.repo / ".runbook" / "pg" / "data" / "PG_VERSION"
    assert pg_version.stat().st_uid == user.uid, "the embedded cluster runs as the user, not postgres"

    again = user.run("bin/runbook local migrate")
    assert again.returncode == 0 and "nothing to migrate" in again.stdout + again.stderr, again.stderr[-2000:]

    tests = user.run("bin/test -n 0 -p no:cacheprovider tests/test_playbook.py")
    out = tests.stdout + tests.stderr
    assert tests.returncode == 0, out[-4000:]
    assert " passed" in out and "failed" not in out, out[-4000:]
