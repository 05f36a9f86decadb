"""``alembic.remote``: the application's own Alembic, run inside its deployment on the SSH host.

The application (tests/fixtures/byo.py, env.py reading its URL from ``APP_DATABASE_URL``) is
deployed on the host side of the test sshd: its folder and its own virtualenv (``/usr/bin/python3
-m venv`` + alembic, SQLAlchemy, psycopg, built once per session) belong to the deploy user that
sshd logs in. runbook runs ``cd APP && VENV/bin/alembic ...`` there through the real SSH login.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import pytest

from tests.fixtures import byo
from tests.fixtures.project import NO_PREFLIGHT_PLAYBOOK, ProcessWatcher, Project
from tests.fixtures.sshd import SSHServer



def _host_dir(prefix: str) -> Path:
    """Not under pytest's tmp_path: its parents are mode 0700, closed to the deploy user."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def _chown_tree(path: Path, user: str) -> None:
    if os.geteuid() != 0:
        return
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.lchown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


@pytest.fixture(scope="session")
def deploy_venv(sshd: SSHServer) -> Iterator[Path]:
    """The application's own virtualenv on the host (alembic, SQLAlchemy, psycopg), once per session."""
    base = _host_dir("runbook-deploy-venv-")
    venv = base / "venv"
    made = subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.fail(f"cannot create the deployment's virtualenv: {made.stderr.strip()}")
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "alembic", "sqlalchemy",
                          "psycopg[binary]"], capture_output=True, text=True, timeout=600)
    if pip.returncode != 0:
        pytest.fail(f"cannot install the deployment's packages: {pip.stderr.strip()[-2000:]}")
    _chown_tree(base, sshd.user)
    try:
        yield venv
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def deployed(sshd: SSHServer) -> Iterator[Path]:
    """A folder for the application on the host, owned by the deploy user."""
    app = _host_dir("runbook-deploy-app-")
    try:
        yield app
    finally:
        shutil.rmtree(app, ignore_errors=True)


def deploy(project: Project, app: Path, venv: Path, *, start: str | None, irreversible: str = "raises",
           head_checks: list[dict[str, Any]] | None = None) -> str:
    """Write the application into its deployment, point the inventory at it, bring the db to ``start``."""
    byo.write_app(app, "url_env", irreversible=irreversible, head_checks=head_checks)
    _chown_tree(app, project.ssh.user if project.ssh else "root")
    command = f"cd {app} && {venv}/bin/alembic"
    project.env_overrides.update(
        alembic={"remote": command, "url_env": byo.URL_ENV},
        locks={"lock_timeout": "1s", "max_wait": "30s", "blockers": "wait", "statement_timeout": "30s"})
    project.write_inventory()
    if start is not None:
        db = project.db
        url = f"postgresql+psycopg://{db.user}:{quote(db.password, safe='')}@{db.host}:{db.port}/{db.name}"
        done = subprocess.run([str(venv / "bin" / "alembic"), "upgrade", start], cwd=app,
                              env={"PATH": os.environ["PATH"], byo.URL_ENV: url,
                                   "PYTHONDONTWRITEBYTECODE": "1"},
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        db.psql(byo.SAMPLE)
    return command


def probe(project: Project) -> dict[str, list[str]]:
    rows = project.db.psql("SELECT rev, lock_timeout, statement_timeout, application_name FROM migration_probe")
    return {r.split("|")[0]: r.split("|")[1:] for r in rows.splitlines() if r}


def test_remote_migrate_retries_a_blocker_through_pgoptions(project: Project, deployed: Path,
                                                            deploy_venv: Path) -> None:
    """A lock holder makes the host's alembic time out on lock_timeout (from PGOPTIONS): retried, then done; no password on any command line."""
    deploy(project, deployed, deploy_venv, start="r08")
    project.write_playbook("migrate_unchecked", NO_PREFLIGHT_PLAYBOOK)
    blocker = project.db.admin()
    blocker.autocommit = False
    blocker.execute("LOCK TABLE accounts IN ACCESS SHARE MODE")
    before_logs = set(project.run_logs())

    def release() -> None:
        try:
            project.wait_event("lock_timeout_retry", since=before_logs, attempt=2, timeout=120)
        finally:
            blocker.rollback()
            blocker.close()

    releaser = threading.Thread(target=release)
    releaser.start()
    try:
        with ProcessWatcher() as watcher:
            result = project.run("prod", "migrate_unchecked")
    finally:
        releaser.join()

    assert result.returncode == 0, result.stdout + result.stderr
    assert project.db.alembic_version() == {byo.HEAD}
    events = project.events()
    attempts = [e for e in events if e["event"] == "migration_attempt"]
    assert len(attempts) >= 3 and {e["backend"] for e in attempts} == {"remote"}
    assert [e["lock_timeout_ms"] for e in attempts[:3]] == [125, 250, 500]
    retries = [e for e in events if e["event"] == "lock_timeout_retry"]
    assert len(retries) >= 2 and "lock timeout" in retries[0]["error"]
    # The migration's own session on the host got runbook's settings through PGOPTIONS/PGAPPNAME.
    lock_timeout, statement_timeout, app_name = probe(project)["r11"]
    assert lock_timeout == f"{attempts[-1]['lock_timeout_ms']}ms" and statement_timeout == "30s"
    assert app_name == f"runbook:upgrade {events[0]['run_id']}"
    last = max(i for i, e in enumerate(events) if e["event"] == "migration_attempt")
    assert [e["revision"] for e in events[last:] if e["event"] == "revision_applied"] == ["r09", "r10", "r11"]

    password = project.db.password
    assert not [cmd for cmd in watcher.seen if password in cmd or quote(password, safe="") in cmd]
    remote = [cmd for cmd in watcher.seen if "alembic upgrade" in cmd and "PGOPTIONS" in cmd]
    assert remote and all("PGPASSFILE" in cmd for cmd in remote)
    assert password not in result.stdout + result.stderr
    assert all(password not in log.read_text() for log in project.run_logs())
    assert not glob.glob(f"{project.ssh.home}/.runbook-pgpass-{events[0]['run_id']}-*")

    # status and the incident rollback go through the host's alembic too.
    status = project.run("--json", "prod", "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert '"head": "r11"' in status.stdout and '"pending": []' in status.stdout
    back = project.run("prod", "rollback", "--to", "r09")
    assert back.returncode == 0, back.stdout + back.stderr
    assert project.db.alembic_version() == {"r09"}
    assert [e["revision"] for e in project.events() if e["event"] == "revision_reverted"] == ["r11", "r10"]


def test_remote_failures_roll_back(project: Project, deployed: Path, deploy_venv: Path) -> None:
    """A revision failing on the host leaves nothing behind; a failed verification downgrades on the host; both exit 1."""
    deploy(project, deployed, deploy_venv, start="r08")
    (deployed / "migrations" / "versions" / "r12_broken.py").write_text(byo.revision_source(
        "r12", "r11", None, "broken", 'op.execute("SELECT 1 / 0")', "pass"))
    before = project.state()

    broken = project.run("prod", "migrate")
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert project.state() == before
    failure = next(e for e in project.events() if e["event"] == "step_failed" and e["step"] == "upgrade")
    assert "in revision r12 (broken)" in failure["error"] and "division by zero" in failure["error"]
    assert "[SQLSTATE 22012]" in failure["error"]

    (deployed / "migrations" / "versions" / "r12_broken.py").unlink()
    byo.write_checks(deployed, byo.HEAD, byo.FAILING_CHECKS)
    result = project.run("prod", "migrate")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "downgraded" in result.stderr
    assert project.state() == before
    events = project.events()
    assert [e["revision"] for e in events if e["event"] == "revision_reverted"] == ["r11", "r10", "r09"]
    failed = next(e for e in events if e["event"] == "check_failed")
    assert failed["check"] == "an injected failure"
    missing = next(e for e in events if e["event"] == "verify_file_missing")
    assert missing["path"] == f"db1:{deployed}/migrations/verify/r08.yaml"


def test_remote_dry_run_and_restore_across_the_irreversible_revision(project: Project, deployed: Path,
                                                                     deploy_venv: Path) -> None:
    """Remote --dry-run shows the SQL, the merge and the revision without a downgrade; a failure past it restores the backup."""
    deploy(project, deployed, deploy_venv, start="r03", irreversible="empty", head_checks=byo.FAILING_CHECKS)
    before = project.state()

    plan = project.run("prod", "migrate", "--dry-run")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "target r11 (alembic on the host)" in plan.stdout
    assert "revision r06: merge billing and orders (merge)" in plan.stdout
    assert "revision r08: drop the legacy code (no way back) (NO DOWNGRADE)" in plan.stdout
    assert "ALTER TABLE accounts DROP COLUMN legacy_code" in plan.stdout
    assert project.state() == before and not project.backups()

    result = project.run("prod", "migrate")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "restored from the backup" in result.stderr
    assert project.state() == before
    failure = next(e for e in project.events() if e["event"] == "step_failed" and e["step"] == "downgrade")
    assert "revision r08 (drop the legacy code (no way back)) has no downgrade" in failure["error"]
    assert "is empty" in failure["error"]
