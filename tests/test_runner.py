"""Telling a dead runner from a live one: machine id, boot, pid and its start time (runbook/runner.py)."""

from __future__ import annotations

import os
import subprocess

from runbook import runner


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_this_process_is_alive() -> None:
    """The runner's own identity (and a token made of it) never reads as dead."""
    me = runner.identity()
    assert me["pid"] == os.getpid() and me["pid_start"] and len(me["machine_id"]) >= 8
    assert not runner.known_dead(me)
    assert not runner.known_dead(runner.from_token(runner.token()))


def test_a_gone_or_reused_pid_on_this_machine_is_dead() -> None:
    """Same machine: a pid that no longer runs, or runs with another start time, or another boot, is dead."""
    me = runner.identity()
    child = subprocess.Popen(["sleep", "5"])
    try:
        live = {**me, "pid": child.pid, "pid_start": runner.start_time(child.pid)}
        assert not runner.known_dead(live)
        assert runner.known_dead({**live, "pid_start": (live["pid_start"] or 0) + 1})  # pid reused
    finally:
        child.kill()
        child.wait()
    assert runner.known_dead({**me, "pid": _dead_pid()})
    assert runner.known_dead({**live, "boot_id": "another-boot"})


def test_another_machine_or_too_little_is_never_judged() -> None:
    """Another machine id (a clone with the same host name), or a record without one: not known dead."""
    me = runner.identity()
    dead = _dead_pid()
    assert not runner.known_dead({**me, "machine_id": "0" * 32, "pid": dead})
    assert not runner.known_dead({"control_host": me["control_host"], "pid": dead})  # hostname + pid alone
    assert not runner.known_dead(runner.from_token("nonsense"))
    assert runner.from_token("3d1219c7:42:99") == {"machine_id": "3d1219c7", "pid": 42, "pid_start": 99}
