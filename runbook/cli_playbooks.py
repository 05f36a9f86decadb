"""``runbook ENV PLAYBOOK [OPTIONS]``: one click command per playbook, with that playbook's options.

Each command takes only the options that change what it does (``OPTIONS_OF``), so ``--help`` lists
them and a flag that does not apply (``verify --to``, ``status --dry-run``) is a usage error (exit 2),
never silently ignored. The shipped playbooks and the built-in commands have their own sets; a
playbook of the user's own (a file in ``playbooks/``) takes every run option, and the plan checks
the rest against its steps (``--restore`` needs a rollback step, for example).

The global options (``GLOBAL``) are accepted here too, hidden from the command's help, so that
``runbook prod status --json`` means what ``runbook --json prod status`` means.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import click

from . import cli_complete as complete
from .cli_errors import CONTEXT, Located


BUILT_IN = ("status", "checklist", "history", "schedule")
SHIPPED = ("migrate", "rollback", "backup", "verify", "rehearse", "migrate-rehearsed")

FLEET = ("limit", "shard", "parallel")
RUN = ("to", "dry_run", "restore", "ignore_window", "accept", "override", *FLEET, "canary", "rollback_all")
OPTIONS_OF: dict[str, tuple[str, ...]] = {
    "migrate": ("to", "dry_run", "ignore_window", "accept", "override", *FLEET, "canary", "rollback_all"),
    "migrate-rehearsed": ("to", "dry_run", "ignore_window", "accept", "override", *FLEET, "canary",
                          "rollback_all"),
    "rehearse": ("to", "dry_run", *FLEET, "canary"),
    "rollback": ("to", "restore", "dry_run", *FLEET),
    "backup": ("dry_run", *FLEET, "canary"),
    "verify": FLEET,
    "status": ("limit", "shard"),
    "checklist": ("to", "ignore_window", "accept", "override", "limit", "shard"),  # the lines migrate would check
    "history": ("count",),
    "schedule": ("install", "user"),
}

SHORT = {
    "migrate": "backup, check locks, upgrade (head or --to), verify, prune; rolls back on failure",
    "migrate-rehearsed": "backup, rehearse on that backup, then migrate; a failed rehearsal stops it first",
    "rehearse": "the pending migrations on a scratch copy restored from a backup; production untouched",
    "rollback": "incident: back to where the last migrate started, or --to REV, or --restore [BACKUP]",
    "backup": "a verified backup, then retention",
    "verify": "the verification queries of the current revision; changes nothing",
    "status": "current and head revision, pending, last runs, backups, lock holders now",
    "checklist": "the pre-flight checklist: ok / FAILED / skipped, one line each; exit 0 or 4",
    "history": "past runs: outcome, exit code, duration, revisions, backup, who and how",
    "schedule": "a systemd service + timer (and a crontab line) starting PLAYBOOK in the window",
}


def _option(name: str) -> click.Option:
    """A fresh click.Option for ``name`` (see ``OPTIONS_OF``)."""
    make: dict[str, Callable[[], click.Option]] = {
        "to": lambda: click.Option(["--to"], metavar="REV", shell_complete=complete.revisions,
                                   help="Target revision (migrate: default head; rollback: see README)."),
        "dry_run": lambda: click.Option(["--dry-run"], is_flag=True,
                                        help="Show the plan, the SQL and the locks it takes; change nothing."),
        "restore": lambda: click.Option(["--restore"], metavar="BACKUP", is_flag=False, flag_value="newest",
                                        default=None, shell_complete=complete.backups,
                                        help="Restore BACKUP (default: the newest verified backup)."),
        "ignore_window": lambda: click.Option(
            ["--ignore-window"], is_flag=True,
            help="Run outside the maintenance window (or past its end) on purpose; logged as such."),
        "accept": lambda: click.Option(["--accept"], metavar="RULE", multiple=True,
                                       help="Run despite error-level lint findings of this rule (repeatable)."),
        "override": lambda: click.Option(["--override"], metavar="LINE", multiple=True,
                                         help="Run despite this failed checklist line (repeatable)."),
        "limit": lambda: click.Option(["--limit", "limits"], metavar="PATTERN", multiple=True,
                                      help="Fleets: only the hosts matching PATTERN (names or globs, "
                                      "comma-separated or repeated)."),
        "shard": lambda: click.Option(["--shard"], metavar="K/N",
                                      help="Fleets: only the hosts of shard K of N (1..N; a stable split by "
                                      "host name)."),
        "parallel": lambda: click.Option(["--parallel"], metavar="N", type=click.IntRange(min=1), default=1,
                                         show_default=True, help="Fleets: up to N hosts at once."),
        "canary": lambda: click.Option(["--canary"], is_flag=True,
                                       help="Fleets: the first host alone, verified, before any other starts."),
        "rollback_all": lambda: click.Option(
            ["--rollback-all"], is_flag=True,
            help="Fleets: when a host fails (or a signal stops the run), roll back every host this run migrated."),
        "count": lambda: click.Option(["--limit", "count"], metavar="N",
                                      help="The N newest runs (default 20)."),
        "install": lambda: click.Option(["--install"], is_flag=True,
                                        help="Write the units and the secrets' file template (never enables them)."),
        "user": lambda: click.Option(["--user"], is_flag=True,
                                     help="Units of your user's systemd, not the system's."),
    }
    return make[name]()


def global_options(hidden: bool) -> list[click.Parameter]:
    """``--inventory/-i``, ``--yes/-y``, ``--json``, ``-v/--verbose``, ``--no-color``: before ENV (shown
    in ``runbook --help``), or after the playbook (hidden there, default None: "not given here")."""
    default_inventory: Any = None if hidden else "inventory.yaml"
    flag_default: Any = None if hidden else False
    return [
        click.Option(["--inventory", "-i", "inventory_path"], metavar="PATH", hidden=hidden,
                     envvar=None if hidden else "RUNBOOK_INVENTORY", default=default_inventory,
                     show_default=not hidden, type=click.Path(dir_okay=False),
                     help="Inventory file ($RUNBOOK_INVENTORY)."),
        click.Option(["--yes", "-y"], is_flag=True, default=flag_default, hidden=hidden,
                     help="Do not ask; required for protected environments without a TTY."),
        click.Option(["--json", "json_out"], is_flag=True, default=flag_default, hidden=hidden,
                     help="JSON lines on stdout instead of readable output."),
        click.Option(["--verbose", "-v"], is_flag=True, default=flag_default, hidden=hidden,
                     help="Every event of the run on the console, not only the step lines."),
        click.Option(["--no-color"], is_flag=True, default=flag_default, hidden=hidden,
                     help="No colours (also: NO_COLOR set, TERM=dumb)."),
    ]


GLOBAL_NAMES = ("inventory_path", "yes", "json_out", "verbose", "no_color")


def merged_globals(ctx: click.Context) -> dict[str, Any]:
    """The global options as given at any level (the one nearest the command wins)."""
    out: dict[str, Any] = {}
    chain = []
    node: click.Context | None = ctx
    while node is not None:
        chain.append(node)
        node = node.parent
    for node in reversed(chain):  # root first, the command last
        for name in GLOBAL_NAMES:
            value = node.params.get(name)
            if value is not None and (value is not False or name not in out):
                out[name] = value
    out.setdefault("inventory_path", "inventory.yaml")
    for name in GLOBAL_NAMES[1:]:
        out[name] = bool(out.get(name))
    return out


class PlaybookCommand(Located):
    """``runbook ENV PLAYBOOK``: ``takes`` names the options it accepts (``OPTIONS_OF``)."""

    def __init__(self, playbook: str, takes: tuple[str, ...]) -> None:
        params: list[click.Parameter] = [_option(name) for name in takes]
        if playbook == "schedule":
            params.append(click.Argument(["target"], metavar="PLAYBOOK", required=False,
                                         shell_complete=complete.playbooks))
        params.extend(global_options(hidden=True))
        shipped = playbook in BUILT_IN or playbook in SHIPPED
        help_text = SHORT.get(playbook, f"the playbook '{playbook}' (a file in playbooks/)")
        super().__init__(playbook, params=params, callback=self._run, context_settings=CONTEXT,
                         help=help_text[0].upper() + help_text[1:] + ".", short_help=help_text,
                         epilog=_epilog(playbook, shipped))
        self.playbook = playbook
        self.takes = takes

    def _run(self, **params: Any) -> None:
        ctx = click.get_current_context()
        env = ctx.parent.info_name if ctx.parent is not None else ""
        sys.exit(run(str(env), self.playbook, params, merged_globals(ctx)))


def _epilog(playbook: str, shipped: bool) -> str:
    lines = ["\b", "Global options, before ENV or here: -i/--inventory PATH, -y/--yes, --json,",
             "-v/--verbose, --no-color (see runbook --help, with the exit codes)."]
    if not shipped:
        lines += ["\b", "A playbook of your own takes the options of a run; its steps decide which of them",
                  "mean something (--restore needs a rollback step, --to an upgrade, rehearse or rollback step)."]
    return "\n".join(lines)


class EnvGroup(click.Group):
    """``runbook ENV``: its commands are the built-ins and the playbooks (files in playbooks/)."""

    def __init__(self, env: str) -> None:
        super().__init__(env, params=global_options(hidden=True), context_settings=CONTEXT, no_args_is_help=False,
                         help=f"Run PLAYBOOK against the databases of environment '{env}'.",
                         subcommand_metavar="PLAYBOOK [OPTIONS]", options_metavar="")

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return command_for(cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return complete.playbook_names(merged_globals(ctx)["inventory_path"])

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, args)
        if not ctx._protected_args and not ctx.resilient_parsing:
            raise click.UsageError(f"missing PLAYBOOK after '{self.name}' (e.g. runbook {self.name} status)", ctx)
        return rest


def command_for(playbook: str) -> PlaybookCommand:
    """The command of ``playbook``: its own options if it is built in or shipped, the run options if
    it is a file of the user's (a name no file has is refused by the plan, with a suggestion)."""
    return PlaybookCommand(playbook, OPTIONS_OF.get(playbook, RUN))


def applies_to(option: str) -> list[str]:
    """The built-in and shipped commands that take ``option`` (``--to``), for an error's hint."""
    names = {"--" + n.replace("_", "-") for n in RUN} | {"--install", "--user"}
    if option not in names and option != "--limit":
        return []
    key = option.removeprefix("--").replace("-", "_")
    return [pb for pb, takes in OPTIONS_OF.items()
            if key in takes or (option == "--limit" and "count" in takes)]


def run(env: str, playbook: str, params: dict[str, Any], globals_: dict[str, Any]) -> int:
    """Options from the parsed command line, then the plan and the run (``running.execute``)."""
    from .context import Options
    from .running import _error, execute

    limits = params.get("limits") or ()
    options = Options(to=params.get("to"), dry_run=bool(params.get("dry_run")), yes=globals_["yes"],
                      restore=params.get("restore"), json=globals_["json_out"],
                      install=bool(params.get("install")), user=bool(params.get("user")),
                      ignore_window=bool(params.get("ignore_window")), limit=params.get("count"),
                      hosts=tuple(limits), shard=params.get("shard"), parallel=params.get("parallel") or 1,
                      canary=bool(params.get("canary")), rollback_all=bool(params.get("rollback_all")),
                      accept=tuple(params.get("accept") or ()), override=tuple(params.get("override") or ()),
                      verbose=globals_["verbose"], no_color=globals_["no_color"])
    inventory = Path(globals_["inventory_path"])
    if playbook == "schedule":  # built in, like status: no journal, no connection, no run lock
        from .errors import RunbookError
        from .schedule import command

        target = params.get("target")
        try:
            return command(inventory, env, (target,) if target else (), options, echo=click.echo)
        except RunbookError as exc:
            _error(options, exc)
            return exc.exit_code
    return execute(inventory, env, playbook, options, argv=sys.argv[1:])
