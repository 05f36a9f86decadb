"""The ``--json`` contract: docs/events.md is the document, and runbook keeps to it.

The tables of docs/events.md are turned into a JSON Schema (``build_schema``; the result is
committed as docs/events.schema.json for consumers, and must equal it); real commands run with
``--json`` against the test PostgreSQL and sshd, and every stdout line is validated against that
schema with the ``jsonschema`` library. The code is read too (AST): every event name runbook logs,
and every field it passes by name, must be documented, so an event added without its
documentation fails here. Regenerate the schema file after editing the document:

    .venv/bin/python -m tests.test_events_contract --write
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest

from tests.fixtures.project import Project
from tests.test_fleet import Tenants, tenants  # noqa: F401 - the fixture of a fleet of test databases

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "events.md"
SCHEMA_FILE = ROOT / "docs" / "events.schema.json"
LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical"}
TYPES = {"string", "integer", "number", "boolean", "array", "object", "null", "any"}
EVERY_LINE, EVERY_EVENT = "Every line", "Every log event"


# -- the document -----------------------------------------------------------------------------

def sections(text: str) -> Iterator[tuple[str, str, str]]:
    """(part, heading, body) for each ``### heading`` of the document; ``part`` is its ``##``."""
    part = ""
    for block in re.split(r"^(?=##+ )", text, flags=re.M):
        head, _, body = block.partition("\n")
        if head.startswith("## "):
            part = head[3:].strip()
        elif head.startswith("### "):
            yield part, head[4:].strip(), body


def fields(body: str) -> dict[str, tuple[list[str], bool, str]]:
    """The table of a section: field -> (JSON types, required, meaning)."""
    out = {}
    for row in re.findall(r"^\| `([a-z_0-9]+)` \| ([^|]+) \| (.*) \|$", body, flags=re.M):
        name, spec, meaning = row
        optional = spec.strip().endswith(", optional")
        words = spec.replace(", optional", "").strip().split(" or ")
        assert all(w in TYPES for w in words), f"docs/events.md: field {name}: unknown type {spec!r}"
        out[name] = (words, not optional, meaning.strip())
    return out


def document(text: str | None = None) -> dict[str, Any]:
    """What docs/events.md says: the envelopes, the log events, the other lines."""
    text = DOC.read_text() if text is None else text
    doc: dict[str, Any] = {"envelope": {}, "log": {}, "lines": {}}
    for part, heading, body in sections(text):
        if heading in (EVERY_LINE, EVERY_EVENT):
            doc["envelope"][heading] = fields(body)
            continue
        name = heading.strip("`")
        assert heading == f"`{name}`", f"docs/events.md: heading {heading!r} is no event name in backquotes"
        kind = "log" if part.startswith("Log events") else "lines"
        assert name not in doc["log"] and name not in doc["lines"], f"docs/events.md: {name} twice"
        doc[kind][name] = {"fields": fields(body), "more": "\nOther fields:" in f"\n{body}",
                           "complete": "\nThese are all its fields" in f"\n{body}"}
    return doc


def _prop(types: list[str]) -> dict[str, Any]:
    if "any" in types:
        return {}
    return {"type": types[0] if len(types) == 1 else types}


def build_schema(doc: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) of one stdout line, from the document."""
    doc = document() if doc is None else doc
    every_line = doc["envelope"][EVERY_LINE]
    every_event = doc["envelope"][EVERY_EVENT]
    defs: dict[str, Any] = {}
    for kind in ("log", "lines"):
        for name, entry in sorted(doc[kind].items()):
            own = {**every_line, **(every_event if kind == "log" else {}), **entry["fields"]}
            props = {f: _prop(t) for f, (t, _, _) in own.items()}
            props["event"] = {"const": name}
            defs[name] = {"type": "object", "properties": props,
                          "required": sorted(f for f, (_, req, _) in own.items() if req),
                          "additionalProperties": bool(entry["more"])}
    names = sorted(defs)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://github.com/runbook/runbook/docs/events.schema.json",
        "title": "runbook --json: one line of stdout (built from docs/events.md)",
        "type": "object",
        "required": ["schema_version", "event"],
        "properties": {"schema_version": {"const": 1}, "event": {"enum": names}},
        "allOf": [{"if": {"properties": {"event": {"const": n}}}, "then": {"$ref": f"#/$defs/{n}"}}
                  for n in names],
        "$defs": defs,
    }


def written_schema() -> str:
    return json.dumps(build_schema(), indent=1, sort_keys=True) + "\n"


# -- the code -----------------------------------------------------------------------------------

def emitted() -> dict[str, dict[str, Any]]:
    """Every event name a log call in runbook/ passes (a constant, or a choice of constants),
    with the fields it passes by name, whether it passes ``**more``, and where."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted((ROOT / "runbook").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in LOG_METHODS and node.args):
                continue
            first = node.args[0]
            names = [first] if isinstance(first, ast.Constant) else \
                [first.body, first.orelse] if isinstance(first, ast.IfExp) else []
            for n in names:
                if not (isinstance(n, ast.Constant) and isinstance(n.value, str)
                        and re.fullmatch(r"[a-z][a-z_]+", n.value)):
                    continue
                entry = found.setdefault(n.value, {"fields": set(), "star": False, "where": []})
                entry["where"].append(f"{path.relative_to(ROOT)}:{node.lineno}")
                for kw in node.keywords:
                    if kw.arg is None:
                        entry["star"] = True
                    elif kw.arg != "exc_info":  # becomes the envelope's ``exception``
                        entry["fields"].add(kw.arg)
    return found


def test_the_scan_finds_the_log_calls() -> None:
    """The AST scan sees what ``git grep 'log.info("'`` sees (it cannot pass by finding nothing)."""
    found = emitted()
    assert len(found) > 90
    assert {"run_requested", "step_finished", "revision_applied", "revision_reverted", "internal_error",
            "stale_run_lock_taken_over"} <= set(found)
    assert found["migration_attempt"]["fields"] == {"direction", "attempt", "lock_timeout_ms", "target", "backend"}


def test_every_event_runbook_logs_is_documented_and_nothing_else() -> None:
    """An event name logged anywhere in runbook/ without a section in docs/events.md fails; so
    does a documented log event that nothing emits any more."""
    found, doc = emitted(), document()
    missing = {n: found[n]["where"][0] for n in found if n not in doc["log"]}
    assert not missing, f"events not documented in docs/events.md: {missing}"
    stale = sorted(set(doc["log"]) - set(found))
    assert not stale, f"docs/events.md documents events nothing emits: {stale}"


def test_every_field_runbook_passes_is_documented() -> None:
    """Each field a log call passes by name is in its event's table (or the envelope's)."""
    found, doc = emitted(), document()
    envelope = set(doc["envelope"][EVERY_EVENT]) | set(doc["envelope"][EVERY_LINE])
    problems = []
    for name, entry in found.items():
        documented = set(doc["log"][name]["fields"]) | envelope
        for field in sorted(entry["fields"] - documented):
            problems.append(f"{name}.{field} ({entry['where'][0]})")
        if entry["star"] and not (doc["log"][name]["more"] or doc["log"][name]["complete"]):
            problems.append(f"{name} passes **fields: its section needs 'Other fields:' or 'These are all "
                            f"its fields' ({entry['where'][0]})")
    assert not problems, "undocumented fields: " + "; ".join(problems)


def test_the_schema_file_is_the_document() -> None:
    """docs/events.schema.json is built from docs/events.md (regenerate: see this module's docstring)."""
    assert SCHEMA_FILE.read_text() == written_schema(), \
        "docs/events.schema.json is out of date: .venv/bin/python -m tests.test_events_contract --write"
    jsonschema.Draft202012Validator.check_schema(build_schema())


def test_the_schema_rejects_what_breaks_the_contract() -> None:
    """The schema is no rubber stamp: a wrong type, a missing field, an unknown event or field fail."""
    validator = jsonschema.Draft202012Validator(build_schema())
    good = {"schema_version": 1, "event": "error", "exit_code": 2, "error": "x", "hint": None}
    assert not list(validator.iter_errors(good))
    for bad in ({**good, "exit_code": "2"}, {k: v for k, v in good.items() if k != "hint"},
                {**good, "schema_version": 2}, {**good, "event": "no_such_event"}, {**good, "extra": 1},
                {"schema_version": 1, "event": "step_started", "level": "info", "timestamp": "t"}):
        assert list(validator.iter_errors(bad)), bad


# -- real commands --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(build_schema())


def lines_of(result: Any, validator: jsonschema.Draft202012Validator) -> list[dict[str, Any]]:
    """Every stdout line: JSON, valid against the documented schema; stdout holds nothing else."""
    out = []
    for raw in result.stdout.splitlines():
        assert raw.strip(), f"an empty line on stdout: {result.stdout!r}"
        data = json.loads(raw)
        problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(data)]
        assert not problems, f"{data.get('event')}: {problems}\n{raw}"
        out.append(data)
    assert out, f"nothing on stdout (exit {result.returncode}): {result.stderr}"
    return out


def test_migrate_success_then_status_and_history(project: Project, validator: Any) -> None:
    """A migrate's stream (events, run_finished, the summary last), then status and history."""
    project.upgrade_to("0001")
    result = project.run("--json", "prod", "migrate")
    assert result.returncode == 0, result.stderr
    events = lines_of(result, validator)
    names = [e["event"] for e in events]
    assert names[-2:] == ["run_finished", "summary"] and names.count("summary") == 1
    assert {"run_requested", "connecting", "run_started", "step_started", "step_finished",
            "revision_applied", "check_passed"} <= set(names)
    summary = events[-1]
    (dump,) = project.backups()
    assert summary["exit_code"] == 0 and summary["status"] == "succeeded" and summary["next"] is None
    assert summary["hosts"] == [{**summary["hosts"][0], "host": "db1", "from": "0001", "to": "0002",
                                 "backup": str(dump), "exit_code": 0}]
    assert summary["log"] == str(project.run_logs()[-1]) and not summary["fleet"]
    assert project.db.alembic_version() == {"0002"}

    again = lines_of(project.run("--json", "prod", "migrate"), validator)  # nothing pending
    assert [e["step"] for e in again if e["event"] == "step_skipped"] == ["backup", "check_locks"]
    assert again[-1]["hosts"][0]["backup"] is None

    status = project.run("--json", "prod", "status")
    assert status.returncode == 0, status.stderr
    (line,) = lines_of(status, validator)
    assert line["event"] == "status" and line["hosts"] and len(line["runs"]) == 2

    history = project.run("--json", "prod", "history")
    assert history.returncode == 0, history.stderr
    runs = lines_of(history, validator)
    assert [r["event"] for r in runs] == ["run", "run"] and runs[1]["hosts"][0]["to"] == "0002"


def test_failure_and_rollback(project: Project, validator: Any) -> None:
    """A revision that fails: the events of the failure and of the rollback, an error object, the
    summary last with exit 1; the database back at its start."""
    project.start_at_0002()
    project.add_revision("0003", "0002", "op.execute('SELECT 1/0')", doc="fails")
    result = project.run("--json", "prod", "migrate")
    assert result.returncode == 1, result.stderr
    events = lines_of(result, validator)
    names = [e["event"] for e in events]
    assert "step_failed" in names and names[-2:] == ["run_finished", "summary"]
    assert events[-1]["exit_code"] == 1 and events[-1]["status"] in ("failed", "rolled_back")
    assert project.db.alembic_version() == {"0002"}


def test_errors_are_objects(project: Project, validator: Any) -> None:
    """A usage error caught by click, one of runbook's own, a refusal on the host (exit 2), a
    guard's refusal (exit 4): each one an ``error`` object with the exit code, the error and the hint."""
    project.start_at_0002()
    click_error = project.run("--json", "prod", "migrate", "--no-such-flag")
    assert click_error.returncode == 2
    (err,) = lines_of(click_error, validator)
    assert err["event"] == "error" and err["exit_code"] == 2 and "--no-such-flag" in err["error"]

    config = project.run("--json", "prod", "migrate", "--restore")
    assert config.returncode == 2
    (err,) = lines_of(config, validator)
    assert err == {"schema_version": 1, "event": "error", "exit_code": 2,
                   "error": "--restore does not apply to migrate (it is an option of rollback)",
                   "hint": "runbook prod migrate --help"}

    older = project.run("--json", "prod", "migrate", "--to", "0001")
    assert older.returncode == 2, older.stderr
    events = lines_of(older, validator)
    assert [e["event"] for e in events][-3:] == ["run_finished", "error", "summary"]
    assert events[-2]["hint"] == "runbook prod rollback --to 0001" and events[-2]["exit_code"] == 2
    assert events[-1]["status"] == "refused" and events[-1]["next"] == "runbook prod rollback --to 0001"
    assert project.backups() == []

    from tests.test_window import _closed_today

    project.write_inventory(window=_closed_today())
    refused = project.run("--json", "prod", "migrate")
    assert refused.returncode == 4, refused.stderr
    events = lines_of(refused, validator)
    assert events[-2]["event"] == "error" and events[-2]["exit_code"] == 4
    assert "outside the maintenance window" in events[-2]["error"] and events[-1]["event"] == "summary"
    assert project.db.alembic_version() == {"0002"} and project.backups() == []


def test_a_fleet_of_two_hosts(tenants: Tenants, validator: Any) -> None:  # noqa: F811
    """Two hosts: their events (with ``host``), the fleet's, and one summary with a row per host."""
    result = tenants.project.run("--json", "tenants", "migrate", "--limit", "t1,t2")
    assert result.returncode == 0, result.stderr
    events = lines_of(result, validator)
    assert {"fleet_started", "host_finished", "fleet_finished"} <= {e["event"] for e in events}
    summary = events[-1]
    assert summary["event"] == "summary" and summary["fleet"] is True
    assert [(h["host"], h["to"]) for h in summary["hosts"]] == [("t1", "0003"), ("t2", "0003")]
    assert summary["not_run"] == [] and tenants.versions()["t3"] == {"0002"}


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        SCHEMA_FILE.write_text(written_schema())
        print(f"wrote {SCHEMA_FILE}")
    else:
        sys.exit("usage: python -m tests.test_events_contract --write")
