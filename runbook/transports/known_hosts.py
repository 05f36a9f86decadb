"""Reading an OpenSSH ``known_hosts`` file for one host, markers included.

Paramiko's own loader knows neither ``@revoked`` nor ``@cert-authority`` (it skips or chokes on
them) nor OpenSSH's host patterns (``*``, ``?``, ``!negation``). This module reads the file the way
``ssh`` does for the one name we connect to (``host``, or ``[host]:port`` off port 22, hashed
``|1|salt|hash`` entries included) and returns the keys accepted for it, the keys revoked for it and
the ``@cert-authority`` lines that apply to it (host certificates are not supported by runbook).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

import paramiko

REVOKED = "@revoked"
CERT_AUTHORITY = "@cert-authority"


@dataclass
class KnownHost:
    """What a known_hosts file says about one host name."""

    name: str
    path: str
    accepted: list[paramiko.PKey] = field(default_factory=list)
    revoked: dict[str, int] = field(default_factory=dict)  # key fingerprint -> line
    cert_authority_lines: list[int] = field(default_factory=list)

    @property
    def types(self) -> list[str]:
        """The key types accepted for the host, in file order, once each."""
        return list(dict.fromkeys(k.get_name() for k in self.accepted))

    def revoked_line(self, key: paramiko.PKey) -> int | None:
        return self.revoked.get(key.fingerprint)

    def hostkeys(self) -> paramiko.HostKeys:
        """A paramiko HostKeys holding the accepted keys under the literal name paramiko looks up."""
        keys = paramiko.HostKeys()
        for key in self.accepted:
            keys.add(self.name, key.get_name(), key)
        return keys


def host_name(host: str, port: int) -> str:
    """The name known_hosts uses for ``host:port``."""
    return host if port == 22 else f"[{host}]:{port}"


def _wildcard(pattern: str) -> re.Pattern[str]:
    """OpenSSH's match_pattern: ``*`` and ``?`` only (``[`` is literal, as in ``[host]:port``)."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower()))


def _matches(patterns: str, name: str) -> bool:
    """OpenSSH host matching: comma-separated patterns, ``*``/``?`` wildcards, ``!`` negates, and
    hashed ``|1|salt|hash`` entries."""
    hit = False
    for pattern in patterns.split(","):
        if pattern.startswith("|1|"):
            if paramiko.HostKeys.hash_host(name, pattern) == pattern:
                hit = True
            continue
        negated = pattern.startswith("!")
        if _wildcard(pattern.lstrip("!")).fullmatch(name.lower()):
            if negated:
                return False
            hit = True
    return hit


def _key(key_type: str, blob: str) -> paramiko.PKey | None:
    try:
        return paramiko.PKey.from_type_string(key_type, base64.b64decode(blob, validate=True))
    except (binascii.Error, ValueError, paramiko.SSHException):
        return None  # an unknown key type or a damaged line: ssh skips it too


def load(path: str, host: str, port: int) -> KnownHost:
    """Read ``path`` for ``host:port``; raises OSError if the file cannot be read."""
    name = host_name(host, port)
    known = KnownHost(name, path)
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, raw in enumerate(fh, 1):
            fields = raw.split()
            if not fields or fields[0].startswith("#"):
                continue
            marker = fields.pop(0) if fields[0].startswith("@") else None
            if len(fields) < 3 or not _matches(fields[0], name):
                continue
            if marker == CERT_AUTHORITY:
                known.cert_authority_lines.append(lineno)
                continue
            key = _key(fields[1], fields[2])
            if key is None or marker not in (None, REVOKED):
                continue
            if marker == REVOKED:
                known.revoked.setdefault(key.fingerprint, lineno)
            else:
                known.accepted.append(key)
    # A revoked key is never accepted, even where another line lists it.
    known.accepted = [k for k in known.accepted if k.fingerprint not in known.revoked]
    return known
