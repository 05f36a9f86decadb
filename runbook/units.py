"""Durations as users write them in YAML (``5s``, ``500ms``, ``2m``, ``1h``, or a number of seconds)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h)?\s*$")


def parse_duration(value: Any) -> float:
    """Seconds as a float; raises ValueError with the accepted forms."""
    if isinstance(value, bool):
        raise ValueError("a duration like 5s, 500ms or 2m is expected")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    match = _RE.match(str(value))
    if not match:
        raise ValueError(f"'{value}' is not a duration like 5s, 500ms or 2m")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


Duration = Annotated[float, BeforeValidator(parse_duration)]


def pg_ms(seconds: float) -> str:
    """A duration as a PostgreSQL setting value in milliseconds (``'5000ms'``)."""
    return f"{max(1, int(round(seconds * 1000)))}ms"


def span(seconds: float) -> str:
    """A duration as systemd writes one (``1h 30min``); also readable by a person."""
    left = int(round(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if left >= size:
            parts.append(f"{left // size}{unit}")
            left %= size
    return " ".join(parts) or "0s"
