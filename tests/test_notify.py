"""Webhook notifications, received by a real HTTP server the test starts on loopback.

Each run is the real ``runbook`` command against the test PostgreSQL through the test sshd. The
webhook URL carries a fake token: it must never reach the run log, the journal, stdout or stderr.
A webhook that is dead, hangs or answers 500 is logged and changes neither the outcome nor the
exit code.
"""

from __future__ import annotations

import json
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from runbook import notify
from tests.fixtures.project import Project
from tests.fixtures.webhook import SIG, TOKEN, Hook

VAR = "RUNBOOK_WEBHOOK"
ALL_EVENTS = ["started", "succeeded", "failed", "needs_person", "refused"]
BROKEN_0003 = 'op.execute("ALTER TABLE collections ADD COLUMN x no_such_type")'


def _notify(project: Project, fmt: str = "json", on: list[str] | None = None, timeout: str = "2s",
            **extra: Any) -> None:
    block: dict[str, Any] = {"webhook_env": VAR, "format": fmt, "timeout": timeout}
    if on is not None:
        block["on"] = on
    project.write_inventory(notify=block, **extra)


def _journal(project: Project, run_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((project.dir / ".runbook" / "runs" / f"{run_id}.json").read_text())
    return data


def _no_leak(project: Project, result: Any, url: str) -> None:
    """The URL, its token and its query are nowhere: output, run logs, journals."""
    texts = {"stdout": result.stdout, "stderr": result.stderr}
    for path in (project.dir / ".runbook" / "runs").iterdir():
        texts[str(path)] = path.read_text()
    for where, text in texts.items():
        for secret in (url, TOKEN, SIG):
            assert secret not in text, f"{secret!r} in {where}"


def _outside_window() -> dict[str, Any]:
    """A window that is closed now: every day but today (UTC)."""
    days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    days.remove(days[datetime.now(timezone.utc).weekday()])
    return {"days": days, "start": "00:00", "end": "23:59", "tz": "UTC"}


@pytest.mark.parametrize("fmt", ["json", "slack"])
def test_success_is_announced(project: Project, hook: Hook, fmt: str) -> None:
    """A migrate with every event asked: 'started' then 'succeeded', with the run's facts; no URL anywhere."""
    project.upgrade_to("0001")
    _notify(project, fmt, on=ALL_EVENTS)

    result = project.run("prod", "migrate", extra_env={VAR: hook.url})

    assert result.returncode == 0, result.stderr
    assert [r["path"] for r in hook.requests] == [f"/services/{TOKEN}?{SIG}"] * 2
    assert all(r["headers"]["Content-Type"] == "application/json" for r in hook.requests)
    run_id = project.run_logs()[-1].stem
    record = _journal(project, run_id)
    backup = record["hosts"]["db1"]["backup"]["backup_path"]
    started, finished = hook.bodies()
    if fmt == "json":
        assert started["event"] == "started" and started["run_id"] == run_id and started["exit_code"] is None
        assert finished["event"] == "succeeded" and finished["run_id"] == run_id
        assert (finished["env"], finished["playbook"], finished["status"], finished["exit_code"]) == \
            ("prod", "migrate", "succeeded", 0)
        host, = finished["hosts"]
        assert (host["name"], host["revision_from"], host["revision_to"], host["backup"]) == \
            ("db1", "0001", "0002", backup)
        assert Path(host["backup"]).name in [p.name for p in project.backups()]
        assert finished["log"] == str(project.run_logs()[-1]) and finished["next"] is None
        assert finished["duration_s"] == notify.duration(record) and finished["duration_s"] > 0
        assert "0002" in finished["message"]
    else:
        assert started["text"].startswith(":arrow_forward: runbook prod migrate: started")
        assert finished["text"].startswith(":white_check_mark: runbook prod migrate: succeeded (exit 0)")
        blocks = json.dumps(finished["blocks"])
        assert "db1: 0001 \\u2192 0002" in blocks and run_id in blocks and Path(backup).name in blocks
        assert {b["type"] for b in finished["blocks"]} == {"section", "context"}
    sent = [e for e in project.events() if e["event"] == "notify_sent"]
    assert sorted(e["notify_event"] for e in sent) == ["started", "succeeded"]
    _no_leak(project, result, hook.url)


@pytest.mark.parametrize("fmt", ["json", "slack"])
def test_failure_with_rollback_is_announced(project: Project, hook: Hook, fmt: str) -> None:
    """A broken revision: exit 1, rolled back; with the default events only 'failed' is sent, saying so."""
    project.start_at_0002()
    project.add_revision("0003", "0002", BROKEN_0003)
    _notify(project, fmt)  # default events: failed, needs_person, refused
    before = project.state()

    result = project.run("prod", "migrate", extra_env={VAR: hook.url})

    assert result.returncode == 1, result.stderr
    assert project.state() == before
    body, = hook.bodies()
    run_id = project.run_logs()[-1].stem
    if fmt == "json":
        assert (body["event"], body["status"], body["exit_code"], body["run_id"]) == \
            ("failed", "rolled_back", 1, run_id)
        host, = body["hosts"]
        assert (host["revision_from"], host["revision_to"]) == ("0002", "0002") and host["backup"]
        assert "rolled back" in body["message"] and "revision 0003" in body["message"]
    else:
        assert body["text"].startswith(":x: runbook prod migrate: FAILED, rolled back (exit 1)")
        assert "rolled back" in body["text"]
        assert "db1: 0002 \\u2192 0002" in json.dumps(body["blocks"])
    _no_leak(project, result, hook.url)


@pytest.mark.parametrize("fmt", ["json", "slack"])
def test_refusal_outside_the_window_is_announced(project: Project, hook: Hook, fmt: str) -> None:
    """Outside the window: exit 4, nothing touched, a 'refused' notification and a journal record of the refusal."""
    project.upgrade_to("0001")
    _notify(project, fmt, window=_outside_window())
    before = project.state()

    result = project.run("prod", "migrate", extra_env={VAR: hook.url})

    assert result.returncode == 4, result.stderr
    assert "outside the maintenance window" in result.stderr
    assert project.state() == before and project.backups() == []
    body, = hook.bodies()
    run_id = project.run_logs()[-1].stem
    record = _journal(project, run_id)
    assert (record["status"], record["exit_code"], record["steps"]) == ("refused", 4, [])
    if fmt == "json":
        assert (body["event"], body["status"], body["exit_code"], body["run_id"]) == ("refused", "refused", 4, run_id)
        assert "outside the maintenance window" in body["message"]
        assert [h["name"] for h in body["hosts"]] == ["db1"]
    else:
        assert body["text"].startswith(":no_entry: runbook prod migrate: refused (exit 4): outside the maintenance")
    assert project.run("prod", "status").returncode == 0
    _no_leak(project, result, hook.url)


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/services/{TOKEN}?{SIG}"


@pytest.mark.parametrize("kind", ["dead", "hangs", "http 500"])
def test_undeliverable_notifications_change_nothing(project: Project, hook: Hook, kind: str) -> None:
    """A closed port, a server that never answers, HTTP 500: logged after 3 tries, the exit code is the run's."""
    project.upgrade_to("0001")
    listener = None
    if kind == "dead":
        url = _dead_url()
    elif kind == "hangs":  # accepts connections (the kernel's backlog) and never answers
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/services/{TOKEN}?{SIG}"
    else:
        hook.status = 500
        url = hook.url
    _notify(project, "json", on=ALL_EVENTS, timeout="300ms")
    try:
        result = project.run("prod", "migrate", extra_env={VAR: url})
    finally:
        if listener is not None:
            listener.close()

    assert result.returncode == 0, result.stderr
    assert project.db.alembic_version() == {"0002"}
    run_id = project.run_logs()[-1].stem
    assert _journal(project, run_id)["status"] == "succeeded"
    failed = [e for e in project.events() if e["event"] == "notify_failed"]
    assert sorted(e["notify_event"] for e in failed) == ["started", "succeeded"]
    assert all(e["attempts"] == notify.ATTEMPTS and e["webhook_env"] == VAR for e in failed)
    error = {"dead": "ConnectionRefusedError", "hangs": "no answer within 0.3s", "http 500": "HTTP 500"}[kind]
    assert all(error in e["error"] for e in failed), failed
    assert "notify_failed" in result.stderr
    if kind == "http 500":
        assert len(hook.requests) == 2 * notify.ATTEMPTS
    assert result.stdout.strip().splitlines()[-1].startswith("runbook: run log ")  # still the last lines
    _no_leak(project, result, url)


def test_a_failed_run_keeps_its_exit_code_when_the_webhook_is_dead(project: Project) -> None:
    """Exit 1 stays 1 when the 'failed' notification cannot be delivered."""
    project.start_at_0002()
    project.add_revision("0003", "0002", BROKEN_0003)
    _notify(project, "slack", timeout="300ms")
    url = _dead_url()

    result = project.run("prod", "migrate", extra_env={VAR: url})

    assert result.returncode == 1, result.stderr
    failed, = [e for e in project.events() if e["event"] == "notify_failed"]
    assert failed["notify_event"] == "failed"
    _no_leak(project, result, url)


def test_retry_policy_against_a_real_server(hook: Hook) -> None:
    """5xx and 429 are retried (3 tries); 404 is an answer (1 try); a redirect is not followed."""
    data = b"{}"
    for status, tries in ((500, 3), (429, 3), (404, 1), (200, 1)):
        hook.requests.clear()
        hook.status = status
        code, attempts, error = notify.deliver(hook.url, data, 2.0, sleep=lambda s: None)
        assert (len(hook.requests), attempts) == (tries, tries), status
        assert (error is None) == (status == 200)
        assert code == (200 if status == 200 else None)
    other = Hook()
    try:
        hook.requests.clear()
        hook.status, hook.location = 307, other.url
        code, attempts, error = notify.deliver(hook.url, data, 2.0, sleep=lambda s: None)
        assert error is not None and notify.describe(error, 2.0) == "HTTP 307 (redirects are not followed)"
        assert attempts == 1 and other.requests == []
    finally:
        other.close()


def test_missing_or_bad_webhook_variable_is_refused_at_plan_time(project: Project, hook: Hook) -> None:
    """notify configured, its variable unset or not a URL: exit 2, one line naming it, nothing touched; status still works."""
    project.upgrade_to("0001")
    _notify(project)
    before = project.state()

    unset = project.run("prod", "migrate")
    bad = project.run("prod", "migrate", extra_env={VAR: f"ftp://{TOKEN}"})
    bad_port = project.run("prod", "migrate", extra_env={VAR: f"https://hooks.example:{TOKEN}/x"})

    for result in (unset, bad, bad_port):
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert f"(named by environments.prod.notify.webhook_env)" in result.stderr
        assert str(project.inventory) + ":" in result.stderr
    assert f"environment variable {VAR} is not set" in unset.stderr
    for result in (bad, bad_port):
        assert "does not hold an http:// or https:// URL" in result.stderr and TOKEN not in result.stderr
    assert project.state() == before and project.backups() == []
    assert project.run("prod", "status").returncode == 0  # sends nothing: needs no webhook
    assert project.run("prod", "migrate", "--dry-run").returncode == 0
    assert hook.requests == []


@pytest.mark.parametrize("block, message", [
    ({"webhook_env": VAR, "on": ["failed", "exploded"]}, "notify.on: 'exploded' is not an event"),
    ({"webhook_env": VAR, "on": []}, "notify.on: names no event"),
    ({"webhook_env": VAR, "format": "teams"}, "notify.format: Input should be 'json' or 'slack'"),
    ({"webhook_env": "https://hooks.example/x"}, "notify.webhook_env: must be the NAME"),
    ({"webhook_env": VAR, "url": "x"}, "unknown key 'url' in environments.prod.notify"),
    ({"webhook_env": VAR, "timeout": "5m"}, "notify.timeout: must be more than 0 and at most 60s"),
])
def test_bad_notify_block_is_one_located_line(project: Project, block: dict[str, Any], message: str) -> None:
    """Each mistake in the notify block: exit 2, one line with file:line and the key."""
    project.write_inventory(notify=block)
    result = project.run("prod", "migrate", extra_env={VAR: "http://127.0.0.1:9/x"})
    assert result.returncode == 2, result.stderr
    line, = [ln for ln in result.stderr.splitlines() if ln.startswith("runbook: error:")]
    assert f"{project.inventory}:" in line and message in line, line


def test_slack_text_is_escaped() -> None:
    """A message with Slack's control characters (&, <, >) cannot become a link or a mention."""
    facts = {"event": "failed", "env": "prod", "playbook": "migrate", "exit_code": 1, "run_id": "r",
             "message": "x < y & <!channel>", "next": None, "duration_s": 1.0, "log": "/l", "control_host": "c",
             "hosts": [{"name": "db1", "revision_from": "a", "revision_to": "a", "backup": None}]}
    message = notify.slack(facts)
    assert "x &lt; y &amp; &lt;!channel&gt;" in message["blocks"][0]["text"]["text"]
    assert "<!channel>" not in json.dumps(message["blocks"])


def test_webhook_variable_is_not_inherited_by_local_commands(local_project: Project, hook: Hook) -> None:
    """A shell step on this machine (local transport) does not see the webhook URL, like a password."""
    local_project.upgrade_to("0001")
    out = local_project.dir / "seen.txt"
    local_project.write_playbook("peek", f"""\
        description: what a shell step sees
        steps:
          - shell: {{command: 'printenv {VAR} > {out} || echo absent > {out}'}}
        """)
    _notify(local_project, on=["succeeded"])
    result = local_project.run("prod", "peek", extra_env={VAR: hook.url})
    assert result.returncode == 0, result.stderr
    assert out.read_text().strip() == "absent"
    assert len(hook.requests) == 1


def test_needs_person_is_announced_with_the_next_command(project: Project, hook: Hook) -> None:
    """A rollback that cannot complete (its backup damaged on the host): exit 3, 'needs_person' with the state and the next command."""
    from tests.test_failures import FAILING_CHECK, RAISING_DOWN, UP_0003, _corrupt_playbook

    project.start_at_0002()
    project.add_revision("0003", "0002", UP_0003, RAISING_DOWN, verify=FAILING_CHECK)
    _corrupt_playbook(project, f'for f in {project.backup_dir}/*.dump; do chmod 000 "$f"; done')
    _notify(project, "json", on=["needs_person"])

    result = project.run("prod", "migrate", extra_env={VAR: hook.url})

    assert result.returncode == 3, result.stderr
    body, = hook.bodies()
    assert (body["event"], body["status"], body["exit_code"]) == ("needs_person", "needs_person", 3)
    assert body["next"] == "runbook prod status"
    assert "FAILED and the rollback did not complete" in body["message"] and "is at 0003" in body["message"]
    host, = body["hosts"]
    assert (host["revision_from"], host["revision_to"]) == ("0002", "0003")
    _no_leak(project, result, hook.url)


def test_bad_input_once_the_environment_is_known_is_announced(project: Project, hook: Hook) -> None:
    """rollback without --yes and no terminal: exit 2, nothing touched, no journal; a 'refused' with no run id."""
    project.upgrade_to("0001")
    _notify(project, "json")

    result = project.run("prod", "rollback", yes=False, extra_env={VAR: hook.url})

    assert result.returncode == 2, result.stderr
    assert not (project.dir / ".runbook" / "runs").exists()
    body, = hook.bodies()
    assert (body["event"], body["exit_code"], body["run_id"], body["log"], body["playbook"]) == \
        ("refused", 2, None, None, "rollback")
    assert "--yes" in body["message"]
    assert result.stderr.strip().splitlines()[-1].startswith("runbook: error:")


def test_a_signal_ends_the_wait_for_a_hanging_webhook(project: Project) -> None:
    """SIGTERM while the final notification hangs: the wait is given up, the run keeps its exit code 0."""
    import signal

    project.upgrade_to("0001")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/services/{TOKEN}?{SIG}"
    _notify(project, "json", on=["succeeded"], timeout="60s")  # a wait of minutes, unless a signal ends it
    proc = project.start("prod", "migrate", extra_env={VAR: url})
    try:
        project.wait_event("run_finished", proc=proc, timeout=120)
        # the final notification is under way once its connection is queued on the listener
        listener.settimeout(60)
        conn, _ = listener.accept()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
        conn.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        listener.close()
    assert proc.returncode == 0, out + err
    gave_up, = [e for e in project.events() if e["event"] == "notify_failed"]
    assert gave_up["error"] == "gave up waiting: SIGTERM received"
    assert project.db.alembic_version() == {"0002"}
    assert TOKEN not in out + err


def test_schedule_puts_the_webhook_variable_in_the_environment_file(project: Project) -> None:
    """`schedule` lists the webhook's variable among the secrets of its EnvironmentFile; the units never hold it."""
    _notify(project, window={"days": ["sun"], "start": "02:00", "end": "04:00", "tz": "UTC"})
    result = project.run("prod", "schedule", "migrate", "--json", extra_env={VAR: "http://127.0.0.1:9/" + TOKEN})
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert VAR in printed["environment_file"]["variables"]
    assert f"{VAR}=" in printed["environment_file"]["template"]
    assert TOKEN not in result.stdout + result.stderr

