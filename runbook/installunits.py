"""``schedule --install``: write the units where systemd finds them, and the secrets' file template.

Everything that can be refused is checked before the first byte is written: a unit file of the same
name that ``schedule`` did not write for this environment and playbook (a hand-written unit, or a
name collision such as env ``a-b`` + playbook ``c`` and env ``a`` + playbook ``b-c``) is never
overwritten, and a folder that cannot be written is named. Units are replaced atomically (temp
file + rename, mode 0644). The EnvironmentFile is created only if it does not exist (``O_EXCL``,
mode 0600 from the first byte), with the variable names and empty values: runbook never writes a
secret, and never overwrites the one a person filled in. Nothing is enabled or started.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from .errors import ConfigError


def _writable(folder: Path) -> bool:
    """Can ``folder`` be written, or created under its nearest existing parent?"""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            return False
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)


def check(sched: Any) -> list[Path]:
    """Refuse (ConfigError, exit 2) before anything is written; the unit paths to write."""
    from .systemdunits import marker

    paths = [sched.unit_dir / f"{sched.name}.service", sched.unit_dir / f"{sched.name}.timer"]
    for path in paths:
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise ConfigError(f"{path} exists and is not a regular file: not overwritten")
        if path.exists():
            try:
                ours = marker(sched.env, sched.playbook) in path.read_text(errors="replace").splitlines()
            except OSError as exc:
                raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
            if not ours:
                raise ConfigError(f"{path} exists and was not written by `runbook {sched.env} schedule "
                                  f"{sched.playbook}`: not overwritten (remove it first if it is stale)")
    for folder in (sched.unit_dir, sched.env_file.parent):
        if not _writable(folder):
            hint = "" if sched.user_mode else " (system units need root; or use --user)"
            raise ConfigError(f"cannot write to {folder}{hint}")
    if sched.env_file.is_symlink() or (sched.env_file.exists() and not sched.env_file.is_file()):
        raise ConfigError(f"{sched.env_file} exists and is not a regular file")
    return paths


def _write_unit(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _create_env_file(path: Path, text: str) -> bool:
    """Create the template, 0600 from the start; False if a file is already there (kept as it is)."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)  # whatever the umask
        out.write(text)
    return True


def unset_names(path: Path, names: list[str]) -> list[str] | None:
    """The names the file does not set to a non-empty value (None if it cannot be read). Values
    are looked at only to tell empty from set: never kept, never shown."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    filled = set()
    for line in lines:
        text = line.strip()
        if text.startswith("export "):
            text = text[len("export "):].lstrip()
        name, sep, value = text.partition("=")
        if sep and value.strip() not in ("", "''", '""'):
            filled.add(name.strip())
    return [n for n in names if n not in filled]


def install(sched: Any) -> dict[str, Any]:
    """Write the files; what was done, for the report (no secret in it)."""
    paths = check(sched)
    messages = []
    try:
        created = _create_env_file(sched.env_file, sched.env_template)
        for path, text in zip(paths, (sched.service, sched.timer)):
            _write_unit(path, text)
            messages.append(f"wrote {path}")
    except OSError as exc:
        raise ConfigError(f"cannot write {exc.filename or sched.unit_dir}: {exc.strerror}") from None
    names = ", ".join(sched.variables)
    mode = stat.S_IMODE(sched.env_file.stat().st_mode)
    if created:
        messages.append(f"created {sched.env_file} (mode 0600)" + (f": set {names} in it" if names else ""))
    else:
        messages.append(f"kept {sched.env_file} (it exists: never overwritten)")
        if mode & 0o077:
            messages.append(f"warning: {sched.env_file} is mode {mode:04o}, readable by others: "
                            f"chmod 600 {sched.env_file}")
        unset = unset_names(sched.env_file, sched.variables)
        if unset:
            messages.append(f"warning: {sched.env_file} does not set {', '.join(unset)} yet")
    return {"files": [str(p) for p in paths], "environment_file": str(sched.env_file),
            "environment_file_created": created, "messages": messages}
