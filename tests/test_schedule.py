"""``runbook ENV schedule PLAYBOOK``: the units and the crontab line, checked by the real tools.

systemd's own ``systemd-analyze verify`` and ``systemd-analyze calendar`` (they work without a running
systemd) judge the units and when the timer fires; a crontab parser (python-crontab) and cron
evaluator (cronsim, Debian cron's semantics) judge the crontab line, and ``/bin/sh`` runs it. No
database is needed: ``schedule`` never connects, and the one run started here is refused by the
window guard before it would.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from time import sleep
from typing import Any
from zoneinfo import ZoneInfo

import cronsim
import pytest
from crontab import CronTab

from tests.fixtures.project import dump_yaml

SECRET = "sch3dule-Secret-Value-42"
PASSWORD_ENV = "PRODUCTION_PASSWORD"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
BERLIN = {"days": ["sun"], "start": "02:00", "end": "04:00", "tz": "Europe/Berlin"}
NIGHT_NY = {"days": ["fri", "sat"], "start": "23:00", "end": "01:30", "tz": "America/New_York"}


def environment(window: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    env: dict[str, Any] = {
        "protected": True,
        "hosts": [{"name": "db1"}],  # local transport: schedule never connects anyway
        "database": {"host": "127.0.0.1", "port": 5432, "name": "rag", "user": "rag",
                     "password_env": PASSWORD_ENV},
        "locks": {"lock_timeout": "1s", "max_wait": "10s"},
    }
    if window is not None:
        env["window"] = window
    env.update(extra)
    return env


@pytest.fixture
def ops(tmp_path: Path) -> Path:
    """The inventory's folder (a space in its name, as real paths have), and a home of its own."""
    folder = tmp_path / "ops dir"
    folder.mkdir()
    (tmp_path / "home").mkdir()
    return folder


def write_inventory(folder: Path, **envs: dict[str, Any]) -> Path:
    path = folder / "inventory.yaml"
    path.write_text(dump_yaml({"environments": envs}))
    return path


def schedule(folder: Path, *args: str, tz: str = "UTC", xdg: Path | None = None, secret: bool = True,
             runbook: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real command, in a home of its own, the password variable set to a known value."""
    home = folder.parent / "home"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RUNBOOK_", "XDG_", "SUDO_")) and k != PASSWORD_ENV}
    env.update(HOME=str(home), TZ=tz)
    if xdg is not None:
        env["XDG_CONFIG_HOME"] = str(xdg)
    if secret:
        env[PASSWORD_ENV] = SECRET
    argv = [*(runbook or [sys.executable, "-m", "runbook"]), "--inventory", str(folder / "inventory.yaml"), *args]
    result = subprocess.run(argv, cwd=folder.parent, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, timeout=60, check=False)
    assert "Traceback" not in result.stderr, result.stderr
    assert SECRET not in result.stdout + result.stderr
    return result


def schedule_json(folder: Path, env: str = "prod", playbook: str = "migrate", *args: str, **kw: Any) -> dict[str, Any]:
    result = schedule(folder, "--json", env, "schedule", playbook, *args, **kw)
    assert result.returncode == 0, result.stdout + result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def analyze(*args: str, user: bool = False, runtime_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TZ": "UTC", "SYSTEMD_COLORS": "0"}
    if runtime_dir is not None:
        env["XDG_RUNTIME_DIR"] = str(runtime_dir)
    argv = ["systemd-analyze", *(["--user"] if user else []), *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)


def verify(paths: list[Path], tmp_path: Path, user: bool = False) -> None:
    """``systemd-analyze verify`` exits 0 and says nothing: it only warns (exit 0) about an unknown
    key or an unparsable value, so silence is the test."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    result = analyze("verify", *map(str, paths), user=user, runtime_dir=runtime)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), \
        f"systemd-analyze verify:\n{result.stdout}\n{result.stderr}"


def elapses(expr: str, base: datetime | None = None, n: int = 10) -> list[datetime]:
    """When systemd fires ``OnCalendar=expr`` (UTC), from ``base`` (default: now)."""
    args = ["calendar", f"--iterations={n}", expr]
    if base is not None:
        args.insert(1, f"--base-time={base.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S} UTC")
    result = analyze(*args)
    assert result.returncode == 0, result.stderr
    out = []
    for line in result.stdout.splitlines():
        key, _, value = line.strip().partition(": ")
        if key == "Next elapse" or key.startswith("Iter."):
            out.append(datetime.strptime(value.strip(), "%a %Y-%m-%d %H:%M:%S UTC").replace(tzinfo=timezone.utc))
    assert len(out) == n, result.stdout
    return out


def unit_value(text: str, key: str) -> str:
    values = [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}=")]
    assert len(values) == 1, (key, text)
    return values[0]


def seconds(span: str) -> float:
    """A systemd time span as ``schedule`` writes it (``1h 30min``), read back."""
    sizes = {"d": 86400, "h": 3600, "min": 60, "s": 1}
    total = 0.0
    for part in span.split():
        unit = part.lstrip("0123456789")
        total += int(part[: len(part) - len(unit)]) * sizes[unit]
    return total


def window_end(start: datetime, window: dict[str, Any]) -> datetime:
    """The real end of the window that opened at ``start`` (the first instant its end shows)."""
    tz = ZoneInfo(window["tz"])
    local = start.astimezone(tz)
    end = time.fromisoformat(window["end"])
    day = local.date() + (timedelta(days=1) if end <= time.fromisoformat(window["start"]) else timedelta())
    return datetime.combine(day, end).replace(tzinfo=tz, fold=0).astimezone(timezone.utc)


# --------------------------------------------------------------------------- the units


@pytest.mark.parametrize("window", [BERLIN, NIGHT_NY], ids=["berlin", "across-midnight-new-york"])
def test_units_pass_systemd_analyze_verify(ops: Path, tmp_path: Path, window: dict[str, Any]) -> None:
    """The printed system units pass `systemd-analyze verify` without a single warning."""
    write_inventory(ops, prod=environment(window))
    data = schedule_json(ops)
    units = tmp_path / "units"
    units.mkdir()
    paths = []
    for kind in ("service", "timer"):
        assert data[kind]["path"] == f"/etc/systemd/system/runbook-prod-migrate.{kind}"
        path = units / Path(data[kind]["path"]).name
        path.write_text(data[kind]["text"])
        paths.append(path)
    verify(paths, tmp_path)
    service = data["service"]["text"]
    assert unit_value(service, "Type") == "oneshot"
    assert unit_value(service, "WorkingDirectory") == str(ops)
    assert unit_value(service, "EnvironmentFile") == f"/etc/runbook/prod.env"
    assert unit_value(service, "StandardOutput") == "journal"
    assert unit_value(service, "KillMode") == "mixed" and unit_value(service, "KillSignal") == "SIGTERM"
    assert unit_value(data["timer"]["text"], "Persistent") == "false"
    assert data["environment_file"]["variables"] == [PASSWORD_ENV]
    # The stop time: SIGTERM at the run's limit, SIGKILL a reserve later, at the window's end.
    runtime, reserve = seconds(unit_value(service, "TimeoutStartSec")), seconds(unit_value(service, "TimeoutStopSec"))
    assert (runtime, reserve) == (data["runtime_s"], data["reserve_s"])
    assert reserve >= 15 * 60 and runtime > 0


def test_exec_start_is_the_runbook_in_use(ops: Path, tmp_path: Path) -> None:
    """ExecStart names the runbook that was started (its absolute path; `python -m runbook` as
    such), the absolute inventory, --yes --json. `verify` checks that the executable exists, so a
    path with a space, a % and a $ proves it is escaped as systemd reads it."""
    write_inventory(ops, prod=environment(BERLIN))
    data = schedule_json(ops)
    inventory = str(ops / "inventory.yaml")
    assert unit_value(data["service"]["text"], "ExecStart") == (
        f'{sys.executable} -m runbook --inventory "{inventory}" --yes --json prod migrate')
    script = Path(sys.executable).parent / "runbook"
    assert script.is_file(), "the venv's runbook script"
    odd = tmp_path / "bin 100%x $y"
    odd.mkdir()
    (odd / "runbook").symlink_to(script)
    data = schedule_json(ops, runbook=[str(odd / "runbook")])
    assert unit_value(data["service"]["text"], "ExecStart") == (
        f'"{tmp_path}/bin 100%%x $y/runbook" --inventory "{inventory}" --yes --json prod migrate')
    (tmp_path / "units").mkdir()
    paths = [tmp_path / "units" / f"runbook-prod-migrate.{kind}" for kind in ("service", "timer")]
    for path, kind in zip(paths, ("service", "timer")):
        path.write_text(data[kind]["text"])
    verify(paths, tmp_path)
    # the same unit with the path left unescaped is what verify refuses
    paths[0].write_text(data["service"]["text"].replace("100%%x", "100%x"))
    with pytest.raises(AssertionError, match="specifiers"):
        verify(paths, tmp_path)


# --------------------------------------------------------------------------- when the timer fires


@pytest.mark.parametrize("window", [
    BERLIN,
    NIGHT_NY,
    {"days": ["mon", "wed", "sat"], "start": "01:30", "end": "05:00", "tz": "Australia/Lord_Howe"},  # 30 min DST
    {"days": list(DAYS), "start": "22:15", "end": "00:15", "tz": "UTC"},
], ids=["berlin", "across-midnight-new-york", "lord-howe", "daily-utc"])
def test_timer_fires_at_the_window_start_in_its_zone(ops: Path, window: dict[str, Any]) -> None:
    """Every start systemd computes for the coming year falls on a window day at the window's
    start in the window's zone, and SIGKILL (start + TimeoutStartSec + TimeoutStopSec) comes at or
    before that window's end, clock changes included."""
    write_inventory(ops, prod=environment(window))
    data = schedule_json(ops)
    on_calendar = unit_value(data["timer"]["text"], "OnCalendar")
    assert on_calendar == data["on_calendar"]
    assert analyze("calendar", on_calendar).returncode == 0
    tz = ZoneInfo(window["tz"])
    per_year = 53 * len(window["days"])
    starts = elapses(on_calendar, n=per_year)
    assert starts[-1] - starts[0] > timedelta(days=360)
    runtime, reserve = data["runtime_s"], data["reserve_s"]
    for start in starts:
        local = start.astimezone(tz)
        assert DAYS[local.weekday()] in window["days"], start
        assert local.strftime("%H:%M:%S") == f"{window['start']}:00", start
        assert start + timedelta(seconds=runtime + reserve) <= window_end(start, window), start


def test_window_shortened_by_a_clock_change(ops: Path) -> None:
    """A window spanning the spring change (01:00-04:00 Berlin is 2 h that Sunday) gets its run limit
    from that shortest day: systemd's own start and end that day are exactly runtime + reserve apart."""
    window = {**BERLIN, "start": "01:00", "reserve": "30min"}
    write_inventory(ops, prod=environment(window))
    data = schedule_json(ops)
    assert data["window_s"] == 3 * 3600 and data["shortest_window_s"] == 2 * 3600
    assert (data["runtime_s"], data["reserve_s"]) == (90 * 60, 30 * 60)
    day = date.fromisoformat(data["shortest_on"])
    assert day.month == 3 and day.weekday() == 6
    assert any(str(day) in note for note in data["notes"])
    start, = elapses(data["on_calendar"], base=datetime.combine(day, time(0)).replace(tzinfo=timezone.utc)
                     - timedelta(hours=12), n=1)
    end, = elapses(f"{day} 04:00:00 Europe/Berlin", base=start, n=1)
    assert start.astimezone(ZoneInfo("Europe/Berlin")).date() == day
    assert end - start == timedelta(seconds=data["runtime_s"] + data["reserve_s"])


def test_a_start_the_clocks_skip_is_reported_and_systemd_skips_it(ops: Path) -> None:
    """02:30 does not exist in New York on the spring Sunday: schedule names that day, and systemd
    indeed fires next a week later."""
    window = {"days": ["sun"], "start": "02:30", "end": "04:00", "tz": "America/New_York"}
    write_inventory(ops, prod=environment(window))
    data = schedule_json(ops)
    assert data["skipped"], data
    day = date.fromisoformat(data["skipped"][0])
    assert any(data["skipped"][0] in note and "does not exist" in note for note in data["notes"])
    nxt, = elapses(data["on_calendar"], base=datetime.combine(day - timedelta(days=1), time(12))
                   .replace(tzinfo=timezone.utc), n=1)
    assert nxt.astimezone(ZoneInfo("America/New_York")).date() == day + timedelta(days=7)


# --------------------------------------------------------------------------- the crontab line


def cron_job(text: str) -> Any:
    jobs = list(CronTab(tab=text))
    assert len(jobs) == 1, text
    job = jobs[0]
    assert job.is_valid() and job.is_enabled(), text
    return job


@pytest.mark.parametrize("machine_tz,window", [
    ("America/Los_Angeles", BERLIN),
    ("Europe/Berlin", BERLIN),
    ("Asia/Tokyo", NIGHT_NY),
], ids=["berlin-window-la-machine", "same-zone", "night-window-tokyo-machine"])
def test_crontab_line_fires_at_the_window_start(ops: Path, machine_tz: str, window: dict[str, Any]) -> None:
    """cron runs in the machine's zone: the line's schedule, evaluated in that zone, fires at the
    window's start (until the day schedule says the zones' clock changes part), and its command
    stops the run with timeout(1): SIGTERM at the run's limit, SIGKILL a reserve later."""
    write_inventory(ops, prod=environment(window))
    result = schedule(ops, "prod", "schedule", "migrate", tz=machine_tz)
    assert result.returncode == 0, result.stderr
    data = schedule_json(ops, tz=machine_tz)
    assert data["crontab"] in result.stdout
    assert "no stop time" in data["crontab"] and machine_tz in data["crontab"]
    job = cron_job(data["crontab"])
    here, zone = ZoneInfo(machine_tz), ZoneInfo(window["tz"])
    wrong_from = None
    for line in data["crontab"].splitlines():
        if line.startswith("# WARNING: from "):
            wrong_from = date.fromisoformat(line.split()[3])
    assert (wrong_from is None) == (machine_tz == window["tz"]), data["crontab"]
    skipped = {date.fromisoformat(d) for d in data["skipped"]}
    fires = cronsim.CronSim(str(job.slices), datetime.now(here))
    checked = 0
    for fire in fires:
        local = fire.astimezone(zone)
        if wrong_from is not None and local.date() >= wrong_from or checked >= 60:
            break
        if local.date() in skipped:  # cron fires after the clocks' gap: the line's own check refuses it
            assert local.strftime("%H:%M") != window["start"]
            continue
        assert DAYS[local.weekday()] in window["days"], fire
        assert local.strftime("%H:%M") == window["start"], fire
        checked += 1
    assert checked >= 2
    words = shlex.split(job.command)
    at = words.index("timeout")
    assert words[at:at + 5] == ["timeout", "--preserve-status", "--signal=TERM",
                                f"--kill-after={int(data['reserve_s'])}s", f"{int(data['runtime_s'])}s"]
    assert words[at + 5:] == [sys.executable, "-m", "runbook", "--inventory", str(ops / "inventory.yaml"),
                              "--yes", "prod", "migrate"]
    assert words[words.index("cd") + 1] == str(ops)
    assert ". /etc/runbook/prod.env" in job.command and SECRET not in job.command


def check_clause(command: str) -> tuple[str, str]:
    """The line's on-time check and the rest (what cron runs once the check passed)."""
    check, sep, rest = command.partition("exit 4; }; ")
    assert sep and check.startswith("[ "), command
    return check + sep.removesuffix("; "), rest


def test_crontab_line_starts_only_at_the_window_start(ops: Path) -> None:
    """The line's first clause lets the run start only at the window's start in the window's zone
    (cron starts a job the clocks skipped late, and a converted time drifts): it passes at that
    minute, and refuses (exit 4, nothing started) at any other."""
    while datetime.now().second > 50:  # one minute for the whole test
        sleep(1)
    now = datetime.now(ZoneInfo("Asia/Kolkata"))
    window = {"days": list(DAYS), "start": f"{now:%H:%M}", "end": f"{now + timedelta(hours=2):%H:%M}",
              "tz": "Asia/Kolkata"}
    write_inventory(ops, prod=environment(window))
    check, _ = check_clause(cron_job(schedule_json(ops, tz="America/Chicago")["crontab"]).command)
    passed = subprocess.run(["/bin/sh", "-c", f"{check}; echo on time"], env={"PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=30)
    assert (passed.returncode, passed.stdout) == (0, "on time\n"), passed.stderr

    window["start"] = f"{now + timedelta(minutes=30):%H:%M}"
    write_inventory(ops, prod=environment(window))
    check, _ = check_clause(cron_job(schedule_json(ops, tz="America/Chicago")["crontab"]).command)
    late = subprocess.run(["/bin/sh", "-c", f"{check}; echo on time"], env={"PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=30)
    assert late.returncode == 4 and late.stdout == "", late.stdout
    assert late.stderr == f"runbook: not started: it is not {window['start']} in Asia/Kolkata (a clock change)\n"


def test_crontab_line_runs_with_the_secrets_from_the_environment_file(ops: Path, tmp_path: Path) -> None:
    """/bin/sh runs the line as cron would (a bare environment, no password variable): it reads the
    password from the EnvironmentFile and gets as far as the window guard (exit 4, nothing touched;
    without the file's variable it would be exit 2, 'not set')."""
    today = datetime.now(timezone.utc).date()
    closed_day = DAYS[(today.weekday() + 3) % 7]  # neither today nor yesterday: now is outside it
    window = {"days": [closed_day], "start": "02:00", "end": "04:00", "tz": "UTC"}
    write_inventory(ops, prod=environment(window))
    xdg = tmp_path / "xdg"
    installed = schedule(ops, "prod", "schedule", "migrate", "--install", "--user", xdg=xdg)
    assert installed.returncode == 0, installed.stderr
    env_file = xdg / "runbook" / "prod.env"
    crontab = json.loads(schedule(ops, "--json", "prod", "schedule", "migrate", "--user", xdg=xdg).stdout)["crontab"]
    command = cron_job(crontab).command
    cron_env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"), "SHELL": "/bin/sh", "TZ": "UTC"}

    now = subprocess.run(["/bin/sh", "-c", command], env=cron_env, capture_output=True, text=True, timeout=120)
    assert now.returncode == 4 and "runbook: not started: it is not 02:00 in UTC" in now.stderr, now.stderr
    _, run = check_clause(command)  # what cron runs at the window's start

    template = env_file.read_text()
    env_file.write_text("\n".join(line for line in template.splitlines() if not line.startswith(PASSWORD_ENV)))
    unset = subprocess.run(["/bin/sh", "-c", run], env=cron_env, capture_output=True, text=True, timeout=120)
    assert unset.returncode == 2 and f"environment variable {PASSWORD_ENV} is not set" in unset.stderr, \
        unset.stdout + unset.stderr

    env_file.write_text(template.replace(f"{PASSWORD_ENV}=", f"{PASSWORD_ENV}='{SECRET}'"))
    ran = subprocess.run(["/bin/sh", "-c", run], env=cron_env, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 4, ran.stdout + ran.stderr
    assert "outside the maintenance window of 'prod'" in ran.stderr
    assert SECRET not in ran.stdout + ran.stderr
    # refused before anything: the journal says so (a refusal is a run of its own, for history and
    # metrics), and no backup was taken
    records = [json.loads(p.read_text()) for p in (ops / ".runbook" / "runs").glob("*.json")]
    assert [r["status"] for r in records] == ["refused"], records
    assert not (ops / ".runbook" / "backups").exists() or not any((ops / ".runbook" / "backups").iterdir())


# --------------------------------------------------------------------------- --install --user


def written_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink())


@pytest.mark.parametrize("xdg", [False, True], ids=["home-config", "xdg-config-home"])
def test_install_user_writes_units_and_a_0600_template_never_overwritten(ops: Path, tmp_path: Path,
                                                                         xdg: bool) -> None:
    """--install --user writes the units under ~/.config/systemd/user (or $XDG_CONFIG_HOME), the
    EnvironmentFile as a 0600 template with the names and empty values, enables nothing, and a second
    install keeps the file a person filled in. No secret is written anywhere."""
    write_inventory(ops, prod=environment(BERLIN))
    config = tmp_path / "xdg" if xdg else tmp_path / "home" / ".config"
    result = schedule(ops, "prod", "schedule", "migrate", "--install", "--user", xdg=config if xdg else None)
    assert result.returncode == 0, result.stderr
    units = config / "systemd" / "user"
    service, timer = units / "runbook-prod-migrate.service", units / "runbook-prod-migrate.timer"
    env_file = config / "runbook" / "prod.env"
    assert written_files(tmp_path / ("xdg" if xdg else "home")) == sorted([service, timer, env_file])
    assert not any(p.is_symlink() for p in (tmp_path).rglob("*")), "nothing enabled (no .wants link)"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(env_file.parent.stat().st_mode) == 0o700
    assert [line for line in env_file.read_text().splitlines() if not line.startswith("#")] == [f"{PASSWORD_ENV}="]
    for path in (service, timer, env_file):
        assert SECRET not in path.read_text()
    assert "User=" not in service.read_text()
    assert unit_value(service.read_text(), "EnvironmentFile") == str(env_file)
    verify([service, timer], tmp_path, user=True)
    out = result.stdout
    assert f"runbook: wrote {service}" in out and f"runbook: created {env_file} (mode 0600)" in out
    assert ("runbook: nothing was enabled; next: systemctl --user daemon-reload && "
            "systemctl --user enable --now runbook-prod-migrate.timer") in out
    assert "enable-linger" in out

    filled = env_file.read_text().replace(f"{PASSWORD_ENV}=", f"{PASSWORD_ENV}='{SECRET}'")
    env_file.write_text(filled)
    service.write_text(service.read_text() + "# edited by hand\n")
    again = schedule(ops, "prod", "schedule", "migrate", "--install", "--user", xdg=config if xdg else None)
    assert again.returncode == 0, again.stderr
    assert env_file.read_text() == filled and stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert f"runbook: kept {env_file}" in again.stdout and "does not set" not in again.stdout
    assert "# edited by hand" not in service.read_text(), "schedule's own unit is rewritten"
    assert SECRET not in service.read_text() + timer.read_text()


def test_install_never_overwrites_a_unit_it_did_not_write(ops: Path, tmp_path: Path) -> None:
    """A hand-written unit of the same name is refused in one line (exit 2), and nothing is written."""
    write_inventory(ops, prod=environment(BERLIN))
    units = tmp_path / "xdg" / "systemd" / "user"
    units.mkdir(parents=True)
    (units / "runbook-prod-migrate.timer").write_text("[Timer]\nOnCalendar=daily\n")
    result = schedule(ops, "prod", "schedule", "migrate", "--install", "--user", xdg=tmp_path / "xdg")
    line = one_error_line(result)
    assert "runbook-prod-migrate.timer exists and was not written by `runbook prod schedule migrate`" in line
    assert written_files(tmp_path / "xdg") == [units / "runbook-prod-migrate.timer"]


def test_schedule_needs_no_password(ops: Path) -> None:
    """The password variable need not be set to print or install: it is the EnvironmentFile's job."""
    write_inventory(ops, prod=environment(BERLIN))
    result = schedule(ops, "prod", "schedule", "migrate", secret=False)
    assert result.returncode == 0, result.stderr
    assert f"# ---- /etc/runbook/prod.env (mode 0600; it must define: {PASSWORD_ENV}) ----" in result.stdout
    assert "systemctl daemon-reload && systemctl enable --now runbook-prod-migrate.timer" in result.stdout


# --------------------------------------------------------------------------- refusals


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines and lines[0].startswith("runbook: error: "), result.stderr
    assert all(line.startswith("runbook: next: ") for line in lines[1:]) and len(lines) <= 2, result.stderr
    return lines[0].removeprefix("runbook: error: ")


@pytest.mark.parametrize("envs,args,expected", [
    ({"prod": environment(None)}, ["prod", "schedule", "migrate"],
     "environment 'prod' has no maintenance window"),
    ({"prod": environment(BERLIN)}, ["prod", "schedule", "nightly"], "unknown playbook 'nightly'"),
    ({"prod": environment(BERLIN)}, ["prod", "schedule", "rollback"], "is an incident rollback"),
    ({"prod": environment(BERLIN)}, ["prod", "schedule"], "schedule needs one PLAYBOOK"),
    ({"prod": environment(BERLIN)}, ["prod", "schedule", "migrate", "--to", "0002"],
     "--to does not apply to schedule"),
    ({"local": {"embedded": True, "window": BERLIN}}, ["local", "schedule", "migrate"], "is embedded"),
    ({"prod": environment({**BERLIN, "reserve": "2h"})}, ["prod", "schedule", "migrate"],
     "the rollback reserve (2h, window.reserve) is not shorter than the maintenance window"),
    ({"prod": environment({**BERLIN, "start": "03:50"})}, ["prod", "schedule", "migrate"],
     "the rollback reserve (15min, default"),
    ({"prod": environment({**BERLIN, "reserve": "5min"}, locks={"max_wait": "10min"})},
     ["prod", "schedule", "migrate"], "window.reserve (5min) is shorter than locks.max_wait (10min)"),
    ({"prod": environment({**BERLIN, "reserve": "soon"})}, ["prod", "schedule", "migrate"], "window.reserve"),
    ({"prod eu": environment(BERLIN)}, ["prod eu", "schedule", "migrate"], "cannot name a systemd unit"),
    ({"nowhere": environment(BERLIN)}, ["prod", "schedule", "migrate"], "unknown environment 'prod'"),
], ids=["no-window", "unknown-playbook", "rollback", "no-playbook", "to-flag", "embedded", "reserve-2h",
        "default-reserve-too-long", "reserve-below-max-wait", "reserve-not-a-duration", "bad-name",
        "unknown-env"])
def test_refusals_exit_2_with_one_line_and_write_nothing(ops: Path, tmp_path: Path, envs: dict[str, Any],
                                                         args: list[str], expected: str) -> None:
    write_inventory(ops, **envs)
    xdg = tmp_path / "xdg"
    result = schedule(ops, *args, "--install", "--user", xdg=xdg)
    line = one_error_line(result)
    assert expected in line, line
    assert not xdg.exists(), "nothing written"
    assert not (ops / ".runbook").exists()
    if "window.reserve" in expected or "reserve" in expected:
        assert line.startswith(f"{ops / 'inventory.yaml'}:"), "names the inventory and line"


def test_install_and_user_belong_to_schedule(ops: Path) -> None:
    """--install on a run is a usage error (exit 2) before anything is loaded."""
    write_inventory(ops, prod=environment(BERLIN))
    result = schedule(ops, "prod", "migrate", "--install")
    assert result.returncode == 2 and "--install does not apply to migrate (it is an option of schedule)" in result.stderr
    result = schedule(ops, "prod", "migrate", "extra")
    assert result.returncode == 2 and "unexpected extra argument 'extra'" in result.stderr


def test_install_refuses_a_folder_it_cannot_write(ops: Path, tmp_path: Path) -> None:
    """A units folder that cannot be made is one line, exit 2, and the secrets file is not created
    either (everything is checked before the first write)."""
    write_inventory(ops, prod=environment(BERLIN))
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    result = schedule(ops, "prod", "schedule", "migrate", "--install", "--user", xdg=blocker / "config")
    assert one_error_line(result) == f"cannot write to {blocker / 'config' / 'systemd' / 'user'}"
    assert blocker.read_text() == "" and sorted(tmp_path.rglob("*.env")) == []
