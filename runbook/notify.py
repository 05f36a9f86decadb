"""Webhook notifications of a run: ``notify: {webhook_env, format, on, timeout}`` in an environment.

Who is told what, for the runs nobody watches (a timer at 3 a.m.): the run's start (sent in the
background while the run goes on) and its end (sent after the journal is final, waited for with a
bound), as plain JSON or as a Slack incoming-webhook message. A notification is never part of the
run: one that cannot be delivered (a dead URL, one that hangs, HTTP 500) is logged as
``notify_failed`` and changes neither the outcome nor the exit code, and the wait for it is bounded
(``ATTEMPTS`` tries of ``timeout`` each, short sleeps between them).

The URL usually holds a token, so it is a secret like a password: read from the variable the
inventory names, given to the redactor (with its path and query, which hold the token), and never
logged, printed or written; the events say which variable instead (``webhook_env``).

Delivery is stdlib ``urllib`` (one POST; nothing worth a new dependency) with tenacity for the
retries, like runbook's other retry policies: transport errors, timeouts, HTTP 429 and 5xx are
retried; another HTTP error is an answer (a revoked token, a bad payload) and is not. Redirects are
not followed: a POST would turn into a GET, and the token would go wherever the answer points.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from typing import Any, Callable

import structlog

from .background import Pending
from .errors import ConfigError
from .outcome import NEEDS_PERSON, OK, ROLLED_BACK

ATTEMPTS = 3
_PAUSES = (0.5, 1.0)  # between the attempts: tenacity's wait_exponential(0.5, max=1)
_HEADLINES = {"started": "started", "succeeded": "succeeded", "failed": "FAILED, rolled back",
              "needs_person": "FAILED, A PERSON IS NEEDED", "refused": "refused"}
_ICONS = {"started": ":arrow_forward:", "succeeded": ":white_check_mark:", "failed": ":x:",
          "needs_person": ":rotating_light:", "refused": ":no_entry:"}


def event_of(code: int) -> str:
    """The notification event of an exit code (README "Exit codes")."""
    return {OK: "succeeded", ROLLED_BACK: "failed", NEEDS_PERSON: "needs_person"}.get(code, "refused")


def check(env: Any, inv: Any) -> None:
    """At plan time, for a run that would send: the variable is set and holds an http(s) URL.

    Exit 2 when it is not, rather than a run whose failure nobody hears of. The value is never
    quoted (it is a secret)."""
    cfg = env.config.notify
    if cfg is None:
        return
    from . import yamlfile

    path, line = str(inv.path), yamlfile.line_of(inv.tree, ["environments", env.name, "notify", "webhook_env"])
    named = f"(named by environments.{env.name}.notify.webhook_env)"
    if not env.webhook:
        raise ConfigError(f"environment variable {cfg.webhook_env} is not set {named}: "
                          "the webhook of this environment's notifications", path=path, line=line)
    if not usable(env.webhook):
        raise ConfigError(f"environment variable {cfg.webhook_env} does not hold an http:// or https:// URL "
                          f"{named}", path=path, line=line)
    from .log import REDACTOR

    REDACTOR.add(*secret_parts(env.webhook))


def usable(url: str | None) -> bool:
    """An http(s) URL with a host and a numeric port (if any): the only kind ever sent to."""
    if not url:
        return False
    try:
        parts = urllib.parse.urlsplit(url.strip())
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def secret_parts(url: str) -> list[str]:
    """The pieces of a webhook URL that carry its token, for the redactor: the whole URL, its
    path with the query, the query, the password of its userinfo (the host name is not secret)."""
    parts = urllib.parse.urlsplit(url.strip())
    pieces = [url, url.strip(), parts.path + (f"?{parts.query}" if parts.query else ""), parts.query,
              parts.password or ""]
    # a short piece ('/', '/hook') is no token, and would garble ordinary text (see log.MIN_ANYWHERE)
    return [p for p in dict.fromkeys(pieces) if len(p) >= 8]


# -- payloads ---------------------------------------------------------------------------------------
def payload(env: Any, record: dict[str, Any], event: str, *, log_path: Any = None, message: str | None = None,
            next_command: str | None = None) -> dict[str, Any]:
    """The facts of a run, from its journal record: the JSON form (and the Slack form's source)."""
    hosts = record.get("hosts") or {}
    names = list(hosts) or [h.name for h in env.hosts]  # refused before reaching a host: all of them

    def host(name: str) -> dict[str, Any]:
        entry = hosts.get(name) or {}
        return {"name": name, "database": entry.get("database"), "revision_from": entry.get("start_revision"),
                "revision_to": entry.get("end_revision"), "backup": (entry.get("backup") or {}).get("backup_path"),
                # a fleet records each host's own; a single host's is the run's
                "exit_code": entry.get("exit_code", record.get("exit_code")),
                "status": entry.get("status", record.get("status"))}

    return {
        "source": "runbook", "event": event, "env": env.name, "playbook": record.get("playbook"),
        "run_id": record.get("run_id"), "status": record.get("status"), "exit_code": record.get("exit_code"),
        "message": message, "next": next_command,
        "started": record.get("started"), "finished": record.get("finished"), "duration_s": duration(record),
        "hosts": [host(name) for name in names],
        "control_host": record.get("control_host"), "log": str(log_path) if log_path else None,
    }


def duration(record: dict[str, Any]) -> float | None:
    try:
        started = datetime.fromisoformat(str(record["started"]))
        finished = datetime.fromisoformat(str(record["finished"]))
    except (KeyError, TypeError, ValueError):
        return None
    return round((finished - started).total_seconds(), 3)


def _esc(text: Any) -> str:
    """Slack mrkdwn: &, < and > are control characters."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slack(facts: dict[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook message: ``text`` (what a phone notification shows) and blocks."""
    event = facts["event"]
    code = facts.get("exit_code")
    head = (f"{_ICONS[event]} runbook {facts['env']} {facts['playbook']}: {_HEADLINES[event]}"
            + (f" (exit {code})" if code is not None else ""))
    hosts = "\n".join(
        f"{h['name']}: {h['revision_from']} → {h['revision_to'] or '?'}"
        if h.get("revision_from") and event != "started" else h["name"] for h in facts["hosts"])
    took = facts.get("duration_s")
    fields = [f"*Hosts*\n{_esc(hosts)}", f"*Run*\n{_esc(facts['run_id'])}"]
    if took is not None:
        fields.append(f"*Duration*\n{took:.0f}s")
    backups = [h["backup"] for h in facts["hosts"] if h.get("backup")]
    if backups:
        fields.append("*Backup*\n" + _esc("\n".join(backups)))
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": _cut(
            f"*{_esc(head)}*" + (f"\n{_esc(facts['message'])}" if facts.get("message") else ""), 2900)}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": _cut(f, 1900)} for f in fields]},
    ]
    if facts.get("next"):
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _cut(
            f"*Next:* `{_esc(facts['next'])}`", 2900)}})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _cut(
        f"run log {_esc(facts['log'])} on {_esc(facts['control_host'])}", 1900)}]})
    return {"text": _cut(head + (f": {facts['message']}" if facts.get("message") else ""), 3000),
            "blocks": blocks}


def body(cfg: Any, facts: dict[str, Any]) -> bytes:
    from .log import REDACTOR

    data = slack(facts) if cfg.format == "slack" else facts
    return json.dumps(REDACTOR.scrub(data), default=str).encode("utf-8")


# -- delivery ---------------------------------------------------------------------------------------
class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError with the 3xx code


def _post(url: str, data: bytes, timeout: float) -> int:
    request = urllib.request.Request(url.strip(), data=data, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "runbook"})
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=timeout) as response:
            response.read(65536)
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the answer's connection; its code is all that is needed
        raise


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code == 429 or exc.code >= 500
    # URLError (refused, unreachable, DNS), timeouts and resets (OSError), a garbled answer (http.client)
    return isinstance(exc, (urllib.error.URLError, OSError)) or type(exc).__module__ == "http.client"


def describe(exc: BaseException, timeout: float) -> str:
    """What went wrong, in words that cannot hold the URL."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}" + (" (redirects are not followed)" if 300 <= exc.code < 400 else "")
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return f"no answer within {timeout:g}s"
    return f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) else str(reason)


def deliver(url: str, data: bytes, timeout: float,
            sleep: Callable[[float], None] = time.sleep) -> tuple[int | None, int, BaseException | None]:
    """POST ``data`` with the retry policy: (HTTP status, attempts, the last error if not delivered)."""
    from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

    status: int | None = None
    retrying = Retrying(retry=retry_if_exception(_transient), stop=stop_after_attempt(ATTEMPTS),
                        wait=wait_exponential(multiplier=_PAUSES[0], max=_PAUSES[-1]), sleep=sleep, reraise=True)
    try:
        for attempt in retrying:
            with attempt:
                status = _post(url, data, timeout)
    except Exception as exc:  # noqa: BLE001 - the caller logs it; a notification never fails a run
        return None, int(retrying.statistics.get("attempt_number", 1)), exc
    return status, int(retrying.statistics.get("attempt_number", 1)), None


def budget(cfg: Any) -> float:
    """The longest a run waits for one notification: every attempt timing out, the pauses, a margin."""
    return ATTEMPTS * float(cfg.timeout) + sum(_PAUSES) + 1.0


class Notifier:
    """The notifications of one run (or refusal) of one environment."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.cfg = env.config.notify
        self.log = structlog.get_logger("runbook")

    def wants(self, event: str) -> bool:
        # an unusable URL was refused at plan time (check): never try it, its error could quote it
        return self.cfg is not None and usable(self.env.webhook) and event in self.cfg.on

    def _send(self, event: str, facts: dict[str, Any], bound: dict[str, Any]) -> None:
        """Deliver and log the result; never raises (it runs in a thread, or at a run's very end)."""
        log = self.log.bind(**bound)
        try:
            status, attempts, error = deliver(self.env.webhook, body(self.cfg, facts), float(self.cfg.timeout))
        except Exception as exc:  # noqa: BLE001 - a bug in building the payload: still not the run's failure
            status, attempts, error = None, 0, exc
        if error is not None:
            log.warning("notify_failed", notify_event=event, webhook_env=self.cfg.webhook_env, attempts=attempts,
                        error=describe(error, float(self.cfg.timeout)), effect="none on the run or its exit code")
        else:
            log.info("notify_sent", notify_event=event, format=self.cfg.format, http_status=status,
                     attempts=attempts)

    def started(self, record: dict[str, Any], log_path: Any) -> Pending[None] | None:
        """The ``started`` notification, sent in the background while the run goes on."""
        if not self.wants("started"):
            return None
        facts = payload(self.env, record, "started", log_path=log_path)
        bound = structlog.contextvars.get_contextvars()  # a thread does not inherit them
        return Pending(lambda: self._send("started", facts, bound), "notify-started")

    def finished(self, record: dict[str, Any], code: int, *, log_path: Any = None, message: str | None = None,
                 next_command: str | None = None, started: Pending[None] | None = None) -> None:
        """The final notification, after the journal is final; waited for at most ``budget``.

        The ``started`` one goes first (so a channel reads in order), within the same bound; a
        signal ends the wait (the run's outcome is already written)."""
        event = event_of(code)
        if not self.wants(event):
            if started is not None:
                self._wait(started, "started")
            return
        facts = payload(self.env, record, event, log_path=log_path, message=message, next_command=next_command)
        bound = structlog.contextvars.get_contextvars()
        if started is not None and not self._wait(started, "started"):
            return
        self._wait(Pending(lambda: self._send(event, facts, bound), f"notify-{event}"), event)

    def _wait(self, pending: Pending[None], event: str) -> bool:
        """Wait for a sending thread, at most ``budget``; False if the wait was given up."""
        from . import interrupts

        handlers = interrupts.current()
        seen = len(handlers.received) if handlers else 0
        deadline = time.monotonic() + budget(self.cfg)
        try:
            while True:
                try:
                    pending.result(timeout=max(0.0, min(0.2, deadline - time.monotonic())))
                    return True
                except TimeoutError:
                    if time.monotonic() >= deadline:
                        why = f"still not delivered after {budget(self.cfg):g}s"
                        break
                    if handlers is not None and len(handlers.received) > seen:  # a signal while shielded
                        why = f"{handlers.received[-1]} received"
                        break
        except interrupts.Interrupted as exc:
            why = f"{exc.name} received"
        self.log.warning("notify_failed", notify_event=event, webhook_env=self.cfg.webhook_env,
                         error=f"gave up waiting: {why}", effect="none on the run or its exit code")
        return False
