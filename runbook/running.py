"""Running a plan: the journal, the engine (or the fleet), the outcome, and what is said after.

``execute`` is the whole of a command after parsing: the plan, then the built-in read-only
commands (status, checklist, history, dry-run) or a run; a run's journal, its outcome mapped to the
exit codes of the README, the notification and the metrics after it, and the last lines a person
(or cron's mail) reads. A RunbookError is one clear line (and what to do next).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from .planning import READ_ONLY, Plan, _plan

def _say(options: Any, text: str, *, err: bool = False) -> None:
    """A line for a person; with ``--json`` a ``message`` object on stdout (docs/events.md)."""
    if options.json:
        from .log import machine_line

        click.echo(machine_line({"event": "message", "text": text}))
    else:
        click.echo(text, err=err)


def error_object(exc: Any, code: int | None = None) -> dict[str, Any]:
    """An error as ``--json`` prints it: the exit code, the error (one line, no ``runbook: error:``
    prefix) and the hint (the command to run next, or null). ``exc`` may be a plain message."""
    from .outcome import USAGE

    exit_code = code if code is not None else int(getattr(exc, "exit_code", USAGE))
    hint = getattr(exc, "hint", None)
    return {"event": "error", "exit_code": exit_code, "error": log_safe(str(exc)),
            "hint": log_safe(hint) if hint else None}


def execute(inventory_path: Path, env_name: str, playbook_name: str, options: Any,
            argv: list[str] | None = None, sleep: Any = None) -> int:
    """Load, validate, run; returns the exit code. Usable from tests without a subprocess."""
    from . import interrupts, log
    from .errors import RunbookError

    import contextlib

    from . import early
    from .journal import new_run_id

    log.configure(json_stdout=options.json, tty=sys.stderr.isatty(), verbose=getattr(options, "verbose", False),
                  no_color=getattr(options, "no_color", False))
    known: dict[str, Any] = {}  # what _plan learnt before it refused: the environment, the playbook
    with interrupts.installed(on_ignored=_signal_ignored), contextlib.ExitStack() as cleanup:
        cleanup.callback(early.discard)  # what was opened early and nobody took (see early.py)
        try:
            from .selection import check_flags

            check_flags(playbook_name, options)
            if playbook_name == "history":  # built in: read from the journal, no host, no password
                from .history import render as history

                return history(inventory_path, env_name, options)
            plan = _plan(inventory_path, env_name, playbook_name, options, new_run_id(), known)
            if not plan.env.hosts:  # an empty shard, or no host the last migrate changed
                _say(options, f"runbook: {plan.selection.get('empty')}: nothing to do")
                return 0
            if playbook_name == "status":
                from .status import render as status

                return status(plan, options)
            if playbook_name == "checklist":  # built in and read-only, like status
                from .checklist import render as checklist

                return checklist(plan, options)
            if options.dry_run:
                from .dryrun import render

                return render(plan, options)
        except RunbookError as exc:
            if "env" in known and playbook_name not in READ_ONLY and not options.dry_run:
                with interrupts.shielded():
                    _refused(known["env"], known.get("playbook"), playbook_name, exc)
            _error(options, exc)
            return exc.exit_code
        except interrupts.Interrupted as exc:  # before anything was touched
            from .outcome import REFUSED

            _interrupted(options, exc)
            return REFUSED
        return _run(plan, options, argv or [], sleep)


def _interrupted(options: Any, exc: Any) -> None:
    from .outcome import REFUSED

    text = f"{exc} before anything was touched"
    if options.json:
        _error(options, text, REFUSED)
    else:
        _say(options, f"runbook: {text}", err=True)


def _signal_ignored(name: str, why: str) -> None:
    import structlog

    structlog.get_logger("runbook").warning("signal_received", signal=name, action=f"ignored: {why}",
                                            hint="SIGKILL is the only way to abandon a rollback")


class Output:
    """How a command without run options answers: text, or ``--json`` objects (lint, revision, init)."""

    def __init__(self, json: bool = False) -> None:
        self.json = json


def _error(options: Any, exc: Any, code: int | None = None) -> None:
    """runbook's error lines (``runbook: error:``, ``runbook: next:``) on stderr; with ``--json``
    one ``error`` object on stdout instead (``code``: the exit code of a plain message)."""
    if options.json:
        from .log import machine_line

        click.echo(machine_line(error_object(exc, code)))
        return
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
    if env.fleet:
        jr.record["fleet"] = {k: v for k, v in plan.selection.items() if k != "empty"}
    RUN_LOG.open(jr.log_path)
    jr.save()
    from . import console

    console.revision_names(lambda rev: plan.migrations.revision(rev).doc)  # "applied 0002 <its message>"
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
            engine = Engine(env, plan.playbook, options, jr, plan.migrations, **kwargs)
            if env.fleet:  # several hosts: the fleet runs one engine per host
                from .fleet import Fleet

                outcome = Fleet(engine).run()
            else:
                outcome = engine.run()
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
                    _interrupted(options, exc)
                else:
                    _error(options, exc)
                if options.json:  # a run ends with its summary, whatever ended it
                    _report(options, Outcome(code, status, str(exc), getattr(exc, "hint", None)), jr)
                else:  # a refusal was journaled too: where to read why
                    _say(options, f"runbook: run log {jr.log_path}", err=True)
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

                from .log import REDACTOR

                sys.stderr.write(str(REDACTOR.scrub(traceback.format_exc())))  # a secret in the error too
                outcome = Outcome(NEEDS_PERSON, "internal_error",
                                  f"internal error, the database was not read back: {type(exc).__name__}: {exc}",
                                  f"runbook {env.name} status")
                _report(options, outcome, jr)
                return outcome.code
        with interrupts.shielded():
            logger.info("run_finished", exit_code=outcome.code, status=outcome.status,
                        message=outcome.message, next=outcome.next_command)
            jr.finish(outcome.status, outcome.code)
        try:
            _after(env, jr.record, jr.log_path, outcome.code, outcome.message, outcome.next_command, started)
        except interrupts.Interrupted as exc:  # the run is over and journaled: a signal changes nothing
            logger.warning("signal_after_run", signal=exc.name, effect="none on the run or its exit code")
    with interrupts.shielded():
        RUN_LOG.close()
        _report(options, outcome, jr)
    return outcome.code


def _after(env: Any, record: dict[str, Any], log_path: Any, code: int, message: str | None,
           next_command: str | None, started: Any = None) -> None:
    """What the world outside learns of a run once its journal is final: the metrics file, the
    webhook. Neither changes the outcome; each logs its own failure; the wait is bounded."""
    if env.config.metrics:
        from . import metrics

        metrics.write(env.whole())  # every host of the inventory, whatever --limit/--shard ran
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
    """The last lines a person (or cron's mail) reads (recap.py); a fleet's start with its summary table."""
    summary = getattr(outcome, "summary", None)
    if options.json:  # one object, the last line: what the run did, for jq and CI
        from .log import machine_line

        click.echo(machine_line(summary_object(outcome, jr)))
        return
    from .recap import render

    render(options, outcome, jr)  # the recap: from, to, backup, checks, duration; next; the run log


def log_safe_lines(text: str) -> str:
    """Several lines (a table), secrets removed."""
    from .log import REDACTOR

    return str(REDACTOR.scrub(text))


def summary_object(outcome: Any, jr: Any) -> dict[str, Any]:
    """The ``summary`` object ending a run's ``--json`` output (docs/events.md): the outcome, the
    next command, the run log, and one row per host (a fleet's adds how it ran)."""
    record = jr.record
    out: dict[str, Any] = {"event": "summary", "run_id": jr.run_id, "env": record.get("env"),
                           "playbook": record.get("playbook"), "exit_code": outcome.code,
                           "status": outcome.status, "message": log_safe(outcome.message),
                           "next": log_safe(outcome.next_command) if outcome.next_command else None,
                           "log": str(jr.log_path), "fleet": False}
    fleet = getattr(outcome, "summary", None)
    if fleet is not None:
        out.update({**fleet, "exit_code": outcome.code, "fleet": True})
        return out
    rows = []
    for name, rec in (record.get("hosts") or {}).items():
        rows.append({"host": name, "from": rec.get("start_revision"), "to": rec.get("end_revision"),
                     "outcome": outcome.status, "exit_code": outcome.code,
                     "duration_s": _seconds(rec.get("started"), rec.get("finished")),
                     "backup": (rec.get("backup") or {}).get("backup_path"), "message": log_safe(outcome.message)})
    out.update(hosts=rows, not_run=[])
    return out


def _seconds(started: Any, finished: Any) -> float | None:
    from datetime import datetime

    try:
        return round((datetime.fromisoformat(str(finished)) - datetime.fromisoformat(str(started))).total_seconds(), 3)
    except ValueError:
        return None
