"""Playbooks: steps bare and with parameters, conditions, the search path, errors naming file:line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from runbook import playbook
from runbook.errors import ConfigError
from runbook.shipped import package_dir, playbooks_dir
from runbook.playbook import Step


def write(folder: Path, text: str, name: str = "custom.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        playbook.load(path)
    assert caught.value.exit_code == 2 and "\n" not in str(caught.value)
    return caught.value


def test_shipped_migrate_playbook() -> None:
    """The shipped migrate playbook: backup, check_locks, upgrade head, verify; downgrade then restore."""
    pb = playbook.load(playbook.find("migrate", package_dir()))
    assert pb.name == "migrate" and pb.description
    assert [s.kind for s in pb.steps][:4] == ["backup", "check_locks", "upgrade", "verify"]
    assert pb.steps[2].params.to == "head"
    assert [s.kind for s in pb.on_failure][:1] == ["downgrade"]
    assert pb.on_failure[0].params.to == "start"
    assert "restore" in pb.kinds()


def test_bare_and_parameterised_steps(tmp_path: Path) -> None:
    """'- backup' and '- upgrade: {to: 0002}' both parse; defaults fill what is left out; lines are kept."""
    pb = playbook.load(write(tmp_path, """\
        description: custom
        steps:
          - backup
          - check_locks: {blockers: abort}
          - upgrade: {to: "0002"}
          - upgrade:
          - shell: {command: systemctl stop worker, timeout: 30s}
          - verify:
              checks:
                - {name: one, sql: SELECT 1, expect: 1}
        on_failure:
          - restore
        """))
    kinds = [s.kind for s in pb.steps]
    assert kinds == ["backup", "check_locks", "upgrade", "upgrade", "shell", "verify"]
    backup, locks, upgrade, default_upgrade, shell, verify = pb.steps
    assert locks.params.blockers == "abort"
    assert upgrade.params.to == "0002" and default_upgrade.params.to == "head"
    assert shell.params.command == "systemctl stop worker" and shell.params.timeout == 30.0
    assert [c.name for c in verify.params.checks] == ["one"]
    assert pb.on_failure[0].params.backup == "run"
    assert [s.line for s in pb.steps] == [3, 4, 5, 6, 7, 8]
    assert backup.describe() == "backup" and upgrade.describe() == "upgrade(to=0002)"
    assert locks.describe() == "check_locks(blockers=abort)"


def test_conditions_decide_which_steps_run(tmp_path: Path) -> None:
    """if: runs a step only when the fact holds, unless: skips it when the fact holds."""
    pb = playbook.load(write(tmp_path, """\
        steps: [backup]
        on_failure:
          - downgrade: {to: start}
          - verify: {unless: downgrade_failed}
          - restore: {if: rollback_failed}
          - verify: {if: restored}
          - shell: {command: notify, if: always}
        """))
    downgrade, verify, restore, verify_restored, notify = pb.on_failure
    nothing: dict[str, bool] = {}
    assert [s.wanted(nothing) for s in pb.on_failure] == [True, True, False, False, True]
    failed = {"downgrade_failed": True, "rollback_failed": True}
    assert [s.wanted(failed) for s in pb.on_failure] == [True, False, True, False, True]
    restored = {**failed, "restored": True}
    assert [s.wanted(restored) for s in pb.on_failure] == [True, False, True, True, True]
    assert restore.describe() == "restore(if=rollback_failed)"


def test_wanted_with_both_if_and_unless() -> None:
    """A step with if: and unless: runs only when the first holds and the second does not."""
    step = Step("verify", playbook.VerifyParams.model_validate({"if": "changed", "unless": "restored"}))
    assert step.wanted({"changed": True})
    assert not step.wanted({})
    assert not step.wanted({"changed": True, "restored": True})


def test_playbooks_next_to_the_inventory_win(tmp_path: Path) -> None:
    """A playbooks/ folder beside the inventory overrides the shipped playbook of the same name."""
    own = write(tmp_path / "playbooks", "steps: [verify]\n", "migrate.yml")
    assert playbook.find("migrate", tmp_path) == own
    assert playbook.find("migrate", tmp_path / "elsewhere") == playbooks_dir() / "migrate.yaml"


def test_unknown_playbook_lists_what_exists(tmp_path: Path) -> None:
    """An unknown playbook names the folders searched and the playbooks available."""
    write(tmp_path / "playbooks", "steps: [verify]\n", "nightly.yaml")
    with pytest.raises(ConfigError) as caught:
        playbook.find("migrat", tmp_path)
    text = str(caught.value)
    assert "unknown playbook 'migrat'" in text and "migrate" in text and "nightly" in text
    assert str(tmp_path / "playbooks") in text and "\n" not in text


@pytest.mark.parametrize("name", ["../etc/passwd", "sub/migrate", ".hidden"])
def test_playbook_names_are_not_paths(tmp_path: Path, name: str) -> None:
    """A playbook is named, never given as a path."""
    with pytest.raises(ConfigError, match="must be a name"):
        playbook.find(name, tmp_path)


def test_unknown_step_names_file_and_line(tmp_path: Path) -> None:
    """An unknown step names itself, the known steps, the file and the line."""
    path = write(tmp_path, "steps:\n  - backup\n  - upgarde: {to: head}\n")
    err = error_of(path)
    assert str(err).startswith(f"{path}:3: unknown step 'upgarde' (known: backup, check_locks, upgrade")


def test_unknown_parameter_names_file_line_and_key(tmp_path: Path) -> None:
    """A typo in a step's parameters names the key and the line."""
    path = write(tmp_path, "steps:\n  - backup\n  - upgrade:\n      too: head\n")
    err = error_of(path)
    assert str(err) == f"{path}:4: unknown key 'too' in steps[1].upgrade; did you mean 'to'?"


def test_bad_condition_names_the_value(tmp_path: Path) -> None:
    """An if: condition that is no known fact is refused with the known ones."""
    path = write(tmp_path, "steps: [backup]\non_failure:\n  - restore: {if: downgrade_fail}\n")
    err = error_of(path)
    assert f"{path}:3: on_failure[0].restore.if" in str(err) and "downgrade_failed" in str(err)


def test_missing_required_parameter(tmp_path: Path) -> None:
    """shell needs a command."""
    path = write(tmp_path, "steps:\n  - shell: {timeout: 5s}\n")
    assert "missing key 'command'" in str(error_of(path))


@pytest.mark.parametrize(("text", "line", "problem"), [
    ("steps:\n  - backup\n  - {upgrade: {}, verify: {}}\n", 3, "a step is a name"),
    ("steps:\n  - upgrade: head\n", 2, "parameters of step 'upgrade' must be a mapping"),
    ("description: x\nsteps: []\n", 2, "missing or empty 'steps' list"),
    ("description: x\n", 1, "missing or empty 'steps' list"),
    ("steps: [backup]\non_falure: [restore]\n", 2, "unknown key 'on_falure'"),
    ("steps: [backup]\non_failure: restore\n", 2, "'on_failure' must be a list"),
    ("steps:\n  - backup\n  - [verify]\n", 3, "a step is a name"),
])
def test_malformed_playbooks(tmp_path: Path, text: str, line: int, problem: str) -> None:
    """Each structural mistake is one error naming the file and line."""
    path = write(tmp_path, text)
    err = error_of(path)
    assert err.line == line and problem in str(err) and str(err).startswith(f"{path}:{line}: ")


def test_malformed_yaml(tmp_path: Path) -> None:
    """A YAML syntax error in a playbook names the file and line."""
    path = write(tmp_path, "steps:\n  - backup\n  - upgrade: {to: head\n")
    err = error_of(path)
    assert str(err).startswith(f"{path}:") and "malformed YAML" in str(err) and err.line is not None


def test_not_a_mapping(tmp_path: Path) -> None:
    """A playbook that is a bare list is refused."""
    assert "must be a mapping" in str(error_of(write(tmp_path, "- backup\n- verify\n")))
