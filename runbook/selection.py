"""Which hosts of an environment a command runs on: ``--limit PATTERN`` and ``--shard K/N``.

``--limit`` takes host names or shell-style globs (``tenant-*``, ``db[12]``), comma-separated or
repeated; every pattern must match at least one host (a typo is an error, exit 2, not a silently
smaller fleet). ``--shard K/N`` keeps the hosts whose shard is K, numbered 1..N like a CI matrix's
index (GitLab's ``CI_NODE_INDEX``); a Kubernetes Indexed Job's 0-based ``JOB_COMPLETION_INDEX`` is
passed as ``--shard $((JOB_COMPLETION_INDEX + 1))/N``. ``--limit`` applies first, then ``--shard``.

A host's shard depends on its name alone, never on the inventory's order: Jump Consistent Hash
(Lamping & Veach, 2014) of the first 8 bytes of the SHA-256 of the name. Adding or removing a host
moves no other host; going from N to N+1 shards moves only about 1/(N+1) of the hosts, each to the
new shard. So several control machines (CI jobs, pods) given the same inventory and N agree on who
runs what without talking to each other, and if two runs ever overlap, each database's run lock
refuses the second (exit 4 for that host). It is ten lines, written out here rather than taken from
a package: the published algorithm, with nothing to configure.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from typing import Any

from .errors import ConfigError

SHARD = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


def patterns(values: tuple[str, ...] | list[str]) -> list[str]:
    """``--limit`` values, comma-separated or repeated, as a list of patterns."""
    out: list[str] = []
    for value in values:
        parts = [p.strip() for p in str(value).split(",")]
        if not any(parts):
            raise ConfigError(f"--limit '{value}': give host names or globs, e.g. --limit 'tenant-*,db1'")
        out.extend(p for p in parts if p)
    return out


def parse_shard(text: str) -> tuple[int, int]:
    """``K/N`` with 1 <= K <= N; anything else is one line and exit 2."""
    m = SHARD.fullmatch(str(text))
    if not m:
        raise ConfigError(f"--shard '{text}': expected K/N, e.g. --shard 1/4 (shards are numbered 1..N)")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1:
        raise ConfigError(f"--shard '{text}': N must be at least 1")
    if not 1 <= k <= n:
        hint = (" (a 0-based index such as JOB_COMPLETION_INDEX: --shard $((JOB_COMPLETION_INDEX + 1))/N)"
                if k == 0 else "")
        raise ConfigError(f"--shard '{text}': K must be from 1 to {n}{hint}")
    return k, n


def jump(key: int, buckets: int) -> int:
    """Jump Consistent Hash: the bucket in [0, buckets) of a 64-bit ``key``."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def shard_of(name: str, total: int) -> int:
    """The shard (1..total) of host ``name``."""
    key = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big")
    return jump(key, total) + 1


def select(env: Any, limit: list[str], shard: tuple[int, int] | None) -> Any:
    """``env`` with only the hosts ``--limit`` and ``--shard`` keep (the same ``env`` without them)."""
    if not limit and shard is None:
        return env
    hosts = list(env.hosts)
    if limit:
        names = [h.name for h in hosts]
        for pattern in limit:
            if not fnmatch.filter(names, pattern):
                shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
                raise ConfigError(f"--limit '{pattern}' matches no host of environment '{env.name}' "
                                  f"(hosts: {shown})")
        hosts = [h for h in hosts if any(fnmatch.fnmatchcase(h.name, p) for p in limit)]
    if shard is not None:
        k, n = shard
        hosts = [h for h in hosts if shard_of(h.name, n) == k]
    return env.select(tuple(hosts))


def describe(limit: list[str], shard: tuple[int, int] | None) -> str:
    """'--limit tenant-*,db1 --shard 2/4', for messages."""
    parts = ([f"--limit {','.join(limit)}"] if limit else []) + ([f"--shard {shard[0]}/{shard[1]}"] if shard else [])
    return " ".join(parts)


def last_fleet_migrate(env: Any) -> tuple[str, list[str]] | None:
    """The newest ``migrate`` run of ``env`` that changed (or may have changed) a database, and
    the hosts it changed: what ``rollback`` undoes on a fleet. A run still in progress is skipped
    (its run locks refuse a rollback anyway); one whose runner died counts."""
    from . import journal

    for rec in journal.runs(env.state_dir, env.name):
        data = rec.data
        if data.get("playbook") != "migrate":
            continue
        if data.get("status") == journal.RUNNING and not rec.incomplete:
            continue
        changed = [name for name, h in (data.get("hosts") or {}).items()
                   if h.get("start_revision") and h.get("end_revision") != h.get("start_revision")]
        if changed:
            return str(data.get("run_id")), changed
    return None


def check_flags(playbook_name: str, options: Any) -> None:
    """The fleet options a command takes: --limit/--shard select hosts for runs, status and
    --dry-run; --parallel, --canary and --rollback-all are for runs only."""
    run_only = [flag for flag, on in (("--parallel", options.parallel != 1), ("--canary", options.canary),
                                      ("--rollback-all", options.rollback_all)) if on]
    if playbook_name == "history" and (options.shard is not None or run_only):
        raise ConfigError(f"{(['--shard'] if options.shard is not None else run_only)[0]} does not apply to history")
    if run_only and (playbook_name == "status" or options.dry_run):
        raise ConfigError(f"{run_only[0]} applies to runs, not to {'--dry-run' if options.dry_run else 'status'}")


def plan_hosts(env: Any, pb: Any, options: Any) -> tuple[Any, dict[str, Any]]:
    """The hosts this command runs on: --limit, --shard, and for a fleet's rollback the hosts the
    last migrate changed (its journal); every refusal is one line, exit 2."""
    limit = patterns(options.hosts) if options.hosts else []
    shard = parse_shard(options.shard) if options.shard is not None else None
    every = len(env.hosts)
    env = select(env, limit, shard)
    chosen: dict[str, Any] = {"selection": describe(limit, shard) or None}
    if not env.hosts:
        chosen["empty"] = f"{chosen['selection']} selects none of the {every} hosts of '{env.name}'"
    rollback = pb is not None and "rollback" in pb.kinds()
    if rollback and options.rollback_all:
        raise ConfigError("--rollback-all does not apply to rollback (it is for migrate and the like)")
    if rollback and options.restore not in (None, "newest", "") and len(env.hosts) > 1:
        raise ConfigError(f"--restore {options.restore} names one database's backup, and {len(env.hosts)} hosts are "
                          "selected: pick its host with --limit HOST (or --restore alone: each host's newest "
                          "verified backup)")
    if rollback and options.parallel > 1 and not options.yes and not options.dry_run:
        raise ConfigError("rollback --parallel needs --yes: each host's plan is printed, but nobody can answer "
                          "the prompts of several hosts at once")
    if rollback and env.fleet and env.hosts and not options.to and options.restore is None:
        last = last_fleet_migrate(env)
        if last is not None:  # the hosts that run migrated, not every host one revision back
            run_id, changed = last
            kept = tuple(h for h in env.hosts if h.name in changed)
            chosen["rollback_of"] = run_id
            if not kept:
                chosen["empty"] = (f"the last migrate ({run_id}) changed none of the selected hosts of "
                                   f"'{env.name}' ({', '.join(h.name for h in env.hosts)})")
            env = env.select(kept)
    return env, chosen
