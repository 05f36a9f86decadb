"""``inventory.yaml`` -> typed environments: defaults, merging, secrets, durations, paths, errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from runbook import inventory, shipped
from runbook.errors import ConfigError
from runbook.units import parse_duration, pg_ms

MINIMAL = """\
environments:
  prod:
    hosts:
      - name: db1
        ssh: {host: db.example, known_hosts: keys/known_hosts, key: keys/id_ed25519}
    database: {name: rag_memory, user: raguser}
"""

TENANTS = """\
environments:
  tenants:
    hosts:
      - name: tenant-a
        ssh: {host: db-a.internal, known_hosts: kh, key: id}
      - name: tenant-b
        ssh: {host: db-b.internal, known_hosts: kh, key: id}
        database: {port: 5433, name: tenant_b}
    database: {host: localhost, port: 5432, name: rag_memory, user: raguser, password_env: TENANTS_PASSWORD}
"""


def write(tmp_path: Path, text: str, name: str = "inventory.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path: Path, env: str = "prod", environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        inventory.load(path).environment(env, environ={} if environ is None else environ)
    assert caught.value.exit_code == 2
    assert "\n" not in str(caught.value)
    return caught.value


def test_defaults(tmp_path: Path) -> None:
    """Keys left out get the documented defaults (port 5432, localhost, locks 5s/120s/wait, ssh 22)."""
    env = inventory.load(write(tmp_path, MINIMAL)).environment("prod", environ={})
    assert env.name == "prod" and not env.protected and not env.embedded
    (host,) = env.hosts
    assert host.name == "db1"
    assert host.database == inventory.Database("localhost", 5432, "rag_memory", "raguser", None, None)
    assert host.ssh is not None and host.ssh.port == 22 and host.ssh.user is None
    locks = env.config.locks
    assert (locks.lock_timeout, locks.max_wait, locks.blockers) == (5.0, 120.0, "wait")
    assert env.config.backup.keep == 10
    assert env.config.window is None
    assert env.secrets() == []


def test_host_database_is_merged_over_the_environment_database(tmp_path: Path) -> None:
    """Each host's database block overrides only the keys it names."""
    env = inventory.load(write(tmp_path, TENANTS)).environment(
        "tenants", environ={"TENANTS_PASSWORD": "pw"})
    a, b = env.hosts
    assert a.database == inventory.Database("localhost", 5432, "rag_memory", "raguser", "pw",
                                            "TENANTS_PASSWORD")
    assert b.database == inventory.Database("localhost", 5433, "tenant_b", "raguser", "pw",
                                            "TENANTS_PASSWORD")


def test_password_env_is_read_from_the_environment(tmp_path: Path) -> None:
    """password_env names a variable; its value becomes the password and a secret of the environment."""
    env = inventory.load(write(tmp_path, TENANTS)).environment(
        "tenants", environ={"TENANTS_PASSWORD": "S3cr%t p@ss"})
    assert {h.database.password for h in env.hosts if h.database} == {"S3cr%t p@ss"}
    assert env.secrets() == ["S3cr%t p@ss", "S3cr%t p@ss"]


def test_password_env_unset_names_the_variable_and_the_line(tmp_path: Path) -> None:
    """An unset password variable is one located error naming the variable and the key."""
    err = error_of(write(tmp_path, TENANTS), "tenants")
    assert "TENANTS_PASSWORD is not set" in str(err)
    assert "password_env" in str(err)
    assert err.line == 9 and str(err).startswith(f"{tmp_path / 'inventory.yaml'}:9: ")


def test_password_env_must_be_a_variable_name(tmp_path: Path) -> None:
    """A literal password in password_env is refused, and not echoed."""
    path = write(tmp_path, MINIMAL.replace("user: raguser}", "user: raguser, password_env: 'hunter 2!'}"))
    err = error_of(path)
    assert "password_env" in str(err) and "hunter 2!" not in str(err)


def test_literal_password_key_is_refused_without_echoing_it(tmp_path: Path) -> None:
    """A 'password:' key is an unknown key; the error names the key, never the value."""
    path = write(tmp_path, MINIMAL.replace("user: raguser}", "user: raguser, password: hunter2}"))
    err = error_of(path)
    assert "unknown key 'password'" in str(err) and "hunter2" not in str(err)
    assert err.line == 6


@pytest.mark.parametrize(("text", "seconds"), [("5s", 5.0), ("500ms", 0.5), ("2m", 120.0), ("1h", 3600.0),
                                               ("1.5s", 1.5), ("3min", 180.0), (7, 7.0), ("10", 10.0)])
def test_durations(text: object, seconds: float) -> None:
    """Durations are written as 5s, 500ms, 2m, 1h or a number of seconds."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["fast", "5 years", "-1s", -3, True, ""])
def test_bad_durations_are_refused(bad: object) -> None:
    """Anything else is a ValueError naming the accepted forms."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_pg_ms_rounds_to_whole_milliseconds() -> None:
    """A duration becomes a PostgreSQL setting in milliseconds, never 0 (which means 'no timeout')."""
    assert (pg_ms(5.0), pg_ms(0.5), pg_ms(0.0001)) == ("5000ms", "500ms", "1ms")


def test_durations_in_the_inventory(tmp_path: Path) -> None:
    """locks and backup durations in the inventory are parsed to seconds."""
    path = write(tmp_path, MINIMAL + "    locks: {lock_timeout: 500ms, max_wait: 2m, long_transaction: 5s}\n"
                                     "    backup: {timeout: 1h}\n")
    env = inventory.load(path).environment("prod", environ={})
    assert (env.config.locks.lock_timeout, env.config.locks.max_wait) == (0.5, 120.0)
    assert env.config.locks.long_transaction == 5.0 and env.config.backup.timeout == 3600.0


def test_bad_duration_in_the_inventory_names_key_and_line(tmp_path: Path) -> None:
    """A malformed duration names the dotted key, the line and the accepted forms."""
    path = write(tmp_path, MINIMAL + "    locks:\n      lock_timeout: fast\n")
    err = error_of(path)
    assert err.line == 8
    assert "environments.prod.locks.lock_timeout" in str(err) and "5s, 500ms or 2m" in str(err)


def test_relative_paths_are_resolved_against_the_inventory_dir(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """ssh key, known_hosts, alembic.config and the state dir are relative to the inventory, not the cwd."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "app").mkdir()
    (project / "app" / "alembic.ini").write_text("[alembic]\n")
    path = write(project, MINIMAL + "    alembic: {config: app/alembic.ini}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    env = inventory.load(Path("../project/inventory.yaml")).environment("prod", environ={})
    assert env.inventory_path == path.resolve()
    assert env.alembic_ini == project.resolve() / "app" / "alembic.ini"
    assert env.state_dir == project.resolve() / ".runbook"
    ssh = env.hosts[0].ssh
    assert ssh is not None
    assert ssh.known_hosts == str(project.resolve() / "keys" / "known_hosts")
    assert ssh.key == str(project.resolve() / "keys" / "id_ed25519")


def test_home_and_absolute_paths_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """~ expands to the home directory and absolute paths stay as written."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = write(tmp_path, MINIMAL.replace("known_hosts: keys/known_hosts", "known_hosts: ~/.ssh/known_hosts")
                 .replace("key: keys/id_ed25519", "key: /etc/runbook/id"))
    ssh = inventory.load(path).environment("prod", environ={}).hosts[0].ssh
    assert ssh is not None
    assert ssh.known_hosts == str(tmp_path / "home" / ".ssh" / "known_hosts")
    assert ssh.key == "/etc/runbook/id"


def test_default_alembic_config_is_the_example_application(tmp_path: Path) -> None:
    """Without alembic.config and no alembic.ini beside the inventory, the example application is used."""
    env = inventory.load(write(tmp_path, MINIMAL)).environment("prod", environ={})
    assert env.alembic_ini == shipped.example_alembic_ini()
    assert env.alembic_ini.is_file() and env.alembic_ini.parent.parent.name == "runbook"  # inside the package


def test_missing_alembic_config_names_key_and_line(tmp_path: Path) -> None:
    """An alembic.config that does not exist is refused with its resolved path and line."""
    err = error_of(write(tmp_path, MINIMAL + "    alembic: {config: nowhere/alembic.ini}\n"))
    assert str(tmp_path / "nowhere" / "alembic.ini") in str(err) and err.line == 7


def test_unknown_key_names_key_and_line(tmp_path: Path) -> None:
    """A typo in a key ('databse') names the key, where it is and its line."""
    path = write(tmp_path, MINIMAL.replace("    database:", "    databse:"))
    with pytest.raises(ConfigError) as caught:
        inventory.load(path)
    assert str(caught.value) == f"{path}:6: unknown key 'databse' in environments.prod; did you mean 'database'?"


def test_missing_database_key_names_key_and_line(tmp_path: Path) -> None:
    """A database block without 'name' names the missing key and the block's line."""
    err = error_of(write(tmp_path, MINIMAL.replace("name: rag_memory, ", "")))
    assert "missing key 'name' in environments.prod.database" in str(err) and err.line == 6


def test_unknown_key_in_the_environment_database_is_located_there(tmp_path: Path) -> None:
    """With both blocks present, a typo in the environment's database block points at that block."""
    text = (TENANTS.replace("password_env: TENANTS_PASSWORD}", "password_env: TENANTS_PASSWORD, prot: 1}")
            .replace("{host: db-a.internal, known_hosts: kh, key: id}\n",
                     "{host: db-a.internal, known_hosts: kh, key: id}\n        database: {port: 5434}\n"))
    err = error_of(write(tmp_path, text), "tenants", {"TENANTS_PASSWORD": "pw"})
    assert "unknown key 'prot' in environments.tenants.database" in str(err) and err.line == 10


def test_unknown_key_in_a_host_database_is_located_there(tmp_path: Path) -> None:
    """A typo in a host's database block points at that host's block."""
    text = TENANTS.replace("{port: 5433, name: tenant_b}", "{prot: 5433}")
    err = error_of(write(tmp_path, text), "tenants", {"TENANTS_PASSWORD": "pw"})
    assert "unknown key 'prot' in environments.tenants.hosts[1].database" in str(err) and err.line == 8


def test_bad_value_names_key_and_line(tmp_path: Path) -> None:
    """A value of the wrong type or out of range names the dotted key and its line."""
    path = write(tmp_path, MINIMAL.replace("ssh: {host: db.example,", "ssh: {host: db.example, port: 70000,"))
    with pytest.raises(ConfigError) as caught:
        inventory.load(path)
    assert "environments.prod.hosts[0].ssh.port" in str(caught.value) and caught.value.line == 5


def test_bad_policy_names_the_choices(tmp_path: Path) -> None:
    """blockers accepts wait, abort or terminate only."""
    with pytest.raises(ConfigError, match=r"inventory.yaml:7: environments.prod.locks.blockers: .*'wait'"):
        inventory.load(write(tmp_path, MINIMAL + "    locks: {blockers: kill}\n"))


@pytest.mark.parametrize(("window", "problem"), [
    ("{start: '25:00', end: '04:00'}", "start"),
    ("{start: '02:00', end: 'late'}", "end"),
    ("{start: '02:00', end: '04:00', tz: Mars/Olympus}", "tz"),
    ("{days: [sunday], start: '02:00', end: '04:00'}", "days"),
])
def test_bad_maintenance_window_is_refused(tmp_path: Path, window: str, problem: str) -> None:
    """A maintenance window with a bad time, time zone or day is refused at load time."""
    with pytest.raises(ConfigError) as caught:
        inventory.load(write(tmp_path, MINIMAL + f"    window: {window}\n"))
    assert f"environments.prod.window.{problem}" in str(caught.value) and caught.value.line == 7


def test_good_maintenance_window(tmp_path: Path) -> None:
    """A well-formed window is kept as written."""
    env = inventory.load(write(tmp_path, MINIMAL + "    window: {days: [sun], start: '02:00', end: '04:00', "
                                                   "tz: Europe/Paris}\n")).environment("prod", environ={})
    assert env.config.window is not None
    assert (env.config.window.days, env.config.window.start, env.config.window.tz) == (
        ["sun"], "02:00", "Europe/Paris")


def test_unknown_environment_lists_the_defined_ones(tmp_path: Path) -> None:
    """An unknown environment names the file and the environments it defines."""
    path = write(tmp_path, MINIMAL)
    err = error_of(path, "staging")
    assert str(err) == f"{path}: unknown environment 'staging' (defined: prod)"


def test_environment_without_hosts(tmp_path: Path) -> None:
    """A non-embedded environment needs hosts."""
    err = error_of(write(tmp_path, "environments:\n  prod:\n    protected: true\n"))
    assert "has no hosts" in str(err) and err.line == 2


def test_embedded_environment_needs_no_hosts(tmp_path: Path) -> None:
    """embedded: true is a whole environment: one local host, no database block."""
    env = inventory.load(write(tmp_path, "environments:\n  local: {embedded: true}\n")).environment(
        "local", environ={})
    assert env.embedded and [(h.name, h.ssh, h.database) for h in env.hosts] == [("localhost", None, None)]


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    """A missing inventory is one line naming its path."""
    with pytest.raises(ConfigError) as caught:
        inventory.load(tmp_path / "nope.yaml")
    assert str(caught.value) == f"{tmp_path / 'nope.yaml'}: inventory not found"


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    """A YAML syntax error names the file and the line."""
    path = write(tmp_path, "environments:\n  prod:\n    hosts: [\n      - name: db1\n")
    with pytest.raises(ConfigError) as caught:
        inventory.load(path)
    assert str(caught.value).startswith(f"{path}:4: malformed YAML")


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "environments: 3\n", "{}\n"])
def test_not_an_inventory(tmp_path: Path, text: str) -> None:
    """An empty file, a list, or a mapping without environments is refused."""
    with pytest.raises(ConfigError, match="environments"):
        inventory.load(write(tmp_path, text))


def test_duplicate_key_is_named_without_its_values(tmp_path: Path) -> None:
    """A key written twice names the key and line, never the values (one could be a secret)."""
    path = write(tmp_path, MINIMAL + "    database: {name: other, user: hunter2}\n")
    with pytest.raises(ConfigError) as caught:
        inventory.load(path)
    assert str(caught.value) == f'{path}:7: malformed YAML: found duplicate key "database"'


def test_null_environment_says_a_mapping_is_expected(tmp_path: Path) -> None:
    """An empty environment block says a mapping is expected, without pydantic's model names."""
    with pytest.raises(ConfigError) as caught:
        inventory.load(write(tmp_path, "environments:\n  prod:\n"))
    assert str(caught.value).endswith(":2: environments.prod: Input should be a valid dictionary")


def test_ssh_block_without_key_is_a_located_error(tmp_path: Path) -> None:
    """An ssh block without 'key' is one line naming the file, the line and the missing key."""
    path = write(tmp_path, MINIMAL.replace(", key: keys/id_ed25519}", "}"))
    with pytest.raises(ConfigError) as caught:
        inventory.load(path)
    assert caught.value.exit_code == 2 and "\n" not in str(caught.value)
    assert str(caught.value).startswith(f"{path}:5: ") and "missing key 'key'" in str(caught.value)


def test_database_password_is_never_in_a_repr(tmp_path: Path) -> None:
    """The resolved password is a secret: repr of the environment, host and database never shows it."""
    env = inventory.load(write(tmp_path, TENANTS)).environment("tenants", environ={"TENANTS_PASSWORD": "hunter2-x"})
    assert env.hosts[0].database is not None and env.hosts[0].database.password == "hunter2-x"
    assert "hunter2-x" not in repr(env) + repr(env.hosts) + repr(env.hosts[0].database)
