"""``runbook revision "message"``: a new Alembic revision and its verification file, together.

The revision is Alembic's own ``command.revision`` on the project's Config, so its ``script.py.mako``
template, ``file_template`` naming, ``version_locations`` and post-write hooks apply exactly as with
``alembic revision``. Beside it, ``<script_location>/verify/<rev>.yaml`` gets a skeleton whose one
check (alembic_version holds the revision) already passes, and commented examples of the checks to
write, so no migration ships without its checks (``runbook lint`` reports a revision without one).
Nothing connects to a database.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .errors import ConfigError
from .lint.command import project
from .shipped import in_checkout, is_example

SKELETON = """\
# Checks that hold once {rev} ({message}) is applied: `runbook ENV migrate` runs them after the
# upgrade (a failed check rolls the run back), `runbook ENV verify` at any time.
# Each query runs in a transaction that is always rolled back: probes leave nothing behind.
# Each check has exactly one expectation: `expect` (compared with the first column of the first
# row) or `expect_error` (a PostgreSQL condition name: check_violation, not_null_violation, ...).
- name: alembic_version records {rev}
  sql: SELECT string_agg(version_num, ',') FROM alembic_version
  expect: "{rev}"
# - name: the new column exists
#   sql: >-
#     SELECT count(*) FROM information_schema.columns
#     WHERE table_schema = current_schema() AND table_name = 'collections' AND column_name = 'slug'
#   expect: 1
# - name: a row breaking the new constraint is rejected
#   sql: INSERT INTO collections (name, description) VALUES ('runbook_probe', '   ')
#   expect_error: check_violation
"""


def create(inventory_path: Path, config: str | None, message: str, *, rev_id: str | None = None,
           head: str = "head", echo: Callable[[str], None] = print) -> int:
    """Write both files (never overwriting a verification file); exit 2 on a bad project or input."""
    from alembic import command
    from alembic.util import CommandError

    from . import verifyfiles

    if not message.strip():
        raise ConfigError("the revision needs a message (runbook revision \"add collection slugs\")")
    migrations = project(inventory_path, config)
    if is_example(migrations.ini) and not in_checkout():  # never into an installed runbook's files
        raise ConfigError("no Alembic project here: run runbook revision next to your alembic.ini "
                          "(or pass --config PATH/alembic.ini)", hint="runbook init writes an inventory for it")
    migrations.script  # a project that does not load: one line, exit 2, nothing written
    if rev_id is not None and rev_id in {r.revision for r in migrations.script.walk_revisions()}:
        raise ConfigError(f"revision {rev_id} exists already", path=str(migrations.ini))
    cfg = migrations.config()
    try:
        script = command.revision(cfg, message=message, rev_id=rev_id, head=head)
    except CommandError as exc:
        raise ConfigError(f"alembic revision: {exc}", path=str(migrations.ini)) from None
    if script is None or isinstance(script, list):
        raise ConfigError("alembic revision made no single revision", path=str(migrations.ini))
    verify = migrations.verify_file(script.revision)
    if verify.exists():
        echo(f"runbook: created {script.path}; kept the existing {verify}")
        return 0
    verify.parent.mkdir(parents=True, exist_ok=True)
    verify.write_text(SKELETON.format(rev=script.revision, message=" ".join(message.split())),
                      encoding="utf-8")
    verifyfiles.load_file(verify)  # the skeleton is a valid verification file
    echo(f"runbook: created {script.path}")
    echo(f"runbook: created {verify} (add the checks that hold once {script.revision} is applied)")
    down = script.down_revision
    start = ",".join(down) if isinstance(down, (tuple, list)) else (down or "base")
    echo(f"runbook: next: write upgrade() and downgrade(), then runbook lint {start}:{script.revision}")
    return 0
