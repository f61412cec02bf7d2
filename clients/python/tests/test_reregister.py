"""A provider Redis lost (a restart without persistence: FLUSHALL and
SCRIPT FLUSH here) is registered again by a client that registered it,
with its pacing rules and lanes, in one MULTI, as the Go limiter does
(pkg/limiter TestRestartRestoresRulesAndLanes): the rules the client last
learnt from Redis, else the ones it gave set_rules, and the lanes it gave
set_lanes. Without the rules, every request after the restart would be
decided against the bucket alone: a window of 2 would let through as many
as the bucket holds. The window's state itself is lost with Redis's, so
the checks count the grants after the restart, by Redis time."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any, Dict, List

import pytest
import redis
import redis.asyncio

from conftest import run, wait_for
from sluice import InvalidArgumentError, Limiter, UnknownProviderError
from sluice.aio import AsyncLimiter
from test_interop import GO_DUMP, Proc, stop_all

CFG: Dict[str, Any] = dict(capacity=100, refill_rate=100)  # the bucket alone would grant every request here
RULES = [{"name": "hist", "kind": "window", "limit": 2, "period_ms": 3600000}]
LANES = [{"name": "live", "priority": 1, "burst": 10}, {"name": "backfill", "priority": 0}]
CONFIG = "sluice:{p}:config"


def lost(r: "redis.Redis[bytes]") -> int:
    """Redis loses everything, as a restart without persistence does; the
    Redis time (µs) at the loss, read in the same MULTI (read after it, a
    replica asking every 2 ms could be granted in between, its grant then
    counted before the loss)."""
    p = r.pipeline(transaction=True)
    p.flushall()
    p.script_flush()
    p.time()
    sec, us = p.execute()[2]
    return int(sec) * 1_000_000 + int(us)


def stored_lanes(r: "redis.Redis[bytes]") -> List[Dict[str, Any]]:
    raw = r.hget(CONFIG, "lanes")
    assert raw is not None, "the lanes were not set again"
    return json.loads(raw)  # type: ignore[no-any-return]


def test_restart_restores_learnt_rules_and_given_lanes(r: "redis.Redis[bytes]") -> None:
    c, admin = Limiter(r, call_timeout=5), Limiter(r, call_timeout=5)
    try:
        c.register("p", **CFG)
        c.set_lanes("p", LANES)
        admin.set_rules("p", RULES)  # c learns them from Redis at its first request
        assert c.try_acquire_request("p", key="k", lane="backfill").allowed
        lost(r)
        got = [c.try_acquire_request("p", key="k", lane="backfill") for _ in range(4)]
        assert sum(d.allowed for d in got) == 2, got  # the window's 2 (its state starts empty); without the rules 4
        assert all(d.rule == "hist" for d in got if not d.allowed), got
        assert [(ln["name"], ln.get("burst", 0)) for ln in stored_lanes(r)] == [("live", 10), ("backfill", 0)]
        assert json.loads(r.hget(CONFIG, "rules") or "[]")[0]["limit"] == 2
    finally:
        c.close()
        admin.close()


def test_restart_restores_given_rules(r: "redis.Redis[bytes]") -> None:
    """A client that set the rules but never learnt any sets those; a client
    that never registered the provider registers nothing."""
    c, other = Limiter(r, call_timeout=5), Limiter(r, call_timeout=5)
    try:
        c.register("p", **CFG)
        c.set_rules("p", RULES)
        c.set_lanes("p", LANES)
        lost(r)
        assert other.providers() == []
        with pytest.raises(UnknownProviderError):  # other never registered it
            other.try_acquire_request("p", lane="live")
        c.set_scale("p", 1)  # any call registers it again: this one before any request
        assert json.loads(r.hget(CONFIG, "rules") or "[]") and stored_lanes(r)
        got = [other.try_acquire_request("p", lane="live") for _ in range(4)]
        assert sum(d.allowed for d in got) == 2, got
        assert c.providers() == ["p"]
    finally:
        c.close()
        other.close()


def test_restart_lanes_refused(r: "redis.Redis[bytes]") -> None:
    """Lanes the config registered again no longer fits (the client
    registered a smaller capacity since it set them): set_lanes refuses them
    inside the MULTI, the caller gets the script's error naming the field,
    and the provider is registered again with its rules all the same (a
    MULTI is not rolled back; as in Go)."""
    c = Limiter(r, call_timeout=5)
    try:
        c.register("p", **CFG)
        c.set_lanes("p", [{"name": "live", "priority": 1, "burst": 50}, {"name": "backfill"}])
        c.set_rules("p", RULES)
        c.register("p", capacity=20, refill_rate=100)
        lost(r)
        with pytest.raises(InvalidArgumentError) as e:
            c.try_acquire_request("p")
        assert e.value.field == "lanes.live.burst" and "[0, 20]" in str(e.value)
        assert r.hget(CONFIG, "lanes") is None and r.hget(CONFIG, "capacity") == b"20"
        assert sum(c.try_acquire_request("p").allowed for _ in range(4)) == 2
    finally:
        c.close()


def test_restart_lanes_refused_keeps_scale_and_listing(r: "redis.Redis[bytes]") -> None:
    """Lanes refused inside the MULTI: the provider, registered again all
    the same, is listed again and keeps the scale this client last saw (at
    1 it would be granted twice the operator's 0.5), then the refusal is
    raised."""
    c = Limiter(r, call_timeout=5)
    try:
        c.register("p", **CFG)
        c.set_lanes("p", [{"name": "live", "priority": 1, "burst": 50}, {"name": "backfill"}])
        c.register("p", capacity=20, refill_rate=100)
        c.set_scale("p", 0.5)
        assert c.try_acquire("p").scale == 0.5
        lost(r)
        with pytest.raises(InvalidArgumentError) as e:
            c.try_acquire("p")
        assert e.value.field == "lanes.live.burst"
        assert r.hget("sluice:{p}:scale", "scale") == b"0.5"
        assert c.providers() == ["p"]
        assert c.try_acquire("p").scale == 0.5
    finally:
        c.close()


def test_restart_lanes_refused_keeps_scale_async(r: "redis.Redis[bytes]", redis_server: Any) -> None:
    """The same with an AsyncLimiter."""
    async def body() -> None:
        cl = redis.asyncio.Redis(port=redis_server.port, socket_timeout=5)
        c = AsyncLimiter(cl, call_timeout=5)
        try:
            await c.register("p", **CFG)
            await c.set_lanes("p", [{"name": "live", "priority": 1, "burst": 50}, {"name": "backfill"}])
            await c.register("p", capacity=20, refill_rate=100)
            await c.set_scale("p", 0.5)
            assert (await c.try_acquire("p")).scale == 0.5
            lost(r)
            with pytest.raises(InvalidArgumentError):
                await c.try_acquire("p")
            assert r.hget("sluice:{p}:scale", "scale") == b"0.5"
            assert await c.providers() == ["p"]
        finally:
            await c.close()
            await cl.close()
    run(body)


def test_restart_concurrent_clients(r: "redis.Redis[bytes]") -> None:
    """Three clients registered the provider and know its rules; after
    each restart they ask 4 times each at once (threads, one client each):
    whichever registers it again, no request is decided without the rules."""
    cs = [Limiter(r, call_timeout=5) for _ in range(3)]
    try:
        for c in cs:
            c.register("p", **CFG)
        cs[0].set_lanes("p", LANES)
        cs[0].set_rules("p", RULES)
        for c in cs:
            c.try_acquire_request("p", key="k", lane="backfill")  # learns the rules
        for rnd in range(5):
            lost(r)
            granted: List[int] = []
            errors: List[BaseException] = []
            start = threading.Barrier(len(cs) * 4)

            def ask(c: Limiter) -> None:
                start.wait(10)
                try:
                    d = c.try_acquire_request("p", key="k", lane="backfill")
                    granted.append(int(d.allowed))
                except Exception as e:  # noqa: BLE001 - reported below
                    errors.append(e)
            ts = [threading.Thread(target=ask, args=(c,)) for c in cs for _ in range(4)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(30)
            assert not errors, errors
            assert len(granted) == 12
            assert sum(granted) == 2, f"restart {rnd}: {sum(granted)} of 12 concurrent requests granted through a window of 2"
    finally:
        for c in cs:
            c.close()


def test_restart_async(r: "redis.Redis[bytes]", redis_server: Any) -> None:
    """The same with AsyncLimiters on their own clients, in one loop."""
    async def body() -> None:
        clients = [redis.asyncio.Redis(port=redis_server.port, socket_timeout=5) for _ in range(3)]
        cs = [AsyncLimiter(cl, call_timeout=5) for cl in clients]
        try:
            for c in cs:
                await c.register("p", **CFG)
            await cs[0].set_lanes("p", LANES)
            await cs[1].set_rules("p", RULES)  # cs[1] gave them; the others learn them
            for c in cs[0], cs[2]:
                await c.try_acquire_request("p", key="k", lane="live")
            for rnd in range(5):
                lost(r)
                got = await asyncio.gather(*(c.try_acquire_request("p", key="k", lane="live")
                                             for c in cs for _ in range(4)))
                n = sum(d.allowed for d in got)
                assert n == 2, f"restart {rnd}: {n} of 12 concurrent requests granted through a window of 2"
        finally:
            for c in cs:
                await c.close()
            for cl in clients:
                await cl.close()
    run(body)


@pytest.mark.parametrize("go_registers", [False, True])
def test_restart_go_and_python_replicas(r: "redis.Redis[bytes]", redis_server: Any, goreplica_bin: str,
                                        go_registers: bool) -> None:
    """Go replicas as processes (TryAcquireRequest every 2 ms) and Python
    clients in threads, across restarts: between two restarts, no more than
    the window's 2 grants by Redis time. Without go_registers only the
    Python clients register the provider again (the Go replicas, which
    never registered it, would be granted by the bucket alone if they did
    so without the rules); with it go-reg registered it too, so either
    language may be first (go-reg, asking every 2 ms, mostly is)."""
    py = [Limiter(r, call_timeout=5) for _ in range(2)]
    gos: List[Proc] = []
    try:
        for c in py:
            c.register("p", **CFG)
        py[0].set_lanes("p", LANES)
        py[0].set_rules("p", RULES)
        py[1].try_acquire_request("p", lane="backfill")  # learns them
        base = [goreplica_bin, "-redis", redis_server.url, "-provider", "p", "-goroutines", "2", "-try"]
        reg = ["-capacity", "100", "-refill-rate", "100"] if go_registers else []
        gos = [Proc("go-reg", base + ["-id", "go-reg", "-lane", "live", *reg], dump=GO_DUMP),
               Proc("go-ask", base + ["-id", "go-ask", "-lane", "backfill"], dump=GO_DUMP)]
        for g in gos:
            g.first("ready", 60)  # it asked, so it knows the rules
        starts: List[int] = []
        grants: List[int] = []
        for _ in range(3):
            calls = evalsha_calls(r)
            starts.append(lost(r))
            start = threading.Barrier(len(py) * 4)
            lock = threading.Lock()

            def ask(c: Limiter) -> None:
                start.wait(10)
                d = c.try_acquire_request("p", lane="backfill")
                if d.allowed:
                    with lock:
                        grants.append(d.now_us)
            ts = [threading.Thread(target=ask, args=(c,)) for c in py for _ in range(4)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(30)
            # The Go replicas asked many times since the restart too.
            wait_for(lambda: evalsha_calls(r) >= calls + 200, 60, "the Go replicas to ask after the restart")
        end = lost(r)  # no grant after this one counts
        reports, gos = stop_all(gos, report_key="granted"), []
        for rep in reports.values():
            grants += [t for t in rep["grants_us"] if t >= starts[0]]
        bounds = starts + [end]
        per = [sum(1 for t in grants if bounds[i] <= t < bounds[i + 1]) for i in range(len(starts))]
        assert per == [2] * len(starts), (
            f"grants between restarts {per}, want the window's 2 each; Go replicas: "
            + "; ".join(f"{n}: {rep['granted']} granted, {rep['errors']} errors {rep['error_samples']}"
                        for n, rep in reports.items()))
    finally:
        for g in gos:  # stopped above unless the test failed first
            g.kill()
        for c in py:
            c.close()


def evalsha_calls(r: "redis.Redis[bytes]") -> int:
    """EVALSHA calls Redis has run (INFO commandstats; FLUSHALL keeps them)."""
    return int(r.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))
