"""``runbook ENV schedule PLAYBOOK``: a systemd service and timer (and a crontab line) that start the
playbook unattended at the start of the environment's maintenance window.

What the units promise, and why:

- The timer fires at the window's start in the window's own zone (``OnCalendar=... Europe/Berlin``),
  on time to the second (``AccuracySec=1s``), and never late: ``Persistent=false``, because a start
  caught up after a boot would run past a stop time computed from the window's start (the window
  guard would refuse a start outside the window anyway, exit 4).
- The run stops early enough for its rollback to end inside the window. The last ``window.reserve``
  of the window is kept for the rollback (default: a quarter of the window, at least 15 min and at
  least ``locks.max_wait``). systemd sends SIGTERM when the run reaches the window's shortest real
  length less the reserve (runbook fails the step, rolls back, exits 1 or 3), and SIGKILL only
  ``TimeoutStopSec`` (= the reserve) later, at the window's end. For ``Type=oneshot`` that run limit
  is ``TimeoutStartSec``: ``RuntimeMaxSec`` has no effect on oneshot services (systemd.service(5)).
  ``KillMode=mixed``: the SIGTERM goes to runbook alone (it stops its own commands; a second signal
  never abandons its rollback), the final SIGKILL to whatever is left.
- No secret in a unit or a crontab line: the variables the inventory's ``password_env`` names come
  from an ``EnvironmentFile`` (mode 0600) that ``--install`` creates with empty values, and never
  overwrites. ``schedule`` itself never reads a password.
- ``--install`` writes files and prints the ``systemctl`` commands; it never enables anything.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from .cronline import crontab_text
from .errors import ConfigError
from .inventory_keys import DAYS
from .systemdunits import env_template, exec_word, executable, path_value, service_text, timer_text
from .units import span
from .windowtimes import CronTimes, Lengths, cron_times, lengths

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MIN_DEFAULT_RESERVE = 15 * 60.0
MIN_RESERVE = 60.0
MIN_RUN = 60.0
SYSTEM_UNITS = Path("/etc/systemd/system")
SYSTEM_SECRETS = Path("/etc/runbook")
DAY_NAMES = {"mon": "Mon", "tue": "Tue", "wed": "Wed", "thu": "Thu", "fri": "Fri", "sat": "Sat", "sun": "Sun"}


@dataclass(frozen=True)
class Timing:
    lengths: Lengths
    reserve: float
    runtime: float
    reserve_rule: str  # how the reserve was chosen, for the comments and the README's rule


def timing(env: Any, where: Callable[[list[str]], tuple[str, int | None]], today: Any) -> Timing:
    """The run's limit and the rollback's reserve; a reserve that leaves no run is refused.

    ``where(keys)`` is the inventory file and line of ``window.<keys>``, for the refusals."""
    window = env.config.window
    found = lengths(window, today)
    written = f"{','.join(window.days)} {window.start}-{window.end} {window.tz}"
    if found.shortest <= 0:
        path, line = where(["start"])
        raise ConfigError(f"the maintenance window ({written}) never opens in the coming year: "
                          "its start does not exist on its days' clocks", path=path, line=line)
    max_wait = float(env.config.locks.max_wait)
    path, line = where(["reserve"] if window.reserve is not None else [])
    if window.reserve is None:
        reserve = max(round(found.nominal / 4), MIN_DEFAULT_RESERVE, max_wait)
        rule = f"default: 1/4 of the window, >= {span(MIN_DEFAULT_RESERVE)}, >= locks.max_wait"
    else:
        reserve = float(window.reserve)
        rule = "window.reserve"
        if reserve < MIN_RESERVE:
            raise ConfigError(f"window.reserve ({span(reserve)}) is too short: a rollback needs at least "
                              f"{span(MIN_RESERVE)}", path=path, line=line)
        if reserve < max_wait:
            raise ConfigError(f"window.reserve ({span(reserve)}) is shorter than locks.max_wait "
                              f"({span(max_wait)}): the rollback's downgrade may wait that long for its locks",
                              path=path, line=line)
    if found.shortest - reserve < MIN_RUN:
        on = f", {span(found.shortest)} on {found.shortest_on} (clock change)" if found.shortest_on else ""
        raise ConfigError(f"the rollback reserve ({span(reserve)}, {rule}) is not shorter than the maintenance "
                          f"window ({written}: {span(found.nominal)}{on}) by at least {span(MIN_RUN)}: "
                          "set a longer window or a shorter window.reserve", path=path, line=line)
    return Timing(found, reserve, found.shortest - reserve, rule)


@dataclass
class Schedule:
    """Everything ``schedule`` prints and ``--install`` writes."""

    name: str
    env: str
    playbook: str
    user_mode: bool
    unit_dir: Path
    service: str
    timer: str
    env_file: Path
    variables: list[str]
    env_template: str
    crontab: str
    on_calendar: str
    timing: Timing
    cron: CronTimes
    notes: list[str] = field(default_factory=list)

    @property
    def systemctl(self) -> str:
        return "systemctl --user" if self.user_mode else "systemctl"

    @property
    def commands(self) -> list[str]:
        return [f"{self.systemctl} daemon-reload", f"{self.systemctl} enable --now {self.name}.timer"]


def build(inv: Any, env: Any, playbook_name: str, options: Any, today: Any) -> Schedule:
    from . import playbook as playbook_mod
    from . import yamlfile

    env_name = env.name
    inv_path = inv.path

    def where(keys: list[str]) -> tuple[str, int | None]:
        loc: list[Any] = ["environments", env_name, "window", *keys]
        return str(inv_path), yamlfile.line_of(inv.tree, loc)

    if env.embedded:
        raise ConfigError(f"environment '{env_name}' is embedded (a throwaway cluster runbook starts itself): "
                          "there is nothing to schedule", path=str(inv_path))
    window = env.config.window
    if window is None:
        raise ConfigError(f"environment '{env_name}' has no maintenance window: add "
                          f"environments.{env_name}.window (days, start, end, tz) to schedule it",
                          path=str(inv_path), line=yamlfile.line_of(inv.tree, ["environments", env_name]))
    if window.start == window.end or not window.days:
        raise ConfigError(f"the maintenance window of '{env_name}' never opens "
                          f"({','.join(window.days) or 'no days'} {window.start}-{window.end})",
                          path=str(inv_path), line=where([])[1])
    for what, value in (("environment", env_name), ("playbook", playbook_name)):
        if not NAME.match(value):
            raise ConfigError(f"{what} name '{value}' cannot name a systemd unit (letters, digits, '.', '_', '-')")
    pb = playbook_mod.load(playbook_mod.find(playbook_name, inv_path.parent))
    if "rollback" in pb.kinds():
        raise ConfigError(f"playbook '{playbook_name}' is an incident rollback: it is run by a person, "
                          "never on a timer")
    tm = timing(env, where, today)
    name = f"runbook-{env_name}-{playbook_name}"
    user_mode = bool(options.user)
    if user_mode:
        config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        unit_dir, env_file = config / "systemd" / "user", config / "runbook" / f"{env_name}.env"
    else:
        unit_dir, env_file = SYSTEM_UNITS, SYSTEM_SECRETS / f"{env_name}.env"
    if not env_file.is_absolute():
        raise ConfigError(f"XDG_CONFIG_HOME must be an absolute path, not '{env_file}'")
    variables = list(env.secret_vars())
    workdir = path_value(inv_path.parent, "the inventory's folder")
    env_file_value = path_value(env_file, "the environment file")
    path_value(inv_path, "the inventory")
    cmd = [*executable(), "--inventory", str(inv_path), "--yes"]
    exec_start = " ".join(exec_word(w, command=i == 0) for i, w in enumerate([*cmd, "--json", env_name,
                                                                              playbook_name]))
    days = [DAY_NAMES[d] for d in DAYS if d in window.days]
    start = datetime.strptime(window.start, "%H:%M")
    day_part = "" if len(days) == 7 else ",".join(days) + " "
    on_calendar = f"{day_part}*-*-* {start:%H:%M}:00 {window.tz}"
    written = f"{','.join(window.days)} {window.start}-{window.end} {window.tz}"
    origin = f"written by `runbook --inventory {shlex.quote(str(inv_path))} {env_name} schedule {playbook_name}`"
    service = service_text(name, env_name, playbook_name, origin, written, workdir, env_file_value, exec_start,
                           variables, tm, user_mode)
    timer = timer_text(name, env_name, playbook_name, origin, written, on_calendar, window)
    template = env_template(env_name, variables)
    cron = cron_times(window, today)
    crontab = crontab_text(cmd, env_name, playbook_name, inv_path.parent, env_file, tm, cron, window)
    sched = Schedule(name, env_name, playbook_name, user_mode, unit_dir, service, timer, env_file, variables,
                     template, crontab, on_calendar, tm, cron)
    sched.notes.extend(_notes(sched, window, user_mode))
    return sched


def _notes(s: Schedule, window: Any, user_mode: bool) -> list[str]:
    notes = []
    found = s.timing.lengths
    if found.shortest_on is not None:
        notes.append(f"the window is {span(found.nominal)} long, but only {span(found.shortest)} on "
                     f"{found.shortest_on} ({window.tz} changes its clocks): the run's limit counts from that")
    for day in found.skipped[:2]:
        notes.append(f"{window.start} does not exist in {window.tz} on {day} (the clocks skip it): "
                     "systemd does not start that day's run")
    if user_mode:
        notes.append("a user timer runs only while your user manager does: `loginctl enable-linger` "
                     "keeps it running without a login")
    return notes


def render_text(s: Schedule, echo: Callable[[str], None]) -> None:
    echo(f"# ---- {s.unit_dir / (s.name + '.service')} ----")
    echo(s.service)
    echo(f"# ---- {s.unit_dir / (s.name + '.timer')} ----")
    echo(s.timer)
    names = ", ".join(s.variables) or "(none today)"
    echo(f"# ---- {s.env_file} (mode 0600; it must define: {names}) ----")
    echo(s.env_template)
    echo("# ---- crontab line (crontab -e), instead of the timer ----")
    echo(s.crontab)
    for note in s.notes:
        echo(f"# note: {note}")


def as_json(s: Schedule, installed: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "name": s.name, "env": s.env, "playbook": s.playbook, "mode": "user" if s.user_mode else "system",
        "service": {"path": str(s.unit_dir / f"{s.name}.service"), "text": s.service},
        "timer": {"path": str(s.unit_dir / f"{s.name}.timer"), "text": s.timer},
        "environment_file": {"path": str(s.env_file), "mode": "0600", "variables": s.variables,
                             "template": s.env_template},
        "crontab": s.crontab, "on_calendar": s.on_calendar,
        "runtime_s": s.timing.runtime, "reserve_s": s.timing.reserve, "reserve_rule": s.timing.reserve_rule,
        "window_s": s.timing.lengths.nominal, "shortest_window_s": s.timing.lengths.shortest,
        "shortest_on": str(s.timing.lengths.shortest_on) if s.timing.lengths.shortest_on else None,
        "skipped": [str(d) for d in s.timing.lengths.skipped],
        "commands": s.commands, "notes": s.notes, "installed": installed,
    }


def command(inventory_path: Path, env_name: str, args: tuple[str, ...], options: Any,
            echo: Callable[[str], None]) -> int:
    """``runbook ENV schedule PLAYBOOK [--install [--user]]``; every refusal is a ConfigError (exit 2)
    raised before anything is written."""
    from . import inventory
    from .installunits import install

    if len(args) != 1:
        raise ConfigError("schedule needs one PLAYBOOK: runbook ENV schedule PLAYBOOK [--install] [--user]"
                          if not args else f"schedule takes one PLAYBOOK, not {len(args)}: {' '.join(args)}")
    if options.to or options.restore is not None or options.dry_run:
        raise ConfigError("--to, --restore and --dry-run do not apply to schedule "
                          "(it only prints, and writes with --install)")
    inv = inventory.load(inventory_path)
    env = inv.environment(env_name, environ=placeholder_environ(inv, env_name))
    zone = env.config.window.tz if env.config.window else "UTC"
    from zoneinfo import ZoneInfo

    today = datetime.now(ZoneInfo(zone)).date()
    sched = build(inv, env, args[0], options, today)
    installed = install(sched) if options.install else None
    if options.json:
        from .log import machine_line

        echo(machine_line({"event": "schedule", **as_json(sched, installed)}))  # one line
        return 0
    render_text(sched, echo)
    if installed is None:
        target = "--user " if sched.user_mode else ""
        echo(f"# To install: runbook --inventory {shlex.quote(str(inv.path))} {env_name} schedule {args[0]} "
             f"--install {target}".rstrip())
        echo(f"#   (writes {sched.unit_dir}/{sched.name}.{{service,timer}} and, if missing, {sched.env_file}),")
        echo("#   then: " + " && ".join(sched.commands))
        return 0
    for line in installed["messages"]:
        echo(f"runbook: {line}")
    echo("runbook: nothing was enabled; next: " + " && ".join(sched.commands))
    return 0


def placeholder_environ(inv: Any, env_name: str) -> dict[str, str]:
    """Every password variable the environment names, set to "": schedule never reads a secret, and
    works where the passwords are not set (they come from the EnvironmentFile at run time)."""
    cfg = inv.file.environments.get(env_name)
    if cfg is None:
        return {}
    blocks = [cfg.database or {}, *[h.database or {} for h in cfg.hosts]]
    return {str(b["password_env"]): "" for b in blocks if isinstance(b.get("password_env"), str)}
