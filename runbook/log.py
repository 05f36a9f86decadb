"""The structlog pipeline: context, redaction, a JSON-lines run log and a console rendering.

Configured once by the CLI. Every event goes through ``redact`` before any renderer sees it, then is
written as one JSON line to the run log (mode 0600), then rendered for the console: readable on a
TTY, ``key=value`` lines for cron, or JSON lines on stdout with ``--json``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any, MutableMapping

import structlog

REDACTED = "***"
_SECRET_KEYS = ("password", "passwd", "secret", "pgpass_content")

# A secret this long is replaced wherever it appears; a shorter one would collide with ordinary text
# (a one-character password would turn "next" into "ne***t" and garble fingerprints and commands),
# so it is only replaced where text says it is a secret: a whole value, after a key like
# ``password=`` / ``password:``, and as the password of a URL (``://user:SECRET@``).
MIN_ANYWHERE = 8
_KEYED = r"""(?i:(?:password|passwd|pwd|secret)\w*["']?\s*[=:]\s*["']?)"""
_URL_USERINFO = r"://[^\s/@:]*:"


def _encodings(secret: str) -> str:
    """A pattern for ``secret`` as written, or with any of its characters percent-encoded (any hex
    case, as urllib.parse.quote/quote_plus and SQLAlchemy write URLs) or a space as ``+``."""
    parts = []
    for ch in secret:
        alternatives = [re.escape(ch), "(?i:" + re.escape("".join(f"%{b:02X}" for b in ch.encode())) + ")"]
        if ch == " ":
            alternatives.append(r"\+")
        parts.append("(?:" + "|".join(alternatives) + ")")
    return "".join(parts)


class Redactor:
    """Replace every known secret, wherever it appears in an event, before anything renders it.

    Secrets of ``MIN_ANYWHERE`` characters or more are replaced anywhere in any string (also
    percent-encoded, and inside bytes and exception text); shorter ones only in secret positions
    (see ``MIN_ANYWHERE``). Values under keys named like ``password`` are hidden whatever they hold.
    What it cannot do: recognise a secret it was not given, or a short one outside those positions.
    """

    def __init__(self) -> None:
        self.secrets: set[str] = set()
        self._built_for: frozenset[str] | None = None
        self._anywhere: re.Pattern[str] | None = None
        self._positional: re.Pattern[str] | None = None
        self._whole: re.Pattern[str] | None = None

    def add(self, *secrets: str | None) -> None:
        self.secrets.update(s for s in secrets if s)

    def _build(self) -> None:
        current = frozenset(self.secrets)
        if current == self._built_for:
            return
        ordered = sorted(current, key=len, reverse=True)  # a secret holding another is replaced whole
        every = "|".join(_encodings(s) for s in ordered)
        longs = "|".join(_encodings(s) for s in ordered if len(s) >= MIN_ANYWHERE)
        self._anywhere = re.compile(longs) if longs else None
        self._positional = (re.compile(rf"({_KEYED}|{_URL_USERINFO})(?:{every})(?=[\s\"'@,;&)]|$)")
                            if every else None)
        self._whole = re.compile(rf"\s*(?:{every})\s*") if every else None
        self._built_for = current

    def _text(self, value: str) -> str:
        self._build()
        if self._whole is not None and self._whole.fullmatch(value):
            return REDACTED
        if self._anywhere is not None:
            value = self._anywhere.sub(REDACTED, value)
        if self._positional is not None:
            value = self._positional.sub(lambda m: m.group(1) + REDACTED, value)
        return value

    def scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._text(value) if self.secrets else value
        if isinstance(value, (bytes, bytearray)):
            text = bytes(value).decode("utf-8", "surrogateescape")
            return self._text(text).encode("utf-8", "surrogateescape") if self.secrets else value
        if isinstance(value, dict):
            return {k: (REDACTED if any(s in str(k).lower() for s in _SECRET_KEYS) and v
                        else self.scrub(v)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.scrub(v) for v in value)
        if isinstance(value, BaseException):
            return self.scrub(f"{type(value).__name__}: {value}")
        return value

    def __call__(self, logger: Any, name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        return self.scrub(dict(event))


REDACTOR = Redactor()


class JsonLinesFile:
    """Append each event as one JSON line to the run log; one write per line keeps lines whole."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self._fd: int | None = None
        self._lock = threading.Lock()

    def open(self, path: Path) -> None:
        self.close()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.path = path

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self.path = None, None

    def __call__(self, logger: Any, name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if self._fd is not None:
            line = json.dumps(event, default=str, sort_keys=False) + "\n"
            with self._lock:
                os.write(self._fd, line.encode("utf-8"))
        return event


RUN_LOG = JsonLinesFile()


# The version of the ``--json`` contract (docs/events.md, docs/events.schema.json): the first key
# of every line runbook prints on stdout with ``--json``. Raised when a field changes meaning or
# type or is removed (adding an event or an optional field does not raise it). Named
# ``schema_version``, not ``schema``: in a PostgreSQL tool "schema" names database schemas, and an
# event about one would collide; nor ``version``, which reads as runbook's or PostgreSQL's.
SCHEMA_VERSION = 1


def machine_line(obj: dict[str, Any]) -> str:
    """One line of ``--json`` stdout that is not a log event (an error, the summary, status, ...):
    the schema version first, secrets removed, one line."""
    return json.dumps(REDACTOR.scrub({"schema_version": SCHEMA_VERSION, **obj}), default=str)


def _versioned(logger: Any, name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """stdout's events carry the contract's version (the run log's lines stay as they were)."""
    return {"schema_version": SCHEMA_VERSION, **event}


def _drop_internal(logger: Any, name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event.pop("console", None)
    return event


def configure(*, json_stdout: bool = False, tty: bool | None = None, quiet: bool = False) -> None:
    """Set up structlog for this process (idempotent)."""
    tty = sys.stderr.isatty() if tty is None else tty
    renderer: Any
    if json_stdout:
        renderer, stream = structlog.processors.JSONRenderer(default=str), sys.stdout
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=tty, exception_formatter=structlog.dev.plain_traceback)
        stream = sys.stderr
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # Tracebacks become text before redaction: a secret in an exception message is scrubbed,
        # and the run log keeps the traceback instead of "exc_info": true.
        structlog.processors.format_exc_info,
        REDACTOR,
        RUN_LOG,
        _drop_internal,
    ]
    if quiet:
        processors.append(_Drop())
    processors.append(_versioned if json_stdout else _for_console)
    processors.append(renderer)
    structlog.configure(
        processors=processors,
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


_PREFIX_HOSTS = False


def prefix_hosts(on: bool) -> None:
    """A fleet's console lines start with their host (``[tenant-a] step_started``): several hosts
    write at once with ``--parallel``. The run log's JSON events carry ``host`` either way."""
    global _PREFIX_HOSTS
    _PREFIX_HOSTS = on


def _for_console(logger: Any, name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """People read the console: the run id and env are in the run log's name; times to the second."""
    for key in ("run_id", "env", "phase"):
        event.pop(key, None)
    stamp = event.get("timestamp")
    if isinstance(stamp, str) and "T" in stamp:
        event["timestamp"] = stamp.split("T", 1)[1][:8]
    if _PREFIX_HOSTS and event.get("host"):
        event["event"] = f"[{event.pop('host')}] {event.get('event')}"
    return event


class _Drop:
    def __call__(self, logger: Any, name: str, event: MutableMapping[str, Any]) -> Any:
        raise structlog.DropEvent


def get(**bindings: Any) -> Any:
    return structlog.get_logger("runbook").bind(**bindings)
