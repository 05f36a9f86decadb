"""Benchmarks of runbook's speed and footprint targets (DESIGN.md "Speed and footprint").

Not part of the test suite (pytest's testpaths is ``tests``): run them with

    cd /work/main && UV_PYTHON_DOWNLOADS=never uv run pytest bench -s -q -p no:cacheprovider

They reuse the suite's fixtures (a real PostgreSQL cluster and a real sshd, both started here), time
the real ``runbook`` command in subprocesses against scripted-by-hand baselines, print a results
table and write ``bench/results.md``. Nothing here asserts on timing: a missed target is reported
(``OVER``), never failed.
"""

from __future__ import annotations

import json
import os
import platform
import pwd
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))



from psycopg import sql  # noqa: E402

if TYPE_CHECKING:  # imported for real by pytest_plugins (importing them first defeats assertion rewriting)
    from tests.fixtures.pg import PgServer
    from tests.fixtures.project import Project
    from tests.fixtures.sshd import SSHServer

PASSWORD_ENV = "PRODUCTION_PASSWORD"  # tests.fixtures.project.PASSWORD_ENV

RUNBOOK = ROOT / ".venv" / "bin" / "runbook"
ALEMBIC = ROOT / ".venv" / "bin" / "alembic"
# BENCH_RESULTS: another file for a partial run (``-k slowlink``), so it does not replace the full
# table of results.md with a few lines.
RESULTS_MD = Path(os.environ.get("BENCH_RESULTS") or Path(__file__).resolve().parent / "results.md")

# Repetitions of every timed command (the median is reported); BENCH_RUNS overrides.
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
# Data volume multiplier of the "big" database (1 = 30k collections, 60k documents, 300k chunks:
# ~140 MB, a pg_dump -Fc of ~3 s on a 2-core machine).
SCALE = float(os.environ.get("BENCH_SCALE", "1"))


# -- the results table ------------------------------------------------------------------------

@dataclass
class Row:
    key: str
    what: str
    value: str
    target: str
    ok: bool | None  # None: reported, no target
    detail: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)

    def add(self, key: str, what: str, value: str, target: str, ok: bool | None, detail: str = "") -> None:
        self.rows.append(Row(key, what, value, target, ok, detail))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def table(self) -> str:
        lines = ["| # | measure | value | target | result |", "| --- | --- | --- | --- | --- |"]
        for r in self.rows:
            verdict = "—" if r.ok is None else ("pass" if r.ok else "**OVER**")
            lines.append(f"| {r.key} | {r.what} | {r.value} | {r.target} | {verdict} |")
        return "\n".join(lines)

    def markdown(self) -> str:
        head = [
            "# runbook benchmarks: results",
            "",
            "Produced by `uv run pytest bench -s -q -p no:cacheprovider` (see bench/README.md for what",
            "each number means). Medians of the repeated runs; timing is never asserted.",
            "",
        ]
        head += [f"- {k}: {v}" for k, v in self.facts.items()]
        body = ["", self.table(), ""]
        details = [r for r in self.rows if r.detail]
        if details:
            body += ["## Details", ""]
            for r in details:
                body += [f"### {r.key}. {r.what}", "", r.detail.rstrip(), ""]
        if self.notes:
            body += ["## Notes", ""] + [f"- {n}" for n in self.notes] + [""]
        return "\n".join(head + body)


_REPORT = Report()


@pytest.fixture(scope="session")
def report(pg_server: PgServer) -> Report:
    with pg_server.admin() as conn:
        row = conn.execute("SHOW server_version").fetchone()
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1048576:.1f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    _REPORT.facts.update({
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, nproc {os.cpu_count()}{mem}" + (f", {cpu}" if cpu else ""),
        "os": platform.platform(),
        "python": platform.python_version(),
        "postgresql": f"server {row[0] if row else '?'} (fsync=off, the test fixture's cluster); "
                      f"client {_version('pg_dump')}",
        "openssh": _version("ssh", "-V"),
        "runs per measure": f"{RUNS} (median reported)",
        "data scale": f"{SCALE:g} (BENCH_SCALE)",
        "quiet machine": f"each timed run waits up to {QUIET_WAIT:g} s for CPUs ≤ {QUIET_BUSY:.0%} busy "
                         "(BENCH_QUIET_WAIT, BENCH_QUIET_BUSY)",
    })
    return _REPORT


def _version(program: str, flag: str = "--version") -> str:
    try:
        out = subprocess.run([program, flag], capture_output=True, text=True, check=False)
    except OSError:
        return "missing"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _REPORT.rows:
        return
    if BUSY_SEEN:
        noisy = sum(1 for b in BUSY_SEEN if b > QUIET_BUSY)
        _REPORT.facts["machine busy before the timed runs"] = (
            f"median {statistics.median(BUSY_SEEN):.0%}, max {max(BUSY_SEEN):.0%} of the CPUs; "
            f"{noisy} of {len(BUSY_SEEN)} runs started on a busy machine"
            + (" (other work was running: those timings are noisy)" if noisy else ""))
    RESULTS_MD.write_text(_REPORT.markdown())
    terminalreporter.write_sep("=", "runbook benchmarks")
    for k, v in _REPORT.facts.items():
        terminalreporter.write_line(f"{k}: {v}")
    terminalreporter.write_line("")
    terminalreporter.write_line(_REPORT.table())
    for n in _REPORT.notes:
        terminalreporter.write_line(f"- {n}")
    terminalreporter.write_line(f"\nwritten: {RESULTS_MD}")


# -- timing helpers ---------------------------------------------------------------------------

@dataclass
class Timed:
    wall: float
    returncode: int
    maxrss_kb: int
    stdout: str
    stderr: str
    cpu: float = 0.0  # user + system seconds of the process itself

    def check(self, what: str) -> "Timed":
        if self.returncode != 0:
            pytest.fail(f"{what} exited {self.returncode}:\n{self.stdout[-3000:]}\n{self.stderr[-3000:]}")
        return self


def timed(argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | str | None = None,
          stdin: str | None = None, quiet: bool = True) -> Timed:
    """Run ``argv`` and return its wall time and its own peak RSS (wait4, not RUSAGE_CHILDREN).

    With ``quiet``, first wait for the machine to be idle (``wait_quiet``)."""
    if quiet:
        wait_quiet()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(list(argv), env=env, cwd=cwd, stdout=out, stderr=err,
                                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL)
        if stdin is not None:
            assert proc.stdin is not None
            proc.stdin.write(stdin.encode())
            proc.stdin.close()
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Timed(wall, proc.returncode, int(usage.ru_maxrss), out.read().decode(errors="replace"),
                     err.read().decode(errors="replace"), usage.ru_utime + usage.ru_stime)


def _cpu_ticks() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields[:8]), idle


def busy_fraction(seconds: float = 0.5) -> float:
    """The share of the machine's CPUs busy over ``seconds`` (0..1), whoever uses them."""
    total0, idle0 = _cpu_ticks()
    time.sleep(seconds)
    total1, idle1 = _cpu_ticks()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


# Other work on the machine (another test session, say) makes timings meaningless: before each
# timed run, wait up to BENCH_QUIET_WAIT seconds for the CPUs to be mostly idle, and record how busy
# they were. BENCH_QUIET_BUSY is the busy share (0..1) counted as quiet.
QUIET_WAIT = float(os.environ.get("BENCH_QUIET_WAIT", "60"))
QUIET_BUSY = float(os.environ.get("BENCH_QUIET_BUSY", "0.15"))
BUSY_SEEN: list[float] = []


def wait_quiet() -> float:
    deadline = time.monotonic() + QUIET_WAIT
    while True:
        busy = busy_fraction()
        if busy <= QUIET_BUSY or time.monotonic() >= deadline:
            BUSY_SEEN.append(busy)
            return busy
        time.sleep(1.0)


def children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def fmt_s(seconds: float) -> str:
    return f"{seconds:.3f} s" if seconds < 10 else f"{seconds:.2f} s"


def spread(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


# -- the benchmark project --------------------------------------------------------------------



BIG_DATA_SQL = """
INSERT INTO collections (name, description)
SELECT 'collection-' || i,
       CASE WHEN i % 3 = 0 THEN NULL
            WHEN i % 7 = 0 THEN '   '
            ELSE 'Collection ' || i || ' of the benchmark corpus, ' || md5(i::text) END
FROM generate_series(1, {ncoll}) AS i;

INSERT INTO documents (collection_id, title, content, metadata)
SELECT 1 + (i % {ncoll}), 'Document ' || i || ': ' || left(md5(i::text), 12),
       repeat(md5(i::text) || ' ' || md5((i + 1)::text) || ' ', 6),
       jsonb_build_object('source', 'bench/' || (i % 97), 'n', i,
                          'lang', CASE WHEN i % 2 = 0 THEN 'en' ELSE 'fr' END)
FROM generate_series(1, {ndocs}) AS i;

INSERT INTO chunks (document_id, chunk_index, content, embedding)
SELECT 1 + (i / {per}), i % {per}, repeat(md5((i * 7)::text) || ' ', 4),
       ARRAY[sin(i), cos(i), sin(2 * i), cos(2 * i), sin(3 * i), cos(3 * i), sin(5 * i),
             cos(5 * i), sin(7 * i), cos(7 * i), sin(11 * i), cos(11 * i)]::real[]
FROM generate_series(0, {nchunks} - 1) AS i;
"""


class BenchDatabases:
    """Template databases (big data at 0001 and at 0002) and one working database reset from them.

    Every timed run starts from a byte-identical copy (``CREATE DATABASE ... TEMPLATE ... STRATEGY
    FILE_COPY``), vacuumed and frozen beforehand so no run pays for hint bits the previous one set.
    """

    def __init__(self, server: PgServer, name: str) -> None:
        self.server = server
        self.name = name
        from tests.fixtures.pg import PgDatabase

        self.db = PgDatabase(server=server, name=name)
        self.templates: dict[str, str] = {}
        self.sizes: dict[str, str] = {}

    def _create(self, name: str, template: str | None = None) -> None:
        with self.server.admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            if template is None:
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(self.server.user)))
            else:
                conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {} STRATEGY FILE_COPY").format(
                    sql.Identifier(name), sql.Identifier(template), sql.Identifier(self.server.user)))

    def _upgrade(self, dbname: str, rev: str) -> None:
        from alembic import command
        from alembic.config import Config

        cfg = Config(str(ROOT / "runbook" / "example" / "alembic.ini"))
        cfg.attributes["configure_logger"] = False
        engine = self.server.engine(dbname)
        try:
            with engine.connect() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, rev)
                conn.commit()
        finally:
            engine.dispose()

    def template(self, kind: str) -> str:
        """``big1``/``big2``: the big data set at 0001 / upgraded to 0002; ``small1``: sample data."""
        if kind in self.templates:
            return self.templates[kind]
        name = f"bench_tmpl_{kind}"
        if kind == "small1":
            self._create(name)
            self._upgrade(name, "0001")
            from runbook.embedded import sample_data_sql

            self.server.psql(name, sample_data_sql())
        elif kind == "big1":
            self._create(name)
            self._upgrade(name, "0001")
            ncoll, ndocs = int(30_000 * SCALE), int(60_000 * SCALE)
            per = 5
            self.server.psql(name, BIG_DATA_SQL.format(ncoll=ncoll, ndocs=ndocs, per=per,
                                                       nchunks=ndocs * per))
        elif kind == "big2":
            self._create(name, self.template("big1"))
            self._upgrade(name, "0002")
        else:
            raise KeyError(kind)
        with self.server.admin(name) as conn:
            conn.execute("VACUUM (FREEZE, ANALYZE)")
            row = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))").fetchone()
            counts = conn.execute(
                "SELECT (SELECT count(*) FROM collections), (SELECT count(*) FROM documents), "
                "(SELECT count(*) FROM chunks)").fetchone()
        assert row is not None and counts is not None
        self.sizes[kind] = (f"{row[0]} ({counts[0]:,} collections, {counts[1]:,} documents, "
                            f"{counts[2]:,} chunks)")
        self.templates[kind] = name
        return name

    def reset(self, kind: str) -> None:
        """The working database, a fresh copy of template ``kind``; then a checkpoint."""
        self._create(self.name, self.template(kind))
        with self.server.admin() as conn:
            conn.execute("CHECKPOINT")

    def drop_all(self) -> None:
        with self.server.admin() as conn:
            for name in [self.name, *self.templates.values()]:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@dataclass
class Bench:
    """The project runbook runs against, its databases, and what a hand-written script needs."""

    project: Project
    dbs: BenchDatabases
    sshd: SSHServer
    server: PgServer
    host_home: Path
    host_pgpass: Path      # on the "host" (the sshd user's home), prepared before any timing
    local_pgpass: Path     # on the control machine, for psql through the tunnel

    def runbook_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOOK_")}
        env[PASSWORD_ENV] = self.server.password
        return env

    def runbook(self, *args: str, quiet: bool = True) -> Timed:
        argv = [str(RUNBOOK), "--inventory", str(self.project.inventory), "--yes", *args]
        return timed(argv, env=self.runbook_env(), cwd=self.project.dir, quiet=quiet)

    def ssh_argv(self, *extra: str) -> list[str]:
        s = self.sshd
        return ["ssh", "-F", "/dev/null", "-i", s.key_path, "-o", f"UserKnownHostsFile={s.known_hosts_path}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                "-o", "LogLevel=ERROR", "-p", str(s.port), *extra, f"{s.user}@{s.host}"]

    def as_host_user(self, argv: Sequence[str]) -> list[str]:
        """A command run directly on the "host" as the SSH login user (no SSH): the raw baselines."""
        if os.geteuid() == 0 and self.sshd.user != "root":
            return ["runuser", "-u", self.sshd.user, "--", *argv]
        return list(argv)

    def host_env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.host_home),
                "PGPASSFILE": str(self.host_pgpass), "LANG": "C.UTF-8"}

    def conn_args(self) -> list[str]:
        return ["-h", self.server.host, "-p", str(self.server.port), "-U", self.server.user,
                "-d", self.dbs.name, "--no-password"]

    def clear_backups(self) -> None:
        folder = self.project.backup_dir
        if folder.exists():
            for p in folder.iterdir():
                p.unlink()

    def events(self) -> list[dict[str, Any]]:
        return self.project.events()


@pytest.fixture(scope="session")
def bench(tmp_path_factory: pytest.TempPathFactory, pg_server: PgServer, sshd: SSHServer) -> Iterator[Bench]:
    from tests.fixtures.project import Project, host_dir

    work = tmp_path_factory.mktemp("bench")
    dbs = BenchDatabases(pg_server, "bench_rag")
    backups = host_dir("runbook-bench-backups-", sshd.user)
    project = Project(work, dbs.db, sshd, backups / "rag_memory")
    project.write_inventory()
    # Any host/port/database: the tunnel's local port is only known when it is up.
    line = "*:*:*:*:" + pg_server.password.replace("\\", "\\\\").replace(":", "\\:") + "\n"
    host_home = Path(sshd.home)
    host_pgpass = host_home / f".bench-pgpass-{os.getpid()}"
    host_pgpass.write_text(line)
    host_pgpass.chmod(0o600)
    if os.geteuid() == 0:
        entry = pwd.getpwnam(sshd.user)
        os.chown(host_pgpass, entry.pw_uid, entry.pw_gid)
    local_pgpass = work / "pgpass"
    local_pgpass.write_text(line)
    local_pgpass.chmod(0o600)
    try:
        yield Bench(project, dbs, sshd, pg_server, host_home, host_pgpass, local_pgpass)
    finally:
        host_pgpass.unlink(missing_ok=True)
        shutil.rmtree(backups, ignore_errors=True)
        dbs.drop_all()


def quote(*parts: str) -> str:
    return " ".join(shlex.quote(p) for p in parts)


def load_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
