"""The structlog pipeline: context, redaction, a JSON-lines run log and a console rendering.

Configured once by the CLI. Every event goes through ``redact`` before any renderer sees it, then is
written as one JSON line to the run log (mode 0600), then rendered for the console: readable on a
TTY, ``key=value`` lines for cron, or JSON lines on stdout with ``--json``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Any, MutableMapping

import structlog

REDACTED = "***"
_SECRET_KEYS = ("password", "passwd", "secret", "pgpass_content")


class Redactor:
    """Replace every known secret, wherever it appears in an event, before anything renders it."""

    def __init__(self) -> None:
        self.secrets: set[str] = set()

    def add(self, *secrets: str | None) -> None:
        self.secrets.update(s for s in secrets if s)

    def scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in sorted(self.secrets, key=len, reverse=True):
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
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
    if not json_stdout:
        processors.append(_for_console)
    processors.append(renderer)
    structlog.configure(
        processors=processors,
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def _for_console(logger: Any, name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """People read the console: the run id and env are in the run log's name; times to the second."""
    for key in ("run_id", "env", "phase"):
        event.pop(key, None)
    stamp = event.get("timestamp")
    if isinstance(stamp, str) and "T" in stamp:
        event["timestamp"] = stamp.split("T", 1)[1][:8]
    return event


class _Drop:
    def __call__(self, logger: Any, name: str, event: MutableMapping[str, Any]) -> Any:
        raise structlog.DropEvent


def get(**bindings: Any) -> Any:
    return structlog.get_logger("runbook").bind(**bindings)
