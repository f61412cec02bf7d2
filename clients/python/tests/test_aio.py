"""sluice.aio.AsyncLimiter against a real redis-server: the same contract
as Limiter, on redis.asyncio."""

from __future__ import annotations

import asyncio
import struct

import pytest
import redis
import redis.asyncio

from conftest import run
from sluice import (
    CircuitOpenError,
    ClosedError,
    CoolingDownError,
    InvalidArgumentError,
    PausedError,
    PermitLostError,
    RuleLimitedError,
    RateLimitedError,
    RedisUnavailableError,
    UnknownProviderError,
)
from sluice.aio import AsyncLimiter
from sluice.coordinator import RateCoordinator

SLOW = dict(capacity=5, refill_rate=0.001)


def client(redis_server) -> "redis.asyncio.Redis[bytes]":  # type: ignore[no-untyped-def]
    return redis.asyncio.Redis(port=redis_server.port, socket_timeout=5)


def test_acquire_scale_status(r, redis_server) -> None:  # type: ignore[no-untyped-def]
    async def body() -> None:
        c = client(redis_server)
        lim = AsyncLimiter(c, replica_id="py-async", source="test")
        assert await lim.register("ibkr", **SLOW) == "created"
        d = await lim.try_acquire("ibkr", 4)
        assert d.allowed and d.remaining == pytest.approx(1, abs=0.01)
        with pytest.raises(RateLimitedError):
            await lim.acquire("ibkr", 2, timeout=1)
        ch = await lim.set_scale("ibkr", 0.5)
        assert ch.changed and ch.new == 0.5
        await lim.set_pressure("ibkr", "hard")
        s = await lim.status("ibkr")
        assert (s.scale, s.level, s.source, s.replicas) == (0.5, "hard", "test", ["py-async"])
        assert await lim.providers() == ["ibkr"]
        with pytest.raises(UnknownProviderError):
            await lim.try_acquire("nope")
        with pytest.raises(InvalidArgumentError):
            await lim.set_scale("ibkr", 2)
        await lim.close()
        with pytest.raises(ClosedError):
            await lim.try_acquire("ibkr")
        assert (await c.zrange("sluice:replicas:{ibkr}", 0, -1)) == []  # left the registry
        await c.close()
    run(body)


def test_acquire_waits_out_the_rate(r, redis_server) -> None:  # type: ignore[no-untyped-def]
    async def body() -> None:
        c = client(redis_server)
        lim = AsyncLimiter(c)
        await lim.register("fast", capacity=1, refill_rate=50)
        ds = await asyncio.gather(*(lim.acquire("fast") for _ in range(3)))
        times = sorted(d.now_us for d in ds)
        assert all(d.allowed for d in ds)
        assert times[2] - times[0] >= 38_000  # two refills of 20 ms, Redis time
        await lim.close()
        await c.close()
    run(body)


def test_paused_waiters_wake_on_notify(r, redis_server) -> None:  # type: ignore[no-untyped-def]
    async def body() -> None:
        c = client(redis_server)
        lim = AsyncLimiter(c, paused_recheck=60)  # only a notification wakes them in time
        await lim.register("ibkr", capacity=10, refill_rate=100)
        await lim.set_scale("ibkr", 0)
        with pytest.raises(PausedError) as ei:
            await lim.acquire("ibkr", timeout=0.5)
        assert ei.value.timed_out
        waiters = [asyncio.create_task(lim.acquire("ibkr", timeout=30)) for _ in range(5)]
        while (await c.pubsub_numsub("sluice:{ibkr}:notify"))[0][1] == 0:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert not any(w.done() for w in waiters)
        ch = await AsyncLimiter(c, source="operator").set_scale("ibkr", 1)
        ds = await asyncio.wait_for(asyncio.gather(*waiters), 30)
        assert all(d.allowed and d.now_us > ch.now_us for d in ds)
        await lim.close()
        await c.close()
    run(body)


def test_breaker_and_cooldown(r, redis_server) -> None:  # type: ignore[no-untyped-def]
    async def body() -> None:
        c = client(redis_server)
        lim = AsyncLimiter(c)
        await lim.register("ibkr", capacity=5, refill_rate=100, breaker_threshold=1, breaker_timeout_sec=0.5)
        assert (await lim.record_failure("ibkr")).state == "open"
        with pytest.raises(CircuitOpenError):
            await lim.acquire("ibkr", timeout=0.25)
        assert (await lim.acquire("ibkr", timeout=5)).reason == "probe"
        assert (await lim.record_success("ibkr")).state == "closed"
        await lim.trigger_cooldown("ibkr", "pacing", duration=0.5)
        with pytest.raises(CoolingDownError):
            await lim.acquire("ibkr", timeout=0.25)
        assert (await lim.acquire("ibkr", timeout=5)).allowed
        await lim.close()
        await c.close()
    run(body)


def test_noscript_and_lost_provider(r, redis_server) -> None:  # type: ignore[no-untyped-def]
    async def body() -> None:
        c = client(redis_server)
        lim = AsyncLimiter(c)
        await lim.register("ibkr", **SLOW)
        await lim.set_scale("ibkr", 0.25)
        await lim.try_acquire("ibkr")
        await c.script_flush()
        assert (await lim.try_acquire("ibkr")).allowed
        await c.flushall()
        d = await lim.try_acquire("ibkr")
        assert d.allowed and d.scale == 0.25
        await lim.close()
        await c.close()
    run(body)


def test_redis_unavailable() -> None:
    from conftest import free_port

    async def body() -> None:
        c = redis.asyncio.Redis(port=free_port(), socket_connect_timeout=0.5)
        lim = AsyncLimiter(c)
        with pytest.raises(RedisUnavailableError):
            await lim.try_acquire("ibkr")
        await lim.close()
        await c.close()
    run(body)


def test_waiters_take_turns(r, redis_server) -> None:  # type: ignore[no-untyped-def]
    from test_limiter import evalsha_calls

    async def body() -> None:
        c = client(redis_server)
        lim = AsyncLimiter(c)
        await lim.register("turns", capacity=1, refill_rate=100)
        await lim.try_acquire("turns")
        r.config_resetstat()

        async def worker() -> int:
            return sum([(await lim.acquire("turns")).allowed for _ in range(5)])
        got = await asyncio.gather(*(worker() for _ in range(8)))
        calls = evalsha_calls(r)
        assert sum(got) == 40
        assert calls <= 3 * 40, f"{calls} script calls for 40 grants"
        await lim.close()
        await c.close()
    run(body)


def test_paused_waiter_survives_a_lost_subscription(r, redis_server) -> None:  # type: ignore[no-untyped-def]
    async def body() -> None:
        c = client(redis_server)
        lim = AsyncLimiter(c, paused_recheck=60)
        await lim.register("ibkr", capacity=5, refill_rate=10)
        await lim.set_scale("ibkr", 0)
        waiter = asyncio.create_task(lim.acquire("ibkr", timeout=30))

        async def subscribed() -> None:
            while (await c.pubsub_numsub("sluice:{ibkr}:notify"))[0][1] == 0:
                await asyncio.sleep(0.01)
        await subscribed()
        assert r.client_kill_filter(_type="pubsub") >= 1
        await asyncio.wait_for(subscribed(), 10)
        await asyncio.sleep(0.2)
        assert not waiter.done()
        await AsyncLimiter(c).set_scale("ibkr", 1)
        d = await asyncio.wait_for(waiter, 30)
        assert d.allowed
        await lim.close()
        await c.close()
    run(body)


def test_close_while_tasks_are_mid_call(r, redis_server) -> None:  # type: ignore[no-untyped-def]
    """As test_limiter's test_close_while_threads_are_mid_call: close()
    while 8 tasks are in acquire loops, 100 times; close never raises and
    every task ends with ClosedError, never RedisUnavailableError (its
    connection closed under it by close) or a raw error. On one event loop
    a call is rarely still in flight when close disconnects (close's own
    registry leave lets the tasks reach their next call first), so this
    one catches a regression only now and then; the threads' test always."""
    async def body() -> None:
        c = client(redis_server)
        await AsyncLimiter(c).register("busy", capacity=1_000_000, refill_rate=1_000_000)
        for _ in range(100):
            lim = AsyncLimiter(c, call_timeout=5)
            granted = [asyncio.Event() for _ in range(8)]

            async def work(first: asyncio.Event) -> BaseException:
                while True:
                    try:
                        await lim.acquire("busy", timeout=5)
                    except Exception as e:
                        return e
                    first.set()

            tasks = [asyncio.create_task(work(g)) for g in granted]
            await asyncio.wait_for(asyncio.gather(*(g.wait() for g in granted)), 30)
            await lim.close()
            ends = await asyncio.wait_for(asyncio.gather(*tasks), 30)
            assert [type(e) for e in ends] == [ClosedError] * 8, [repr(e) for e in ends]
        await c.close()
    run(body)


def test_rules_form_async(r, redis_server) -> None:  # type: ignore[no-untyped-def]
    """AsyncLimiter and the seed's RateCoordinator on acquire.lua's rules
    form: the keyed rule per contract, a permit released and renewed."""
    async def body() -> None:
        c = client(redis_server)
        coord = RateCoordinator(c, replica_id="py-async-rules", source="test")
        coord.register_provider("ibkr", capacity=100, refill_rate=0.001)
        assert await coord.set_rules("ibkr", [
            {"name": "contract", "kind": "keyed", "limit": 2, "period_ms": 60000},
            {"name": "open", "kind": "concurrency", "limit": 5, "lease_ms": 60000},
        ])
        a = await coord.acquire("ibkr", key="AAPL:SMART:TRADES")
        b = await coord.acquire("ibkr", key="AAPL:SMART:TRADES")
        assert a.allowed and b.allowed and a.permit.id != b.permit.id
        with pytest.raises(RuleLimitedError) as e:
            await coord.acquire("ibkr", key="AAPL:SMART:TRADES", timeout=1)
        assert e.value.decision.rule == "contract"
        d = await coord.limiter.try_acquire_request("ibkr", 2, key="MSFT:SMART:BID_ASK")
        assert d.allowed and await r_permits(c) == 4
        assert await d.permit.release() == 2
        await a.permit.renew(90)
        await b.permit.release()
        with pytest.raises(PermitLostError):
            await b.permit.renew(1)
        with pytest.raises(InvalidArgumentError) as e2:  # the keyed rule needs a key: learnt from RULES_CHANGED
            await coord.limiter.try_acquire("ibkr")
        assert e2.value.field == "key.contract"
        await coord.limiter.close()
        await c.close()
    run(body)


def test_lanes_async(r, redis_server) -> None:  # type: ignore[no-untyped-def]
    """AsyncLimiter and the seed's RateCoordinator with lanes: the live
    lane's burst held for it while the backfill is refused, a lane-less
    acquire in the last lane."""
    async def body() -> None:
        c = client(redis_server)
        coord = RateCoordinator(c, replica_id="py-async-lanes", source="test")
        coord.register_provider("ibkr", capacity=20, refill_rate=0.001)
        assert await coord.set_lanes("ibkr", [{"name": "live", "priority": 1, "burst": 10}, {"name": "backfill"}])
        for _ in range(10):
            assert (await coord.acquire("ibkr", lane="backfill", timeout=5)).allowed
        with pytest.raises(RateLimitedError):
            await coord.acquire("ibkr", lane="backfill", timeout=0.5)
        with pytest.raises(RateLimitedError):
            await coord.acquire("ibkr", timeout=0.5)  # no lane: the backfill's
        d = await coord.limiter.try_acquire_request("ibkr", 2, lane="live")
        assert d.allowed and d.remaining == pytest.approx(8, abs=0.01)  # live 8, and the backfill's refill since
        await coord.limiter.close()
        await c.close()
    run(body)


async def r_permits(c: "redis.asyncio.Redis[bytes]") -> int:
    held = await c.hget("sluice:{ibkr}:rules", "open")  # held, next packed '<I2I7' (docs/lua.md)
    return struct.unpack_from("<H", held)[0] if held else 0
