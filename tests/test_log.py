"""The structlog pipeline: secrets redacted before any renderer, a 0600 JSON-lines run log, context."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from runbook import log
from runbook.log import REDACTED, JsonLinesFile, Redactor

SECRET = "S3cr%t p@ss:w0rd/x"


@pytest.fixture
def redactor() -> Iterator[Redactor]:
    """The process-wide redactor knowing SECRET for the test only."""
    before = set(log.REDACTOR.secrets)
    log.REDACTOR.add(SECRET)
    try:
        yield log.REDACTOR
    finally:
        log.REDACTOR.secrets = before


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Path]:
    """A run log under tmp_path; structlog and the run log are reset afterwards.

    Each test calls ``start(path)`` itself: capsys swaps sys.stderr between setup and call, and
    the console renderer writes to the stderr of the moment ``configure`` runs.
    """
    try:
        yield tmp_path / "runs" / "run.jsonl"
    finally:
        log.RUN_LOG.close()
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()


def start(path: Path, verbose: bool = False) -> None:
    log.configure(json_stdout=False, tty=False, verbose=verbose)
    log.RUN_LOG.open(path)


def test_redaction_reaches_nested_values(redactor: Redactor) -> None:
    """A known secret is replaced inside strings, nested dicts, lists, tuples and exceptions."""
    event = {"event": "connecting", "dsn": f"postgresql://raguser:{SECRET}@db/x",
             "nested": {"deeper": [f"pw={SECRET}", ("a", SECRET)]},
             "error": RuntimeError(f"auth failed for {SECRET}"), "count": 3, "none": None}
    out = redactor(None, "info", event)
    assert SECRET not in json.dumps(out, default=str)
    assert out["dsn"] == f"postgresql://raguser:{REDACTED}@db/x"
    assert out["nested"] == {"deeper": [f"pw={REDACTED}", ("a", REDACTED)]}
    assert out["error"] == f"RuntimeError: auth failed for {REDACTED}"
    assert (out["count"], out["none"]) == (3, None)
    assert event["dsn"].endswith(f"{SECRET}@db/x"), "the caller's dict is not modified"


def test_keys_named_password_are_redacted_whatever_their_value() -> None:
    """A value under a key like 'password' or 'db_password' is hidden even if it is not a known secret."""
    out = Redactor()(None, "info", {"event": "x", "password": "hunter2",
                                    "config": {"db_password": "hunter3", "user": "raguser"},
                                    "hosts": [{"PASSWORD": "hunter4"}], "secret": "s", "password_empty": ""})
    text = json.dumps(out)
    for leaked in ("hunter2", "hunter3", "hunter4"):
        assert leaked not in text
    assert out["config"]["user"] == "raguser"
    assert out["password"] == REDACTED and out["secret"] == REDACTED
    assert out["password_empty"] == ""


def test_longer_secrets_are_replaced_first() -> None:
    """When one secret contains another, the longer one is replaced whole."""
    r = Redactor()
    r.add("abcdefgh", "abcdefghijkl", None, "")
    assert r.scrub("x abcdefghijkl y abcdefgh") == f"x {REDACTED} y {REDACTED}"
    assert r.secrets == {"abcdefgh", "abcdefghijkl"}


def test_capture_logs_sees_redacted_events(redactor: Redactor) -> None:
    """Through structlog, an event carrying the secret arrives redacted."""
    logger = structlog.get_logger("runbook")
    with capture_logs(processors=[log.REDACTOR]) as logs:
        logger.warning("login_failed", error=f"password authentication failed: {SECRET}",
                       attempt={"password": SECRET, "n": 1})
    assert logs == [{"event": "login_failed", "log_level": "warning",
                     "error": f"password authentication failed: {REDACTED}",
                     "attempt": {"password": REDACTED, "n": 1}}]


def test_run_log_is_json_lines_with_mode_0600(tmp_path: Path) -> None:
    """Each event is one JSON line in a 0600 file, in a 0700 directory, appended across opens."""
    sink = JsonLinesFile()
    path = tmp_path / "runs" / "r1.jsonl"
    sink.open(path)
    try:
        assert sink(None, "info", {"event": "backup_finished", "size": 10, "path": Path("/x")}) == {
            "event": "backup_finished", "size": 10, "path": Path("/x")}
        sink(None, "info", {"event": "multi\nline", "n": 2})
    finally:
        sink.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"event": "backup_finished", "size": 10, "path": "/x"}, {"event": "multi\nline", "n": 2}]
    sink.open(path)
    sink(None, "info", {"event": "third"})
    sink.close()
    assert len(path.read_text().splitlines()) == 3
    sink(None, "info", {"event": "after close"})  # a closed sink drops nothing and writes nothing
    assert len(path.read_text().splitlines()) == 3


@pytest.mark.parametrize("verbose", [False, True], ids=["console", "verbose"])
def test_pipeline_redacts_before_the_file_and_the_console(
        pipeline: Path, redactor: Redactor, capsys: pytest.CaptureFixture[str], verbose: bool) -> None:
    """The configured pipeline writes context-bound, redacted events to the run log and to stderr
    (the short console's generic line for a warning, or -v's key=value line)."""
    start(pipeline, verbose)
    logger = structlog.get_logger("runbook")
    with structlog.contextvars.bound_contextvars(run_id="r1", env="prod", host="db1", step="backup"):
        logger.warning("backup_finished", backup_path="/b/x.dump", note=f"pw {SECRET}")
    log.RUN_LOG.close()
    events = [json.loads(line) for line in pipeline.read_text().splitlines()]
    assert len(events) == 1
    event = events[0]
    assert (event["event"], event["run_id"], event["env"], event["host"], event["step"]) == (
        "backup_finished", "r1", "prod", "db1", "backup")
    assert event["level"] == "warning" and event["timestamp"].endswith("Z")
    assert event["note"] == f"pw {REDACTED}"
    err = capsys.readouterr().err
    assert "backup_finished" in err and SECRET not in err and REDACTED in err


def test_tracebacks_are_redacted_and_kept_in_the_run_log(
        pipeline: Path, redactor: Redactor, capsys: pytest.CaptureFixture[str]) -> None:
    """logger.exception: the traceback text goes to the run log and (-v) the console, secret scrubbed."""
    start(pipeline, verbose=True)
    logger = structlog.get_logger("runbook")
    try:
        raise ValueError(f"could not connect with {SECRET}")
    except ValueError:
        logger.exception("internal_error")
    log.RUN_LOG.close()
    (event,) = [json.loads(line) for line in pipeline.read_text().splitlines()]
    assert "Traceback" in event["exception"] and "ValueError" in event["exception"]
    assert SECRET not in pipeline.read_text()
    err = capsys.readouterr().err
    assert "ValueError" in err and SECRET not in err


def test_json_stdout(tmp_path: Path, redactor: Redactor, capsys: pytest.CaptureFixture[str]) -> None:
    """--json renders each event as one JSON object on stdout, redacted."""
    log.configure(json_stdout=True, tty=False)
    try:
        structlog.get_logger("runbook").info("step_started", secret_arg=SECRET, other=SECRET)
    finally:
        structlog.reset_defaults()
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    event = json.loads(out[0])
    assert event["event"] == "step_started" and event["other"] == REDACTED and event["secret_arg"] == REDACTED


def test_quiet_drops_console_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """quiet=True still writes the run log but renders nothing."""
    path = tmp_path / "q.jsonl"
    log.configure(quiet=True, tty=False)
    log.RUN_LOG.open(path)
    try:
        structlog.get_logger("runbook").info("lock_wait", pids=[1, 2])
    finally:
        log.RUN_LOG.close()
        structlog.reset_defaults()
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert json.loads(path.read_text())["pids"] == [1, 2]


def test_percent_encoded_and_bytes_forms_are_redacted() -> None:
    """A long secret is caught percent-encoded (quote, quote_plus, lower-case hex), in bytes and in exceptions."""
    import re
    from urllib.parse import quote, quote_plus

    r = Redactor()
    r.add(SECRET)
    lower_hex = re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(SECRET, safe=""))
    for form in (quote(SECRET), quote(SECRET, safe=""), quote_plus(SECRET), lower_hex):
        assert r.scrub(f"postgresql://raguser:{form}@db/x") == f"postgresql://raguser:{REDACTED}@db/x"
    assert r.scrub(f"out {SECRET} end".encode()) == f"out {REDACTED} end".encode()
    assert r.scrub(ValueError(f"bad {SECRET}")) == f"ValueError: bad {REDACTED}"


def test_short_secret_is_redacted_only_in_secret_positions() -> None:
    """A one-character password never garbles ordinary words, fingerprints or commands, yet is hidden where it is a secret."""
    r = Redactor()
    r.add("x")
    text = "next: ssh-keygen -R '[127.0.0.1]:2222' (SHA256:x+x/xXx) exit"
    assert r.scrub(text) == text
    assert r.scrub("x") == REDACTED
    assert r.scrub("connect password=x user=raguser") == f"connect password={REDACTED} user=raguser"
    assert r.scrub("PGPASSWORD: 'x'") == f"PGPASSWORD: '{REDACTED}'"
    assert r.scrub("postgresql://raguser:x@db/rag") == f"postgresql://raguser:{REDACTED}@db/rag"
    assert r.scrub({"msg": "x", "other": "xx"}) == {"msg": REDACTED, "other": "xx"}
