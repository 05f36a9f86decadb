"""Usage mistakes click catches (a missing argument, an unknown option, a bad value), said in
runbook's own voice: ``runbook: error: ...`` and ``runbook: next: ...``, exit 2, through the one
place that prints errors (``running._error``, which also knows ``--json``).

click's wording is kept where it is already plain ("missing argument 'MESSAGE'"), lower-cased and
without its final full stop like runbook's other errors; an option that another command takes is
"does not apply to" that command, with the command's ``--help`` as the next step.
"""

from __future__ import annotations

import re
from typing import Any

import click


# What every runbook command shares: -h as --help, and help text up to 100 columns.
CONTEXT: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

EXTRA = re.compile(r"^Got unexpected extra arguments? \((.*)\)$")


class Located(click.Command):
    """A command whose usage errors always know their context (click's parser leaves it out of some,
    such as "option '--to' requires an argument"), so the hint names the command's own --help."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            if exc.ctx is None:
                exc.ctx = ctx
            raise


class UsageProblem:
    """What ``running._error`` prints: a message and a hint (like a RunbookError)."""

    def __init__(self, message: str, hint: str | None) -> None:
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class _Out:
    def __init__(self, json: bool) -> None:
        self.json = json


def describe(exc: click.ClickException) -> UsageProblem:
    """The one line (and the next step) for a click error."""
    from .cli_playbooks import PlaybookCommand, applies_to

    ctx: click.Context | None = getattr(exc, "ctx", None)
    hint = f"{ctx.command_path} --help" if ctx is not None else "runbook --help"
    if isinstance(exc, click.NoSuchOption):
        option = exc.option_name
        command = ctx.command if ctx is not None else None
        if isinstance(command, PlaybookCommand):
            where = [pb for pb in applies_to(option) if pb != command.playbook]
            if where:
                return UsageProblem(f"{option} does not apply to {command.playbook} "
                                    f"(it is an option of {', '.join(where)})", hint)
        elif applies_to(option):  # before ENV or PLAYBOOK: only the global options go there
            return UsageProblem(f"{option} goes after the playbook, as in runbook ENV PLAYBOOK {option} ... "
                                f"(it is an option of {', '.join(applies_to(option))})",
                                "runbook ENV PLAYBOOK --help")
        from .suggest import did_you_mean

        # the "--" every option shares makes short names look alike: ask for a closer match
        return UsageProblem(f"no such option {option}{did_you_mean(option, exc.possibilities or (), 0.75)}", hint)
    text = exc.format_message().strip()
    found = EXTRA.match(text)
    if found:
        words = found.group(1).split()
        text = f"unexpected extra argument '{words[0]}'" if len(words) == 1 else \
            f"unexpected extra arguments: {' '.join(words)}"
    text = re.sub(r"^Invalid value for '([^']+)': ", r"\1: ", text)
    text = re.sub(r"^Error: ", "", text).rstrip(".")
    return UsageProblem(text[:1].lower() + text[1:], hint)


def usage_error(exc: click.ClickException, argv: list[str]) -> int:
    """Print ``exc`` as runbook's own error; the exit code (2: bad usage, nothing touched)."""
    from .outcome import USAGE
    from .running import _error

    json_out = "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv
    options: Any = _Out(json_out)
    _error(options, describe(exc), USAGE)
    return USAGE
