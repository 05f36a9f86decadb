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
        "data scale": f"{SCALE:g} (BENCH_SCALE)"
                      + (f"; cluster and templates kept in {KEEP_PGDATA} (BENCH_PGDATA)" if KEEP_PGDATA else ""),
        "niceness of the bench and everything it started (sshd, PostgreSQL, runbook, the raw tools)":
            f"{os.nice(0)}; scheduler autogroup: {_autogroup()}",
        "quiet machine": f"each timed run waits up to {QUIET_WAIT:g} s for CPUs ≤ {QUIET_BUSY:.0%} busy "
                         "(BENCH_QUIET_WAIT, BENCH_QUIET_BUSY)",
    })
    return _REPORT


def _autogroup() -> str:
    """With kernel.sched_autogroup_enabled, a process's nice only counts within its session's
    autogroup: the autogroup's own nice (/proc/self/autogroup) is what weighs against other sessions."""
    try:
        enabled = Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
        return Path("/proc/self/autogroup").read_text().strip() if enabled else "disabled"
    except OSError:
        return "unknown"


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
    if LOAD_SEEN:
        _REPORT.facts["load average (1 min) before the timed runs"] = (
            f"median {statistics.median(LOAD_SEEN):.2f}, min {min(LOAD_SEEN):.2f}, max {max(LOAD_SEEN):.2f} "
            f"on {os.cpu_count()} CPUs ({len(LOAD_SEEN)} runs)")
    if STEAL_SEEN:
        _REPORT.facts["CPU time stolen by the hypervisor during the timed runs (steal)"] = (
            f"median {statistics.median(STEAL_SEEN):.1%}, max {max(STEAL_SEEN):.1%} ({len(STEAL_SEEN)} runs)")
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
    steal: float = 0.0  # share of the machine's CPU time the hypervisor took during the run (0..1)

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
        ticks0 = _stat_ticks()
        started = time.perf_counter()
        proc = subprocess.Popen(list(argv), env=env, cwd=cwd, stdout=out, stderr=err,
                                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL)
        if stdin is not None:
            assert proc.stdin is not None
            proc.stdin.write(stdin.encode())
            proc.stdin.close()
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        ticks1 = _stat_ticks()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        steal = _steal_share(ticks0, ticks1)
        STEAL_SEEN.append(steal)
        return Timed(wall, proc.returncode, int(usage.ru_maxrss), out.read().decode(errors="replace"),
                     err.read().decode(errors="replace"), usage.ru_utime + usage.ru_stime, steal)


def _stat_ticks() -> list[int]:
    """The machine's CPU time so far (/proc/stat): user nice system idle iowait irq softirq steal."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return fields + [0] * (8 - len(fields))


def _steal_share(before: list[int], after: list[int]) -> float:
    """Of the CPU time between two readings, the share the hypervisor gave to someone else (steal):
    on a VM, the host's other guests slowing this one down, which no quiet wait inside it can see."""
    total = sum(after) - sum(before)
    return (after[7] - before[7]) / total if total > 0 else 0.0


# CPU steal during each timed run (Timed.steal): reported with the results
STEAL_SEEN: list[float] = []


def _cpu_ticks() -> tuple[int, int]:
    fields = _stat_ticks()
    return sum(fields), fields[3] + fields[4]


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


LOAD_SEEN: list[float] = []  # the 1-minute load average before each timed run


def load1() -> float:
    """The 1-minute load average (/proc/loadavg): on a shared machine, how much else was running."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def wait_quiet() -> float:
    deadline = time.monotonic() + QUIET_WAIT
    while True:
        busy = busy_fraction()
        if busy <= QUIET_BUSY or time.monotonic() >= deadline:
            BUSY_SEEN.append(busy)
            LOAD_SEEN.append(load1())
            return busy
        time.sleep(1.0)


def loads_line(loads: dict[str, list[float]]) -> str:
    """``who: l1, l2, ...`` for each kind of run: the load average each one started under."""
    return "; ".join(f"{who} {', '.join(f'{v:.2f}' for v in values)}" for who, values in loads.items() if values)


def steal_line(steals: dict[str, list[float]]) -> str:
    """``who: s1, s2, ...``: the share of CPU time the hypervisor took during each run."""
    return "; ".join(f"{who} {', '.join(f'{v:.1%}' for v in values)}" for who, values in steals.items() if values)


def children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def paired(ours: Sequence[float], theirs: Sequence[float]) -> list[float]:
    """Run i against run i (the order alternates between runs): steadier than a difference of
    medians when single runs spread by seconds."""
    return [a - b for a, b in zip(ours, theirs)]


def fmt_s(seconds: float) -> str:
    return f"{seconds:.3f} s" if seconds < 10 else f"{seconds:.2f} s"


def spread(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


# -- priority under sched_autogroup ----------------------------------------------------------------

class AutogroupNice:
    """Give every session the bench starts the scheduling priority of the bench's own.

    With ``kernel.sched_autogroup_enabled`` (Debian's default), each session (``setsid``) is a
    scheduling group of its own at nice 0, and a process's nice only counts within its group: run
    under ``nice -n -15``, the bench still shares the CPUs equally with every other session on the
    machine, and each SSH session sshd opens for runbook (``pg_dump`` on the "host") is a new group
    at nice 0. When the bench's own group has a nice (``echo -15 > /proc/self/autogroup`` before
    starting it, as root), this thread gives that nice to the group of every process descended from
    the bench whose group differs (the SSH sessions, and the raw commands, which ``Bench.as_host_user``
    starts in a session of their own for the same reason): runbook and the raw tools then run at the
    same priority, each in a session of its own."""

    def __init__(self, interval: float = 0.05, also: Sequence[int] = ()) -> None:
        import threading

        self.interval = interval
        self.also = set(also)  # more trees (the PostgreSQL server: pg_ctl starts it in a session of its own)
        self.nice = self._group(os.getpid())[1]
        self.done: set[str] = set()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="autogroup-nice", daemon=True)

    @staticmethod
    def _group(pid: int | str) -> tuple[str, int]:
        name, _, nice = Path(f"/proc/{pid}/autogroup").read_text().split()
        return name, int(nice)

    @staticmethod
    def enabled() -> bool:
        try:
            return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
        except OSError:
            return False

    def start(self) -> "AutogroupNice":
        if self.nice != 0:
            self.done.add(self._group(os.getpid())[0])
            self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    def _loop(self) -> None:
        me = os.getpid()
        while not self.stopped.wait(self.interval):
            parent: dict[int, int] = {}
            for entry in os.scandir("/proc"):
                if entry.name.isdigit():
                    try:
                        stat = Path(f"/proc/{entry.name}/stat").read_text()
                        parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
                    except (OSError, ValueError, IndexError):
                        continue
            for pid in parent:
                p, hops = pid, 0
                while p in parent and p != me and p not in self.also and hops < 64:
                    p, hops = parent[p], hops + 1
                if (p != me and p not in self.also) or pid == me:
                    continue
                try:
                    group, nice = self._group(pid)
                    if group not in self.done and nice != self.nice:
                        Path(f"/proc/{pid}/autogroup").write_text(str(self.nice))
                    self.done.add(group)
                except (OSError, ValueError):
                    continue


# -- a cluster kept between sessions (BENCH_PGDATA) ---------------------------------------------

# BENCH_PGDATA=DIR: the benchmarks' PostgreSQL cluster lives in DIR and outlives the session
# (stopped at its end, started again by the next one), and so do the template databases built in
# it: a big data set (BENCH_SCALE=8 is ~1 GB) is generated once, not at every session.
KEEP_PGDATA = os.environ.get("BENCH_PGDATA", "")


def kept_pg_server(base: Path) -> Iterator[PgServer]:
    """The suite's ``pg_server``, but in ``base`` (initdb'd the first time) and not deleted."""
    from tests.fixtures.pg import APP_PASSWORD, APP_USER, SUPERUSER, PgServer, _free_port, _run
    from runbook.embedded import find_bindir

    bindir = find_bindir()
    if bindir is None:
        pytest.fail("PostgreSQL server binaries not found")
    base.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        owner = pwd.getpwnam(SUPERUSER)
        os.chown(base, owner.pw_uid, owner.pw_gid)
    data_dir, socket_dir, log_file = base / "data", base / "run", base / "postgres.log"
    pg_ctl = str(bindir / "pg_ctl")
    if not (data_dir / "PG_VERSION").exists():
        shutil.rmtree(data_dir, ignore_errors=True)
        _run(["mkdir", "-p", "-m", "700", str(socket_dir)], "mkdir", base)
        _run([str(bindir / "initdb"), "-D", str(data_dir), "--no-sync", "-E", "UTF8", "--no-locale",
              f"--username={SUPERUSER}", "--auth-local=trust", "--auth-host=scram-sha-256"], "initdb", base)
    port = _free_port()
    options = shlex.join(["-c", "listen_addresses=127.0.0.1", "-c", f"port={port}", "-k", str(socket_dir),
                          "-c", "fsync=off"])
    _run([pg_ctl, "-D", str(data_dir), "-l", str(log_file), "-w", "-o", options, "start"], "pg_ctl start", base)
    try:
        server = PgServer(host="127.0.0.1", port=port, socket_dir=socket_dir, bindir=bindir, data_dir=data_dir)
        with server.admin() as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (APP_USER,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(sql.SQL(verb + " ROLE {} LOGIN NOCREATEDB PASSWORD {}").format(
                sql.Identifier(APP_USER), sql.Literal(APP_PASSWORD)))
        yield server
    finally:
        _run([pg_ctl, "-D", str(data_dir), "-m", "fast", "-w", "stop"], "pg_ctl stop", base)


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
        tag = f"runbook bench template {kind}, BENCH_SCALE={SCALE:g}; "
        if KEEP_PGDATA:  # built by an earlier session, complete (the comment is its last statement)
            with self.server.admin() as conn:
                row = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                                   "WHERE datname = %s", (name,)).fetchone()
            if row is not None and row[0] and str(row[0]).startswith(tag):
                self.sizes[kind] = str(row[0])[len(tag):]
                self.templates[kind] = name
                return name
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
        with self.server.admin() as conn:
            conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(name), sql.Literal(tag + self.sizes[kind])))
        self.templates[kind] = name
        return name

    def reset(self, kind: str) -> None:
        """The working database, a fresh copy of template ``kind``; then a checkpoint, and ``sync``.

        The cluster runs with ``fsync=off``: the copy (1.1 GB at BENCH_SCALE=8) stays dirty in the
        page cache, and the kernel writes it back some 30 s later (``vm.dirty_expire_centisecs``),
        in the middle of whichever timed run comes next, runbook's or the raw tool's, unevenly. The
        copy is the bench's set-up, not either's work, so it is on disk before the timing starts."""
        self._create(self.name, self.template(kind))
        with self.server.admin() as conn:
            conn.execute("CHECKPOINT")
        os.sync()
        self.autovacuum_idle()

    def autovacuum_idle(self, limit: float = 60.0) -> None:
        """Wait (up to ``limit`` s) until no autovacuum worker runs: a database restored just before
        (a raw run's copy, a swap's) is analyzed and vacuumed by autovacuum within the minute, seconds
        of CPU and I/O that would land in whichever timed run comes next."""
        deadline = time.monotonic() + limit
        with self.server.admin() as conn:
            while time.monotonic() < deadline:
                row = conn.execute("SELECT count(*) FROM pg_stat_activity "
                                   "WHERE backend_type = 'autovacuum worker'").fetchone()
                if row is None or row[0] == 0:
                    return
                time.sleep(0.5)

    def drop_all(self) -> None:
        """The working database, and the templates unless the cluster is kept (BENCH_PGDATA)."""
        with self.server.admin() as conn:
            for name in [self.name, *([] if KEEP_PGDATA else self.templates.values())]:
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
        """A command run directly on the "host" as the SSH login user (no SSH): the raw baselines.
        In a session of its own (``setsid``), as sshd starts runbook's commands: under
        sched_autogroup, the same scheduling (``AutogroupNice``)."""
        setsid = ["setsid", "-w"] if shutil.which("setsid") else []
        if os.geteuid() == 0 and self.sshd.user != "root":
            return [*setsid, "runuser", "-u", self.sshd.user, "--", *argv]
        return [*setsid, *argv]

    def over_ssh(self, argv: Sequence[str], *ssh_options: str) -> list[str]:
        """The same command started through the OpenSSH client, in an SSH session on the "host" as
        runbook's are, with the bench's password file there: the raw tools "scripted by hand"."""
        return [*self.ssh_argv(*ssh_options), f"PGPASSFILE=$HOME/{self.host_pgpass.name} " + quote(*argv)]

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
        postmaster = [int((pg_server.data_dir / "postmaster.pid").read_text().split()[0])]
    except (OSError, ValueError, IndexError):
        postmaster = []
    priority = AutogroupNice(also=postmaster).start() if AutogroupNice.enabled() else None
    try:
        yield Bench(project, dbs, sshd, pg_server, host_home, host_pgpass, local_pgpass)
    finally:
        if priority is not None:
            priority.stop()
        host_pgpass.unlink(missing_ok=True)
        shutil.rmtree(backups, ignore_errors=True)
        dbs.drop_all()


def quote(*parts: str) -> str:
    return " ".join(shlex.quote(p) for p in parts)


def load_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
