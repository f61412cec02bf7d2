"""sluice.Limiter against a real redis-server: every operation, its edges,
its errors. Amounts are asserted only where Redis time cannot move them
(rates of 0.001/s, or ranges)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import threading
import time
from typing import Any

import pytest
import redis

from sluice import (
    PermitLostError,
    RuleLimitedError,
    CircuitOpenError,
    ClosedError,
    CoolingDownError,
    CorruptStateError,
    ExceedsCapacityError,
    InvalidArgumentError,
    Limiter,
    PausedError,
    ProviderConfig,
    RateLimitedError,
    RedisUnavailableError,
    UnknownProviderError,
)

SLOW = dict(capacity=5, refill_rate=0.001)  # refills one token in 1000 s: amounts are exact


@pytest.fixture
def lim(r: "redis.Redis[bytes]"):
    lim = Limiter(r, replica_id="py-test", source="test")
    yield lim
    lim.close()


def test_register_created_updated_unchanged(lim: Limiter, r: "redis.Redis[bytes]") -> None:
    assert lim.register("ibkr", **SLOW) == "created"
    assert lim.register("ibkr", **SLOW) == "unchanged"
    assert lim.register("ibkr", capacity=3, refill_rate=0.001) == "updated"
    s = lim.status("ibkr")
    assert s.config == ProviderConfig(capacity=3, refill_rate=0.001)
    assert s.tokens == pytest.approx(3, abs=0.01)  # capped at the new capacity
    assert s.scale == 1 and s.source == "register" and s.level == "ok"
    assert lim.providers() == ["ibkr"]
    assert r.hgetall("sluice:{ibkr}:config")[b"capacity"] == b"3"


@pytest.mark.parametrize("field,value,rng", [
    ("capacity", 0, "an integer in [1, 1000000000]"),
    ("capacity", 1.5, "an integer in [1, 1000000000]"),
    ("capacity", True, "an integer in [1, 1000000000]"),
    ("refill_rate", 0, "a number in (0, 1000000000]"),
    ("refill_rate", float("nan"), "a number in (0, 1000000000]"),
    ("refill_rate", float("inf"), "a number in (0, 1000000000]"),
    ("cooldown_sec", -1, "a number in [0, 86400]"),
    ("breaker_threshold", -1, "an integer in [0, 1000000]"),
    ("breaker_timeout_sec", 0, "a number in (0, 86400]"),
    ("max_scale", 0.5, "a number in [1, 100]"),
    ("max_scale", 101, "a number in [1, 100]"),
])
def test_register_refuses_bad_config(lim: Limiter, r: "redis.Redis[bytes]", field: str, value: object, rng: str) -> None:
    with pytest.raises(InvalidArgumentError) as ei:
        lim.register("ibkr", **{field: value})
    assert (ei.value.field, ei.value.range) == (field, rng)
    assert r.exists("sluice:{ibkr}:config") == 0  # nothing written


@pytest.mark.parametrize("name", ["", "a b", "x{y}", "a" * 65, "ü"])
def test_bad_provider_names(lim: Limiter, name: str) -> None:
    with pytest.raises(InvalidArgumentError) as ei:
        lim.try_acquire(name)
    assert ei.value.field == "provider"


def test_bad_options(r: "redis.Redis[bytes]") -> None:
    for kw, field in [({"prefix": "a:b"}, "prefix"), ({"replica_id": "a b"}, "replica_id"),
                      ({"source": "x\n"}, "source"), ({"paused_recheck": 0}, "paused_recheck"),
                      ({"wake_jitter": -1}, "wake_jitter"), ({"heartbeat": float("nan")}, "heartbeat"),
                      ({"call_timeout": 0}, "call_timeout"), ({"call_timeout": 3601}, "call_timeout")]:
        with pytest.raises(InvalidArgumentError) as ei:
            Limiter(r, **kw)  # type: ignore[arg-type]
        assert ei.value.field == field


def test_client_kinds(r: "redis.Redis[bytes]") -> None:
    """A client of the wrong kind is refused naming it; a good one is used
    through a private copy of its pool: the caller's client is unchanged."""
    import redis.asyncio

    for bad, kinds in [(redis.asyncio.Redis(), "a redis.Redis or redis.cluster.RedisCluster"), ("redis://x", None)]:
        with pytest.raises(InvalidArgumentError) as ei:
            Limiter(bad)  # type: ignore[arg-type]
        assert ei.value.field == "client" and (kinds is None or ei.value.range == kinds)
    from sluice.aio import AsyncLimiter
    with pytest.raises(InvalidArgumentError) as ei:
        AsyncLimiter(r)
    assert ei.value.field == "client" and "redis.asyncio.Redis" in ei.value.range
    cls, kw = r.connection_pool.connection_class, dict(r.connection_pool.connection_kwargs)
    lim = Limiter(r)
    lim.register("ibkr", **SLOW)
    assert lim.try_acquire("ibkr").allowed
    assert (r.connection_pool.connection_class, r.connection_pool.connection_kwargs) == (cls, kw)
    lim.close()


def test_private_pool_keeps_auth_and_db(r: "redis.Redis[bytes]", redis_server) -> None:  # type: ignore[no-untyped-def]
    """The limiter's copy of the pool logs in as the client's user and uses
    its database."""
    r.acl_setuser("py-app", enabled=True, passwords=["+s3cret"], keys=["*"], channels=["*"], commands=["+@all"])
    try:
        c = redis.Redis(port=redis_server.port, username="py-app", password="s3cret", db=2)
        lim = Limiter(c)
        lim.register("ibkr", **SLOW)
        assert lim.try_acquire("ibkr").allowed
        assert r.exists("sluice:{ibkr}:config") == 0  # not in db 0
        assert c.exists("sluice:{ibkr}:config") == 1
        assert any(cl["user"] == "py-app" and cl["db"] == "2" for cl in r.client_list())
        lim.close()
        c.flushdb()
    finally:
        r.acl_deluser("py-app")


def test_try_acquire(lim: Limiter) -> None:
    lim.register("ibkr", **SLOW)
    d = lim.try_acquire("ibkr", 4)
    assert d.allowed and d.reason == "ok" and d.retry_after == 0
    assert d.remaining == pytest.approx(1, abs=0.01)
    assert (d.capacity, d.refill_rate, d.scale, d.level, d.breaker) == (5, 0.001, 1, "ok", "closed")
    d = lim.try_acquire("ibkr", 2)
    assert not d.allowed and d.reason == "rate_limited"
    assert d.retry_after == pytest.approx(1000, rel=0.02)  # (2 - 1) / 0.001 s
    d = lim.try_acquire("ibkr", 6)
    assert not d.allowed and d.reason == "exceeds_capacity" and d.retry_after == -1
    for n in (0, -1, 1.0, 10**9 + 1, True):
        with pytest.raises(InvalidArgumentError) as ei:
            lim.try_acquire("ibkr", n)  # type: ignore[arg-type]
        assert ei.value.field == "n"


def test_unknown_provider(lim: Limiter) -> None:
    with pytest.raises(UnknownProviderError) as ei:
        lim.try_acquire("nope")
    assert ei.value.provider == "nope"
    for call in (lambda: lim.set_scale("nope", 0.5), lambda: lim.record_failure("nope"),
                 lambda: lim.trigger_cooldown("nope", "x"), lambda: lim.status("nope"),
                 lambda: lim.set_pressure("nope", "soft")):
        with pytest.raises(UnknownProviderError):
            call()


def test_acquire_waits_out_the_rate(lim: Limiter) -> None:
    lim.register("fast", capacity=1, refill_rate=50)
    first = lim.acquire("fast")
    second = lim.acquire("fast")  # waits about 20 ms for the token
    assert first.allowed and second.allowed
    assert second.now_us - first.now_us >= 19_000  # Redis time: one token at 50/s


def test_acquire_refuses_a_wait_beyond_its_timeout(lim: Limiter) -> None:
    lim.register("ibkr", **SLOW)
    lim.try_acquire("ibkr", 5)
    t = time.monotonic()
    with pytest.raises(RateLimitedError) as ei:
        lim.acquire("ibkr", timeout=5)
    assert time.monotonic() - t < 4  # at once, not after the timeout
    assert not ei.value.timed_out and ei.value.decision.reason == "rate_limited"
    with pytest.raises(ExceedsCapacityError):
        lim.acquire("ibkr", 6)
    with pytest.raises(InvalidArgumentError) as e2:
        lim.acquire("ibkr", timeout=-1)
    assert e2.value.field == "timeout"


def test_scale(lim: Limiter, r: "redis.Redis[bytes]") -> None:
    lim.register("ibkr", **SLOW)
    ch = lim.set_scale("ibkr", 0.5)
    assert (ch.old, ch.new, ch.changed, ch.seq) == (1, 0.5, True, 1)
    assert lim.set_scale("ibkr", 0.5).changed is False
    s = lim.status("ibkr")
    assert (s.scale, s.source, s.seq, s.effective_rate) == (0.5, "test", 1, 0.0005)
    assert s.config.capacity == 5  # capacity is not scaled
    for bad in (1.5, -0.1, float("nan"), float("inf")):
        with pytest.raises(InvalidArgumentError) as ei:
            lim.set_scale("ibkr", bad)
        assert ei.value.field == "scale"
    assert lim.status("ibkr").scale == 0.5  # a refused call writes nothing
    lim.register("big", capacity=5, refill_rate=1, max_scale=2)
    assert lim.set_scale("big", 2).new == 2


def test_pause_and_notify(r: "redis.Redis[bytes]", lim: Limiter) -> None:
    lim.register("ibkr", capacity=5, refill_rate=10)
    lim.set_scale("ibkr", 0)
    d = lim.try_acquire("ibkr")
    assert (d.allowed, d.reason, d.retry_after) == (False, "paused", -1)  # banked tokens are not granted
    with pytest.raises(PausedError) as ei:
        lim.acquire("ibkr", timeout=0.5)
    assert ei.value.timed_out
    # A waiter re-checking only every 60 s is woken by the notification
    # that set_scale publishes on sluice:{ibkr}:notify.
    waiter = Limiter(r, paused_recheck=60)
    got: list = []
    t = threading.Thread(target=lambda: got.append(waiter.acquire("ibkr", timeout=30)))
    t.start()
    wait_subscribed(r, "sluice:{ibkr}:notify")
    ch = Limiter(r, source="operator").set_scale("ibkr", 1)
    t.join(30)
    assert got and got[0].allowed and got[0].now_us > ch.now_us
    waiter.close()


def wait_subscribed(r: "redis.Redis[bytes]", channel: str) -> None:
    end = time.monotonic() + 10
    while r.pubsub_numsub(channel)[0][1] == 0:
        assert time.monotonic() < end, "no subscriber on " + channel
        time.sleep(0.01)


def test_level_and_shadow(lim: Limiter, r: "redis.Redis[bytes]") -> None:
    lim.register("ibkr", **SLOW)
    assert lim.set_pressure("ibkr", "soft") == "ok"
    assert lim.set_shadow_scale("ibkr", 0.25) == ""
    h = r.hgetall("sluice:{ibkr}:scale")
    assert (h[b"level"], h[b"level_source"], h[b"shadow_scale"]) == (b"soft", b"test", b"0.25")
    assert lim.try_acquire("ibkr").level == "soft"
    with pytest.raises(InvalidArgumentError) as ei:
        lim.set_pressure("ibkr", "medium")
    assert ei.value.field == "level"


def test_breaker(lim: Limiter) -> None:
    lim.register("ibkr", capacity=5, refill_rate=100, breaker_threshold=2, breaker_timeout_sec=0.5)
    assert lim.record_failure("ibkr").state == "closed"
    b = lim.record_failure("ibkr")
    assert b.state == "open" and b.failures == 2 and 0 < b.retry_after <= 0.5
    d = lim.try_acquire("ibkr")
    assert d.reason == "circuit_open" and 0 < d.retry_after <= 0.5
    with pytest.raises(CircuitOpenError):
        lim.acquire("ibkr", timeout=0.25)
    probe = lim.acquire("ibkr", timeout=5)  # waits out the open breaker
    assert probe.reason == "probe" and probe.breaker == "half_open"
    assert lim.try_acquire("ibkr").reason == "circuit_open"  # one probe at a time
    assert lim.record_success("ibkr").state == "closed"
    assert lim.try_acquire("ibkr").allowed
    lim.record_failure("ibkr")
    lim.record_failure("ibkr")
    assert lim.reset_breaker("ibkr").state == "closed"
    assert lim.status("ibkr").breaker.state == "closed"


def test_cooldown(lim: Limiter) -> None:
    lim.register("ibkr", capacity=5, refill_rate=100, cooldown_sec=3600)
    until = lim.trigger_cooldown("ibkr", "pacing", "broker said so", duration=0.5)
    assert until is not None and until > time.time() - 5
    d = lim.try_acquire("ibkr")
    assert d.reason == "cooldown" and 0 < d.retry_after <= 0.5
    s = lim.status("ibkr")
    assert s.cooldown is not None and (s.cooldown.scope, s.cooldown.reason) == ("pacing", "broker said so")
    with pytest.raises(CoolingDownError):
        lim.acquire("ibkr", timeout=0.25)
    assert lim.acquire("ibkr", timeout=5).allowed  # waits it out
    lim.trigger_cooldown("ibkr", "pacing")  # the provider's cooldown_sec: an hour
    assert lim.try_acquire("ibkr").retry_after > 3000
    lim.clear_cooldown("ibkr")
    assert lim.try_acquire("ibkr").allowed
    with pytest.raises(InvalidArgumentError) as ei:
        lim.trigger_cooldown("ibkr", "x", duration=86401)
    assert ei.value.field == "duration"


def test_corrupt_state(lim: Limiter, r: "redis.Redis[bytes]") -> None:
    lim.register("ibkr", **SLOW)
    r.hset("sluice:{ibkr}:config", "capacity", "nan")
    with pytest.raises(CorruptStateError, match="capacity=nan"):
        lim.try_acquire("ibkr")
    lim.register("ibkr", **SLOW)  # rewrites a corrupt config
    r.hset("sluice:{ibkr}:scale", "scale", "0x10")
    with pytest.raises(CorruptStateError, match="scale=0x10"):
        lim.try_acquire("ibkr")
    lim.set_scale("ibkr", 1)  # rewrites a corrupt scale
    assert lim.try_acquire("ibkr").allowed


def test_noscript_and_lost_provider(lim: Limiter, r: "redis.Redis[bytes]") -> None:
    lim.register("ibkr", **SLOW)
    lim.set_scale("ibkr", 0.5)
    lim.try_acquire("ibkr")
    r.script_flush()  # EVALSHA answers NOSCRIPT: redis-py loads the script again
    assert lim.try_acquire("ibkr").allowed
    r.flushall()  # Redis lost everything: this client registered it, so it does again
    d = lim.try_acquire("ibkr")
    assert d.allowed and d.scale == 0.5  # and restores the last scale it saw
    other = Limiter(r)
    r.flushall()
    with pytest.raises(UnknownProviderError):  # never registered by this one
        other.try_acquire("ibkr")


def test_replica_registry(r: "redis.Redis[bytes]") -> None:
    a = Limiter(r, replica_id="py-a", heartbeat=0.1)
    b = Limiter(r, replica_id="py-b", heartbeat=0.1)
    a.register("ibkr", **SLOW)
    assert a.status("ibkr").replicas == []  # register and status do not make a replica
    a.try_acquire("ibkr")
    b.try_acquire("ibkr")
    assert a.status("ibkr").replicas == ["py-a", "py-b"]
    ttl = r.zscore("sluice:replicas:{ibkr}", "py-a")
    assert ttl is not None
    time.sleep(0.35)  # the heartbeat renews the entry (3 beats of life) ...
    assert a.status("ibkr").replicas == ["py-a", "py-b"]
    assert (r.zscore("sluice:replicas:{ibkr}", "py-a") or 0) > ttl
    assert a.replicas("ibkr") == 2
    b.close()  # ... and close leaves
    assert a.status("ibkr").replicas == ["py-a"]
    a.close()
    with pytest.raises(ClosedError):
        a.try_acquire("ibkr")


def test_decoded_responses(redis_server) -> None:  # type: ignore[no-untyped-def]
    c = redis.Redis(port=redis_server.port, decode_responses=True)
    c.flushall()
    lim = Limiter(c)
    lim.register("ibkr", **SLOW)
    assert lim.try_acquire("ibkr").allowed
    assert lim.status("ibkr").config.capacity == 5
    lim.close()


def test_redis_unavailable() -> None:
    from conftest import free_port

    lim = Limiter(redis.Redis(port=free_port(), socket_connect_timeout=0.5))
    with pytest.raises(RedisUnavailableError):
        lim.try_acquire("ibkr")
    with pytest.raises(RedisUnavailableError):
        lim.register("ibkr", **SLOW)
    lim.close()


def evalsha_calls(r: "redis.Redis[bytes]") -> int:
    v = r.info("commandstats").get("cmdstat_evalsha", {})
    if isinstance(v, dict):
        return int(v.get("calls", 0))
    return int(dict(kv.split("=") for kv in str(v).split(","))["calls"])


def test_waiters_take_turns(r: "redis.Redis[bytes]") -> None:
    """8 threads rate limited on one provider: one polls Redis at a time,
    the others wait for its grant, so Redis sees about one call per grant
    (every thread polling would be about eight)."""
    lim = Limiter(r)
    lim.register("turns", capacity=1, refill_rate=100)
    lim.try_acquire("turns")
    r.config_resetstat()
    grants: list = []
    threads = [threading.Thread(target=lambda: grants.extend(lim.acquire("turns") for _ in range(5)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    calls = evalsha_calls(r)
    assert len(grants) == 40 and all(d.allowed for d in grants)
    assert calls <= 3 * len(grants), f"{calls} script calls for {len(grants)} grants"
    lim.close()


def test_paused_waiter_survives_a_lost_subscription(r: "redis.Redis[bytes]") -> None:
    """The notify connection is killed while a waiter is paused: the client
    reconnects and subscribes again, and the waiter still wakes on the next
    change (its re-check is 60 s)."""
    lim = Limiter(r, paused_recheck=60)
    lim.register("ibkr", capacity=5, refill_rate=10)
    lim.set_scale("ibkr", 0)
    got: list = []
    t = threading.Thread(target=lambda: got.append(lim.acquire("ibkr", timeout=30)))
    t.start()
    wait_subscribed(r, "sluice:{ibkr}:notify")
    assert r.client_kill_filter(_type="pubsub") >= 1
    wait_subscribed(r, "sluice:{ibkr}:notify")  # back
    time.sleep(0.2)  # the waiter, woken by the re-subscription, is paused again
    Limiter(r).set_scale("ibkr", 1)
    t.join(30)
    assert got and got[0].allowed
    lim.close()


RULES = [
    {"name": "hist", "kind": "window", "limit": 3, "period_ms": 60000},
    {"name": "contract", "kind": "keyed", "limit": 2, "period_ms": 60000},
    {"name": "open", "kind": "concurrency", "limit": 3, "lease_ms": 60000},
]


def test_rules_form(lim: Limiter, r: "redis.Redis[bytes]") -> None:
    """The rules form of acquire.lua (docs/lua.md) from Python: all or
    nothing, the refusing rule named, permits released and renewed."""
    lim.register("ibkr", capacity=100, refill_rate=0.001)
    assert lim.set_rules("ibkr", RULES) == (True, 1)
    assert lim.set_rules("ibkr", RULES) == (False, 1)
    with pytest.raises(InvalidArgumentError) as e:  # checked by the client (docs/lua.md)
        lim.try_acquire_request("ibkr", key="AAPL SMART")
    assert e.value.field == "key.contract"
    a = lim.try_acquire_request("ibkr", key="AAPL:SMART:TRADES")
    b = lim.try_acquire_request("ibkr", key="AAPL:SMART:TRADES")
    assert a.allowed and b.allowed and a.permit is not None and a.permit.id != b.permit.id
    d = lim.try_acquire_request("ibkr", key="AAPL:SMART:TRADES")
    assert not d.allowed and d.reason == "rule_limited" and d.rule == "contract" and 30 < d.retry_after <= 60
    # the refusal charged nothing: the window's log holds 2 units (docs/lua.md:
    # packed, a byte 1 then the units held, little-endian, in 2 bytes)
    log = r.hget("sluice:{ibkr}:rules", "hist")
    assert log[0] == 1 and struct.unpack_from("<H", log, 1)[0] == 2
    assert a.permit.release() == 1 and a.permit.release() == 0
    c = lim.try_acquire_request("ibkr", key="MSFT:SMART:TRADES", cost=1)
    assert c.allowed
    with pytest.raises(RuleLimitedError) as e:  # the window holds 3
        lim.acquire_request("ibkr", key="IBM:SMART:TRADES", timeout=1)
    assert e.value.decision.rule == "hist"
    b.permit.renew(120)
    assert b.permit.expiry_us > c.permit.expiry_us
    b.permit.release()
    with pytest.raises(PermitLostError):
        b.permit.renew(1)
    # A plain try_acquire on a provider with a keyed rule: learnt, then refused for its missing key.
    with pytest.raises(InvalidArgumentError) as e:
        lim.try_acquire("ibkr")
    assert e.value.field == "key.contract"
    with pytest.raises(InvalidArgumentError) as e:
        lim.set_rules("ibkr", [{"name": "w", "kind": "window", "limit": 0, "period_ms": 10}])
    assert e.value.field == "rules.w.limit"
    assert lim.set_rules("ibkr", []) == (True, 2)
    assert lim.try_acquire("ibkr").allowed  # the plain form again


def test_lanes(lim: Limiter, r: "redis.Redis[bytes]") -> None:
    """Lanes (docs/lanes.md) from Python: the live lane's burst held for
    it, a lane taking from lower lanes but never from higher ones, an
    unknown lane and a bad set refused naming the field, and the lanes
    removed."""
    lim.register("ibkr", capacity=20, refill_rate=0.001)
    lanes = [{"name": "backfill"}, {"name": "live", "priority": 1, "burst": 10}]
    assert lim.set_lanes("ibkr", lanes) is True
    assert lim.set_lanes("ibkr", lanes) is False
    backfill = [lim.try_acquire_request("ibkr", lane="backfill").allowed for _ in range(11)]
    assert backfill == [True] * 10 + [False]  # its 10; live's 10 are not its own
    assert lim.try_acquire_request("ibkr", lane="live").allowed
    assert lim.try_acquire("ibkr").allowed is False  # no lane: the last (backfill), empty
    assert r.hget("sluice:{ibkr}:bucket", "lane:live") == b"9"
    with pytest.raises(InvalidArgumentError) as e:
        lim.try_acquire_request("ibkr", lane="bulk")
    assert e.value.field == "lane"
    with pytest.raises(InvalidArgumentError) as e:
        lim.set_lanes("ibkr", [{"name": "live", "weight": -1}])
    assert e.value.field == "lanes.live.weight"
    assert lim.set_lanes("ibkr", []) is True
    assert r.hget("sluice:{ibkr}:bucket", "lane:live") is None
    assert [lim.try_acquire("ibkr").allowed for _ in range(10)] == [True] * 9 + [False]  # live's 9 left, whole again


def test_rules_seen_by_go(lim: Limiter, r: "redis.Redis[bytes]", redis_server: Any, sluice_bin: str) -> None:
    """Rules set by the Go CLI are decided by Python on the same keys, and
    what Python counted is what `sluice status` shows."""
    url = redis_server.url
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "MDP_"))}
    run = lambda *a: subprocess.run([sluice_bin, "--redis", url, *a], capture_output=True, text=True, timeout=30,
                                    env=env, check=True).stdout
    run("register", "ibkr", "--rules", "hist=window:5/1m,open=concurrency:9@1m")
    held = [lim.try_acquire_request("ibkr", cost=2) for _ in range(3)]
    assert [d.allowed for d in held] == [True, True, False] and held[2].rule == "hist"
    rules = json.loads(run("status", "ibkr", "--json"))["providers"][0]["rules"]
    assert [(x["name"], x["held"]) for x in rules] == [("hist", 4), ("open", 4)]
