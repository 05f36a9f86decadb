"""``Migrations``: any Alembic project driven in-process, through the tunnel.

In-process, the Config is built in code from the project's ``alembic.ini`` (relative
``script_location``, ``version_locations`` and ``prepend_sys_path`` are taken from the ini's folder,
where the application runs ``alembic``), and the application's env.py runs unchanged whichever common
style it is written in: the shared connection in ``config.attributes["connection"]`` (fresh, no
transaction begun, session settings given at connect time), an engine from ``sqlalchemy.url``, or a
URL read from the environment variable ``alembic.url_env``. For the last two, runbook hands env.py a
URL of the tunnel's local end *without* the password; libpq finds the password in a 0600 PGPASSFILE
and the session settings (``lock_timeout``, ``statement_timeout``) in ``PGOPTIONS``, both set in
``os.environ`` only around the Alembic call. Before any revision runs, the connection env.py
configured is checked to be the one runbook targets. Success is never assumed: callers read
``alembic_version`` back.

In-process Alembic runs one host at a time (``ALEMBIC``): Alembic's ``context`` and ``op`` are
module-level proxies of the one migration in progress, and the working directory and the libpq
variables above belong to the whole process. So the hosts of a ``--parallel`` fleet take turns for
the Alembic call itself (the connection it uses is opened ahead, outside the turn); their backups,
checks, verification and everything else run side by side. ``alembic.remote`` needs no turn.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from . import appenv
from .errors import ConfigError, MigrationError
from .migrations import MigrationBackend, OnApply, Revision

ALEMBIC = threading.RLock()  # the in-process Alembic call of one host at a time (see above)


class Migrations(MigrationBackend):
    """One Alembic project (its alembic.ini), driven in-process through the tunnel."""

    kind = "in-process"

    def __init__(self, ini: Path, *, url_env: str | None = None, url_driver: str | None = None) -> None:
        self.ini = Path(ini)
        self.url_env = url_env
        self.url_driver = url_driver
        if not self.ini.is_file():
            raise ConfigError(f"alembic config {ini} not found")
        self._script: Any = None

    def config(self, *, connection: Any = None, buffer: Any = None, url: str | None = None,
               **attributes: Any) -> Any:
        from alembic.config import Config

        cfg = Config(str(self.ini), output_buffer=buffer, stdout=io.StringIO())
        try:
            appenv.absolute_paths(cfg, self.ini.parent)
        except ValueError as exc:
            raise ConfigError(f"alembic config {self.ini}: {exc}") from None
        cfg.attributes["configure_logger"] = False  # runbook owns logging (structlog)
        if connection is not None:
            cfg.attributes["connection"] = connection
        if url is not None:
            # configparser interpolates '%': a URL-encoded name would break set_main_option.
            cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
        cfg.attributes.update(attributes)
        return cfg

    @property
    def script(self) -> Any:
        if self._script is None:
            from alembic.script import ScriptDirectory
            from alembic.util import CommandError

            try:
                script = ScriptDirectory.from_config(self.config())
                script.revision_map.heads  # loads every revision file now, not half-way into a run
            except SyntaxError as exc:
                raise ConfigError(f"revision file does not compile: {exc.msg}", path=exc.filename,
                                  line=exc.lineno) from None
            except (CommandError, ImportError, OSError) as exc:
                raise ConfigError(f"alembic project of {self.ini}: {type(exc).__name__}: {exc}") from None
            except Exception as exc:  # a revision module that raises when imported
                where = _innermost_file(exc)
                raise ConfigError(f"alembic project of {self.ini}: loading {where or 'a revision'} "
                                  f"raised {type(exc).__name__}: {exc}") from None
            self._script = script
        return self._script

    @property
    def revision_map(self) -> Any:
        return self.script.revision_map

    @property
    def script_location(self) -> Path:
        return Path(self.script.dir)

    def revision(self, rev_id: str) -> Revision:
        sc = self.script.get_revision(rev_id)
        down = sc.down_revision
        downs = tuple(down) if isinstance(down, (tuple, list)) else ((down,) if down else ())
        declared = bool(getattr(sc.module, "irreversible", False))
        # Alembic lists a label on every descendant too: keep the revisions that declare one.
        inherited: set[str] = set()
        for parent in downs:
            inherited.update(self.script.get_revision(parent).branch_labels or ())
        labels = tuple(sorted(set(sc.branch_labels or ()) - inherited))
        return Revision(sc.revision, (sc.doc or "").strip(), downs, sc.is_merge_point, declared,
                        labels, sc.path)

    def source(self, rev: Revision) -> str | None:
        path = rev.path or self.script.get_revision(rev.id).path
        try:
            return Path(path).read_text(encoding="utf-8")
        except (OSError, TypeError):
            return None

    def verify_file(self, revision: str) -> Path:
        return self.script_location / "verify" / f"{revision}.yaml"

    # -- offline ------------------------------------------------------------------------------
    def offline_sql(self, current: Iterable[str], target: str) -> str:
        return self._offline("upgrade", tuple(current), target)

    def offline_downgrade_sql(self, current: Iterable[str], target: str) -> str:
        return self._offline("downgrade", tuple(current), target or "base")

    def _offline(self, direction: str, current: tuple[str, ...], target: str) -> str:
        buf = io.StringIO()
        with _turn(), self._app_environment(with_password=False) as url:
            cfg = self.config(buffer=buf, url=url)
            # Several starting heads are fine here (Alembic's --sql range takes one).
            self._run_env(cfg, direction, target, starting_rev=current or "base", as_sql=True)
        return buf.getvalue()

    # -- online -------------------------------------------------------------------------------
    def prepare(self, direction: str, settings: dict[str, str]) -> None:
        """The connection ``migrate`` will use, opened while the steps before it run."""
        ctx = self._bound()
        ctx.session.prepare_engine(f"{direction} {ctx.run_id}", settings)

    def migrate(self, direction: str, target: str, *, settings: dict[str, str],
                on_apply: OnApply | None = None) -> None:
        from . import postgres

        from .concurrently import policy
        from .units import pg_ms

        ctx = self._bound()
        purpose = f"{direction} {ctx.run_id}"
        eng = ctx.session.take_engine(purpose, settings) or \
            postgres.engine(ctx.endpoint, purpose=purpose, settings=settings)
        try:
            with _turn(), self._app_environment(with_password=True, settings=settings, purpose=purpose) as url, \
                    policy(pg_ms(ctx.locks.concurrently_timeout), ctx.log):
                self.run(direction, eng, target, on_apply, url=url, expect=ctx.endpoint)
        finally:
            eng.dispose()

    def run(self, direction: str, engine: Any, target: str, on_apply: OnApply | None = None, *,
            url: str | None = None, expect: Any = None) -> None:
        """Upgrade or downgrade on a fresh connection of ``engine`` (also handed to env.py)."""
        with _turn(), engine.connect() as conn:
            cfg = self.config(connection=conn, url=url)
            self._run_env(cfg, direction, target or "base", on_apply=on_apply, expect=expect)
            # The cookbook contract: the caller owns a shared connection and commits it.
            if conn.in_transaction():
                conn.commit()

    def _run_env(self, cfg: Any, direction: str, target: str, *, on_apply: OnApply | None = None,
                 expect: Any = None, starting_rev: Any = None, as_sql: bool = False) -> None:
        """What ``alembic.command.upgrade/downgrade`` do, with runbook's hooks in ``configure``."""
        from alembic.runtime.environment import EnvironmentContext
        from alembic.util import CommandError

        script = self.script
        if direction == "upgrade":
            def fn(rev: Any, context: Any) -> Any:
                return script._upgrade_revs(target, rev)
        else:
            def fn(rev: Any, context: Any) -> Any:
                return script._downgrade_revs(target, rev)

        env = EnvironmentContext(cfg, script, fn=fn, as_sql=as_sql, starting_rev=starting_rev,
                                 destination_rev=target)
        original = env.configure

        def configure(*args: Any, **kw: Any) -> Any:
            if not as_sql:
                appenv.check_connection(kw.get("connection") or (args[0] if args else None), expect)
            hooks: list[Any] = [_hook(on_apply)] if on_apply is not None else []
            theirs = kw.get("on_version_apply")
            if theirs:
                hooks.extend(theirs if isinstance(theirs, (list, tuple)) else [theirs])
            if hooks:
                kw["on_version_apply"] = hooks
            return original(*args, **kw)

        # The module-level ``alembic.context`` proxy calls this instance's attribute.
        env.configure = configure  # type: ignore[method-assign]
        with contextlib.chdir(self.ini.parent), env:
            try:
                script.run_env()
            except CommandError as exc:
                raise MigrationError(f"alembic: {exc}") from exc

    @contextlib.contextmanager
    def _app_environment(self, *, with_password: bool, settings: dict[str, str] | None = None,
                         purpose: str | None = None) -> Iterator[str]:
        """The URL env.py gets, and the libpq environment around the Alembic call."""
        ctx = self._ctx
        url = appenv.database_url(self.driver(), ctx.endpoint if ctx is not None else None)
        values: dict[str, str] = {}
        if self.url_env:
            values[self.url_env] = url
        if settings:
            values["PGOPTIONS"] = appenv.pg_options(settings)
        if purpose:
            from .postgres import APP_NAME

            values["PGAPPNAME"] = f"{APP_NAME}:{purpose}"[:63]
        with contextlib.ExitStack() as stack:
            if with_password and ctx is not None and ctx.endpoint.password is not None:
                values["PGPASSFILE"] = stack.enter_context(
                    appenv.local_pgpass(ctx.endpoint, ctx.env.state_dir, ctx.run_id))
            stack.enter_context(appenv.environ(values))
            yield url

    def driver(self) -> str:
        """The SQLAlchemy driver for the URL handed to env.py: the application's, if installed."""
        if self.url_driver:
            return self.url_driver
        raw = os.environ.get(self.url_env) if self.url_env else None
        if not raw:
            try:
                from configparser import ConfigParser

                parser = ConfigParser(interpolation=None)
                parser.read(self.ini)
                raw = parser.get("alembic", "sqlalchemy.url", fallback=None)
            except Exception:  # an unreadable ini is reported elsewhere
                raw = None
        return appenv.choose_driver(raw)


@contextlib.contextmanager
def _turn() -> Iterator[None]:
    """This thread's turn at in-process Alembic (a fleet's stop ends the wait for it)."""
    import time

    from . import interrupts

    asked = time.monotonic()
    interrupts.acquire(ALEMBIC)
    waited = time.monotonic() - asked
    if waited >= 0.05:  # another host of the fleet had it: say how long this one waited
        import structlog

        structlog.get_logger("runbook").info("alembic_turn_waited", waited_ms=int(waited * 1000))
    try:
        yield
    finally:
        ALEMBIC.release()


def _hook(on_apply: OnApply) -> Callable[..., None]:
    def on_version_apply(*, step: Any = None, heads: Any = None, **_: Any) -> None:
        rev = step.up_revision_id if step is not None else None
        on_apply(str(rev), tuple(sorted(heads or ())))
    return on_version_apply


def _innermost_file(exc: BaseException) -> str | None:
    """``file:line`` of the deepest frame of ``exc`` outside Alembic and the standard library."""
    import traceback

    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if "/alembic/" in frame.filename and "site-packages" in frame.filename:
            continue
        if frame.filename.startswith("<"):
            continue
        found = f"{frame.filename}:{frame.lineno}"
    return found
