"""``runbook init`` and the built-in inventory, without a database: what is detected and written.

The end-to-end path (an installed runbook, ``init`` then ``local migrate`` on a real embedded
PostgreSQL) is tests/test_install.py; here each env.py style, the refusals and the built-in
inventory's choice are checked directly, through the real command (``python -m runbook``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from runbook import inventory, inventory_keys, shipped
from runbook.envstyle import read_project
from runbook.errors import ConfigError
from tests.fixtures import byo

ROOT = Path(__file__).resolve().parent.parent


def runbook(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOK_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "runbook", *args], cwd=folder, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60, check=False)


def local_env(folder: Path) -> inventory.Environment:
    return inventory.load(folder / "inventory.yaml").environment("local", environ={})


@pytest.mark.parametrize(("style", "url_env", "says"), [
    ("engine", None, "sqlalchemy.url"),
    ("url_env", byo.URL_ENV, f"${byo.URL_ENV}"),
    ("shared", None, 'config.attributes["connection"]'),
])
def test_init_writes_an_inventory_for_each_env_py_style(tmp_path: Path, style: str, url_env: str | None,
                                                        says: str) -> None:
    """The three common env.py styles: url_env written only when env.py reads a variable; the
    inventory loads, its local environment is embedded and runs this project's alembic.ini."""
    byo.write_app(tmp_path, style)
    done = runbook(tmp_path, "init")
    assert done.returncode == 0, done.stderr
    assert says in done.stdout and "runbook: next: runbook local migrate" in done.stdout
    env = local_env(tmp_path)
    assert env.embedded and env.alembic_ini == tmp_path / "alembic.ini"
    assert env.config.alembic.url_env == url_env
    text = (tmp_path / "inventory.yaml").read_text()
    assert "devpass" not in text, "never a password from sqlalchemy.url"
    prod = YAML(typ="safe").load("\n".join(line.replace("  # ", "  ", 1) if line.startswith("  # ") else line for line in text.splitlines()))
    assert "prod" in prod["environments"], "the commented prod is a whole environment once uncommented"
    inventory_keys.InventoryFile.model_validate(prod)
    assert not (tmp_path / "playbooks").exists()


def test_settings_style_follows_the_variable_the_settings_read(tmp_path: Path) -> None:
    """env.py taking its URL from the application's settings: the variable those settings read
    (os.environ, or a pydantic-settings field) becomes url_env; none found, it says what to do."""
    byo.write_app(tmp_path, "engine")
    (tmp_path / "migrations" / "env.py").write_text(textwrap.dedent("""\
        from alembic import context
        from sqlalchemy import create_engine, pool

        from shop.config import settings

        engine = create_engine(settings.shop_database_url, poolclass=pool.NullPool)
        with engine.connect() as connection:
            context.configure(connection=connection)
            with context.begin_transaction():
                context.run_migrations()
        """))
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "__init__.py").write_text("")
    (tmp_path / "shop" / "config.py").write_text(textwrap.dedent("""\
        from pydantic_settings import BaseSettings

        class Settings(BaseSettings):
            debug: bool = False
            shop_database_url: str = "postgresql://localhost/shop"

        settings = Settings()
        """))
    style = read_project(tmp_path / "alembic.ini").style()
    assert (style.style, style.url_env, style.settings) == ("settings", "SHOP_DATABASE_URL", "shop.config")

    (tmp_path / "shop" / "config.py").write_text("settings = object()\n")
    style = read_project(tmp_path / "alembic.ini").style()
    assert (style.style, style.url_env) == ("settings", None) and "url_env" in style.says
    done = runbook(tmp_path, "init")
    assert done.returncode == 0, done.stderr
    assert "      # url_env: DATABASE_URL" in (tmp_path / "inventory.yaml").read_text()


def test_init_never_overwrites_and_copies_playbooks_only_when_asked(tmp_path: Path) -> None:
    """--playbooks copies every shipped playbook; a second init refuses (exit 2, one line), writing nothing."""
    byo.write_app(tmp_path, "engine")
    done = runbook(tmp_path, "init", "--playbooks")
    assert done.returncode == 0, done.stderr
    copied = sorted(p.name for p in (tmp_path / "playbooks").iterdir())
    assert copied == sorted(p.name for p in shipped.playbooks_dir().glob("*.yaml")) and "migrate.yaml" in copied
    assert (tmp_path / "playbooks" / "migrate.yaml").read_text() == (shipped.playbooks_dir() / "migrate.yaml").read_text()

    (tmp_path / "inventory.yaml").write_text("# mine\n")
    again = runbook(tmp_path, "init")
    assert again.returncode == 2 and again.stdout == ""
    assert again.stderr.startswith(f"runbook: error: {tmp_path / 'inventory.yaml'} exists already")
    assert len(again.stderr.splitlines()) == 1 and (tmp_path / "inventory.yaml").read_text() == "# mine\n"

    (tmp_path / "inventory.yaml").unlink()
    for path in (tmp_path / "playbooks").iterdir():
        if path.name != "verify.yaml":
            path.unlink()
    refused = runbook(tmp_path, "init", "--playbooks")
    assert refused.returncode == 2 and "verify.yaml exists already" in refused.stderr
    assert not (tmp_path / "inventory.yaml").exists(), "a refusal writes nothing"
    assert [p.name for p in (tmp_path / "playbooks").iterdir()] == ["verify.yaml"]


def test_init_without_an_alembic_project(tmp_path: Path) -> None:
    done = runbook(tmp_path, "init")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[0] == f"runbook: error: no alembic.ini in {tmp_path}: run runbook init in your " \
                                          "Alembic project's folder"
    assert os.listdir(tmp_path) == []


def test_builtin_inventory_only_where_there_is_no_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No ./inventory.yaml and no ./alembic.ini: the built-in one (state here, the example's
    alembic.ini); an alembic.ini here, --inventory or $RUNBOOK_INVENTORY: "inventory not found"."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RUNBOOK_INVENTORY", raising=False)
    inv = inventory.load(Path("inventory.yaml"))
    assert inv.builtin and inv.names == ["local"] and inv.state_dir == tmp_path / ".runbook"
    env = inv.environment("local", environ={})
    assert env.embedded and env.alembic_ini == shipped.example_alembic_ini()
    with pytest.raises(ConfigError) as unknown:
        inv.environment("prod", environ={})
    assert "no inventory.yaml here" in str(unknown.value) and "runbook init" in str(unknown.value.hint)
    assert os.listdir(tmp_path) == [], "loading writes nothing"

    with pytest.raises(ConfigError) as elsewhere:
        inventory.load(tmp_path / "inventory.yaml")  # a path given explicitly
    assert "inventory not found" in str(elsewhere.value)
    monkeypatch.setenv("RUNBOOK_INVENTORY", "inventory.yaml")
    with pytest.raises(ConfigError):
        inventory.load(Path("inventory.yaml"))
    monkeypatch.delenv("RUNBOOK_INVENTORY")
    (tmp_path / "alembic.ini").write_text("[alembic]\n")
    with pytest.raises(ConfigError) as project:
        inventory.load(Path("inventory.yaml"))
    assert "inventory not found" in str(project.value) and "runbook init" in str(project.value.hint)


def test_revision_never_writes_into_an_installed_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a directory with no project, ``runbook revision`` of an installed runbook (not a checkout)
    would land in the package's own example: refused, nothing written."""
    from runbook import revision

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("runbook.revision.in_checkout", lambda: False)
    versions = shipped.example_dir() / "alembic" / "versions"
    before = sorted(p.name for p in versions.iterdir())
    with pytest.raises(ConfigError) as refused:
        revision.create(Path("inventory.yaml"), None, "add slugs", echo=lambda line: None)
    assert "no Alembic project here" in str(refused.value)
    assert sorted(p.name for p in versions.iterdir()) == before and os.listdir(tmp_path) == []
