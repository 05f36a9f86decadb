"""Prometheus metrics of an environment's runs: ``metrics: {textfile: PATH.prom}``.

After every run (a success, a failure, a refusal once the environment is known) the file is
rewritten from the run journal (``.runbook/runs/*.json``, the one source of truth), for
node_exporter's textfile collector. It holds every (env, host, playbook) the journal knows for
the environment's current hosts, so a run of ``backup`` does not hide how the last ``migrate``
went, and a run killed with SIGKILL (which writes nothing) shows up as ``incomplete`` in the file
the next run writes.

prometheus_client does the exposition format (escaping, HELP/TYPE lines) and the atomic write
(``write_to_textfile``: a temp file in the same folder, then rename, so node_exporter never reads a
half-written file). A file that cannot be written is logged (``metrics_write_failed``) and never
changes the run's exit code.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import structlog
from prometheus_client.registry import Collector

from . import journal
from .inventory import expand

# The statuses a run ends with (journal "status"), plus "incomplete" (its runner died): every one
# gets a 0/1 sample, so an alert can test a state that is not there (== 0) as well as one that is.
STATUSES = ("succeeded", "rolled_back", "failed", "needs_person", "refused", "interrupted",
            "internal_error", "incomplete")
INCOMPLETE_EXIT = -1  # no exit code: the run never finished (SIGKILL, power loss)


def path_of(env: Any) -> Path | None:
    cfg = env.config.metrics
    return None if cfg is None else expand(cfg.textfile, env.inventory_path.parent)


def _ts(value: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except (TypeError, ValueError):
        return None


def _backup_time(data: dict[str, Any], host: str) -> float | None:
    """When the run's backup of ``host`` was verified: the end of its backup step."""
    for step in data.get("steps") or []:
        if step.get("host") == host and step.get("step") == "backup" and step.get("outcome") == "ok":
            return _ts(step.get("finished"))
    return None


def collect(env: Any) -> dict[str, Any]:
    """What the file says, from the journal: per (host, playbook) the last run and last success,
    per host the revision last read back and the newest verified backup."""
    current = [h.name for h in env.hosts]
    last: dict[tuple[str, str], dict[str, Any]] = {}
    success: dict[tuple[str, str], float] = {}
    revision: dict[str, str] = {}
    backup: dict[str, dict[str, Any]] = {}
    for rec in journal.runs(env.state_dir, env.name):  # newest first
        data = rec.data
        playbook = str(data.get("playbook") or "?")
        records = data.get("hosts") or {}
        # a run refused (or interrupted) before reaching a host concerns every host of the environment
        for host in [h for h in (list(records) or current) if h in current]:
            entry = records.get(host) or {}
            key = (host, playbook)
            status = entry.get("status") or data.get("status")  # a fleet records each host's own
            code = entry.get("exit_code", data.get("exit_code"))
            if status == journal.RUNNING:
                if not rec.incomplete:
                    continue  # still running: the last run is the one before, until it ends
                status, code = "incomplete", INCOMPLETE_EXIT
            if key not in last:
                started, finished = _ts(data.get("started")), _ts(data.get("finished"))
                last[key] = {"status": status, "exit_code": code, "started": started,
                             "duration": round(finished - started, 3) if started is not None and finished is not None
                             else None}
            if status == "succeeded" and key not in success:
                when = _ts(data.get("finished"))
                if when is not None:
                    success[key] = when
            rev = entry.get("end_revision") or (entry.get("start_revision") if status != "incomplete" else None)
            if rev and host not in revision:
                revision[host] = str(rev)
            if entry.get("backup") and host not in backup:
                when = _backup_time(data, host)
                if when is not None:
                    backup[host] = {"time": when, "size": entry["backup"].get("backup_size")}
    return {"last": last, "success": success, "revision": revision, "backup": backup}


class _Families(Collector):
    """A prometheus_client collector over what ``collect`` found."""

    def __init__(self, env: Any, facts: dict[str, Any]) -> None:
        self.env = env
        self.facts = facts

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily

        env = self.env.name
        run = ["env", "host", "playbook"]
        start = GaugeMetricFamily("runbook_last_run_timestamp_seconds",
                                  "Start of the last finished (or killed) run, Unix time.", labels=run)
        took = GaugeMetricFamily("runbook_last_run_duration_seconds",
                                 "Wall time of the last finished run.", labels=run)
        code = GaugeMetricFamily("runbook_last_run_exit_code",
                                 "Exit code of the last run (-1: it never finished, killed).", labels=run)
        state = GaugeMetricFamily("runbook_last_run_status", "1 for the status of the last run, 0 for the others.",
                                  labels=[*run, "status"])
        ok = GaugeMetricFamily("runbook_last_success_timestamp_seconds",
                               "End of the last successful run, Unix time.", labels=run)
        for (host, playbook), last in sorted(self.facts["last"].items()):
            labels = [env, host, playbook]
            if last["started"] is not None:
                start.add_metric(labels, last["started"])
            if last["duration"] is not None:
                took.add_metric(labels, last["duration"])
            if last["exit_code"] is not None:
                code.add_metric(labels, float(last["exit_code"]))
            for status in dict.fromkeys([*STATUSES, str(last["status"])]):
                state.add_metric([*labels, status], 1.0 if status == last["status"] else 0.0)
        for (host, playbook), when in sorted(self.facts["success"].items()):
            ok.add_metric([env, host, playbook], when)
        revision = InfoMetricFamily("runbook_revision", "Alembic revision last read back by runbook.",
                                    labels=["env", "host"])
        for host, rev in sorted(self.facts["revision"].items()):
            revision.add_metric([env, host], {"revision": rev})
        newest = GaugeMetricFamily("runbook_backup_newest_timestamp_seconds",
                                   "When the newest verified backup runbook took was verified, Unix time.",
                                   labels=["env", "host"])
        size = GaugeMetricFamily("runbook_backup_newest_size_bytes", "Size of that backup.", labels=["env", "host"])
        for host, found in sorted(self.facts["backup"].items()):
            newest.add_metric([env, host], found["time"])
            if found.get("size") is not None:
                size.add_metric([env, host], float(found["size"]))
        yield from (start, took, code, state, ok, revision, newest, size)


def write(env: Any) -> None:
    """Rewrite the environment's textfile, if it has one; a failure is logged, never raised."""
    path = path_of(env)
    if path is None:
        return
    log = structlog.get_logger("runbook")
    try:
        from prometheus_client import CollectorRegistry, write_to_textfile

        facts = collect(env)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(env, facts))
        write_to_textfile(str(path), registry)
    except Exception as exc:  # noqa: BLE001 - monitoring never changes a run's outcome
        error = f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.strerror else \
            f"{type(exc).__name__}: {exc}"
        log.warning("metrics_write_failed", file=str(path), error=error,
                    effect="none on the run or its exit code")
        return
    log.info("metrics_written", file=str(path), series=len(facts["last"]))
