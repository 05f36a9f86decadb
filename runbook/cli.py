"""``runbook [--inventory PATH] [--yes] [--json] ENV PLAYBOOK [OPTIONS]``, ``runbook lint``,
``runbook revision``: the command line, parsed.

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

from .initcmd import init_cli
from .running import _error, execute, log_safe  # noqa: F401 - log_safe: tests import it from here


EPILOG = """\b
Playbooks: migrate, rollback, backup, verify, rehearse, migrate-rehearsed (files in playbooks/);
built in: status, checklist, history, schedule PLAYBOOK.
\b
Without ENV (see runbook lint --help, runbook revision --help):
  runbook lint [RANGE]            judge the pending revisions offline (CI): no database needed
  runbook revision "message"      a new Alembic revision and its verification file
  runbook init [--playbooks]      a starting inventory.yaml for the Alembic project here
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


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
               epilog=EPILOG)
@click.option("--inventory", "-i", "inventory_path", metavar="PATH", envvar="RUNBOOK_INVENTORY",
              default="inventory.yaml", show_default=True, help="Inventory file ($RUNBOOK_INVENTORY).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask; required for protected environments without a TTY.")
@click.option("--json", "json_out", is_flag=True, help="JSON lines on stdout instead of readable output.")
@click.option("--verbose", "-v", is_flag=True, help="Every event on the console (key=value lines), not the short ones.")
@click.option("--no-color", is_flag=True, help="No colour and no escape sequences (also NO_COLOR=1, TERM=dumb).")
@click.option("--to", metavar="REV", help="Target revision (migrate: default head; rollback: see README).")
@click.option("--dry-run", is_flag=True, help="Show the plan, the SQL and the locks it takes; change nothing.")
@click.option("--restore", metavar="BACKUP", is_flag=False, flag_value="newest", default=None,
              help="rollback: restore BACKUP (default: the newest verified backup).")
@click.option("--install", is_flag=True, help="schedule: write the units and the secrets' file template "
              "(never enables them).")
@click.option("--user", is_flag=True, help="schedule: units of your user's systemd, not the system's.")
@click.option("--ignore-window", is_flag=True,
              help="Run outside the maintenance window (or past its end) on purpose; logged as such.")
@click.option("--limit", "limits", metavar="PATTERN", multiple=True,
              help="Fleets: only the hosts matching PATTERN (names or globs, comma-separated or repeated). "
              "history: the N newest runs (default 20).")
@click.option("--shard", metavar="K/N", help="Fleets: only the hosts of shard K of N (1..N; a stable split by "
              "host name).")
@click.option("--parallel", metavar="N", type=click.IntRange(min=1), default=1, show_default=True,
              help="Fleets: up to N hosts at once.")
@click.option("--canary", is_flag=True, help="Fleets: the first host alone, verified, before any other starts.")
@click.option("--rollback-all", is_flag=True,
              help="Fleets: when a host fails (or a signal stops the run), roll back every host this run migrated.")
@click.option("--accept", metavar="RULE", multiple=True,
              help="migrate: run despite error-level lint findings of this rule (repeatable).")
@click.option("--override", metavar="LINE", multiple=True,
              help="migrate, checklist: run despite this failed checklist line (repeatable).")
@click.argument("env")
@click.argument("playbook")
@click.argument("args", nargs=-1)
@click.version_option(package_name="runbook")
def cli(inventory_path: str, yes: bool, json_out: bool, verbose: bool, no_color: bool, to: str | None, dry_run: bool,
        restore: str | None, install: bool, user: bool, ignore_window: bool, limits: tuple[str, ...],
        shard: str | None, parallel: int, canary: bool, rollback_all: bool, accept: tuple[str, ...],
        override: tuple[str, ...], env: str, playbook: str, args: tuple[str, ...]) -> None:
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
    """
    from .context import Options

    # --limit is a count for history, host patterns for everything else (selection.py)
    history = playbook == "history"
    options = Options(to=to, dry_run=dry_run, yes=yes, restore=restore, json=json_out, install=install, user=user,
                      ignore_window=ignore_window, limit=",".join(limits) if history and limits else None,
                      hosts=() if history else limits, shard=shard, parallel=parallel, canary=canary,
                      rollback_all=rollback_all, accept=accept, override=override,
                      verbose=verbose, no_color=no_color)
    if playbook == "schedule" and (limits or shard or parallel != 1 or canary or rollback_all):
        code = 2
        _error(options, "--limit, --shard, --parallel, --canary and --rollback-all do not apply to schedule "
                        "(its unit runs the whole environment)")
        sys.exit(code)
    if playbook == "schedule":  # built in, like status: no journal, no connection, no run lock
        sys.exit(_schedule(Path(inventory_path), env, args, options))
    if args:
        raise click.UsageError(f"unexpected extra argument '{args[0]}'")
    if install or user:
        raise click.UsageError("--install and --user only apply to: runbook ENV schedule PLAYBOOK")
    code = execute(Path(inventory_path), env, playbook, options, argv=sys.argv[1:])
    sys.exit(code)


def _schedule(inventory_path: Path, env: str, args: tuple[str, ...], options: Any) -> int:
    from .errors import RunbookError
    from .schedule import command

    try:
        return command(inventory_path, env, args, options, echo=click.echo)
    except RunbookError as exc:
        _error(options, exc)
        return exc.exit_code


@click.command("lint", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--inventory", "-i", "inventory_path", metavar="PATH", envvar="RUNBOOK_INVENTORY",
              default="inventory.yaml", show_default=True,
              help="Inventory: its environments name the Alembic project and its journal the pending revisions.")
@click.option("--config", metavar="ALEMBIC_INI", help="The Alembic project's alembic.ini (instead of the inventory's).")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "github"]), default="text", show_default=True,
              help="github: workflow annotations (::error file=...,line=...::).")
@click.option("--fail-on", type=click.Choice(["error", "warning", "info"]), default=None,
              help="Exit 5 on findings at or above this level (default error, or [tool.runbook.lint] fail_on).")
@click.option("--rules", "list_rules", is_flag=True, help="List the rules and their levels.")
@click.argument("range_", metavar="[RANGE]", required=False)
def lint_cli(inventory_path: str, config: str | None, fmt: str, fail_on: str | None, list_rules: bool,
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
        code = command.run(Path(inventory_path), config, range_, fmt, fail_on, echo=click.echo)
    except RunbookError as exc:
        _error(_Json() if fmt == "json" else _Plain(), exc)  # --format json: an error object on stdout
        code = exc.exit_code
    sys.exit(code)


@click.command("revision", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--inventory", "-i", "inventory_path", metavar="PATH", envvar="RUNBOOK_INVENTORY",
              default="inventory.yaml", show_default=True, help="Inventory naming the Alembic project.")
@click.option("--config", metavar="ALEMBIC_INI", help="The Alembic project's alembic.ini (instead of the inventory's).")
@click.option("--rev-id", metavar="ID", help="The revision id (default: Alembic's).")
@click.option("--head", default="head", show_default=True, help="The revision it follows (alembic revision --head).")
@click.argument("message")
def revision_cli(inventory_path: str, config: str | None, rev_id: str | None, head: str, message: str) -> None:
    """Create an Alembic revision (the project's template and naming) and its verification file."""
    from .errors import RunbookError
    from .revision import create

    try:
        code = create(Path(inventory_path), config, message, rev_id=rev_id, head=head, echo=click.echo)
    except RunbookError as exc:
        _error(_Plain(), exc)
        code = exc.exit_code
    sys.exit(code)


class _Json:
    json = True


class _Plain:
    json = False


SUBCOMMANDS = {"lint": lint_cli, "revision": revision_cli, "init": init_cli}


def _subcommand(argv: list[str]) -> tuple[Any, list[str]] | None:
    """``runbook [--inventory PATH] lint|revision ...``: the commands without ENV, found before the
    ENV PLAYBOOK parsing (so an environment cannot be named lint or revision)."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--inventory", "-i", "--to", "--limit", "--accept", "--override", "--shard",
                   "--parallel"):  # options taking a value
            i += 2
            continue
        if arg.startswith("-"):
            i += 1
            continue
        if arg in SUBCOMMANDS:
            return SUBCOMMANDS[arg], argv[:i] + argv[i + 1:]
        return None
    return None


def main() -> None:
    try:
        # Not click's standalone mode: it turns an interrupt into "Aborted!" and exit 1, which
        # promises a rollback; before the run's own handlers are installed nothing was touched.
        found = _subcommand(sys.argv[1:])
        if found is not None:
            command, rest = found
            code = command.main(args=rest, prog_name=f"runbook {command.name}", standalone_mode=False)
        else:
            code = cli.main(standalone_mode=False)
    except (click.Abort, KeyboardInterrupt):
        click.echo("runbook: interrupted before anything was touched", err=True)
        _exit_now(SystemExit(4))
    except click.ClickException as exc:
        if "--json" in sys.argv[1:]:  # a usage error is an error object too (docs/events.md)
            _error(_Json(), exc.format_message(), exc.exit_code)
        else:
            exc.show()
        _exit_now(SystemExit(exc.exit_code))
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
