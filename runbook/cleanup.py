"""What a dead run left behind, ended by the next run before it does anything else.

A run killed half-way (SIGKILL, a closed laptop, a lost control machine) leaves its journal at
``running``. The next run on this control machine reports it (``previous_run_incomplete``: its last
step) and, on the host it reaches, ends what that run may have left: commands still running under
its tag (a cut link leaves them running until sshd notices), its database sessions (their
transactions roll back), the scratch database of its rehearsal, the copy its swap restore was
restoring into (``<db>__runbook_restore_<stamp>``, named in its journal), its password files on the
host and under ``.runbook/secrets``.
"""

from __future__ import annotations

from typing import Any

from . import appenv, journal, postgres, rehearsal
from .hostcmd import remove_pgpass_of


def dead_runs(ctx: Any) -> None:
    """Report and clean up the runs killed half-way since the last run that ended knowing the
    database's state. Runs refused by a guard in between (exit 2/4) never looked at the database:
    they do not make a killed run before them any less worth saying."""
    log = ctx.log
    for rec in journal.runs(ctx.env.state_dir, ctx.env.name):
        run_id = str(rec.data.get("run_id") or "")
        if run_id == ctx.run_id:
            continue
        if rec.incomplete:
            last = rec.last_step() or {}
            log.warning("previous_run_incomplete", previous_run=run_id, last_step=last.get("step"),
                        last_step_outcome=last.get("outcome"), started=rec.data.get("started"))
            end_leftovers(ctx, run_id)
            from .steps.swap import drop_dead_copy

            drop_dead_copy(ctx, rec.data)
        elif rec.data.get("status") in ("succeeded", "rolled_back", "failed", "needs_person"):
            break


def end_leftovers(ctx: Any, run_id: str) -> None:
    """End the host commands, database sessions and password files of dead run ``run_id``."""
    log = ctx.log
    if ctx.transport.kill_jobs(run_id):
        log.warning("dead_run_host_commands_stopped", previous_run=run_id)
    with ctx.connect("cleanup") as conn:
        ended = postgres.terminate_run_sessions(conn, run_id)
        scratch = rehearsal.drop_leftovers(conn, ctx.database.name, run_id=run_id)
    if ended:
        log.warning("dead_run_sessions_terminated", previous_run=run_id, sessions=ended)
    for name in scratch:
        log.warning("rehearsal_leftover_dropped", previous_run=run_id, database=name)
    removed = remove_pgpass_of(ctx, run_id)
    if removed:
        log.warning("stale_password_file_removed", previous_run=run_id, files=removed)
    local = appenv.sweep(ctx.env.state_dir, run_id)
    if local:
        log.warning("stale_password_file_removed", previous_run=run_id, files=local, where="control machine")
