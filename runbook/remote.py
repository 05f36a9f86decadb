"""The application's own Alembic, run on the SSH host inside its deployment (``alembic.remote``).

``alembic.remote`` is the command that runs the application's ``alembic`` there, e.g.
``cd /srv/rag-memory && .venv/bin/alembic`` or ``cd /srv/app && uv run alembic``; runbook appends
the subcommand. The revision graph comes from one ``alembic history -v`` (fed to Alembic's own
RevisionMap, so targets mean what they mean to Alembic); offline SQL from ``upgrade --sql``;
upgrade and downgrade are that command with the session settings in ``PGOPTIONS``. The database is
named by ``PGHOST``/``PGPORT``/``PGDATABASE``/``PGUSER`` (and, with ``alembic.url_env``, a URL
without password in that variable); the password is in a 0600 PGPASSFILE uploaded for the command
and removed after it, so nothing secret is on the remote command line. A lock timeout is recognised
in the command's output and retried like an in-process one. Revision files (to tell which ones have
no downgrade) and the verification files ``<script_location>/verify/<revision>.yaml`` are read from
the host.
"""

from __future__ import annotations

import base64
import posixpath
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable

from .errors import CommandFailed, ConfigError
from .appenv import pg_options
from .migrations import LOCK_NOT_AVAILABLE, MigrationBackend, OnApply, Revision
from .transports.base import quote

_MARK = "@@runbook"
_RUNNING = re.compile(r"Running (upgrade|downgrade) (.*?) -> ([^,\s]*)")
_ERROR_LINE = re.compile(r"^([\w.]+(?:Error|Exception|Exhausted|Violation|Timeout|NotAvailable)\w*)"
                         r"(?::|$)(.*)")
_DRIVER_ERROR = re.compile(r"\((?:psycopg2?|asyncpg|pg8000)[\w.]*\.(\w+)\)")
_LOCK_TIMEOUT = re.compile(r"LockNotAvailable|lock timeout|\b55P03\b")


class RemoteAlembicFailed(Exception):
    """The remote alembic command failed; ``sqlstate`` when the output names a database error."""

    def __init__(self, message: str, result: Any = None, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.result = result
        self.sqlstate = sqlstate


class RemoteMigrations(MigrationBackend):
    """``alembic.remote``: the application's Alembic on the host, bound to one host's run."""

    kind = "remote"

    def __init__(self, command: str, *, url_env: str | None = None, url_driver: str | None = None,
                 timeout: float = 6 * 3600.0) -> None:
        self.command = command.strip()
        self.url_env = url_env
        self.url_driver = url_driver or "postgresql+psycopg"
        self.timeout = timeout
        self._hosts: dict[str, dict[str, Any]] = {}  # shared by the bound copies: one cache per host
        self._tmp = tempfile.TemporaryDirectory(prefix="runbook-remote-")

    # -- talking to the host --------------------------------------------------------------------
    def _host(self) -> dict[str, Any]:
        ctx = self._bound()
        return self._hosts.setdefault(ctx.host.name, {})

    def _libpq_env(self, ctx: Any) -> dict[str, str]:
        """Where the database is, as the host sees it; never the password."""
        from sqlalchemy.engine import URL

        db = ctx.database
        env = {"PGHOST": db.host, "PGPORT": str(db.port), "PGDATABASE": db.name, "PGUSER": db.user}
        if self.url_env:
            env[self.url_env] = URL.create(self.url_driver, username=db.user, host=db.host, port=db.port,
                                           database=db.name).render_as_string(hide_password=False)
        return env

    def _alembic(self, args: str, *, env: dict[str, str] | None = None, timeout: float | None = None,
                 epilogue: str = "", secret: Any = None) -> Any:
        from .hostcmd import cleanup_trap

        ctx = self._bound()
        # The trap removes the command's PGPASSFILE however it ends, a stop by the job's watchdog
        # (the runner died) included: nobody on the control side is left to remove it then.
        line = f"{cleanup_trap()}; {self.command} {args}"
        if epilogue:
            line = f"{line}; rc=$?; {epilogue}; exit $rc"
        return ctx.transport.run(line, env={**self._libpq_env(ctx), **(env or {})},
                                 timeout=timeout or self.timeout, check=False, secret=secret)

    def _failed(self, what: str, result: Any) -> RemoteAlembicFailed:
        text = f"{result.stderr}\n{result.stdout}"
        line, code = error_line(text)
        if code is None and _LOCK_TIMEOUT.search(text):
            code = LOCK_NOT_AVAILABLE
        ctx = self._bound()
        return RemoteAlembicFailed(f"{what} on {ctx.host.name} exited {result.exited}: {line}",
                                   result=result, sqlstate=code)

    # -- the graph ------------------------------------------------------------------------------
    def _history(self) -> dict[str, Any]:
        cache = self._host()
        if "map" not in cache:
            from alembic.script.revision import Revision as AlembicRevision, RevisionMap

            result = self._alembic("history -v", timeout=300,
                                   epilogue=f"printf '\\n{_MARK}-cwd %s\\n' \"$PWD\"")
            if not result.ok:
                err = self._failed(f"'{self.command} history -v'", result)
                raise ConfigError(f"cannot read the migration history with alembic.remote: {err}",
                                  hint="check alembic.remote runs the application's alembic on the host")
            entries, cwd = parse_history(result.stdout)
            for e in entries:
                if e["path"] and not e["path"].startswith("/") and cwd:
                    e["path"] = posixpath.normpath(posixpath.join(cwd, e["path"]))
            declared = declared_labels(entries)
            revs = [AlembicRevision(e["id"], e["down"] or None, dependencies=e["depends"] or None,
                                    branch_labels=tuple(declared.get(e["id"], ())) or None) for e in entries]
            try:
                cache["map"] = RevisionMap(lambda: revs)
                cache["map"].heads  # noqa: B018 - builds the map now, so a broken history fails here
            except Exception as exc:
                raise ConfigError(f"the migration history on the host is inconsistent: {exc}") from None
            for e in entries:
                e["labels"] = declared.get(e["id"], [])
            cache["entries"] = {e["id"]: e for e in entries}
            cache["sources"] = {}
            self._fetch_verify_files(cache)
        return cache

    @property
    def revision_map(self) -> Any:
        return self._history()["map"]

    def revision(self, rev_id: str) -> Revision:
        e = self._history()["entries"][rev_id]
        return Revision(e["id"], e["doc"], tuple(e["down"]), len(e["down"]) > 1, False,
                        tuple(e["labels"]), e["path"])

    def source(self, rev: Revision) -> str | None:
        cache = self._history()
        if rev.id not in cache["sources"]:
            text = None
            if rev.path:
                try:
                    text = self._bound().transport.get_bytes(rev.path).decode("utf-8", "replace")
                except Exception:  # unreadable: treated as reversible (the downgrade itself will tell)
                    text = None
            cache["sources"][rev.id] = text
        return cache["sources"][rev.id]

    # -- verification files ---------------------------------------------------------------------
    def _verify_dirs(self, cache: dict[str, Any]) -> list[str]:
        dirs = []
        for e in cache["entries"].values():
            if e["path"]:
                folder = posixpath.join(posixpath.dirname(posixpath.dirname(e["path"])), "verify")
                if folder not in dirs:
                    dirs.append(folder)
        return dirs

    def _fetch_verify_files(self, cache: dict[str, Any]) -> None:
        """Copy every ``verify/*.yaml`` beside the host's migrations here, and validate them."""
        from . import verifyfiles as verify

        ctx = self._bound()
        local = Path(self._tmp.name) / re.sub(r"[^\w.-]", "_", ctx.host.name) / "verify"
        local.mkdir(parents=True, exist_ok=True)
        cache["verify_local"], cache["verify_remote"] = local, {}
        dirs = self._verify_dirs(cache)
        cache["verify_dir"] = dirs[0] if dirs else None
        if not dirs:
            return
        script = "; ".join(
            f"for f in {quote(d)}/*.yaml {quote(d)}/*.yml; do [ -f \"$f\" ] && "
            f"{{ printf '{_MARK}-file %s\\n' \"$f\"; base64 < \"$f\"; }}; done" for d in dirs) + "; true"
        result = ctx.transport.run(script, timeout=120)
        for remote_path, data in split_files(result.stdout):
            rev = posixpath.splitext(posixpath.basename(remote_path))[0]
            path = local / f"{rev}.yaml"
            path.write_bytes(data)
            cache["verify_remote"][rev] = remote_path
            try:
                verify.load_file(path)
            except ConfigError as exc:
                raise ConfigError(str(exc).replace(str(path), f"{ctx.host.name}:{remote_path}")) from None

    def verify_file(self, revision: str) -> Path:
        return Path(self._history()["verify_local"]) / f"{revision}.yaml"

    def verify_location(self, revision: str) -> str:
        cache = self._history()
        where = cache["verify_remote"].get(revision) or (
            posixpath.join(cache["verify_dir"], f"{revision}.yaml") if cache["verify_dir"] else
            f"<script_location>/verify/{revision}.yaml")
        return f"{self._bound().host.name}:{where}"

    def verify_files(self) -> dict[str, Path]:
        local = Path(self._history()["verify_local"])
        return {p.stem: p for p in sorted(local.glob("*.yaml"))}

    # -- offline SQL ----------------------------------------------------------------------------
    def offline_sql(self, current: Iterable[str], target: str) -> str:
        return self._offline("upgrade", tuple(current), target)

    def offline_downgrade_sql(self, current: Iterable[str], target: str) -> str:
        return self._offline("downgrade", tuple(current), target or "base")

    def _offline(self, direction: str, current: tuple[str, ...], target: str) -> str:
        # Alembic's --sql range takes one start; from several heads it renders a little more.
        spec = f"{current[0]}:{target}" if current else target
        result = self._alembic(f"{direction} --sql {quote(spec)}", timeout=300)
        if not result.ok:
            raise self._failed(f"'alembic {direction} --sql {spec}'", result)
        return str(result.stdout)

    # -- online ---------------------------------------------------------------------------------
    def migrate(self, direction: str, target: str, *, settings: dict[str, str],
                on_apply: OnApply | None = None) -> None:
        from .postgres import APP_NAME
        from .hostcmd import pg_env

        ctx = self._bound()
        env = {"PGOPTIONS": pg_options(settings), "PGAPPNAME": f"{APP_NAME}:{direction} {ctx.run_id}"[:63]}
        named, secret = pg_env(ctx)  # the password as a 0600 PGPASSFILE the command's script writes
        try:
            result = self._alembic(f"{direction} {quote(target or 'base')}", env={**named, **env},
                                   secret=secret)
        except CommandFailed as exc:  # pragma: no cover - check=False: only for transports that raise
            result = exc.result
        # Alembic logs "Running upgrade a -> b" as each revision starts: when the command failed,
        # the last one started is the one that failed.
        started = [right if verb == "upgrade" else left.split(",")[0].strip()
                   for verb, left, right in _RUNNING.findall(f"{result.stderr}\n{result.stdout}")]
        for rev in started if result.ok else started[:-1]:
            if on_apply is not None and rev:
                on_apply(rev, ())
        if not result.ok:
            raise self._failed(f"'alembic {direction} {target}'", result)


def parse_history(text: str) -> tuple[list[dict[str, Any]], str | None]:
    """The entries of ``alembic history -v`` (and the working directory printed after it)."""
    entries: list[dict[str, Any]] = []
    cwd = None
    cur: dict[str, Any] | None = None
    for raw in text.splitlines():
        line = raw.rstrip()
        if line.startswith(f"{_MARK}-cwd "):
            cwd = line.split(" ", 1)[1].strip()
            continue
        if line.startswith("Rev: "):
            cur = {"id": line[5:].split()[0], "down": [], "depends": [], "labels": [], "path": None,
                   "doc": ""}
            entries.append(cur)
            continue
        if cur is None:
            continue
        key, sep, value = line.partition(": ")
        if sep and key in ("Parent", "Merges"):
            cur["down"] = [] if value.strip() == "<base>" else [v.strip() for v in value.split(",") if v.strip()]
        elif sep and key == "Also depends on":
            cur["depends"] = [v.strip() for v in value.split(",") if v.strip()]
        elif sep and key == "Branch names":
            cur["labels"] = [v.strip() for v in value.split(",") if v.strip()]
        elif sep and key == "Path":
            cur["path"] = value.strip()
        elif line.startswith("    ") and not cur["doc"] and line.strip():
            cur["doc"] = line.strip()
    if not entries and text.strip():
        raise ConfigError("alembic.remote's 'history -v' printed no revisions: "
                          + text.strip().splitlines()[-1][:200])
    return entries, cwd


def declared_labels(entries: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Branch labels where they are declared (history shows them inherited by descendants too)."""
    by_id = {e["id"]: e for e in entries}
    out: dict[str, list[str]] = {}
    for e in entries:
        inherited: set[str] = set()
        for d in e["down"]:
            inherited.update(by_id[d]["labels"] if d in by_id else ())
        own = [lb for lb in e["labels"] if lb not in inherited]
        if own:
            out[e["id"]] = own
    return out


def split_files(text: str) -> list[tuple[str, bytes]]:
    """``@@runbook-file PATH`` + base64 blocks back into (path, content)."""
    out: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith(f"{_MARK}-file "):
            out.append((line.split(" ", 1)[1], []))
        elif out:
            out[-1][1].append(line.strip())
    return [(path, base64.b64decode("".join(chunks))) for path, chunks in out]


def error_line(text: str) -> tuple[str, str | None]:
    """The line of a Python traceback that says what failed, and the SQLSTATE it names if any."""
    import psycopg.errors

    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    found = None
    for ln in reversed(lines):
        if _ERROR_LINE.match(ln) or ln.startswith(("FAILED:", "ERROR ")):
            found = ln
            break
    found = found or (lines[-1] if lines else "no output")
    code = None
    m = _DRIVER_ERROR.search(found) or re.search(r"errors\.(\w+)", found)
    if m:
        cls = getattr(psycopg.errors, m.group(1), None)
        code = getattr(cls, "sqlstate", None)
    return found[:400], code
