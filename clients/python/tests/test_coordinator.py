"""The seed's tests (its plan's Milestones 1-3: 10 RateCoordinator tests, 8
FeedbackHandler tests, the in-process integration test), ported to the
adapter over the shared limiter. Where the seed read private state
(coord._buckets[p].budget.max_msgs_per_sec, coord._scale_factors[p]) they
read the shared state in Redis; where it read Prometheus metrics they read
the scale hash that the Go replicas export as metrics."""

from __future__ import annotations

import logging
from typing import Awaitable, Callable, List, Optional

import pytest
import redis
import redis.asyncio

from conftest import run
from sluice import InvalidArgumentError, PausedError
from sluice.coordinator import (
    BackpressureLevel,
    FeedbackBus,
    FeedbackEvent,
    FeedbackHandler,
    RateCoordinator,
    feedback_bus,
)


def with_coord(redis_server, body: Callable[[RateCoordinator, "redis.asyncio.Redis[bytes]"], Awaitable[None]]) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        c = redis.asyncio.Redis(port=redis_server.port)
        coord = RateCoordinator(c, source="test")
        try:
            await body(coord, c)
        finally:
            await coord.close()
            await c.close()
    run(main)


# RateCoordinator (Milestone 1).

def test_set_budget_scale_adjusts_rate(r, redis_server) -> None:  # type: ignore[no-untyped-def]
    async def body(coord: RateCoordinator, c) -> None:  # type: ignore[no-untyped-def]
        coord.register_provider("test", capacity=100, refill_rate=100)
        await coord.set_budget_scale("test", 0.5)
        assert await coord.effective_rate("test") == 50  # the seed: budget.max_msgs_per_sec == 50
    with_coord(redis_server, body)


def test_set_budget_scale_invalid_provider(r, redis_server, caplog) -> None:  # type: ignore[no-untyped-def]
    async def body(coord: RateCoordinator, c) -> None:  # type: ignore[no-untyped-def]
        with caplog.at_level(logging.WARNING, logger="sluice"):
            await coord.set_budget_scale("nope", 0.5)  # the seed ignores it: so does the adapter, loudly
        assert "not registered here" in caplog.text
        assert await c.exists("sluice:{nope}:scale") == 0
        coord.register_provider("test", capacity=100, refill_rate=100)
        for bad in (1.5, -0.5, float("nan")):  # the seed accepted these; the contract refuses them
            with pytest.raises(InvalidArgumentError) as ei:
                await coord.set_budget_scale("test", bad)
            assert ei.value.field == "scale"
    with_coord(redis_server, body)


def test_set_budget_scale_zero(r, redis_server) -> None:  # type: ignore[no-untyped-def]
    async def body(coord: RateCoordinator, c) -> None:  # type: ignore[no-untyped-def]
        coord.register_provider("test", capacity=100, refill_rate=100)
        await coord.set_budget_scale("test", 0.0)
        assert await coord.effective_rate("test") == 0
        with pytest.raises(PausedError):  # scale 0 pauses, even with a full bucket
            await coord.acquire("test", timeout=0.3)
    with_coord(redis_server, body)


def test_set_budget_scale_one(r, redis_server) -> None:  # type: ignore[no-untyped-def]
    async def body(coord: RateCoordinator, c) -> None:  # type: ignore[no-untyped-def]
        coord.register_provider("test", capacity=100, refill_rate=100)
        await coord.set_budget_scale("test", 0.2)
        await coord.set_budget_scale("test", 1.0)
        assert await coord.budget_scale("test") == 1.0
        assert await coord.effective_rate("test") == 100
    with_coord(redis_server, body)


def test_set_global_pressure_updates_state(r, redis_server) -> None:  # type: ignore[no-untyped-def]
    async def body(coord: RateCoordinator, c) -> None:  # type: ignore[no-untyped-def]
        coord.register_provider("test", capacity=100, refill_rate=100)
        await coord.set_global_pressure("test", "soft")
        assert await coord.pressure_level("test") == "soft"  # the seed: coord._pressure_states["test"]
        assert await coord.budget_scale("test") == 1.0  # the level alone does not change the rate
        with pytest.raises(InvalidArgumentError):
            await coord.set_global_pressure("test", "medium")
    with_coord(redis_server, body)


def test_scale_persists_across_acquire(r, redis_server) -> None:  # type: ignore[no-untyped-def]
    async def body(coord: RateCoordinator, c) -> None:  # type: ignore[no-untyped-def]
        coord.register_provider("test", capacity=100, refill_rate=100)
        await coord.set_budget_scale("test", 0.5)
        for _ in range(10):
            d = await coord.acquire("test")
            assert d.scale == 0.5
        assert await coord.budget_scale("test") == 0.5
    with_coord(redis_server, body)


def test_base_rate_preserved(r, redis_server) -> None:  # type: ignore[no-untyped-def]
    async def body(coord: RateCoordinator, c) -> None:  # type: ignore[no-untyped-def]
        coord.register_provider("test", capacity=100, refill_rate=80)
        await coord.set_budget_scale("test", 0.25)
        await coord.set_budget_scale("test", 0.75)
        assert coord.base_rate("test") == 80
        assert (await coord.limiter.status("test")).config.refill_rate == 80  # stored unscaled
        assert await coord.effective_rate("test") == 60
    with_coord(redis_server, body)


def test_scale_factor_metrics_updated(r, redis_server) -> None:  # type: ignore[no-untyped-def]
    async def body(coord: RateCoordinator, c) -> None:  # type: ignore[no-untyped-def]
        coord.register_provider("test", capacity=100, refill_rate=100)
        await coord.set_budget_scale("test", 0.5)
        h = await c.hgetall("sluice:{test}:scale")  # what operators (and Go's metrics) read
        assert (h[b"scale"], h[b"source"], h[b"seq"]) == (b"0.5", b"test", b"1")
        assert int(h[b"updated_at"]) > 0
    with_coord(redis_server, body)


def test_pressure_state_metrics_updated(r, redis_server) -> None:  # type: ignore[no-untyped-def]
    async def body(coord: RateCoordinator, c) -> None:  # type: ignore[no-untyped-def]
        coord.register_provider("test", capacity=100, refill_rate=100)
        await coord.set_global_pressure("test", BackpressureLevel.HARD)
        h = await c.hgetall("sluice:{test}:scale")
        assert (h[b"level"], h[b"level_source"]) == (b"hard", b"test")
        assert (await coord.acquire("test")).level == "hard"  # every replica's decisions carry it
    with_coord(redis_server, body)


def test_scale_does_not_affect_capacity(r, redis_server) -> None:  # type: ignore[no-untyped-def]
    async def body(coord: RateCoordinator, c) -> None:  # type: ignore[no-untyped-def]
        coord.register_provider("test", capacity=100, refill_rate=0.001)
        await coord.set_budget_scale("test", 0.5)
        d = await coord.acquire("test", 100)  # the full burst is still there
        assert d.allowed and d.capacity == 100
    with_coord(redis_server, body)


def test_register_provider_checks_at_once() -> None:
    coord = RateCoordinator(redis.asyncio.Redis(port=1))  # never connects: nothing awaited
    with pytest.raises(InvalidArgumentError) as ei:
        coord.register_provider("test", capacity=0)
    assert ei.value.field == "capacity"
    with pytest.raises(InvalidArgumentError):
        coord.register_provider("a b")


# FeedbackHandler (Milestone 2), with the seed's mock and with the real coordinator.

class MockRateCoordinator:
    def __init__(self) -> None:
        self.last_scale: Optional[float] = None
        self.last_pressure: Optional[str] = None
        self.calls: List[str] = []

    async def set_global_pressure(self, provider: str, level: str) -> None:
        self.last_pressure = level
        self.calls.append("pressure")

    async def set_budget_scale(self, provider: str, scale: float) -> None:
        self.last_scale = scale
        self.calls.append("scale")


def test_feedback_handler_scales_on_soft() -> None:
    coord = MockRateCoordinator()
    handler = FeedbackHandler(coord, "ibkr")
    run(lambda: handler.handle(FeedbackEvent("default", 800, 1000, BackpressureLevel.SOFT)))
    assert coord.last_scale == 0.5 and coord.last_pressure == "soft"


def test_feedback_handler_scales_on_hard() -> None:
    coord = MockRateCoordinator()
    handler = FeedbackHandler(coord, "ibkr")
    run(lambda: handler.handle(FeedbackEvent("default", 950, 1000, BackpressureLevel.HARD)))
    assert coord.last_scale == 0.0 and coord.last_pressure == "hard"


@pytest.mark.parametrize("level,scale", [(BackpressureLevel.OK, 1.0), (BackpressureLevel.SOFT, 0.5),
                                         (BackpressureLevel.HARD, 0.0)])
def test_handle_sets_scale(r, redis_server, level, scale) -> None:  # type: ignore[no-untyped-def]
    # test_handle_ok_sets_scale_one, _soft_sets_scale_half, _hard_sets_scale_zero, on the shared budget
    async def body(coord: RateCoordinator, c) -> None:  # type: ignore[no-untyped-def]
        coord.register_provider("ibkr", capacity=100, refill_rate=100)
        await coord.set_budget_scale("ibkr", 0.3)
        await FeedbackHandler(coord, "ibkr").handle(FeedbackEvent("default", 500, 1000, level))
        assert await coord.budget_scale("ibkr") == scale
    with_coord(redis_server, body)


def test_handle_updates_pressure_state(r, redis_server) -> None:  # type: ignore[no-untyped-def]
    async def body(coord: RateCoordinator, c) -> None:  # type: ignore[no-untyped-def]
        coord.register_provider("ibkr", capacity=100, refill_rate=100)
        await FeedbackHandler(coord, "ibkr").handle(FeedbackEvent("default", 800, 1000, BackpressureLevel.SOFT))
        assert await coord.pressure_level("ibkr") == "soft"
    with_coord(redis_server, body)


def test_handle_logs_adjustment(caplog) -> None:  # type: ignore[no-untyped-def]
    coord = MockRateCoordinator()
    with caplog.at_level(logging.DEBUG, logger="sluice"):
        run(lambda: FeedbackHandler(coord, "ibkr").handle(FeedbackEvent("default", 800, 1000, "soft")))
    assert "[feedback] provider=ibkr level=soft scale=0.5 q=800/1000" in caplog.text


def test_handle_with_missing_provider(r, redis_server) -> None:  # type: ignore[no-untyped-def]
    async def body(coord: RateCoordinator, c) -> None:  # type: ignore[no-untyped-def]
        await FeedbackHandler(coord, "ghost").handle(FeedbackEvent("default", 950, 1000, "hard"))  # no crash
        assert await c.exists("sluice:{ghost}:scale") == 0
    with_coord(redis_server, body)


def test_handle_metrics_incremented() -> None:
    coord = MockRateCoordinator()
    h = FeedbackHandler(coord, "ibkr")

    async def body() -> None:
        await h.handle(FeedbackEvent("s0", 1, 10, "ok", seq=1))
        await h.handle(FeedbackEvent("s0", 9, 10, "hard", seq=2))
        await h.handle(FeedbackEvent("s0", 5, 10, "soft", seq=2))  # not newer: ignored
        await h.handle(FeedbackEvent("s1", 7, 10, "soft", seq=1))  # another coordinator
    run(body)
    assert h.events == {"ok": 1, "hard": 1, "soft": 1} and h.ignored == 1
    assert coord.last_scale == 0.5


def test_custom_policy_via_subclass() -> None:
    class Gentle(FeedbackHandler):
        def scale_for(self, level: str) -> float:
            return {"ok": 1.0, "soft": 0.8, "hard": 0.2}[level]

    coord = MockRateCoordinator()
    run(lambda: Gentle(coord, "ibkr").handle(FeedbackEvent("d", 950, 1000, "hard")))
    assert coord.last_scale == 0.2
    run(lambda: FeedbackHandler(coord, "ibkr", policy={"ok": 1, "soft": 0.6, "hard": 0.1})
        .handle(FeedbackEvent("d", 800, 1000, "soft")))
    assert coord.last_scale == 0.6
    with pytest.raises(ValueError):
        FeedbackHandler(coord, "ibkr", policy={"ok": 1})


# Milestone 3: the in-process flow.

def test_feedback_inprocess_flow(r, redis_server) -> None:  # type: ignore[no-untyped-def]
    async def body(coord: RateCoordinator, c) -> None:  # type: ignore[no-untyped-def]
        coord.register_provider("ibkr", capacity=100, refill_rate=100)
        handler = FeedbackHandler(coord, "ibkr")
        bus = feedback_bus()
        bus.subscribe(handler.handle)
        try:
            await bus.publish(FeedbackEvent("default", 800, 1000, BackpressureLevel.SOFT))
            assert await coord.budget_scale("ibkr") == 0.5  # the seed: coord._scale_factors["ibkr"]
            # Another replica sharing the bucket sees the same scale.
            other = RateCoordinator(c)
            other.register_provider("ibkr", capacity=100, refill_rate=100)
            assert (await other.acquire("ibkr")).scale == 0.5
            await other.close()
        finally:
            bus.unsubscribe(handler.handle)
    with_coord(redis_server, body)
    assert isinstance(feedback_bus(), FeedbackBus)
