"""Host keys over a real sshd: an unknown or changed key refuses the run before anything is touched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.fixtures.project import PASSWORD_ENV, Project


def migrate(project: Project) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOK_")}
    env[PASSWORD_ENV] = project.db.password
    return subprocess.run([sys.executable, "-m", "runbook", "--inventory", str(project.inventory), "--yes",
                           "prod", "migrate"], cwd=project.dir, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120, check=False)


def refused_with(project: Project, known_hosts: str) -> str:
    """Run migrate with ``known_hosts`` in the inventory; assert the refusal; return the error line."""
    project.upgrade_to("0001")
    ssh = project.ssh
    assert ssh is not None
    host = project.environment()["hosts"][0]
    host["ssh"]["known_hosts"] = known_hosts
    project.write_inventory(hosts=[host])
    before = project.state()
    result = migrate(project)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    assert project.db.password not in output
    errors = [line for line in result.stderr.splitlines() if line.startswith("runbook: error: ")]
    assert len(errors) == 1, result.stderr
    assert project.state() == before
    assert not project.backup_dir.exists() or not any(project.backup_dir.iterdir())
    events = project.events()
    assert not [e for e in events if e["event"] == "step_started"], "no step ran"
    assert events[-1]["event"] == "run_finished" and events[-1]["exit_code"] == 2
    return errors[0]


def test_unknown_host_key_is_refused(project: Project, tmp_path: Path) -> None:
    """A host key missing from known_hosts: exit 2, one line naming host, file and offered key; no backup."""
    assert project.ssh is not None
    known_hosts = project.ssh.empty_known_hosts(tmp_path)
    line = refused_with(project, known_hosts)
    assert f"host key of 127.0.0.1:{project.ssh.port} not found in {known_hosts}" in line
    assert "ssh-ed25519" in line and "refusing to connect" in line


def test_changed_host_key_is_refused(project: Project, tmp_path: Path) -> None:
    """A host key that differs from known_hosts: exit 2, one line saying it CHANGED; no backup."""
    assert project.ssh is not None
    known_hosts = project.ssh.wrong_known_hosts(tmp_path)
    line = refused_with(project, known_hosts)
    assert f"host key of 127.0.0.1:{project.ssh.port} CHANGED" in line and known_hosts in line
    assert "man-in-the-middle" in line


def test_missing_known_hosts_file_is_refused(project: Project, tmp_path: Path) -> None:
    """No known_hosts file at all is no excuse to accept any key."""
    missing = str(tmp_path / "no_such_known_hosts")
    line = refused_with(project, missing)
    assert f"known_hosts file {missing} does not exist" in line


def test_relative_known_hosts_is_read_next_to_the_inventory(project: Project) -> None:
    """A relative known_hosts path is resolved against the inventory's folder, not the cwd."""
    assert project.ssh is not None
    (project.dir / "keys").mkdir()
    (project.dir / "keys" / "known_hosts").write_text(project.ssh.known_hosts_line + "\n")
    project.upgrade_to("0001")
    host = project.environment()["hosts"][0]
    host["ssh"]["known_hosts"] = "keys/known_hosts"
    project.write_inventory(hosts=[host])
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOK_")}
    env[PASSWORD_ENV] = project.db.password
    result = subprocess.run([sys.executable, "-m", "runbook", "--inventory", str(project.inventory), "--yes",
                             "prod", "migrate", "--dry-run"], cwd="/", env=env, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "at 0001, target 0002" in result.stdout


def _rsa_line() -> str:
    """A fresh RSA public key as 'ssh-rsa AAAA...'."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()


def _dry_run(project: Project, known_hosts: Path) -> subprocess.CompletedProcess[str]:
    project.upgrade_to("0001")
    host = project.environment()["hosts"][0]
    host["ssh"]["known_hosts"] = str(known_hosts)
    project.write_inventory(hosts=[host])
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOK_")}
    env[PASSWORD_ENV] = project.db.password
    return subprocess.run([sys.executable, "-m", "runbook", "--inventory", str(project.inventory), "--yes",
                           "prod", "migrate", "--dry-run"], cwd=project.dir, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120, check=False)


def test_hashed_entry_among_markers_is_accepted(project: Project, tmp_path: Path) -> None:
    """A hashed (|1|...) entry works, next to @cert-authority and @revoked lines for other keys and comments."""
    import paramiko

    assert project.ssh is not None
    name = f"[127.0.0.1]:{project.ssh.port}"
    path = tmp_path / "known_hosts.hashed"
    path.write_text("# comment\n"
                    f"@cert-authority *.example.org {_rsa_line()}\n"
                    f"@revoked * {_rsa_line()}\n"
                    f"{paramiko.HostKeys.hash_host(name)} {project.ssh.host_pubkey_line}\n")
    result = _dry_run(project, path)
    assert result.returncode == 0, result.stderr
    assert "at 0001, target 0002" in result.stdout


def test_revoked_host_key_is_refused(project: Project, tmp_path: Path) -> None:
    """A key marked @revoked is refused (exit 2, one line naming the file:line), even where another line lists it."""
    assert project.ssh is not None
    path = tmp_path / "known_hosts.revoked"
    path.write_text(f"{project.ssh.known_hosts_line}\n@revoked * {project.ssh.host_pubkey_line}\n")
    line = refused_with(project, str(path))
    assert f"is marked @revoked in {path}:2" in line and "refusing to connect" in line


def test_cert_authority_only_is_named_unsupported(project: Project, tmp_path: Path) -> None:
    """A host trusted only through @cert-authority: one line saying host certificates are not supported, exit 2."""
    assert project.ssh is not None
    path = tmp_path / "known_hosts.ca"
    path.write_text(f"@cert-authority [127.0.0.1]:* {project.ssh.host_pubkey_line}\n")
    line = refused_with(project, str(path))
    assert f"{path}:1: @cert-authority (host certificates) is not supported" in line


def test_only_an_other_key_type_known_is_not_called_a_change(project: Project, tmp_path: Path) -> None:
    """known_hosts lists only an RSA key, the server has only ed25519: said as such, never 'CHANGED'."""
    assert project.ssh is not None
    path = tmp_path / "known_hosts.rsa"
    path.write_text(f"[127.0.0.1]:{project.ssh.port} {_rsa_line()}\n")
    line = refused_with(project, str(path))
    assert f"no ed25519 key known for [127.0.0.1]:{project.ssh.port} in {path}; known: ssh-rsa" in line
    assert "CHANGED" not in line and "man-in-the-middle" not in line


def test_ssh_block_without_key_is_one_line(project: Project) -> None:
    """An ssh block without 'key': exit 2, one line naming inventory:line, no traceback, nothing touched."""
    host = project.environment()["hosts"][0]
    del host["ssh"]["key"]
    project.upgrade_to("0001")
    project.write_inventory(hosts=[host])
    before = project.state()
    result = migrate(project)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("runbook: error: ")]
    assert len(errors) == 1 and f"{project.inventory}:" in errors[0] and "missing key 'key'" in errors[0]
    assert project.state() == before
