"""A slow link in user space: a delaying TCP proxy in front of the test sshd (``tc netem`` is not
available on these machines, see TESTING.md).

``SlowLink(target_host, target_port, rtt=0.05)`` listens on a free port of 127.0.0.1 and forwards
every connection to the target, each direction delayed by half the round trip. Each direction has
its own reader and an unbounded queue drained by its own writer, and every chunk is written when its
own time comes (arrival + rtt/2), so the proxy adds latency without capping throughput: a bulk
transfer is as fast as without the proxy, it just starts and ends rtt/2 later.

It also counts what a slow link makes expensive:

- **turns**: the times the direction of traffic changes from client→server to server→client, seen
  at the proxy's input (a burst the client sent, then the server's answer): one per round trip the
  client waits for (or, at worst, one per exchange: a server that talks unprompted, e.g. a keepalive,
  adds one too). Every turn is time-stamped (``time.time()``, the clock runbook's run log uses), so
  the turns of any window (a step of a run) can be counted afterwards: ``turns_between(t0, t1)``.
- bytes per direction and connections accepted.

The proxy runs its own asyncio loop in a daemon thread; the counters are read from any thread.
"""

from __future__ import annotations

import asyncio
import bisect
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

C2S, S2C = "c2s", "s2c"
DEFAULT_RTT = 0.05


@dataclass(frozen=True)
class Sample:
    """The proxy's counters at one moment (``SlowLink.sample()``); subtract two for a window."""

    turns: int
    c2s_bytes: int
    s2c_bytes: int
    connections: int

    def __sub__(self, other: "Sample") -> "Sample":
        return Sample(self.turns - other.turns, self.c2s_bytes - other.c2s_bytes,
                      self.s2c_bytes - other.s2c_bytes, self.connections - other.connections)

    def __str__(self) -> str:
        return (f"{self.turns} turns, {self.connections} TCP connection(s), "
                f"{self.c2s_bytes / 1024:.1f} KiB client→server, {self.s2c_bytes / 1024:.1f} KiB server→client")


class SlowLink:
    """A delaying TCP proxy: ``with SlowLink(host, port, rtt=0.05) as link: ... link.port``."""

    def __init__(self, target_host: str, target_port: int, rtt: float = DEFAULT_RTT,
                 listen_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.rtt = rtt
        self.delay = rtt / 2
        self.listen_host = listen_host
        self.port = 0
        self._lock = threading.Lock()
        self._turn_times: list[float] = []  # time.time() of every turn, in order
        self._bytes = {C2S: 0, S2C: 0}
        self._connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- counters -------------------------------------------------------------------------------
    def sample(self) -> Sample:
        with self._lock:
            return Sample(len(self._turn_times), self._bytes[C2S], self._bytes[S2C], self._connections)

    def turns_between(self, t0: float, t1: float) -> int:
        """Turns whose server→client answer reached the proxy in [t0, t1) (epoch seconds)."""
        with self._lock:
            times = list(self._turn_times)
        return bisect.bisect_left(times, t1) - bisect.bisect_left(times, t0)

    def turn_times(self) -> list[float]:
        with self._lock:
            return list(self._turn_times)

    def _count(self, state: dict[str, str], direction: str, n: int) -> None:
        now = time.time()
        with self._lock:
            self._bytes[direction] += n
            if direction == S2C and state["last"] == C2S:
                self._turn_times.append(now)
            state["last"] = direction

    # -- the proxy ------------------------------------------------------------------------------
    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str,
                    state: dict[str, str]) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def drain_queue() -> None:
            try:
                while True:
                    due, data = await queue.get()
                    wait = due - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    if not data:  # EOF, delayed like the data before it
                        if writer.can_write_eof():
                            writer.write_eof()
                        return
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                return

        sender = asyncio.create_task(drain_queue())
        try:
            while True:
                try:
                    data = await reader.read(65536)
                except (ConnectionError, OSError):
                    data = b""
                if data:
                    self._count(state, direction, len(data))
                queue.put_nowait((loop.time() + self.delay, data))
                if not data:
                    break
            await sender
        finally:
            if not sender.done():
                sender.cancel()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        with self._lock:
            self._connections += 1
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        for w in (client_w, server_w):
            sock = w.get_extra_info("socket")
            if sock is not None:  # the proxy itself must not add Nagle/delayed-ACK stalls
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        state = {"last": ""}
        try:
            await asyncio.gather(self._pump(client_r, server_w, C2S, state),
                                 self._pump(server_r, client_w, S2C, state))
        except asyncio.CancelledError:  # the proxy stops: drop the connection quietly
            pass
        finally:
            for w in (client_w, server_w):
                try:
                    w.close()
                except Exception:  # noqa: BLE001 - closing a dead socket
                    pass

    async def _serve(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.listen_host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._ready.set()
        async with self._server:
            await self._server.serve_forever()

    def _main(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._ready.set()
        finally:
            try:
                pending = asyncio.all_tasks(self._loop)
                for t in pending:
                    t.cancel()
                self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            finally:
                self._loop.close()

    def start(self) -> "SlowLink":
        self._thread = threading.Thread(target=self._main, name=f"slowlink-{self.target[1]}", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"the slow-link proxy did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is not None and server is not None and not loop.is_closed():
            def shutdown() -> None:
                server.close()
                for t in asyncio.all_tasks(loop):
                    t.cancel()
            loop.call_soon_threadsafe(shutdown)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> "SlowLink":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def self_check(rtt: float = DEFAULT_RTT, pings: int = 10, bulk_mb: int = 20) -> dict[str, float]:
    """The proxy measured against a local echo server: the round trip a client sees (median of
    ``pings`` 1-byte request/answer exchanges: should be ``rtt`` plus a fraction of a ms) and the
    throughput of a bulk transfer through it (MB/s one way: the delay must not cap it)."""
    import statistics

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def echo() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while True:
                data = conn.recv(1 << 16)
                if not data:
                    return
                if data.endswith(b"?"):
                    conn.sendall(b"!")

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    with SlowLink("127.0.0.1", listener.getsockname()[1], rtt=rtt) as link:
        with socket.create_connection(("127.0.0.1", link.port), timeout=10) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            times = []
            for _ in range(pings):
                t0 = time.perf_counter()
                s.sendall(b"?")
                s.recv(1)
                times.append(time.perf_counter() - t0)
            chunk = b"x" * (1 << 20)
            t0 = time.perf_counter()
            for _ in range(bulk_mb):
                s.sendall(chunk)
            s.sendall(b"?")  # the last byte: answered once everything before it went through
            while s.recv(1) != b"!":
                pass
            bulk = time.perf_counter() - t0
        turns = link.sample().turns
    listener.close()
    return {"rtt": float(statistics.median(times)), "mb_per_s": bulk_mb / max(1e-9, bulk - rtt),
            "bulk_s": bulk, "turns": float(turns)}
