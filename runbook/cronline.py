"""The crontab line of ``schedule``: what cron can do of what the systemd timer does.

cron has no stop time, no time zone of its own (Debian's has no ``CRON_TZ``: it runs in the
machine's), and starts a job whose minute the clocks skipped at the end of the gap. So the line
converts the window's start to this machine's time, stops the run with coreutils ``timeout``
(SIGTERM at the run's limit, SIGKILL a reserve later, the exit code kept), starts runbook only if it
is the window's start in the window's zone, and sources the same EnvironmentFile as the service.
"""

from __future__ import annotations

import shlex
from datetime import datetime
from pathlib import Path
from typing import Any

from .units import span
from .windowtimes import CronTimes


def crontab_text(cmd: list[str], env_name: str, playbook_name: str, workdir: Path, env_file: Path, tm: Any,
             cron: CronTimes, window: Any) -> str:
    """The crontab line, and the comments that say what cron cannot do."""
    from .windowtimes import machine_zone

    written = f"{','.join(window.days)} {window.start}-{window.end} {window.tz}"
    start = datetime.strptime(window.start, "%H:%M").strftime("%H:%M")
    run = " ".join(shlex.quote(w) for w in [
        "timeout", "--preserve-status", "--signal=TERM", f"--kill-after={int(tm.reserve)}s", f"{int(tm.runtime)}s",
        *cmd, env_name, playbook_name])
    # cron starts a job whose time the clocks skipped at the end of the gap, and a converted time
    # drifts by an hour when the two zones change their clocks on different days: a start late in
    # the window would run past its end with this stop time, so the line starts only on time.
    on_time = (f"[ \"$(TZ={shlex.quote(window.tz)} date +%H:%M)\" = {start} ] || "
               f"{{ echo {shlex.quote(f'runbook: not started: it is not {start} in {window.tz} (a clock change)')} "
               ">&2; exit 4; }")
    command = (f"{on_time}; cd {shlex.quote(str(workdir))} && set -a && . {shlex.quote(str(env_file))} && "
               f"set +a && exec {run}").replace("%", "\\%")  # cron turns a bare % into a newline
    zone = machine_zone()
    first = cron.local_first
    lines = [
        f"# runbook {env_name} {playbook_name}: window {written}. cron runs in this machine's time zone",
        f"# ({zone}), so the start is converted: the next one is {first:%a %Y-%m-%d %H:%M} here.",
        f"# The line starts runbook only if it is {start} in {window.tz} (else exit 4, nothing run).",
    ]
    if cron.wrong_from is not None:
        lines += [f"# WARNING: from {cron.wrong_from} the window opens at another time here ({zone} and "
                  f"{window.tz} change",
                  "# their clocks on different days) and this line starts nothing: run `schedule` again",
                  "# then, or use the systemd timer, which follows the window's zone."]
    lines += [
        "# cron has no stop time of its own: timeout(1) sends SIGTERM after "
        f"{span(tm.runtime)} (runbook rolls back), SIGKILL {span(tm.reserve)} later.",
        f"# The secrets come from {env_file} (sourced; this line holds none). Output: cron's mail",
        "# (MAILTO) and the run log under .runbook/runs/ next to the inventory.",
    ]
    for minute, hour, dows in cron.fields:
        lines.append(f"{minute} {hour} * * {','.join(str(d) for d in dows)} {command}")
    return "\n".join(lines) + "\n"


