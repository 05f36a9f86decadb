"""``shell``: a command of the user's on the database host (pause workers, a custom check)."""

from __future__ import annotations

from typing import Any

from ..context import Context
from ..errors import CommandFailed, CommandTimedOut, StepError


def run(ctx: Context, params: Any) -> dict[str, Any]:
    try:
        result = ctx.transport.run(params.command, timeout=params.timeout)
    except CommandFailed as exc:
        tail = exc.result.tail(5) if exc.result is not None else ""
        raise StepError(f"command failed on {ctx.host.name} (exit {getattr(exc.result, 'exited', '?')}): "
                        f"{params.command}: {tail}", step="shell", host=ctx.host.name) from exc
    except CommandTimedOut as exc:
        raise StepError(f"command timed out on {ctx.host.name}: {params.command}", step="shell",
                        host=ctx.host.name) from exc
    return {"command": params.command, "output": result.stdout.strip()[-500:]}
