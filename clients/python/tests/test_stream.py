"""The durable write path's producer: XADD <prefix>:stream:{<s>} * data <item> ts <µs>."""

from __future__ import annotations

import time

import pytest
import redis
import redis.asyncio

from conftest import run
from sluice import InvalidArgumentError, RedisUnavailableError
from sluice.stream import AppendError, AsyncStreamProducer, StreamProducer, stream_key


def test_append(r: "redis.Redis[bytes]") -> None:
    p = StreamProducer(r, "store")
    assert p.key == "sluice:stream:{store}"
    before = time.time_ns() // 1000
    ids = p.append(b'{"id":"py-1"}', '{"id":"py-2"}')
    ids += p.append_json({"id": "py-3", "price": 1.5})
    entries = r.xrange(p.key)
    assert [e[0].decode() for e in entries] == ids
    assert [e[1][b"data"] for e in entries] == [b'{"id":"py-1"}', b'{"id":"py-2"}', b'{"id":"py-3","price":1.5}']
    assert all(set(e[1]) == {b"data", b"ts"} for e in entries)
    assert before <= int(entries[0][1][b"ts"]) <= time.time_ns() // 1000
    assert p.append() == []
    p.append(*(b"x" for _ in range(2000)))
    assert r.xlen(p.key) == 2003  # never trimmed by the producer
    with pytest.raises(TypeError):
        p.append({"id": 1})  # type: ignore[arg-type]


def test_partial_failure_and_names(r: "redis.Redis[bytes]") -> None:
    r.set("sluice:stream:{broken}", "not a stream")
    with pytest.raises(AppendError) as ei:
        StreamProducer(r, "broken").append(b"a", b"b")
    assert (ei.value.not_stored, ei.value.total) == (2, 2)
    for bad in ("", "a b", "x{y}"):
        with pytest.raises(InvalidArgumentError) as e2:
            stream_key(bad)
        assert e2.value.field == "stream"
    assert stream_key("s", prefix="mds") == "mds:stream:{s}"


def test_async_append(r, redis_server) -> None:  # type: ignore[no-untyped-def]
    async def body() -> None:
        c = redis.asyncio.Redis(port=redis_server.port)
        p = AsyncStreamProducer(c, "store")
        ids = await p.append_json({"id": "a"}, {"id": "b"})
        assert len(ids) == 2 and await c.xlen(p.key) == 2
        await c.close()
    run(body)


def test_redis_down() -> None:
    from conftest import free_port

    with pytest.raises(RedisUnavailableError):
        StreamProducer(redis.Redis(port=free_port(), socket_connect_timeout=0.5)).append(b"x")
