"""``runbook [GLOBAL OPTIONS] ENV PLAYBOOK [OPTIONS]``, ``runbook lint``, ``runbook revision``: the
command line, parsed.

A click group: its first word is a command without ENV (``SUBCOMMANDS``) or an environment, whose
commands are the playbooks, each with only its own options (``cli_playbooks.py``). click's usage
errors are said in runbook's voice (``cli_errors.py``); shell completion is click's own
(``cli_complete.py``).

Parsing only: the plan (everything loaded and validated before anything connects) is
``planning.py``, the run and what is said after it ``running.py``. A RunbookError is one clear line
(and what to do next); anything else is an internal error and shows its traceback. Heavy imports
happen after parsing so ``runbook --help`` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from .cli_errors import CONTEXT, Located
from .initcmd import init_cli
from .running import Output, _error, execute, log_safe  # noqa: F401 - execute, log_safe: tests import them


EPILOG = """\b
Playbooks: migrate, rollback, backup, verify, rehearse, migrate-rehearsed (files in playbooks/);
built in: status, checklist, history, schedule PLAYBOOK.
\b
Exit codes:
  0  done, verified
  1  failed, and rolled back: the database is as it was before the run
  2  bad usage, configuration or input: nothing was touched
  3  failed and the rollback did not complete: a person is needed
  4  refused by a guard (maintenance window, another run in progress, blockers, an error-level
     lint finding not accepted, a failed checklist line): nothing touched; checklist: a line FAILED
  5  runbook lint: findings at or above --fail-on
\b
Signals: SIGINT, SIGTERM, SIGHUP fail the current step and run the rollback (exit 1 or 3);
a second signal does not abandon the rollback.
"""


class Runbook(click.Group):
    """``runbook [GLOBAL OPTIONS] ENV PLAYBOOK [OPTIONS]``, or ``runbook lint|revision ...`` (no ENV).

    The first word is a command of ``SUBCOMMANDS`` or an environment (``cli_playbooks.EnvGroup``),
    whose commands are the playbooks, each with its own options. So no environment can be named
    like a subcommand."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in SUBCOMMANDS:
            return SUBCOMMANDS[cmd_name]
        from .cli_playbooks import EnvGroup

        return EnvGroup(cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(SUBCOMMANDS)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, args)
        if not ctx._protected_args and not ctx.resilient_parsing:
            raise click.UsageError("missing ENV and PLAYBOOK (e.g. runbook prod status)", ctx)
        return rest

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[Any]:
        if incomplete.startswith("-"):
            return super().shell_complete(ctx, incomplete)
        from .cli_complete import environments

        return environments(ctx, incomplete)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands without ENV, as they are typed (``runbook lint [RANGE]``)."""
        rows = []
        for name, cmd in SUBCOMMANDS.items():
            args = USAGE.get(name) or " ".join(p.make_metavar(ctx) for p in cmd.params if isinstance(p, click.Argument))
            rows.append((f"runbook {name} {args}".rstrip(), cmd.get_short_help_str(70)))
        with formatter.section("Without ENV (see runbook COMMAND --help)"):
            formatter.write_dl(rows)


def _top_options() -> list[click.Parameter]:
    from .cli_playbooks import global_options

    return global_options(hidden=False)


@click.group(cls=Runbook, context_settings=CONTEXT,
             epilog=EPILOG, subcommand_metavar="ENV PLAYBOOK [OPTIONS]", no_args_is_help=False)
@click.version_option(package_name="runbook")
def cli(**_: Any) -> None:
    """Run PLAYBOOK against the databases of environment ENV.

    \b
      runbook prod migrate             backup, check locks, upgrade head, verify; roll back on failure
      runbook prod migrate --dry-run   the plan, SQL and locks; changes nothing
      runbook prod rollback            incident: back to where the last migrate started (asks first)
      runbook prod rollback --restore  incident: restore the newest verified backup (asks first)
      runbook prod status              revisions, pending, last runs, backups, lock holders now
      runbook prod checklist           the pre-flight checklist: ok / FAILED / skipped, one line each
      runbook prod history             past runs: outcome, duration, revisions, backup, who and how
      runbook prod rehearse            the pending migrations on a scratch copy of production, then dropped
      runbook prod schedule migrate    systemd timer + service (and a crontab line) for the window
      runbook local migrate            the embedded default: a throwaway local PostgreSQL
      runbook lint                     the pending revisions judged offline (no ENV, no database)
      runbook revision "add slugs"     a new revision and its verification file (no ENV)

    \b
    Each command's options: runbook ENV PLAYBOOK --help (e.g. runbook prod migrate --help).
    """


cli.params[:0] = _top_options()


@click.command("lint", cls=Located, context_settings=CONTEXT,
               short_help="the pending revisions judged offline (CI): no database needed")
@click.option("--inventory", "-i", "inventory_path", metavar="PATH",
              help="Inventory: its environments name the Alembic project and its journal the pending revisions "
              "(default: runbook's --inventory, $RUNBOOK_INVENTORY, inventory.yaml).")
@click.option("--config", metavar="ALEMBIC_INI", help="The Alembic project's alembic.ini (instead of the inventory's).")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "github"]), default="text", show_default=True,
              help="github: workflow annotations (::error file=...,line=...::).")
@click.option("--fail-on", type=click.Choice(["error", "warning", "info"]), default=None,
              help="Exit 5 on findings at or above this level (default error, or [tool.runbook.lint] fail_on).")
@click.option("--rules", "list_rules", is_flag=True, help="List the rules and their levels.")
@click.argument("range_", metavar="[RANGE]", required=False)
def lint_cli(inventory_path: str | None, config: str | None, fmt: str, fail_on: str | None, list_rules: bool,
             range_: str | None) -> None:
    """Judge revisions offline: rendered with alembic upgrade --sql, parsed with pglast; no database.

    \b
    RANGE: all | A:B (base:head, 0002:head, 0002:) | default: what some environment has not
    applied yet (by the journal), or all without one. Rules and levels: docs/lint.md.
    Exit 0: nothing at or above --fail-on; 5: findings; 2: bad usage or project.
    """
    from .errors import RunbookError
    from .lint import command

    if list_rules:
        click.echo(command.rules_table())
        sys.exit(0)
    try:
        code = command.run(_inventory(inventory_path), config, range_, fmt, fail_on, echo=click.echo)
    except RunbookError as exc:
        _error(Output(json=fmt == "json"), exc)  # --format json: an error object on stdout
        code = exc.exit_code
    sys.exit(code)


@click.command("revision", cls=Located, context_settings=CONTEXT,
               short_help="a new Alembic revision and its verification file")
@click.option("--inventory", "-i", "inventory_path", metavar="PATH",
              help="Inventory naming the Alembic project (default: runbook's --inventory, $RUNBOOK_INVENTORY, "
              "inventory.yaml).")
@click.option("--config", metavar="ALEMBIC_INI", help="The Alembic project's alembic.ini (instead of the inventory's).")
@click.option("--rev-id", metavar="ID", help="The revision id (default: Alembic's).")
@click.option("--head", default="head", show_default=True, help="The revision it follows (alembic revision --head).")
@click.argument("message")
def revision_cli(inventory_path: str | None, config: str | None, rev_id: str | None, head: str, message: str) -> None:
    """Create an Alembic revision (the project's template and naming) and its verification file."""
    from .errors import RunbookError
    from .revision import create

    try:
        code = create(_inventory(inventory_path), config, message, rev_id=rev_id, head=head, echo=click.echo)
    except RunbookError as exc:
        _error(Output(), exc)
        code = exc.exit_code
    sys.exit(code)


def _inventory(own: str | None) -> Path:
    """A subcommand's --inventory, else the one given before it (which holds $RUNBOOK_INVENTORY and
    the default)."""
    if own is not None:
        return Path(own)
    root = click.get_current_context().find_root()
    return Path(root.params.get("inventory_path") or "inventory.yaml")


SUBCOMMANDS: dict[str, click.Command] = {"lint": lint_cli, "revision": revision_cli, "init": init_cli}
USAGE = {"revision": '"message"', "init": "[--playbooks]"}  # how runbook --help shows a subcommand's arguments (default: its metavars)


def main() -> None:
    try:
        # Not click's standalone mode: it turns an interrupt into "Aborted!" and exit 1, which
        # promises a rollback; before the run's own handlers are installed nothing was touched.
        code = cli.main(args=sys.argv[1:], prog_name="runbook", standalone_mode=False)
    except (click.Abort, KeyboardInterrupt):
        click.echo("runbook: interrupted before anything was touched", err=True)
        _exit_now(SystemExit(4))
    except click.ClickException as exc:
        from .cli_errors import usage_error

        _exit_now(SystemExit(usage_error(exc, sys.argv[1:])))
    except SystemExit as exc:
        _exit_now(exc)
    except Exception:  # a bug before any run started: its traceback, and a person is needed
        import traceback

        traceback.print_exc()
        _exit_now(SystemExit(3))
    _exit_now(SystemExit(code if isinstance(code, int) else 0))


def _exit_now(exc: SystemExit) -> None:
    """Exit without the interpreter's teardown of ~850 imported modules (~0.15 s of CPU per run,
    see bench/README.md). Run files are already closed; threads are joined, atexit handlers run."""
    import atexit
    import os
    import threading

    code = exc.code
    if code is not None and not isinstance(code, int):
        raise exc  # sys.exit("message"): let Python print it
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # a closed pipe (runbook ... | head): nothing more to say
    os._exit(code or 0)


if __name__ == "__main__":  # pragma: no cover
    main()
