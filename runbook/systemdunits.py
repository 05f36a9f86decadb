"""The text of ``schedule``'s systemd units and of the EnvironmentFile template.

Why each setting is there is said in the unit itself (a person reads the unit, not this module) and
in runbook/schedule.py. Values are escaped for systemd: ``%`` (specifiers) in every path, and ``$``
(variables) and quotes in ``ExecStart=`` words; a path systemd cannot hold (a control character, a
backslash) is refused.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .units import span


def marker(env: str, playbook: str) -> str:
    """The line that says a unit file is ``schedule``'s (``--install`` rewrites only those)."""
    return f"# runbook schedule: env={env} playbook={playbook}"


def exec_word(word: str, command: bool = False) -> str:
    """One ``ExecStart=`` word: specifiers (``%``) and, in an argument, variables (``$``) kept literal
    (systemd expands no variable in the command's own path, and reads ``$$`` there as two), quoted
    when it holds a space, a quote, a backslash or a ``;``."""
    word = word.replace("%", "%%")
    if not command:
        word = word.replace("$", "$$")
    if not word or re.search(r"[\s\"'\\;]", word):
        word = '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word


def path_value(path: Path, what: str) -> str:
    """A path as the value of ``WorkingDirectory=``/``EnvironmentFile=`` (specifiers escaped)."""
    text = str(path)
    if any(ord(c) < 32 or c == "\\" for c in text):
        raise ConfigError(f"{what} {text!r} holds a control character or a backslash: "
                          "it cannot be written into a unit file")
    return text.replace("%", "%%")


def executable() -> list[str]:
    """The runbook command in use, absolute: the ``runbook`` script that was started, or this
    Python with ``-m runbook`` (symlinks kept: a virtualenv is found through its bin/ path)."""
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0 and os.path.basename(argv0) != "__main__.py" and os.path.isfile(argv0) \
            and os.access(argv0, os.X_OK):
        return [os.path.abspath(argv0)]
    return [os.path.abspath(sys.executable), "-m", "runbook"]


def run_user() -> str:
    """Who the system unit runs as: the user running ``schedule`` (behind sudo: the one who ran sudo)."""
    import pwd

    if os.getuid() == 0 and os.environ.get("SUDO_USER"):
        return os.environ["SUDO_USER"]
    return pwd.getpwuid(os.getuid()).pw_name


def service_text(name: str, env_name: str, playbook_name: str, origin: str, written: str, workdir: str,
                 env_file_value: str, exec_start: str, variables: list[str], tm: Any, user_mode: bool) -> str:
    secrets = ", ".join(variables) or "none today"
    return "\n".join([
        f"# {name}.service: {origin}",
        marker(env_name, playbook_name),
        "[Unit]",
        f"Description=runbook {env_name} {playbook_name} (maintenance window {written})",
        *([] if user_mode else ["Wants=network-online.target", "After=network-online.target"]),
        "",
        "[Service]",
        "Type=oneshot",
        *([] if user_mode else [f"User={run_user()}"]),
        f"WorkingDirectory={workdir}",
        f"# The passwords ({secrets}) come from this file (mode 0600): never from this unit.",
        f"EnvironmentFile={env_file_value}",
        "Environment=PYTHONUNBUFFERED=1",
        f"ExecStart={exec_start}",
        "StandardOutput=journal",
        "StandardError=journal",
        f"SyslogIdentifier={name}",
        "# The run's limit (RuntimeMaxSec= has no effect on Type=oneshot): the window's shortest length",
        f"# ({span(tm.lengths.shortest)}) less the rollback's reserve ({span(tm.reserve)}; {tm.reserve_rule}).",
        "# Then SIGTERM (KillSignal=): runbook fails the step, rolls back and exits 1 (3: a person is needed).",
        f"TimeoutStartSec={span(tm.runtime)}",
        "# The rollback's time: SIGKILL only after this, at the window's end.",
        f"TimeoutStopSec={span(tm.reserve)}",
        "# SIGTERM to runbook alone (it stops its own commands, and a second signal never abandons",
        "# its rollback); the final SIGKILL, after TimeoutStopSec, to whatever is left.",
        "KillMode=mixed",
        "KillSignal=SIGTERM",
        "SendSIGHUP=no",
        "SendSIGKILL=yes",
        "",
    ])


def timer_text(name: str, env_name: str, playbook_name: str, origin: str, written: str, on_calendar: str,
               window: Any) -> str:
    return "\n".join([
        f"# {name}.timer: {origin}",
        marker(env_name, playbook_name),
        "[Unit]",
        f"Description=Start runbook {env_name} {playbook_name} when its maintenance window opens ({written})",
        "",
        "[Timer]",
        f"# {window.start} in {window.tz}, whatever this machine's time zone",
        f"OnCalendar={on_calendar}",
        "AccuracySec=1s",
        "RandomizedDelaySec=0",
        "# A missed window is not caught up later: the stop time counts from the window's start, and",
        "# the window guard refuses a start outside the window anyway (exit 4).",
        "Persistent=false",
        f"Unit={name}.service",
        "",
        "[Install]",
        "WantedBy=timers.target",
        "",
    ])


def env_template(env_name: str, variables: list[str]) -> str:
    """Names and empty values: a person fills them in; runbook never writes a secret."""
    return "\n".join([
        f"# The secrets of runbook environment '{env_name}': read by runbook-{env_name}-*.service",
        "# (EnvironmentFile=) and sourced by their crontab lines (sh). Keep it mode 0600.",
        "# One NAME='value' per line: in single quotes, $ and spaces stay literal for systemd and sh",
        "# alike (a value holding a single quote cannot be written so).",
        *[f"{v}=" for v in variables],
        "",
    ])
