"""One exception hierarchy for runbook.

Every error a user can cause or meet carries what a person needs to act on it; the CLI maps the
classes to exit codes (see ``exit_code``) and prints one line for each, never a traceback.
"""

from __future__ import annotations

from typing import Any


class RunbookError(Exception):
    """Base of every error runbook raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(RunbookError):
    """Bad inventory, playbook, flag or environment: nothing was touched (exit 2)."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 hint: str | None = None) -> None:
        where = ""
        if path:
            where = f"{path}:{line}: " if line else f"{path}: "
        super().__init__(f"{where}{message}", hint=hint)
        self.path = path
        self.line = line


class TransportError(RunbookError):
    """Something went wrong reaching or running on a host."""


class ConnectError(TransportError):
    """The host could not be reached or refused the login (nothing was touched)."""

    exit_code = 2


class HostKeyError(ConnectError):
    """The host key is unknown or changed: refused before anything is sent (exit 2)."""


class CommandFailed(TransportError):
    """A command exited non-zero; ``result`` holds the command, code and output tail."""

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


class CommandTimedOut(TransportError):
    """A command ran past its timeout."""


class ConnectionLost(TransportError):
    """The link to the host died while a command ran (exit -1 from the SSH channel)."""


class StepError(RunbookError):
    """A step failed on a host."""

    def __init__(self, message: str, *, step: str | None = None, host: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.step = step
        self.host = host


class GuardRefused(StepError):
    """A guard refused the run before anything was touched (exit 4)."""

    exit_code = 4


class PreflightError(StepError):
    """The pre-flight checks failed."""


class BackupError(StepError):
    """The backup could not be taken or did not verify."""


class MigrationError(StepError):
    """Alembic failed, or the database does not hold the target revision afterwards."""


class LockTimeoutExhausted(MigrationError):
    """Every lock_timeout retry failed to get the locks the migration needs."""


class VerificationError(StepError):
    """A verification query did not hold."""


class RestoreError(StepError):
    """A backup could not be restored."""


class RollbackError(RunbookError):
    """The automatic rollback did not complete: a person is needed (exit 3)."""

    exit_code = 3

    def __init__(self, message: str, *, original: BaseException | None = None,
                 state: str | None = None, next_command: str | None = None) -> None:
        super().__init__(message, hint=next_command)
        self.original = original
        self.state = state
        self.next_command = next_command
