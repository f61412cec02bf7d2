"""The store side: Event (docs/feedback.md's JSON and rules), Reporter, the
Redis pressure publisher (pressure.lua, the level sets, the channel)."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
import redis
import redis.asyncio

from conftest import run
from sluice import InvalidArgumentError, RedisUnavailableError
from sluice.feedback import (
    AsyncPressurePublisher,
    Event,
    EventError,
    FeedbackClient,
    Level,
    PressurePublisher,
    Reporter,
)


def test_event_json_is_the_go_form() -> None:
    ts = dt.datetime(2026, 11, 27, 9, 0, 0, 123000, tzinfo=dt.timezone.utc)
    e = Event("store-0", 800, 1000, Level.SOFT, 1764230000123457, ts)
    assert e.to_json() == ('{"coordinator_id":"store-0","queue_size":800,"capacity":1000,"level":"soft",'
                           '"seq":1764230000123457,"ts":"2026-11-27T09:00:00.123000Z"}')
    assert Event.from_json(e.to_json()) == e
    assert Event("c", 0, 1, "ok", 1).to_json() == '{"coordinator_id":"c","queue_size":0,"capacity":1,"level":"ok","seq":1}'
    assert e.fill == 0.8 and Level.SOFT == "soft"


@pytest.mark.parametrize("text,field", [
    ('{"queue_size":1,"capacity":2,"level":"ok","seq":1}', "coordinator_id"),
    ('{"coordinator_id":"a b","queue_size":1,"capacity":2,"level":"ok","seq":1}', "coordinator_id"),
    ('{"coordinator_id":"c","queue_size":3,"capacity":2,"level":"ok","seq":1}', "queue_size"),
    ('{"coordinator_id":"c","queue_size":-1,"capacity":2,"level":"ok","seq":1}', "queue_size"),
    ('{"coordinator_id":"c","queue_size":1.5,"capacity":2,"level":"ok","seq":1}', "queue_size"),
    ('{"coordinator_id":"c","queue_size":"1","capacity":2,"level":"ok","seq":1}', "queue_size"),
    ('{"coordinator_id":"c","queue_size":1,"capacity":0,"level":"ok","seq":1}', "capacity"),
    ('{"coordinator_id":"c","queue_size":1,"capacity":1000000001,"level":"ok","seq":1}', "capacity"),
    ('{"coordinator_id":"c","queue_size":1,"capacity":2,"level":"meh","seq":1}', "level"),
    ('{"coordinator_id":"c","queue_size":1,"capacity":2,"seq":1}', "level"),
    ('{"coordinator_id":"c","queue_size":1,"capacity":2,"level":"ok","seq":0}', "seq"),
    ('{"coordinator_id":"c","queue_size":1,"capacity":2,"level":"ok"}', "seq"),
    ('{"coordinator_id":"c","queue_size":1,"capacity":2,"level":"ok","seq":true}', "seq"),
    ('{"coordinator_id":"c","queue_size":1,"capacity":2,"level":"ok","seq":1,"ts":"yesterday"}', "ts"),
    ('[1]', "(json)"),
    ('{', "(json)"),
])
def test_event_decoder_names_the_field(text: str, field: str) -> None:
    with pytest.raises(EventError) as ei:
        Event.from_json(text)
    assert ei.value.field == field
    assert str(ei.value).startswith("feedback: event field " + field)


def test_reporter_numbers_events() -> None:
    before = time.time_ns() // 1000
    rep = Reporter("store-0", 1000)
    a = rep.event(10, "ok")
    b = rep.event(5000, Level.HARD)  # capped at the capacity
    assert before < a.seq and b.seq == a.seq + 1  # starts at the start time in µs: rises across restarts
    assert (b.queue_size, b.level_value) == (1000, "hard")
    assert a.ts is not None and a.ts.tzinfo is not None
    with pytest.raises(EventError):
        rep.event(1, "medium")
    with pytest.raises(EventError):
        Reporter("bad id", 10)
    with pytest.raises(InvalidArgumentError):
        rep.report(1, "ok")  # no publisher


def test_pressure_publisher(r: "redis.Redis[bytes]") -> None:
    ps = r.pubsub()
    ps.subscribe("sluice:feedback")
    ps.get_message(timeout=1)
    pub = PressurePublisher(r, ttl=5)
    rep = Reporter("store-0", 1000, pub)
    e = rep.report(800, "soft")
    h = r.hgetall("sluice:pressure:{store-0}")
    assert h[b"level"] == b"soft" and h[b"queue_size"] == b"800" and h[b"seq"] == str(e.seq).encode()
    assert 0 < r.pttl("sluice:pressure:{store-0}") <= 5000
    assert r.smembers("sluice:pressure:soft") == {b"store-0"} and r.smembers("sluice:pressure:hard") == set()
    assert r.smembers("sluice:pressure:coordinators") == {b"store-0"}
    msg = ps.get_message(timeout=2)
    assert msg and Event.from_json(msg["data"]) == e
    rep.report(950, "hard")
    assert r.smembers("sluice:pressure:soft") == set() and r.smembers("sluice:pressure:hard") == {b"store-0"}
    ps.get_message(timeout=2)
    # An older seq (a reordered report) is dropped: nothing stored, nothing published.
    assert pub.publish(Event("store-0", 1, 1000, "ok", e.seq)) is False
    assert r.hget("sluice:pressure:{store-0}", "level") == b"hard"
    assert ps.get_message(timeout=0.2) is None
    with pytest.raises(EventError):
        pub.publish(Event("store-0", 1, 1000, "ok", 0))  # no seq: refused before Redis
    pub.withdraw("store-0")
    assert r.exists("sluice:pressure:{store-0}", "sluice:pressure:hard", "sluice:pressure:coordinators") == 0
    with pytest.raises(InvalidArgumentError):
        PressurePublisher(r, ttl=0)
    ps.close()


def test_bogus_seq_holds_only_3s(r: "redis.Redis[bytes]") -> None:
    """A seq far ahead (2^64-1 from a token holder) silences the real
    coordinator for the hold (3 s, as Go's publisher), not for the TTL."""
    pub = PressurePublisher(r, ttl=10)
    assert pub.publish(Event("store-h", 1, 1000, "ok", 2**64 - 1)) is True
    stored = time.monotonic()
    assert pub.publish(Event("store-h", 900, 1000, "hard", 5)) is False  # stale while held
    deadline = stored + 8  # well inside the 10 s TTL
    while not pub.publish(Event("store-h", 900, 1000, "hard", 6)):
        assert time.monotonic() < deadline, "the bogus seq held past its hold"
        time.sleep(0.1)
    held = time.monotonic() - stored
    assert held >= 2.9, f"a lower seq was stored {held:.2f}s after the bogus one: it must hold 3 s"
    assert r.hget("sluice:pressure:{store-h}", "level") == b"hard"
    print(f"BOGUS_SEQ held {held:.2f}s (hold 3 s, ttl 10 s)")
    pub.withdraw("store-h")


def test_async_pressure_publisher(r, redis_server) -> None:  # type: ignore[no-untyped-def]
    async def body() -> None:
        c = redis.asyncio.Redis(port=redis_server.port)
        pub = AsyncPressurePublisher(c, prefix="mds")
        assert await pub.publish(Event("w1", 10, 10, Level.HARD, 7)) is True
        assert await pub.publish(Event("w1", 10, 10, Level.HARD, 7)) is False  # duplicate
        assert await c.smembers("mds:pressure:hard") == {b"w1"}
        await pub.withdraw("w1")
        assert await c.exists("mds:pressure:{w1}") == 0
        await c.close()
    run(body)


def test_publisher_redis_down() -> None:
    from conftest import free_port

    pub = PressurePublisher(redis.Redis(port=free_port(), socket_connect_timeout=0.5))
    with pytest.raises(RedisUnavailableError):
        pub.publish(Event("c", 0, 1, "ok", 1))


def test_feedback_client_options() -> None:
    for kw, field in [({"url": "ftp://x"}, "url"), ({"url": "http://x", "attempts": 0}, "attempts"),
                      ({"url": "http://x", "timeout": 0}, "timeout")]:
        with pytest.raises(InvalidArgumentError) as ei:
            FeedbackClient(**kw)  # type: ignore[arg-type]
        assert ei.value.field == field
    with pytest.raises(EventError):
        FeedbackClient("http://127.0.0.1:9").publish(Event("c", 5, 1, "ok", 1))  # validated before posting


def test_event_json_round_trip_through_json_module() -> None:
    e = Event("c", 1, 2, "ok", 2**63)
    assert json.loads(e.to_json())["seq"] == 2**63
    with pytest.raises(EventError):
        Event("c", 1, 2, "ok", 2**64).validate()
