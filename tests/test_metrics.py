"""The Prometheus textfile, written after every run and read back with prometheus_client's own parser.

Runs are the real ``runbook`` command against the test PostgreSQL through the test sshd; the file
is parsed with ``prometheus_client.parser.text_string_to_metric_families`` (the format node_exporter
reads), and its values compared with the journal and the backups on the "host".
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from runbook import journal, runner
from tests.fixtures.project import Project
from tests.test_fleet import second_db  # noqa: F401 - a fixture

BROKEN_0003 = 'op.execute("ALTER TABLE collections ADD COLUMN x no_such_type")'
RUN = {"env": "prod", "host": "db1"}


def _samples(path: Path) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def _get(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def _status(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], playbook: str) -> str:
    """The one status whose sample is 1 (every other one is 0)."""
    states = {dict(labels)["status"]: value for (name, labels), value in samples.items()
              if name == "runbook_last_run_status" and dict(labels).get("playbook") == playbook}
    assert sorted(states.values()).count(1.0) == 1, states
    return next(s for s, v in states.items() if v == 1.0)


def _ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def _record(project: Project) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(project.run_logs()[-1].with_suffix(".json").read_text())
    return data


def _backup_step_end(record: dict[str, Any]) -> float:
    step, = [s for s in record["steps"] if s["step"] == "backup" and s["outcome"] == "ok"]
    return _ts(step["finished"])


def test_metrics_after_a_success_then_a_failure(project: Project, tmp_path: Path) -> None:
    """Exit code, status, revision, last success and newest backup, per the journal; replaced atomically each time."""
    folder = tmp_path / "textfile_collector"
    folder.mkdir()
    prom = folder / "runbook.prom"
    project.own_migrations()
    project.upgrade_to("0001")
    project.write_inventory(metrics={"textfile": str(prom)})

    ok = project.run("prod", "migrate")

    assert ok.returncode == 0, ok.stderr
    first = _record(project)
    samples = _samples(prom)
    labels = {**RUN, "playbook": "migrate"}
    assert _get(samples, "runbook_last_run_exit_code", **labels) == 0
    assert _status(samples, "migrate") == "succeeded"
    assert _get(samples, "runbook_last_run_timestamp_seconds", **labels) == _ts(first["started"])
    assert _get(samples, "runbook_last_run_duration_seconds", **labels) == \
        round(_ts(first["finished"]) - _ts(first["started"]), 3)
    assert _get(samples, "runbook_last_success_timestamp_seconds", **labels) == _ts(first["finished"])
    assert _get(samples, "runbook_revision_info", **RUN, revision="0002") == 1
    backup, = project.backups()
    assert _get(samples, "runbook_backup_newest_timestamp_seconds", **RUN) == _backup_step_end(first)
    assert _get(samples, "runbook_backup_newest_size_bytes", **RUN) == backup.stat().st_size
    assert [p.name for p in folder.iterdir()] == ["runbook.prom"], "no temp file left behind"
    inode = prom.stat().st_ino
    events = project.events()
    assert any(e["event"] == "metrics_written" and e["file"] == str(prom) for e in events)

    project.add_revision("0003", "0002", BROKEN_0003)
    failed = project.run("prod", "migrate")

    assert failed.returncode == 1, failed.stderr
    second = _record(project)
    samples = _samples(prom)
    assert _get(samples, "runbook_last_run_exit_code", **labels) == 1
    assert _status(samples, "migrate") == "rolled_back"
    assert _get(samples, "runbook_last_run_timestamp_seconds", **labels) == _ts(second["started"])
    # the last success is still the first run; the database is still at 0002 (rolled back)
    assert _get(samples, "runbook_last_success_timestamp_seconds", **labels) == _ts(first["finished"])
    assert _get(samples, "runbook_revision_info", **RUN, revision="0002") == 1
    assert not [k for k in samples if k[0] == "runbook_revision_info" and ("revision", "0003") in k[1]]
    # the failed run's own backup was verified before it failed: it is the newest
    assert _get(samples, "runbook_backup_newest_timestamp_seconds", **RUN) == _backup_step_end(second)
    assert _backup_step_end(second) > _backup_step_end(first)
    assert [p.name for p in folder.iterdir()] == ["runbook.prom"]
    assert prom.stat().st_ino != inode, "replaced by a rename, never rewritten in place"


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _killed_migrate(project: Project) -> str:
    """The journal a migrate killed with SIGKILL during its upgrade leaves (it wrote no metrics)."""
    now = datetime.now(timezone.utc)
    run_id = now.strftime("%Y%m%dT%H%M%SZ") + "-dead01"
    path = project.dir / ".runbook" / "runs" / f"{run_id}.json"
    path.write_text(json.dumps({
        "run_id": run_id, "env": "prod", "playbook": "migrate", "status": "running", "exit_code": None,
        "started": now.isoformat(timespec="milliseconds"), "finished": None, "pid": _dead_pid(),
        "control_host": socket.gethostname(), "machine_id": runner.machine_id(), "boot_id": runner.boot_id(),
        "pid_start": 12345, "current_step": "db1:upgrade",
        "steps": [{"host": "db1", "step": "upgrade", "phase": "run", "outcome": "running"}],
        "hosts": {"db1": {"start_revision": "0001", "database": project.db.name}}}))
    return run_id


def test_a_killed_run_and_a_refusal_show_in_the_next_file(project: Project, tmp_path: Path) -> None:
    """SIGKILL writes nothing: the next run (another playbook) shows that migrate as incomplete (-1); a refusal shows as exit 4."""
    prom = tmp_path / "runbook.prom"
    project.upgrade_to("0001")
    project.write_inventory(metrics={"textfile": str(prom)})
    assert project.run("prod", "migrate").returncode == 0
    success = _samples(prom)
    labels = {**RUN, "playbook": "migrate"}
    last_success = _get(success, "runbook_last_success_timestamp_seconds", **labels)
    assert last_success is not None
    killed = _killed_migrate(project)
    assert journal.RunRecord(json.loads((project.dir / ".runbook" / "runs" / f"{killed}.json").read_text())).incomplete

    backup = project.run("prod", "backup")

    assert backup.returncode == 0, backup.stderr
    samples = _samples(prom)
    assert _get(samples, "runbook_last_run_exit_code", **labels) == -1
    assert _status(samples, "migrate") == "incomplete"
    assert _get(samples, "runbook_last_run_duration_seconds", **labels) is None
    assert _get(samples, "runbook_last_success_timestamp_seconds", **labels) == last_success
    assert _get(samples, "runbook_last_run_exit_code", **RUN, playbook="backup") == 0
    assert _status(samples, "backup") == "succeeded"
    assert _get(samples, "runbook_backup_newest_timestamp_seconds", **RUN) == _backup_step_end(_record(project))

    days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    days.remove(days[datetime.now(timezone.utc).weekday()])
    project.write_inventory(metrics={"textfile": str(prom)},
                            window={"days": days, "start": "00:00", "end": "23:59", "tz": "UTC"})
    refused = project.run("prod", "migrate")

    assert refused.returncode == 4, refused.stderr
    samples = _samples(prom)
    assert _get(samples, "runbook_last_run_exit_code", **labels) == 4
    assert _status(samples, "migrate") == "refused"
    assert _get(samples, "runbook_last_success_timestamp_seconds", **labels) == last_success
    assert _get(samples, "runbook_revision_info", **RUN, revision="0002") == 1
    assert _get(samples, "runbook_last_run_exit_code", **RUN, playbook="backup") == 0


def test_a_metrics_file_that_cannot_be_written_changes_nothing(project: Project, tmp_path: Path) -> None:
    """A folder that does not exist: logged (metrics_write_failed), the run succeeds with exit 0."""
    prom = tmp_path / "missing" / "runbook.prom"
    project.upgrade_to("0001")
    project.write_inventory(metrics={"textfile": str(prom)})

    result = project.run("prod", "migrate")

    assert result.returncode == 0, result.stderr
    assert project.db.alembic_version() == {"0002"}
    failed, = [e for e in project.events() if e["event"] == "metrics_write_failed"]
    assert failed["file"] == str(prom) and "No such file or directory" in failed["error"]
    assert not prom.parent.exists()


def test_bad_metrics_blocks_are_one_located_line(project: Project, tmp_path: Path) -> None:
    """Not a .prom file, or one file for two environments: exit 2, one line naming file:line and key."""
    project.write_inventory(metrics={"textfile": str(tmp_path / "runbook.txt")})
    result = project.run("prod", "migrate")
    assert result.returncode == 2
    assert f"{project.inventory}:" in result.stderr and "metrics.textfile" in result.stderr
    assert "must end in .prom" in result.stderr

    from tests.fixtures.project import dump_yaml

    shared = str(tmp_path / "runbook.prom")
    env = project.environment(metrics={"textfile": shared})
    project.inventory.write_text(dump_yaml({"environments": {"prod": env, "staging": env}}))
    result = project.run("prod", "migrate")
    assert result.returncode == 2
    assert "environments.prod.metrics.textfile" in result.stderr and "also the file of environment 'staging'" \
        in result.stderr
    assert "Traceback" not in result.stderr and project.backups() == []


def test_hosts_removed_from_the_inventory_leave_the_file(project: Project, tmp_path: Path) -> None:
    """Only the environment's current hosts are written: a decommissioned host does not alert forever."""
    prom = tmp_path / "runbook.prom"
    project.upgrade_to("0001")
    project.write_inventory(metrics={"textfile": str(prom)})
    assert project.run("prod", "migrate").returncode == 0
    host = project.environment()["hosts"][0]
    project.write_inventory(metrics={"textfile": str(prom)}, hosts=[{**host, "name": "db2"}])

    assert project.run("prod", "backup").returncode == 0

    hosts = {dict(labels).get("host") for (_, labels) in _samples(prom)}
    assert hosts == {"db2"}
    assert os.stat(prom).st_size > 0


def test_a_fleet_reports_each_host_as_it_ended(project: Project, tmp_path: Path, second_db: Any) -> None:
    """tenant-a migrates, tenant-b fails and rolls back: each host's own status, exit code and revision."""
    from tests.fixtures.project import dump_yaml
    from tests.test_fleet import _at_0001

    prom = tmp_path / "runbook.prom"
    _at_0001(project, project.db)
    _at_0001(project, second_db)
    project.own_migrations()
    project.add_revision("0003", "0002", "op.execute('CREATE UNIQUE INDEX uq_documents_title ON documents (title)')",
                         "op.execute('DROP INDEX uq_documents_title')")
    second_db.psql("INSERT INTO documents (collection_id, title, content) "
                   "SELECT collection_id, title, content FROM documents LIMIT 1")  # b cannot take 0003
    env = project.environment(metrics={"textfile": str(prom)})
    ssh = project.ssh.inventory_ssh() if project.ssh else None
    env["hosts"] = [{"name": "tenant-a", "ssh": ssh}, {"name": "tenant-b", "ssh": ssh, "database": {"name": second_db.name}}]
    project.inventory.write_text(dump_yaml({"environments": {"tenants": env}}))

    result = project.run("tenants", "migrate")

    assert result.returncode == 1, result.stderr
    samples = _samples(prom)
    a = {"env": "tenants", "host": "tenant-a"}
    b = {"env": "tenants", "host": "tenant-b"}
    assert _get(samples, "runbook_last_run_exit_code", **a, playbook="migrate") == 0
    assert _get(samples, "runbook_last_run_exit_code", **b, playbook="migrate") == 1
    assert _get(samples, "runbook_last_success_timestamp_seconds", **a, playbook="migrate") is not None
    assert _get(samples, "runbook_last_success_timestamp_seconds", **b, playbook="migrate") is None
    assert _get(samples, "runbook_revision_info", **a, revision="0003") == 1
    assert _get(samples, "runbook_revision_info", **b, revision="0001") == 1
