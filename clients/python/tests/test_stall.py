"""A stalled Redis cannot hold a caller, whatever client the limiter was
given (issue 20, finding 4): a real redis-server stalled with SIGSTOP and
with DEBUG SLEEP; every call of the sync and async limiters, built as the
README builds them (a client without socket_timeout) and by from_url,
returns within its timeout (or call_timeout) + a margin, with the
documented error, and never with a grant after its deadline; a limiter's
first acquisition (which joins the replica registry first) too. When Redis
answers again, every limiter grants again.

The four kinds run their calls at the same time, each its own in turn, so
one stall serves them all. The figures (slowest return of each call, per
kind and stall) print at the end of the run."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import socket
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
import redis
import redis.asyncio

from conftest import FIGURES, RedisServer, wait_for
from sluice import DeadlineExceededError, Limiter, RedisUnavailableError
from sluice.aio import AsyncLimiter

CALL_TIMEOUT = 0.5  # the default
MARGIN = 1.0  # what a return may take beyond its bound on a loaded 2-core machine (0.36 s seen at load 40)
P = "stall"

# (label, method, kwargs, bound in seconds (None: call_timeout), error expected)
CALLS: List[Tuple[str, str, Dict[str, Any], Optional[float], type]] = [
    ("acquire(timeout=2)", "acquire", {"timeout": 2}, 2.0, RedisUnavailableError),
    ("acquire(timeout=0.2)", "acquire", {"timeout": 0.2}, 0.2, DeadlineExceededError),
    ("acquire()", "acquire", {}, None, RedisUnavailableError),
    ("try_acquire()", "try_acquire", {}, None, RedisUnavailableError),
]
# A limiter's first acquisition: the registry heartbeat, then the script.
FIRST = ("first acquire(timeout=2)", "acquire", {"timeout": 2}, 2.0, RedisUnavailableError)

Result = Tuple[str, float, Any]  # label, seconds, Decision or exception


class Loop:
    """An event loop in a thread, for the async limiters."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def submit(self, coro: Any) -> "concurrent.futures.Future[Any]":
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class Kind:
    """One way to build a limiter, sync or async; its calls are futures."""

    def __init__(self, name: str, make: Callable[[], Any], aio: Optional[Loop], pool: concurrent.futures.Executor):
        self.name, self.aio, self.pool = name, aio, pool
        self.warm = self._new(make)  # acquires before the stall
        self.cold = self._new(make)  # acquires for the first time during it

    def _new(self, make: Callable[[], Any]) -> Any:
        if self.aio is None:
            return make()

        async def build() -> Any:
            return make()
        return self.aio.submit(build()).result(10)

    def run(self, lim: Any, calls: List[Tuple[str, str, Dict[str, Any], Optional[float], type]]) \
            -> "concurrent.futures.Future[List[Result]]":
        """The calls one after the other, each timed; a future of the results."""
        if self.aio is None:
            def seq() -> List[Result]:
                out = []
                for label, m, kw, _, _ in calls:
                    t = time.monotonic()
                    try:
                        res: Any = getattr(lim, m)(P, **kw)
                    except Exception as e:  # judged by the test
                        res = e
                    out.append((label, time.monotonic() - t, res))
                return out
            return self.pool.submit(seq)

        async def aseq() -> List[Result]:
            out = []
            for label, m, kw, _, _ in calls:
                t = time.monotonic()
                try:
                    res: Any = await getattr(lim, m)(P, **kw)
                except Exception as e:
                    res = e
                out.append((label, time.monotonic() - t, res))
            return out
        return self.aio.submit(aseq())

    def close(self) -> None:
        for lim in (self.warm, self.cold):
            if self.aio is None:
                lim.close()
            else:
                self.aio.submit(lim.close()).result(10)


@pytest.fixture
def stall_server(tmp_path: Any) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path)
    yield srv
    srv.stop()


def answers(srv: RedisServer) -> bool:
    c = redis.Redis(port=srv.port, socket_timeout=0.2, socket_connect_timeout=0.2)
    try:
        return bool(c.ping())
    except redis.exceptions.RedisError:
        return False
    finally:
        c.close()


@pytest.mark.parametrize("stall", ["sigstop", "debug_sleep"])
def test_stalled_redis_cannot_hold_a_caller(stall_server: RedisServer, stall: str) -> None:
    srv = stall_server
    url = srv.url
    aio = Loop()
    pool = concurrent.futures.ThreadPoolExecutor(8)
    kinds = [
        Kind("sync, Limiter(redis.Redis.from_url(url))", lambda: Limiter(redis.Redis.from_url(url)), None, pool),
        Kind("sync, Limiter.from_url(url)", lambda: Limiter.from_url(url), None, pool),
        Kind("async, AsyncLimiter(redis.asyncio.Redis.from_url(url))",
             lambda: AsyncLimiter(redis.asyncio.Redis.from_url(url)), aio, pool),
        Kind("async, AsyncLimiter.from_url(url)", lambda: AsyncLimiter.from_url(url), aio, pool),
    ]
    Limiter.from_url(url).register(P, capacity=1000, refill_rate=1000)
    for k in kinds:  # connected, in the registry, granted once
        (_, _, d), = k.run(k.warm, [("warm", "acquire", {"timeout": 5}, None, object)]).result(10)
        assert getattr(d, "allowed", False), f"{k.name}: {d!r}"
    sleeper: Optional[socket.socket] = None
    try:
        if stall == "sigstop":
            srv.pause()
        else:  # blocks the server for 4 s from this connection; +OK when it ends
            sleeper = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            sleeper.sendall(b"DEBUG SLEEP 4\r\n")
        wait_for(lambda: not answers(srv), 5, "redis to stall")
        stalled_at = time.monotonic()
        futures = [(k, k.run(k.warm, CALLS)) for k in kinds]
        futures += [(k, k.run(k.cold, [FIRST])) for k in kinds]
        results: List[Tuple[Kind, List[Result]]] = []
        for k, f in futures:
            try:
                results.append((k, f.result(max(stalled_at + 15 - time.monotonic(), 0.1))))
            except concurrent.futures.TimeoutError:
                pytest.fail(f"{k.name}: a call held for over 15 s by the stalled Redis")
        stall_took = time.monotonic() - stalled_at
        assert not answers(srv), "the stall ended before the calls did: lengthen it"
    finally:
        if stall == "sigstop":
            srv.resume()
        elif sleeper is not None:
            sleeper.settimeout(10)
            assert sleeper.recv(16).startswith(b"+OK")  # the sleep ended
            sleeper.close()
    resumed_at = time.monotonic()

    expect = {c[0]: (c[3], c[4]) for c in CALLS + [FIRST]}
    slowest: Dict[str, Dict[str, float]] = {}
    for k, res in results:
        for label, took, got in res:
            bound, err = expect[label]
            limit = (bound if bound is not None else CALL_TIMEOUT) + MARGIN
            slowest.setdefault(k.name, {})[label] = round(max(took, slowest.get(k.name, {}).get(label, 0)), 3)
            assert not hasattr(got, "allowed"), f"{k.name} {label}: a decision while Redis was stalled: {got!r}"
            assert isinstance(got, err), f"{k.name} {label}: {got!r}, want {err.__name__}"
            assert took <= limit, f"{k.name} {label}: returned after {took:.3f}s, bound {limit:.3f}s"

    # Redis answers again: every limiter grants again, from Redis.
    back: Dict[str, float] = {}
    for k in kinds:
        for lim in (k.warm, k.cold):
            (_, _, d), = k.run(lim, [("after", "acquire", {"timeout": 5}, None, object)]).result(20)
            assert getattr(d, "allowed", False), f"{k.name} after the stall: {d!r}"
        back[k.name] = round(time.monotonic() - resumed_at, 3)
    for k in kinds:
        k.close()
    aio.stop()
    pool.shutdown()
    FIGURES.append(f"STALL {stall}: " + json.dumps({"stall_seconds": round(stall_took, 2), "slowest_return_s": slowest,
                                                      "grants_again_within_s_of_resume": back}))
