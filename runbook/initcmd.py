"""``runbook init``: a starting ``inventory.yaml`` for the Alembic project in the current directory.

It reads ``./alembic.ini`` and the env.py it names (envstyle.py: how env.py finds its database, so
``alembic.url_env`` is written when env.py needs it), and writes an inventory with a ``local``
embedded environment (``runbook local migrate``: your migrations on a throwaway PostgreSQL, nothing
else to set up) and a commented ``prod`` to fill in. ``--playbooks`` also copies the shipped
playbooks into ``./playbooks/`` to edit (a playbook there wins over the shipped one).

It never overwrites: any file it would write that exists already refuses the whole command (exit 2,
one line, nothing written), and the files are created with O_EXCL. It asks nothing: everything it
needs is in the project, and what it cannot know (the production host) is left commented.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import click

from .cli_errors import CONTEXT
from .errors import ConfigError, RunbookError

HEADER = """\
# runbook inventory for the Alembic project {ini} (written by `runbook init`).
# Keys: README "Inventory reference". Relative paths are relative to this file.
#
#   runbook local migrate     your migrations on a throwaway PostgreSQL under .runbook/ (add it to .gitignore)
#   runbook lint              the pending revisions judged offline
#   runbook prod migrate      once `prod` below is filled in
#
# env.py: {says}
environments:
  local:
    embedded: true                        # a throwaway PostgreSQL under .runbook/, started and stopped by runbook
    alembic:
      config: {ini_rel}
{url_env}    locks: {{lock_timeout: 2s, max_wait: 30s, blockers: wait}}

  # prod:
  #   protected: true                     # a TTY run asks to type "prod"; otherwise --yes is required
  #   hosts:
  #     - name: db1
  #       ssh:
  #         host: db1.example.com         # the database server (runbook connects over SSH)
  #         user: deploy
  #         key: ~/.ssh/id_ed25519
  #         known_hosts: ~/.ssh/known_hosts   # host keys are always verified; an unknown key is refused
  #   database:
  #     host: localhost                   # as seen from the SSH host
  #     port: {port}
  #     name: {dbname}
  #     user: {user}
  #     password_env: PROD_DATABASE_PASSWORD   # the NAME of an environment variable, never a password
  #   backup: {{dir: /var/backups/{dbname}, keep: 10}}   # on the SSH host
  #   locks: {{lock_timeout: 5s, max_wait: 120s, blockers: wait}}
  #   window: {{days: [mon, tue, wed, thu], start: "02:00", end: "05:00", tz: UTC}}
  #   alembic:
  #     config: {ini_rel}
{prod_url_env}"""


def render(ini: Path, here: Path) -> tuple[str, str]:
    """The inventory's text for ``ini`` and the line that says what env.py does."""
    from .envstyle import read_project

    project = read_project(ini)
    style = project.style()
    dbname, user, port = _from_url(project.url)
    rel = str(ini.relative_to(here)) if ini.is_relative_to(here) else str(ini)
    if style.url_env:
        url_env = f"      url_env: {style.url_env}{' ' * max(1, 24 - len(style.url_env))}# env.py reads its URL from it\n"
        prod_url_env = f"  #     url_env: {style.url_env}\n"
    else:
        url_env = ("      # url_env: DATABASE_URL             # only if env.py reads its URL from a variable\n"
                   if style.style in ("settings", "unknown") else "")
        prod_url_env = ""
    text = HEADER.format(ini=ini, says=style.says, ini_rel=rel, url_env=url_env, prod_url_env=prod_url_env,
                         port=port, dbname=dbname, user=user)
    return text, style.says


def _from_url(url: str | None) -> tuple[str, str, int]:
    """Database name, user and port from alembic.ini's sqlalchemy.url (never its password)."""
    if url:
        try:
            from sqlalchemy.engine import make_url

            parsed = make_url(url)
            return parsed.database or "app", parsed.username or "app", parsed.port or 5432
        except Exception:  # noqa: BLE001 - a placeholder such as driver://user:pass@localhost/dbname
            pass
    return "app", "app", 5432


def init(here: Path, playbooks: bool, echo: Callable[[str], None] = click.echo) -> int:
    """Write ``inventory.yaml`` (and ``playbooks/`` if asked) in ``here``; never overwriting."""
    from .inventory_keys import InventoryFile
    from .shipped import playbooks_dir
    from ruamel.yaml import YAML

    ini = here / "alembic.ini"
    if not ini.is_file():
        raise ConfigError(f"no alembic.ini in {here}: run runbook init in your Alembic project's folder",
                          hint="runbook local migrate here runs the built-in example")
    target = here / "inventory.yaml"
    shipped = sorted(playbooks_dir().glob("*.yaml")) if playbooks else []
    writes = [target, *(here / "playbooks" / p.name for p in shipped)]
    for path in writes:
        if path.exists():
            hint = (f"cp -rn {playbooks_dir()}/. {here / 'playbooks'}/ copies the shipped playbooks by hand"
                    if playbooks and path == target else None)
            raise ConfigError(f"{path} exists already: runbook init never overwrites a file", hint=hint)
    text, says = render(ini, here)
    InventoryFile.model_validate(YAML(typ="safe").load(text))  # what is written loads, or nothing is
    with open(target, "x", encoding="utf-8") as handle:
        handle.write(text)
    echo(f"runbook: wrote {target} for {ini}")
    echo(f"runbook: {says}")
    if shipped:
        (here / "playbooks").mkdir(exist_ok=True)
        for source in shipped:
            with open(here / "playbooks" / source.name, "x", encoding="utf-8") as handle:
                handle.write(source.read_text(encoding="utf-8"))
        echo(f"runbook: copied {len(shipped)} playbooks to {here / 'playbooks'} (they win over the shipped ones)")
    echo("runbook: next: runbook local migrate (a throwaway PostgreSQL), then fill in prod in inventory.yaml")
    return 0


@click.command("init", context_settings=CONTEXT,
               short_help="a starting inventory.yaml for the Alembic project here")
@click.option("--playbooks", is_flag=True, help="Also copy the shipped playbooks into ./playbooks/ to edit.")
def init_cli(playbooks: bool) -> None:
    """Write a starting inventory.yaml for the Alembic project here (./alembic.ini).

    \b
    The env.py style is read from its source: alembic.url_env is written when env.py takes its
    URL from a variable. A `local` embedded environment runs your migrations on a throwaway
    PostgreSQL; `prod` is a commented example. Never overwrites a file (exit 2); asks nothing.
    """
    from .running import Output, _error

    try:
        code = init(Path.cwd(), playbooks)
    except RunbookError as exc:
        _error(Output(), exc)
        code = exc.exit_code
    sys.exit(code)
