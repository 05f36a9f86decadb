"""The three forms of a lint report: text for a person, JSON for tools, GitHub workflow annotations.

GitHub turns ``::error file=F,line=N,title=T::message`` lines printed by a workflow step into
annotations on the pull request's diff (``warning`` and ``notice`` likewise); property values and
the message are escaped as the runner expects (``%``, CR, LF; ``:`` and ``,`` in properties).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from .analysis import Finding
from .rules import LEVELS

GITHUB_LEVEL = {"error": "error", "warning": "warning", "info": "notice"}


def counts(findings: Sequence[Finding]) -> dict[str, int]:
    return {level: sum(1 for f in findings if f.level == level) for level in reversed(LEVELS)}


def _where(f: Finding) -> str:
    path = _relative(f.path) if f.path else (f"revision {f.revision}" if f.revision else "project")
    return f"{path}:{f.line}" if f.path and f.line else path


def _relative(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return rel if not rel.startswith("..") else path


def summary(revisions: Sequence[Any], findings: Sequence[Finding], fail_on: str, code: int) -> str:
    c = counts(findings)
    span = (f"{len(revisions)} revision{'s' if len(revisions) != 1 else ''}"
            + (f" ({revisions[0].id}..{revisions[-1].id})" if len(revisions) > 1 else
               f" ({revisions[0].id})" if revisions else ""))
    verdict = "ok" if code == 0 else f"findings at or above {fail_on}: exit {code}"
    return (f"runbook lint: {span} checked: {c['error']} error(s), {c['warning']} warning(s), "
            f"{c['info']} info; {verdict}")


def text(revisions: Sequence[Any], findings: Sequence[Finding], fail_on: str, code: int) -> str:
    lines: list[str] = []
    for f in findings:
        lines.append(f"{_where(f)}: {f.level} [{f.rule}] {f.message}")
        if f.sql:
            one = " ".join(f.sql.split())
            lines.append(f"    sql:  {one if len(one) <= 110 else one[:107] + '...'}")
        lines.append(f"    safe: {f.safe}")
    lines.append(summary(revisions, findings, fail_on, code))
    return "\n".join(lines)


def as_json(revisions: Sequence[Any], findings: Sequence[Finding], fail_on: str, code: int,
            unrenderable: dict[str, str]) -> str:
    from ..log import machine_line  # the --json contract's version, as every JSON line runbook prints

    return machine_line({"event": "lint", "revisions": [r.id for r in revisions], "fail_on": fail_on,
                         "exit_code": code, "counts": counts(findings), "unrenderable": unrenderable,
                         "findings": [f.fact() for f in findings]})


def _escape(value: str, prop: bool = False) -> str:
    out = value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return out.replace(":", "%3A").replace(",", "%2C") if prop else out


def github(revisions: Sequence[Any], findings: Sequence[Finding], fail_on: str, code: int) -> str:
    lines = []
    for f in findings:
        props = []
        if f.path:
            props.append(f"file={_escape(_relative(f.path), True)}")
            if f.line:
                props.append(f"line={f.line}")
        props.append(f"title={_escape(f'{f.rule} ({f.revision})' if f.revision else f.rule, True)}")
        lines.append(f"::{GITHUB_LEVEL[f.level]} {','.join(props)}::{_escape(f'{f.message}. Safe: {f.safe}')}")
    lines.append(summary(revisions, findings, fail_on, code))
    return "\n".join(lines)
