"""The backups on a database host: listing, choosing one to restore, pruning by retention.

Backups are ``<db>_<env>_<UTC stamp>_<revision>[_<label>].dump`` (``pg_dump -Fc``, one file) or
``.dumpdir`` (``pg_dump -Fd``, a folder) in the environment's backup folder, each with a ``.sha256``
file written only after ``pg_restore --list`` read the dump: a dump with that file is a verified
backup. For a folder the ``.sha256`` file is the manifest of its files (``dumpdir``), and the
backup's sha256 is that manifest's. Labels mark the safety copies runbook takes of a state it is about to
leave (``pre-rollback``, ``pre-restore``); those are never the default backup to restore.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .transports.base import Transport, quote

SAFETY_LABELS = ("_pre-restore", "_pre-rollback")
SUFFIXES = (".dump", ".dumpdir")


@dataclass(frozen=True)
class BackupFile:
    """One dump on the host, as ``status`` and ``rollback --restore`` see it."""

    path: str
    name: str
    size: int
    mtime: float
    sha256: str | None
    stamp: str
    revision: str
    label: str
    directory: bool = False  # a pg_dump -Fd folder (``.dumpdir``)

    @property
    def verified(self) -> bool:
        return self.sha256 is not None

    @property
    def safety_copy(self) -> bool:
        return self.label in SAFETY_LABELS

    def age_s(self) -> float:
        return max(0.0, time.time() - self.mtime)

    def fact(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "size": self.size, "age_s": round(self.age_s()),
                "sha256": self.sha256, "verified": self.verified, "revision": self.revision,
                "label": self.label.lstrip("_") or None, "format": "directory" if self.directory else "custom"}


def folder_of(env: Any) -> str:
    """The environment's backup folder on its hosts (the embedded cluster's: under its state dir)."""
    if env.embedded and "backup" not in env.config.model_fields_set:
        return str(env.state_dir / "backups")
    return str(env.config.backup.dir)


def on_host(folder: str, transport: Transport) -> str:
    """``folder`` as a path on the host: ``~`` is the login user's home there, no trailing slash."""
    if folder.startswith("~"):
        folder = transport.home.rstrip("/") + folder[1:]
    return folder.rstrip("/") or "/"


def parse_name(name: str, prefix: str) -> tuple[str, str, str] | None:
    """``<prefix><stamp>_<revision>[_label].dump`` (or ``.dumpdir``) -> (stamp, revision, label)."""
    suffix = next((s for s in SUFFIXES if name.endswith(s)), None)
    if not name.startswith(prefix) or suffix is None:
        return None
    rest = name[len(prefix):-len(suffix)]
    label = ""
    for candidate in SAFETY_LABELS:
        if rest.endswith(candidate):
            rest, label = rest[: -len(candidate)], candidate
    stamp, _, revision = rest.partition("_")
    if len(stamp) != 16 or not stamp.endswith("Z"):
        return None
    return stamp, revision, label


def list_backups(transport: Transport, folder: str, db: str, env: str) -> list[BackupFile]:
    """The backups of ``db`` in ``env`` in ``folder`` on the host, newest first (one command)."""
    prefix = f"{db}_{env}_"
    # A folder's size is the sum of its files (du), its sha256 that of its manifest.
    script = (f"cd {quote(folder)} 2>/dev/null || exit 0; "
              f"for f in {quote(prefix)}*.dump; do [ -f \"$f\" ] || continue; "
              "s=$(head -n1 \"$f.sha256\" 2>/dev/null | cut -d' ' -f1); "
              "printf '%s\\t%s\\t%s\\tf\\n' \"$f\" \"$(stat -c '%s %Y' \"$f\")\" \"$s\"; done; "
              f"for f in {quote(prefix)}*.dumpdir; do [ -d \"$f\" ] || continue; s=; "
              "[ -f \"$f.sha256\" ] && s=$(sha256sum < \"$f.sha256\" | cut -d' ' -f1); "
              "printf '%s\\t%s %s\\t%s\\td\\n' \"$f\" \"$(du -sb \"$f\" | cut -f1)\" \"$(stat -c %Y \"$f\")\" \"$s\"; done")
    out = transport.run(script, timeout=60).stdout
    found: list[BackupFile] = []
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) != 4:
            continue
        name, stat, digest, kind = parts
        parsed = parse_name(name, prefix)
        if parsed is None or name.endswith(".dumpdir") != (kind == "d"):
            continue
        size, mtime = stat.split()
        stamp, revision, label = parsed
        found.append(BackupFile(f"{folder.rstrip('/')}/{name}", name, int(size), float(mtime),
                                digest or None, stamp, revision, label, directory=kind == "d"))
    found.sort(key=lambda b: (b.stamp, b.mtime, b.name), reverse=True)
    return found


def newest_restorable(backups: list[BackupFile]) -> BackupFile | None:
    for b in backups:
        if b.verified and not b.safety_copy:
            return b
    return None


def to_prune(backups: list[BackupFile], keep: int, protected: set[str]) -> list[BackupFile]:
    """Everything beyond the newest ``keep``, except protected names and the newest verified backup."""
    newest = newest_restorable(backups)
    keepers = {b.name for b in backups[:keep]} | set(protected)
    if newest is not None:
        keepers.add(newest.name)
    return [b for b in backups if b.name not in keepers]


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def human_age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"
