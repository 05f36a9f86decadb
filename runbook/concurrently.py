"""The timeout policy of ``CREATE/DROP INDEX CONCURRENTLY`` and ``REINDEX ... CONCURRENTLY``.

These statements run in an ``autocommit_block`` and take SHARE UPDATE EXCLUSIVE, which blocks no
application reads or writes; but they wait for every older transaction touching the table to end,
and that wait is a lock wait. Under the migration's short ``lock_timeout`` they would fail (and leave
an INVALID index) whenever any transaction is a few seconds old. So they get their own policy:
``locks.concurrently_timeout`` as lock_timeout and no statement_timeout (building a large index
legitimately takes long), set just before the statement and reset after it. A SQLAlchemy
class-level listener covers every engine in the process, so it applies whichever style the
application's env.py uses to connect.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Iterator

CONCURRENTLY = re.compile(
    r"^\s*(?:CREATE\s+(?:UNIQUE\s+)?INDEX|DROP\s+INDEX|REINDEX)\b[^;]*?\bCONCURRENTLY\b",
    re.IGNORECASE | re.DOTALL)
_FLAG = "runbook_concurrently"


def is_concurrent(statement: str) -> bool:
    return bool(CONCURRENTLY.match(statement))


@contextlib.contextmanager
def policy(lock_timeout: str, log: Any = None) -> Iterator[None]:
    """While active, concurrent index statements run with ``lock_timeout`` and no statement_timeout."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def before(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if is_concurrent(statement):
            cursor.execute("SELECT set_config('lock_timeout', %s, false), "
                           "set_config('statement_timeout', '0', false)", (lock_timeout,))
            conn.info[_FLAG] = True
            if log is not None:
                log.info("concurrent_index_policy", lock_timeout=lock_timeout, statement=statement[:200])

    def after(conn: Any, cursor: Any, *_: Any) -> None:
        if conn.info.pop(_FLAG, False):
            cursor.execute("RESET lock_timeout; RESET statement_timeout")

    event.listen(Engine, "before_cursor_execute", before)
    event.listen(Engine, "after_cursor_execute", after)
    try:
        yield
    finally:
        event.remove(Engine, "before_cursor_execute", before)
        event.remove(Engine, "after_cursor_execute", after)
