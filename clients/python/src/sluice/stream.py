"""The producer side of the durable write path (docs/streams.md): append
items to <prefix>:stream:{<stream>} for `sluice coordinator` (or any
consumer of the group "coordinators") to write, as the Go
redisstream.Producer does."""

from __future__ import annotations

import json
import time
from typing import Any, Dict, List, Sequence, Union

import redis
import redis.asyncio
import redis.exceptions

from ._core import DEFAULT_PREFIX, as_str, check_name
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
    behind what every group acknowledged. Thread-safe."""

    def __init__(self, client: "redis.Redis[Any]", stream: str = "store", *, prefix: str = DEFAULT_PREFIX) -> None:
        self._client = client
        self.key = stream_key(stream, prefix)

    def append(self, *items: Item) -> List[str]:
        """Append items (bytes or str) in one round trip; return their entry
        ids. Raises AppendError when some were not stored, or
        RedisUnavailableError when Redis could not be reached (then some may
        have been stored): append them again."""
        if not items:
            return []
        pipe = self._client.pipeline(transaction=False)
        for f in _fields(items):
            pipe.xadd(self.key, f)
        try:
            return _check(self.key, pipe.execute(raise_on_error=False))
        except (redis.exceptions.RedisError, OSError) as e:
            raise RedisUnavailableError(f"sluice: append to {self.key}: {e}") from e

    def append_json(self, *objs: Any) -> List[str]:
        """Append each object as one line of JSON (what `sluice pipeline`
        writes, and what the file and stdout sinks keep as JSON lines)."""
        return self.append(*(json.dumps(o, separators=(",", ":")) for o in objs))


class AsyncStreamProducer:
    """StreamProducer on a redis.asyncio client."""

    def __init__(self, client: "redis.asyncio.Redis[Any]", stream: str = "store", *,
                 prefix: str = DEFAULT_PREFIX) -> None:
        self._client = client
        self.key = stream_key(stream, prefix)

    async def append(self, *items: Item) -> List[str]:
        """See StreamProducer.append."""
        if not items:
            return []
        pipe = self._client.pipeline(transaction=False)
        for f in _fields(items):
            pipe.xadd(self.key, f)
        try:
            return _check(self.key, await pipe.execute(raise_on_error=False))
        except (redis.exceptions.RedisError, OSError) as e:
            raise RedisUnavailableError(f"sluice: append to {self.key}: {e}") from e

    async def append_json(self, *objs: Any) -> List[str]:
        """See StreamProducer.append_json."""
        return await self.append(*(json.dumps(o, separators=(",", ":")) for o in objs))
