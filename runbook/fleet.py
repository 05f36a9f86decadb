"""Fleets: the hosts of an environment one after another, or ``--parallel N`` at a time.

Each host is a run of its own (``Engine.for_host``): its connection, backup, run lock, journal entry
and rollback. The rules, whatever the parallelism:

- ``--canary``: the first host runs alone and must succeed (verified) before any other starts; a
  canary refused by its run lock (another run has that database) hands the role to the next host.
- A host that fails stops new hosts from starting; hosts in flight finish (or roll back) on their
  own. A host refused by its run lock (another run, e.g. an overlapping shard, is on it) does not
  stop the others: it is reported as such, exit 4.
- Hosts that succeeded stay migrated, unless ``--rollback-all``: then, once the fleet stopped, every
  host this run changed goes back to its start revision through the playbook's ``on_failure`` steps
  (``Engine.revert``), each verified, shielded from signals.
- A signal (SIGINT, SIGTERM, SIGHUP): no new host starts; in parallel, the main thread, where the
  signal arrives, asks every worker to stop (``interrupts.request_stop``: each raises ``Interrupted``
  at its next checkpoint) and cancels the queries the hosts still running their steps have in
  flight; each such host rolls back as a single run would. Further signals are logged, never obeyed.
- The exit code is the worst host's (``outcome.worst``: 3 outranks everything); the summary lists
  each host's from, to, outcome, duration and backup, and the hosts not run.

Worker threads copy the run's structlog context (run id, env) and bind their host, so every event
carries the host; with a fleet the console prefixes each line with it.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable

import structlog

from . import interrupts, log
from .errors import GuardRefused, RunbookError
from .interrupts import Interrupted
from .journal import Shared
from .outcome import NEEDS_PERSON, OK, REFUSED, ROLLED_BACK, Outcome, code_of, status_of_error, worst

CANCEL_EVERY = 2.0  # s: how often a stopping fleet cancels the queries of hosts not yet stopped


@dataclass
class HostRun:
    """How one host's run ended (and, with ``--rollback-all``, how it was put back)."""

    host: str
    outcome: Outcome
    seconds: float
    busy: bool = False       # refused by its run lock: another run is on this database
    untouched: bool = False  # interrupted before anything was touched
    reverted: Outcome | None = None

    @property
    def final(self) -> Outcome:
        return self.reverted or self.outcome

    def word(self) -> str:
        o = self.final
        if self.reverted is not None:
            return "rolled back (--rollback-all)" if o.code == ROLLED_BACK else "NEEDS A PERSON (--rollback-all)"
        if self.busy:
            return "refused: run lock held by another run"
        if self.untouched:
            return "interrupted before any change"
        if o.code == OK:
            return "ok"
        if o.code == ROLLED_BACK:
            return "failed, rolled back" if o.status == "rolled_back" else "failed, nothing changed"
        if o.code == NEEDS_PERSON:
            return "NEEDS A PERSON"
        return "refused" if o.code == REFUSED else "error, nothing touched"


class Fleet:
    """One playbook over the selected hosts of an environment."""

    def __init__(self, engine: Any) -> None:
        self.base = engine
        self.env = engine.env
        self.options = engine.options
        self.journal = engine.journal
        self.log = structlog.get_logger("runbook")
        self.hosts = list(self.env.hosts)
        self.parallel = max(1, int(getattr(self.options, "parallel", 1) or 1))
        self.canary = bool(getattr(self.options, "canary", False))
        self.canary_passed = not self.canary
        self.results: dict[str, HostRun] = {}
        self.engines: dict[str, Any] = {}  # the hosts in flight
        self.stopped: str | None = None    # why no new host starts
        self.signal: str | None = None
        self._mutex = threading.Lock()

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> Outcome:
        log.prefix_hosts(True)
        fleet = self.journal.record["fleet"] = Shared(self.journal.lock, self.journal.record.get("fleet") or {})
        fleet.update(hosts=[h.name for h in self.hosts], parallel=self.parallel, canary=self.canary,
                     rollback_all=bool(getattr(self.options, "rollback_all", False)))
        self.log.info("fleet_started", hosts=[h.name for h in self.hosts], parallel=self.parallel,
                      canary=self.canary, rollback_all=fleet["rollback_all"])
        if self.parallel == 1 or len(self.hosts) == 1:
            self._serial()
        else:
            from .progress import several_at_once

            several_at_once(True)
            self._pool()
        if fleet["rollback_all"] and self.stopped:
            self._rollback_all()
        return self._finish()

    def _serial(self) -> None:
        """In the main thread, as a single run: a signal reaches the step itself."""
        for host in self.hosts:
            if self.stopped:
                break
            try:
                self._run_one(host)
            except Interrupted as exc:  # between two hosts
                with interrupts.shielded():
                    self._on_signal(exc.name)
            self._signals_seen()

    def _pool(self) -> None:
        queue = deque(self.hosts)
        running: dict[Future[None], str] = {}
        with ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="runbook-host") as pool:
            try:
                while queue or running:
                    width = self.parallel if self.canary_passed else 1
                    while queue and len(running) < width and not self.stopped:
                        host = queue.popleft()
                        running[pool.submit(contextvars.copy_context().run, self._run_one, host)] = host.name
                    if not running:
                        break
                    done, _ = wait(list(running), timeout=0.5, return_when=FIRST_COMPLETED)
                    for future in done:
                        running.pop(future)
                        future.result()  # a host's own errors are its outcome; this raises only bugs
            except Interrupted as exc:
                with interrupts.shielded():
                    self._on_signal(exc.name)
                    handlers = interrupts.current()
                    if handlers is not None:
                        handlers.request_stop(exc.signum)
                    self._drain(running)

    def _drain(self, running: dict[Future[None], str]) -> None:
        """Wait for the hosts in flight to stop, cancelling their queries now and then (a host
        that reached a checkpoint is rolling back and is left alone)."""
        last = 0.0
        while running:
            if time.monotonic() - last >= CANCEL_EVERY:
                with self._mutex:
                    engines = list(self.engines.values())
                for engine in engines:
                    engine.cancel_queries()
                last = time.monotonic()
            done, _ = wait(list(running), timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                running.pop(future)

    def _run_one(self, host: Any) -> None:
        interrupts.new_task()
        engine = self.base.for_host()
        with self._mutex:
            self.engines[host.name] = engine
        started = time.monotonic()
        busy = untouched = False
        with structlog.contextvars.bound_contextvars(host=host.name):
            try:
                outcome = engine.run_host(host)
            except Interrupted as exc:
                untouched = True
                outcome = Outcome(REFUSED, "interrupted", f"{exc} before anything was touched")
            except RunbookError as exc:
                code = code_of(exc)
                busy = isinstance(exc, GuardRefused) and getattr(exc, "step", None) == "run_lock"
                outcome = Outcome(code, status_of_error(code), str(exc), exc.hint)
            except Exception as exc:  # a bug: this host's database was not read back
                self.log.exception("internal_error")
                outcome = Outcome(NEEDS_PERSON, "internal_error", "internal error, the database was not read "
                                  f"back: {type(exc).__name__}: {exc}", f"runbook {self.env.name} status --limit {host.name}")
            with interrupts.shielded():
                self._record(HostRun(host.name, outcome, time.monotonic() - started, busy, untouched))

    def _record(self, run: HostRun) -> None:
        with self._mutex:
            self.results[run.host] = run
            self.engines.pop(run.host, None)
            if run.outcome.code == OK:
                self.canary_passed = True
            elif not run.busy and self.stopped is None:
                self.stopped = f"{run.host}: {run.word()} (exit {run.outcome.code})"
        entry = self.journal.host(run.host)
        # each host's own status and exit code: the journal's readers (metrics, webhooks) use them
        entry.update(outcome=run.word(), status=run.outcome.status, exit_code=run.outcome.code,
                     duration_s=round(run.seconds, 3))
        self.journal.save()
        self.log.info("host_finished", host=run.host, exit_code=run.outcome.code, outcome=run.word(),
                      duration_s=round(run.seconds, 3))

    def _on_signal(self, name: str) -> None:
        self.signal = self.signal or name
        with self._mutex:
            self.stopped = self.stopped or f"{name}: no new host started"
        self.log.warning("fleet_stopping", signal=name, in_flight=sorted(self.engines),
                         not_started=[h.name for h in self.hosts if h.name not in self.results
                                      and h.name not in self.engines])

    def _signals_seen(self) -> None:
        """A signal that a host's run took as the failure of its step stops the fleet too."""
        handlers = interrupts.current()
        if handlers is not None and handlers.received and self.signal is None:
            self._on_signal(handlers.received[0])

    # -- --rollback-all -------------------------------------------------------------------------
    def _changed(self, name: str) -> bool:
        rec = self.journal.host(name)
        return bool(rec.get("start_revision")) and rec.get("end_revision") != rec.get("start_revision")

    def _rollback_all(self) -> None:
        targets = [h for h in self.hosts
                   if (r := self.results.get(h.name)) is not None and r.outcome.code == OK and self._changed(h.name)]
        if not targets:
            return
        reason = f"--rollback-all, after {self.stopped}"
        self.log.warning("rollback_all_started", hosts=[h.name for h in targets], reason=self.stopped)
        with interrupts.shielded():  # from here on, signals are logged, never obeyed
            self._each(targets, lambda host: self._revert_one(host, reason))

    def _each(self, hosts: list[Any], work: Callable[[Any], None]) -> None:
        if self.parallel == 1 or len(hosts) == 1:
            for host in hosts:
                work(host)
            return
        with ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="runbook-host") as pool:
            for future in [pool.submit(contextvars.copy_context().run, work, h) for h in hosts]:
                future.result()

    def _revert_one(self, host: Any, reason: str) -> None:
        interrupts.new_task()
        started = time.monotonic()
        with structlog.contextvars.bound_contextvars(host=host.name), interrupts.shielded():
            try:
                outcome = self.base.for_host().revert(host, reason)
            except Exception as exc:  # unreachable, or another run took its lock meanwhile
                at = self.journal.host(host.name).get("end_revision")
                outcome = Outcome(NEEDS_PERSON, "needs_person",
                                  f"--rollback-all could not roll {host.name} back; it stays at {at}: {exc}",
                                  f"runbook {self.env.name} rollback --limit {host.name}")
                self.log.error("rollback_all_failed", error=str(exc))
            run = self.results[host.name]
            run.reverted, run.seconds = outcome, run.seconds + time.monotonic() - started
            self.journal.host(host.name).update(outcome=run.word(), status=outcome.status, exit_code=outcome.code,
                                                duration_s=round(run.seconds, 3))
            self.journal.save()
            self.log.info("host_finished", exit_code=outcome.code, outcome=run.word(), duration_s=round(run.seconds, 3))

    # -- the end --------------------------------------------------------------------------------
    def _finish(self) -> Outcome:
        ran = [self.results[h.name] for h in self.hosts if h.name in self.results]
        not_run = [h.name for h in self.hosts if h.name not in self.results]
        rows = []
        for run in ran:
            rec = self.journal.host(run.host)
            rows.append({"host": run.host, "from": rec.get("start_revision"), "to": rec.get("end_revision"),
                         "outcome": run.word(), "exit_code": run.final.code, "duration_s": round(run.seconds, 3),
                         "backup": (rec.get("backup") or {}).get("backup_path"), "message": run.final.message})
        code = worst([r.final.code for r in ran]) if ran else (REFUSED if self.signal else OK)
        summary = {"env": self.env.name, "playbook": self.base.playbook.name, "exit_code": code,
                   "parallel": self.parallel, "canary": self.canary,
                   "rollback_all": bool(getattr(self.options, "rollback_all", False)),
                   "selection": self.journal.record.get("fleet", {}).get("selection"),
                   "stopped": self.stopped, "signal": self.signal, "hosts": rows, "not_run": not_run}
        self.journal.record["fleet"].update(stopped=self.stopped, signal=self.signal, not_run=not_run)
        self.log.info("fleet_finished", exit_code=code, hosts={r.host: r.final.code for r in ran},
                      not_run=not_run, stopped=self.stopped)
        lines = [f"{r.host}: " + ("ok" if r.final.code == OK else f"{r.word()} (exit {r.final.code})")
                 + f": {r.final.message}" for r in ran]
        if not_run:
            lines.append(f"not run: {', '.join(not_run)}")
        if not ran:
            return Outcome(code, "interrupted" if self.signal else "succeeded",
                           " | ".join(lines) or "no host ran", summary=summary)
        bad = [r for r in ran if r.final.code == code]
        status = "succeeded" if code == OK else bad[0].final.status
        nxt = next((r.final.next_command for r in bad if r.final.next_command), None)
        return Outcome(code, status, " | ".join(lines), nxt, summary=summary)



def report_lines(summary: dict[str, Any]) -> list[str]:
    """Below the table: the full message of every host that did not end ok, the hosts not run,
    and the count of each outcome (the exact state, for the person reading the last lines)."""
    lines = [f"{r['host']}: {r['outcome']} (exit {r['exit_code']}): {r['message']}"
             for r in summary["hosts"] if r["exit_code"] != OK]
    if summary["not_run"]:
        lines.append(f"not run: {', '.join(summary['not_run'])}")
    counts: dict[str, int] = {}
    for r in summary["hosts"]:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    if summary["not_run"]:
        counts["not run"] = len(summary["not_run"])
    told = ", ".join(f"{n} {word}" for word, n in counts.items())
    lines.append(f"fleet {summary['env']}: {told}; exit {summary['exit_code']}")
    return lines
