"""``runbook [--inventory PATH] [--yes] [--json] ENV PLAYBOOK [OPTIONS]``: parse, load, run, report.

The CLI only parses, loads and validates everything (inventory, playbook, Alembic project,
verification files, flags) before anything connects, then hands the run to the engine and maps the
outcome to the exit codes of the README. A RunbookError is one clear line (and what to do next);
anything else is an internal error and shows its traceback. Heavy imports happen after parsing so
``runbook --help`` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

ALEMBIC_STEPS = frozenset({"upgrade", "downgrade", "check_locks", "verify", "rollback", "rehearse"})

EPILOG = """\b
Playbooks: migrate, rollback, backup, verify, rehearse, migrate-rehearsed (files in playbooks/);
built in: status, history, schedule PLAYBOOK.
\b
Exit codes:
  0  done, verified
  1  failed, and rolled back: the database is as it was before the run
  2  bad usage, configuration or input: nothing was touched
  3  failed and the rollback did not complete: a person is needed
  4  refused by a guard (maintenance window, another run in progress, blockers): nothing touched
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
@click.option("--to", metavar="REV", help="Target revision (migrate: default head; rollback: see README).")
@click.option("--dry-run", is_flag=True, help="Show the plan, the SQL and the locks it takes; change nothing.")
@click.option("--restore", metavar="BACKUP", is_flag=False, flag_value="newest", default=None,
              help="rollback: restore BACKUP (default: the newest verified backup).")
@click.option("--install", is_flag=True, help="schedule: write the units and the secrets' file template "
              "(never enables them).")
@click.option("--user", is_flag=True, help="schedule: units of your user's systemd, not the system's.")
@click.option("--ignore-window", is_flag=True,
              help="Run outside the maintenance window (or past its end) on purpose; logged as such.")
@click.option("--limit", metavar="N", default=None, help="history: the N newest runs (default 20).")
@click.argument("env")
@click.argument("playbook")
@click.argument("args", nargs=-1)
@click.version_option(package_name="runbook")
def cli(inventory_path: str, yes: bool, json_out: bool, to: str | None, dry_run: bool,
        restore: str | None, install: bool, user: bool, ignore_window: bool, limit: str | None,
        env: str, playbook: str, args: tuple[str, ...]) -> None:
    """Run PLAYBOOK against the databases of environment ENV.

    \b
      runbook prod migrate             backup, check locks, upgrade head, verify; roll back on failure
      runbook prod migrate --dry-run   the plan, SQL and locks; changes nothing
      runbook prod rollback            incident: back to where the last migrate started (asks first)
      runbook prod rollback --restore  incident: restore the newest verified backup (asks first)
      runbook prod status              revisions, pending, last runs, backups, lock holders now
      runbook prod history             past runs: outcome, duration, revisions, backup, who and how
      runbook prod rehearse            the pending migrations on a scratch copy of production, then dropped
      runbook prod schedule migrate    systemd timer + service (and a crontab line) for the window
      runbook local migrate            the embedded default: a throwaway local PostgreSQL
    """
    from .context import Options

    options = Options(to=to, dry_run=dry_run, yes=yes, restore=restore, json=json_out, install=install, user=user,
                      ignore_window=ignore_window, limit=limit)
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


def _say(options: Any, text: str, *, err: bool = False) -> None:
    if options.json:
        import json

        click.echo(json.dumps({"event": "message", "text": text}), err=False)
    else:
        click.echo(text, err=err)


def execute(inventory_path: Path, env_name: str, playbook_name: str, options: Any,
            argv: list[str] | None = None, sleep: Any = None) -> int:
    """Load, validate, run; returns the exit code. Usable from tests without a subprocess."""
    from . import interrupts, log
    from .errors import RunbookError

    import contextlib

    from . import early
    from .journal import new_run_id

    log.configure(json_stdout=options.json, tty=sys.stderr.isatty())
    known: dict[str, Any] = {}  # what _plan learnt before it refused: the environment, the playbook
    with interrupts.installed(on_ignored=_signal_ignored), contextlib.ExitStack() as cleanup:
        cleanup.callback(early.discard)  # what was opened early and nobody took (see early.py)
        try:
            if playbook_name == "history":  # built in: read from the journal, no host, no password
                from .history import render as history

                return history(inventory_path, env_name, options)
            plan = _plan(inventory_path, env_name, playbook_name, options, new_run_id(), known)
            if playbook_name == "status":
                from .status import render as status

                return status(plan, options)
            if options.dry_run:
                from .dryrun import render

                return render(plan, options)
        except RunbookError as exc:
            if "env" in known and playbook_name != "status" and not options.dry_run:
                with interrupts.shielded():
                    _refused(known["env"], known.get("playbook"), playbook_name, exc)
            _error(options, exc)
            return exc.exit_code
        except interrupts.Interrupted as exc:  # before anything was touched
            from .outcome import REFUSED

            _say(options, f"runbook: {exc} before anything was touched", err=True)
            return REFUSED
        return _run(plan, options, argv or [], sleep)


def _signal_ignored(name: str, why: str) -> None:
    import structlog

    structlog.get_logger("runbook").warning("signal_received", signal=name, action=f"ignored: {why}",
                                            hint="SIGKILL is the only way to abandon a rollback")


def _error(options: Any, exc: Any) -> None:
    text = log_safe(f"runbook: error: {exc}")
    _say(options, text, err=True)
    if getattr(exc, "hint", None):
        _say(options, log_safe(f"runbook: next: {exc.hint}"), err=True)


def log_safe(text: str) -> str:
    """One line, secrets removed: what the last lines of a run may print (a libpq or Alembic
    message can span several lines, and cron mails and alerting read line by line)."""
    from .log import REDACTOR

    one_line = " / ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return str(REDACTOR.scrub(one_line))


class Plan:
    """Everything loaded and validated before anything connects."""

    def __init__(self, env: Any, playbook: Any, migrations: Any, run_id: str, refusal: Any = None) -> None:
        self.env = env
        self.playbook = playbook
        self.migrations = migrations
        self.run_id = run_id  # also names the sessions opened early
        self.refusal = refusal  # a guard's refusal, journaled by the run (nothing is touched)


def _plan(inventory_path: Path, env_name: str, playbook_name: str, options: Any, run_id: str,
          known: dict[str, Any] | None = None) -> Plan:
    from . import inventory, playbook
    from .errors import ConfigError
    from .log import REDACTOR
    from .migrations import backend_for
    from . import verifyfiles as verify

    from .early import connect_early

    inv = inventory.load(inventory_path)
    env = inv.environment(env_name)
    if options.limit is not None:
        raise ConfigError("--limit only applies to history")
    REDACTOR.add(*env.secrets())
    known = {} if known is None else known
    known["env"] = env
    # status is built in: read-only, no run lock, no journal of its own
    pb = None if playbook_name == "status" else playbook.load(playbook.find(playbook_name, inv.path.parent))
    known["playbook"] = pb
    if pb is not None and not options.dry_run:
        from .notify import check

        check(env, inv)  # the webhook's variable, before a refusal would need it
    refusal = None
    if not options.dry_run and not options.ignore_window:
        from .guards import outside_window

        # refused by the run, in its journal, before it connects; there is nothing to confirm
        refusal = outside_window(env, pb)
    if refusal is None:
        # SSH, the tunnel and the sessions open while the rest of the plan is validated (early.py)
        connect_early(env, run_id, lock=playbook_name != "status" and not options.dry_run,
                      name="status" if playbook_name == "status" else "connect")
    migrations = backend_for(env)
    # a backup needs no Alembic: not loading it keeps a backup's fixed cost ~0.2 s lower
    needs_alembic = pb is None or bool(pb.kinds() & ALEMBIC_STEPS) or options.dry_run
    if needs_alembic and not env.config.alembic.remote:  # remote: history and verify files come from the host
        verify.load_all(migrations)
        if options.to:
            migrations.resolve(options.to)
        upgrade = [s for s in (pb.steps if pb is not None else []) if s.kind in ("upgrade", "rehearse")]
        if upgrade and not options.to:
            migrations.resolve(upgrade[0].params.to)  # e.g. 'head' with several heads: refused here
    if options.restore is not None and (pb is None or "rollback" not in pb.kinds()):
        raise ConfigError("--restore only applies to the rollback playbook")
    if pb is not None and "rollback" in pb.kinds() and not options.yes and not options.dry_run \
            and not sys.stdin.isatty():
        raise ConfigError(f"'{playbook_name}' needs --yes when there is no terminal to confirm on "
                          "(it says what it will do and asks before acting)")
    if refusal is None:
        _confirm(env, options, pb)
    return Plan(env, pb, migrations, run_id, refusal)


def _confirm(env: Any, options: Any, pb: Any) -> None:
    from .errors import ConfigError

    if not env.protected or options.yes or options.dry_run or pb is None or "rollback" in pb.kinds():
        return
    if not sys.stdin.isatty():
        raise ConfigError(f"environment '{env.name}' is protected: pass --yes to run without a terminal")
    try:
        typed = click.prompt(f"Environment '{env.name}' is protected. Type its name to go on", default="",
                             show_default=False)
    except click.Abort:  # Ctrl-C or end of input at the prompt: the same as a wrong answer
        typed = ""
    if typed.strip() != env.name:
        raise ConfigError(f"confirmation did not match '{env.name}': nothing was done")


def _run(plan: Plan, options: Any, argv: list[str], sleep: Any) -> int:
    import structlog

    from . import interrupts
    from . import journal as journal_mod
    from .engine import Engine
    from .errors import RunbookError
    from .log import RUN_LOG
    from .outcome import NEEDS_PERSON, Outcome, code_of, status_of_error

    env = plan.env
    run_id = plan.run_id
    jr = journal_mod.Journal(env.state_dir, run_id, env.name, plan.playbook.name, argv)
    RUN_LOG.open(jr.log_path)
    jr.save()
    logger = structlog.get_logger("runbook")
    kwargs = {"sleep": sleep} if sleep is not None else {}
    started = None
    with structlog.contextvars.bound_contextvars(run_id=run_id, env=env.name):
        try:
            logger.info("run_requested", playbook=plan.playbook.name, playbook_file=str(plan.playbook.path),
                        to=options.to, hosts=[h.name for h in env.hosts], log=str(jr.log_path))
            if plan.refusal is not None:
                raise plan.refusal
            if env.config.notify:
                from .notify import Notifier

                started = Notifier(env).started(jr.record, jr.log_path)  # in the background
            outcome = Engine(env, plan.playbook, options, jr, plan.migrations, **kwargs).run()
        except (RunbookError, interrupts.Interrupted) as exc:
            with interrupts.shielded():
                code = code_of(exc)
                status = "interrupted" if isinstance(exc, interrupts.Interrupted) else status_of_error(code)
                if isinstance(exc, interrupts.Interrupted):
                    jr.record.setdefault("interrupted", {"signal": exc.name, "step": None})
                logger.error("run_finished", exit_code=code, status=status, error=str(exc))
                jr.finish(status, code)
                _after(env, jr.record, jr.log_path, code, str(exc), getattr(exc, "hint", None), started)
                RUN_LOG.close()
                if isinstance(exc, interrupts.Interrupted):
                    _say(options, f"runbook: {exc} before anything was touched", err=True)
                else:
                    _error(options, exc)
                return code
        except BaseException as exc:
            # A bug: the database was not read back, so "as before" cannot be promised (exit 3).
            with interrupts.shielded():
                logger.exception("internal_error")
                jr.finish("internal_error", NEEDS_PERSON)
                _after(env, jr.record, jr.log_path, NEEDS_PERSON, f"internal error: {type(exc).__name__}: {exc}",
                       f"runbook {env.name} status", started)
                RUN_LOG.close()
                if not isinstance(exc, Exception):
                    raise
                import traceback

                traceback.print_exc()
                outcome = Outcome(NEEDS_PERSON, "internal_error",
                                  f"internal error, the database was not read back: {type(exc).__name__}: {exc}",
                                  f"runbook {env.name} status")
                _report(options, outcome, jr)
                return outcome.code
        with interrupts.shielded():
            logger.info("run_finished", exit_code=outcome.code, status=outcome.status,
                        message=outcome.message, next=outcome.next_command)
            jr.finish(outcome.status, outcome.code)
        _after(env, jr.record, jr.log_path, outcome.code, outcome.message, outcome.next_command, started)
    RUN_LOG.close()
    _report(options, outcome, jr)
    return outcome.code


def _after(env: Any, record: dict[str, Any], log_path: Any, code: int, message: str | None,
           next_command: str | None, started: Any = None) -> None:
    """What the world outside learns of a run once its journal is final: the metrics file, the
    webhook. Neither changes the outcome; each logs its own failure; the wait is bounded."""
    if env.config.metrics:
        from . import metrics

        metrics.write(env)
    if env.config.notify:
        from .notify import Notifier

        Notifier(env).finished(record, code, log_path=log_path, message=message, next_command=next_command,
                               started=started)


def _refused(env: Any, pb: Any, playbook_name: str, exc: Any) -> None:
    """Bad input found once the environment is known (a flag, a playbook, a missing --yes): no
    run, no journal, but the webhook hears of it (``run_id`` null). A guard's refusal is a run:
    ``_run`` journals it and tells the webhook and the metrics like any other."""
    if not env.config.notify:
        return
    from .journal import now_iso
    from .notify import Notifier

    now = now_iso()
    record = {"run_id": None, "env": env.name, "playbook": pb.name if pb is not None else playbook_name,
              "status": "refused", "exit_code": exc.exit_code, "started": now, "finished": now, "hosts": {}}
    Notifier(env).finished(record, exc.exit_code, message=str(exc), next_command=getattr(exc, "hint", None))


def _report(options: Any, outcome: Any, jr: Any) -> None:
    """The last lines a person (or cron's mail) reads."""
    if options.json:
        return
    stream_err = outcome.code != 0
    click.echo(log_safe(f"runbook: {outcome.message}"), err=stream_err)
    if outcome.next_command:
        click.echo(log_safe(f"runbook: next: {outcome.next_command}"), err=stream_err)
    click.echo(f"runbook: run log {jr.log_path}", err=stream_err)


def main() -> None:
    try:
        # Not click's standalone mode: it turns an interrupt into "Aborted!" and exit 1, which
        # promises a rollback; before the run's own handlers are installed nothing was touched.
        code = cli.main(standalone_mode=False)
    except (click.Abort, KeyboardInterrupt):
        click.echo("runbook: interrupted before anything was touched", err=True)
        _exit_now(SystemExit(4))
    except click.ClickException as exc:
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
