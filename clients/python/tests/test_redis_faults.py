"""Faults between the client and a real redis-server that must cost
under-admission, never over-admission (review of issue 20, findings 2
and 3):

- a grant whose reply reaches the caller after its timeout ended is not
  returned: DeadlineExceededError, the tokens unused (as Go's decide);
- a script whose connection broke after Redis ran it is not sent again
  (that would take its tokens twice): RedisUnavailableError;
- a pooled connection Redis closed between two calls (CLIENT KILL, an idle
  timeout, a restart) or reset (a node killed with a request unread; for
  asyncio also after the connection was taken from the pool) costs
  nothing: the next call works, once.

Each runs with the sync Limiter and the AsyncLimiter. Amounts are exact:
the buckets refill one token in 1000 s."""

from __future__ import annotations

import asyncio
import select
import socket
import struct
import threading
import time
from typing import Any, Callable, Iterator, List

import pytest
import redis
import redis.asyncio

from conftest import RedisServer, run, wait_for
from sluice import DeadlineExceededError, Limiter, RedisUnavailableError
from sluice import _redis
from sluice.aio import AsyncLimiter

SLOW = dict(capacity=10, refill_rate=0.001)
P = "faults"


def tokens(r: "redis.Redis[bytes]") -> float:
    return float(r.hget(f"sluice:{{{P}}}:bucket", "tokens") or 0)


class Proxy:
    """A TCP proxy to a redis-server on a free loopback port: each client
    connection is handed to _serve with its own connection to Redis."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self._serve(client, socket.create_connection(("127.0.0.1", self.target)))

    def _serve(self, client: socket.socket, server: socket.socket) -> None:
        raise NotImplementedError


class CutProxy(Proxy):
    """Once armed, it forwards the next reply of Redis to nobody: it closes
    that client's connection instead, so the call ran in Redis and its
    caller sees a broken connection."""

    def __init__(self, target: int) -> None:
        self.armed = False
        self.cuts = 0
        self.socks: List[socket.socket] = []
        super().__init__(target)

    def arm(self) -> None:
        with self.lock:
            self.armed = True

    def _serve(self, client: socket.socket, server: socket.socket) -> None:
        self.socks += [client, server]
        threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
        threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _cut(self) -> bool:
        with self.lock:
            if not self.armed:
                return False
            self.armed = False
            self.cuts += 1
            return True

    def _pump(self, src: socket.socket, dst: socket.socket, replies: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data or (replies and self._cut()):
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self.listener.close()
        for s in self.socks:
            s.close()


class ResetProxy(Proxy):
    """It resets (RST) every client connection at once, as a node that died
    with unread data in its socket does: the client's event loop then
    closes its end itself (the socket's descriptor becomes -1), the reset
    kept in the stream reader, no end of stream. One polling thread per
    connection, so a reset never waits on a blocked recv."""

    def __init__(self, target: int) -> None:
        self.live = 0
        self.reset_count = 0
        self.resetting = threading.Event()
        self.done = threading.Event()
        super().__init__(target)

    def reset(self) -> int:
        """Reset every client connection; how many were reset."""
        before = self.reset_count
        self.resetting.set()
        wait_for(lambda: self.live == 0, 10, "the proxy to reset its connections")
        self.resetting.clear()
        return self.reset_count - before

    def _serve(self, client: socket.socket, server: socket.socket) -> None:
        with self.lock:
            self.live += 1
        threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        try:
            while not self.done.is_set():
                if self.resetting.is_set():
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close: RST
                    with self.lock:
                        self.reset_count += 1
                    return
                for src in select.select([client, server], [], [], 0.02)[0]:
                    data = src.recv(65536)
                    if not data:
                        return
                    (server if src is client else client).sendall(data)
        except OSError:
            pass
        finally:
            client.close()
            server.close()
            with self.lock:
                self.live -= 1

    def close(self) -> None:
        self.done.set()
        self.listener.close()


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[CutProxy]:
    p = CutProxy(redis_server.port)
    yield p
    p.close()


def both(sync_body: Callable[[Limiter], None], async_body: Callable[[AsyncLimiter], Any], kind: str,
         url: str) -> None:
    """Run the sync or the async form of a test body on a limiter for url
    (heartbeats far apart: only the calls of the body cross the wire)."""
    if kind == "sync":
        lim = Limiter(redis.Redis.from_url(url), heartbeat=3600)
        try:
            sync_body(lim)
        finally:
            lim.close()
        return

    async def main() -> None:
        alim = AsyncLimiter(redis.asyncio.Redis.from_url(url), heartbeat=3600)
        try:
            await async_body(alim)
        finally:
            await alim.close()
    run(main)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_late_grant_is_not_returned(r: "redis.Redis[bytes]", redis_server: RedisServer,
                                    monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """Redis grants in time, but the reply reaches acquire after its timeout
    (a starved thread, a blocked event loop: here each reply is held 0.3 s
    once read): DeadlineExceededError, never the grant; the tokens are
    taken and unused. Before the fix: the grant, 0.3 s into a 0.2 s
    timeout."""
    slow = [False]
    cls = _redis._SyncBound if kind == "sync" else _redis._AsyncBound
    base = redis.connection.Connection if kind == "sync" else redis.asyncio.connection.Connection
    if kind == "sync":
        def read_response(self: Any, *a: Any, **kw: Any) -> Any:
            res = base.read_response(self, *a, **kw)
            if slow[0]:
                time.sleep(0.3)
            return res
    else:
        async def read_response(self: Any, *a: Any, **kw: Any) -> Any:  # type: ignore[misc]
            res = await base.read_response(self, *a, **kw)
            if slow[0]:
                time.sleep(0.3)  # blocks the loop, as CPU-bound work in a callback would
            return res
    monkeypatch.setattr(cls, "read_response", read_response, raising=False)
    took: List[float] = []

    def sync_body(lim: Limiter) -> None:
        lim.register(P, **SLOW)
        assert lim.acquire(P, timeout=5).allowed  # in the registry: one script per call from now
        slow[0] = True
        t = time.monotonic()
        with pytest.raises(DeadlineExceededError, match="granted after the timeout ended"):
            lim.acquire(P, timeout=0.2)
        took.append(time.monotonic() - t)
        slow[0] = False
        assert lim.try_acquire(P).allowed  # no timeout: a slow grant is still a grant

    async def async_body(lim: AsyncLimiter) -> None:
        await lim.register(P, **SLOW)
        assert (await lim.acquire(P, timeout=5)).allowed
        slow[0] = True
        t = time.monotonic()
        with pytest.raises(DeadlineExceededError, match="granted after the timeout ended"):
            await lim.acquire(P, timeout=0.2)
        took.append(time.monotonic() - t)
        slow[0] = False
        assert (await lim.try_acquire(P)).allowed

    both(sync_body, async_body, kind, redis_server.url)
    assert took[0] >= 0.3  # the grant came late
    assert tokens(r) == pytest.approx(7, abs=0.01)  # 3 taken: the late grant's token is lost, not given


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_script_not_sent_twice(r: "redis.Redis[bytes]", proxy: CutProxy, kind: str) -> None:
    """The connection breaks after Redis ran the acquire script (the proxy
    drops its reply and closes): RedisUnavailableError, and the token is
    taken once. Before the fix: sent again at once on a new connection, a
    grant, and 2 tokens taken for 1."""
    def sync_body(lim: Limiter) -> None:
        lim.register(P, **SLOW)
        assert lim.acquire(P, timeout=5).allowed
        proxy.arm()
        with pytest.raises(RedisUnavailableError):
            lim.try_acquire(P)
        assert lim.try_acquire(P).allowed  # a new connection: works again

    async def async_body(lim: AsyncLimiter) -> None:
        await lim.register(P, **SLOW)
        assert (await lim.acquire(P, timeout=5)).allowed
        proxy.arm()
        with pytest.raises(RedisUnavailableError):
            await lim.try_acquire(P)
        assert (await lim.try_acquire(P)).allowed

    both(sync_body, async_body, kind, proxy.url)
    assert proxy.cuts == 1
    assert tokens(r) == pytest.approx(7, abs=0.01)  # 3 scripts ran, one each: 3 tokens


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_connection_killed_between_calls(r: "redis.Redis[bytes]", redis_server: RedisServer, kind: str) -> None:
    """Redis closes the limiter's pooled connections between two calls
    (CLIENT KILL): the next call takes a new connection before it sends
    anything, and is granted, once. The async form gives its event loop no
    turn in between, so the close is still only in the kernel when the
    call starts."""
    def kill() -> None:
        assert r.client_kill_filter(_type="normal", skipme=True) >= 1

    def sync_body(lim: Limiter) -> None:
        lim.register(P, **SLOW)
        assert lim.acquire(P, timeout=5).allowed
        kill()
        assert lim.acquire(P, timeout=5).allowed
        kill()
        assert lim.try_acquire(P).allowed

    async def async_body(lim: AsyncLimiter) -> None:
        await lim.register(P, **SLOW)
        assert (await lim.acquire(P, timeout=5)).allowed
        kill()
        assert (await lim.acquire(P, timeout=5)).allowed
        kill()
        assert (await lim.try_acquire(P)).allowed

    both(sync_body, async_body, kind, redis_server.url)
    assert tokens(r) == pytest.approx(7, abs=0.01)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_connection_reset_between_calls(r: "redis.Redis[bytes]", redis_server: RedisServer, kind: str) -> None:
    """Every pooled connection is reset (RST, as from a cluster master
    killed with a request unread) between two calls: the next call takes a
    new connection and is granted, once."""
    rp = ResetProxy(redis_server.port)
    try:
        def sync_body(lim: Limiter) -> None:
            lim.register(P, **SLOW)
            assert lim.acquire(P, timeout=5).allowed
            assert rp.reset() >= 1
            assert lim.acquire(P, timeout=5).allowed

        async def async_body(lim: AsyncLimiter) -> None:
            await lim.register(P, **SLOW)
            assert (await lim.acquire(P, timeout=5)).allowed
            assert await asyncio.get_running_loop().run_in_executor(None, rp.reset) >= 1
            await asyncio.sleep(0.1)  # the loop reads the reset and closes the transport
            assert (await lim.acquire(P, timeout=5)).allowed

        both(sync_body, async_body, kind, rp.url)
    finally:
        rp.close()
    assert tokens(r) == pytest.approx(8, abs=0.01)


def test_connection_reset_in_hand(redis_server: RedisServer) -> None:
    """An asyncio connection taken from the pool is reset before its
    command is sent (the event loop saw the reset meanwhile and closed the
    transport: descriptor -1, no end of stream): the command goes on a new
    connection. Before the fix the check of the connection raised
    ValueError ("negative file descriptor"); out of AsyncLimiter's
    heartbeat task, close() raised it, and a pyreplica died without its
    report in test_master_killed_under_load."""
    rp = ResetProxy(redis_server.port)

    async def main() -> None:
        lim = AsyncLimiter(redis.asyncio.Redis.from_url(rp.url), heartbeat=3600)
        await lim.register(P, **SLOW)
        pool = lim._conn._plain.connection_pool  # type: ignore[union-attr]
        conn = await pool.get_connection("EVALSHA")
        assert await asyncio.get_running_loop().run_in_executor(None, rp.reset) >= 1
        await asyncio.sleep(0.1)
        assert conn._writer.get_extra_info("socket").fileno() == -1  # the state this test is about
        await conn.send_command("PING")
        assert await conn.read_response() == b"PONG"
        await pool.release(conn)
        assert (await lim.acquire(P, timeout=5)).allowed
        await lim.close()

    try:
        run(main)
    finally:
        rp.close()
