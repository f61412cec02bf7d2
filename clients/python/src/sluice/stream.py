"""The producer side of the durable write path (docs/streams.md): append
items to <prefix>:stream:{<stream>} for `sluice coordinator` (or any
consumer of the group "coordinators") to write, as the Go
redisstream.Producer does."""

from __future__ import annotations

import json
import time
from typing import Any, Dict, List, Sequence, Union

from ._core import DEFAULT_PREFIX, as_str, check_call_timeout, check_name
from ._redis import AsyncConn, Conn
from .errors import RedisUnavailableError, SluiceError

Item = Union[bytes, str]


def stream_key(stream: str, prefix: str = DEFAULT_PREFIX) -> str:
    """<prefix>:stream:{<stream>}; names are 1-64 of [A-Za-z0-9_.-]."""
    return f"{check_name('prefix', prefix)}:stream:{{{check_name('stream', stream)}}}"


class AppendError(SluiceError):
    """Some items were not stored: ``not_stored`` of ``total``. Appending
    them again is safe (the path is at least once) but may write some twice."""

    def __init__(self, msg: str, not_stored: int, total: int) -> None:
        super().__init__(msg)
        self.not_stored = not_stored
        self.total = total


def _fields(items: Sequence[Item]) -> List[Dict[str, Item]]:
    ts = str(time.time_ns() // 1000)  # Unix microseconds, the producer's clock: for latency only
    out = []
    for it in items:
        if not isinstance(it, (bytes, str)):
            raise TypeError(f"stream item must be bytes or str, not {type(it).__name__} (see append_json)")
        out.append({"data": it, "ts": ts})
    return out


def _check(key: str, results: Sequence[Any]) -> List[str]:
    bad = [r for r in results if isinstance(r, Exception)]
    if bad:
        raise AppendError(f"sluice: append to {key}: {len(bad)} of {len(results)} items not stored: {bad[0]}",
                          len(bad), len(results))
    return [as_str(r) for r in results]


class StreamProducer:
    """Appends items to the write stream: one XADD per item, fields "data"
    (the item) and "ts" (Unix microseconds), ids from Redis, all in one
    round trip, in order. It never trims (no MAXLEN): the consumers trim
    behind what every group acknowledged. client: ``redis.Redis`` or
    ``redis.cluster.RedisCluster``, used through a private copy of its pool,
    each append bounded by call_timeout (0.5 s). Thread-safe."""

    def __init__(self, client: Any, stream: str = "store", *, prefix: str = DEFAULT_PREFIX,
                 call_timeout: float = 0.5) -> None:
        self.key = stream_key(stream, prefix)
        self._conn = Conn(client, check_call_timeout(call_timeout))

    def append(self, *items: Item) -> List[str]:
        """Append items (bytes or str) in one round trip; return their entry
        ids. Raises AppendError when some were not stored, or
        RedisUnavailableError when Redis could not be reached (then some may
        have been stored): append them again."""
        if not items:
            return []
        fields = _fields(items)

        def xadd(c: Any) -> Any:
            pipe = c.pipeline(transaction=False)
            for f in fields:
                pipe.xadd(self.key, f)
            return pipe.execute(raise_on_error=False)
        try:
            return _check(self.key, self._conn.run(self.key, xadd))
        except RedisUnavailableError as e:
            raise RedisUnavailableError(f"sluice: append to {self.key}: {e}") from e

    def close(self) -> None:
        """Close this producer's connections (the client given stays open)."""
        self._conn.close()

    def append_json(self, *objs: Any) -> List[str]:
        """Append each object as one line of JSON (what `sluice pipeline`
        writes, and what the file and stdout sinks keep as JSON lines)."""
        return self.append(*(json.dumps(o, separators=(",", ":")) for o in objs))


class AsyncStreamProducer:
    """StreamProducer on a redis.asyncio client (``redis.asyncio.Redis`` or
    ``redis.asyncio.cluster.RedisCluster``)."""

    def __init__(self, client: Any, stream: str = "store", *, prefix: str = DEFAULT_PREFIX,
                 call_timeout: float = 0.5) -> None:
        self.key = stream_key(stream, prefix)
        self._conn = AsyncConn(client, check_call_timeout(call_timeout))

    async def append(self, *items: Item) -> List[str]:
        """See StreamProducer.append."""
        if not items:
            return []
        fields = _fields(items)

        async def xadd(c: Any) -> Any:
            pipe = c.pipeline(transaction=False)
            for f in fields:
                pipe.xadd(self.key, f)
            return await pipe.execute(raise_on_error=False)
        try:
            return _check(self.key, await self._conn.run(self.key, xadd))
        except RedisUnavailableError as e:
            raise RedisUnavailableError(f"sluice: append to {self.key}: {e}") from e

    async def close(self) -> None:
        """See StreamProducer.close."""
        await self._conn.close()

    async def append_json(self, *objs: Any) -> List[str]:
        """See StreamProducer.append_json."""
        return await self.append(*(json.dumps(o, separators=(",", ":")) for o in objs))
