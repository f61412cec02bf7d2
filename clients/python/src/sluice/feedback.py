"""The store side of the feedback loop, for a write coordinator in Python:
the pressure Event (docs/feedback.md), a Reporter that numbers a
coordinator's events, and the ways to publish them: through Redis as the Go
publisher does (PressurePublisher, AsyncPressurePublisher: pressure.lua,
the level sets, the sluice:feedback channel), or over HTTP to `sluice
receiver` (FeedbackClient)."""

from __future__ import annotations

import datetime as _dt
import enum
import json
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from typing import Any, List, Optional, Protocol, Tuple, Union

from ._core import DEFAULT_PREFIX, check_call_timeout, check_name
from ._redis import REDIS_ERRORS, AsyncConn, Conn
from .errors import InvalidArgumentError, RedisUnavailableError, SluiceError

_ID_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


class Level(str, enum.Enum):
    """A write coordinator's pressure level. A str, so Level.SOFT == "soft"."""

    OK = "ok"
    SOFT = "soft"
    HARD = "hard"


class EventError(SluiceError, ValueError):
    """An event field is missing, malformed or out of range (the Go
    feedback.FieldError): ``field``, the ``value`` as received ("" when
    missing) and the ``rule`` it must follow."""

    def __init__(self, field: str, value: str, rule: str) -> None:
        if value == "":
            msg = f"feedback: event field {field} is missing: must be {rule}"
        else:
            msg = f"feedback: event field {field}={value}: must be {rule}"
        super().__init__(msg)
        self.field = field
        self.value = value
        self.rule = rule


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class Event:
    """One report of a write coordinator's queue. Its JSON form:

        {"coordinator_id":"store-0","queue_size":800,"capacity":1000,
         "level":"soft","seq":1764230000123457,"ts":"2026-11-27T09:00:00.123Z"}

    coordinator_id is 1-64 of [A-Za-z0-9_.-]; capacity in [1, 1e9];
    queue_size in [0, capacity]; level ok, soft or hard; seq >= 1 and
    increasing per coordinator, across its restarts too (a Reporter numbers
    them); ts optional (receivers use the time of receipt). The positional
    order is the seed's FeedbackEvent(coordinator_id, queue_size, capacity,
    level)."""

    coordinator_id: str
    queue_size: int
    capacity: int
    level: Union[Level, str]
    seq: int = 0
    ts: Optional[_dt.datetime] = None

    @property
    def fill(self) -> float:
        """queue_size / capacity, in [0, 1] for a valid event."""
        return self.queue_size / self.capacity if self.capacity > 0 else 0.0

    def validate(self, *, require_seq: bool = True) -> None:
        """Raise EventError for the first field out of range. An event
        without seq (0) is valid only in process (require_seq=False)."""
        if not isinstance(self.coordinator_id, str) or not _ID_RE.match(self.coordinator_id):
            raise EventError("coordinator_id", json.dumps(str(self.coordinator_id)),
                             "1 to 64 characters of [A-Za-z0-9_.-]")
        if not (_is_int(self.capacity) and 1 <= self.capacity <= 1_000_000_000):
            raise EventError("capacity", str(self.capacity), "an integer in [1, 1000000000]")
        if not (_is_int(self.queue_size) and 0 <= self.queue_size <= self.capacity):
            raise EventError("queue_size", str(self.queue_size), f"an integer in [0, capacity={self.capacity}]")
        if str(getattr(self.level, "value", self.level)) not in ("ok", "soft", "hard"):
            raise EventError("level", json.dumps(str(getattr(self.level, "value", self.level))), "one of ok, soft, hard")
        if not _is_int(self.seq) or self.seq < 0 or self.seq >= 1 << 64 or (require_seq and self.seq < 1):
            raise EventError("seq", str(self.seq), "an integer >= 1, increasing per coordinator")

    @property
    def level_value(self) -> str:
        """The level as its string: ok, soft or hard."""
        return str(getattr(self.level, "value", self.level))

    def ts_text(self) -> str:
        """ts as RFC 3339 in UTC with microseconds ("" when unset)."""
        if self.ts is None:
            return ""
        t = self.ts if self.ts.tzinfo else self.ts.replace(tzinfo=_dt.timezone.utc)
        return t.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def to_json(self) -> str:
        """The JSON form, as the Go publisher writes it (ts left out when unset)."""
        d: dict[str, Any] = {"coordinator_id": self.coordinator_id, "queue_size": self.queue_size,
                             "capacity": self.capacity, "level": self.level_value, "seq": self.seq}
        if self.ts is not None:
            d["ts"] = self.ts_text()
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: Union[str, bytes]) -> "Event":
        """Read one JSON event and validate it, as the Go DecodeEvent: an
        EventError names the field; numbers must be JSON integers. Unknown
        fields are ignored."""
        try:
            d = json.loads(text)
        except ValueError as e:
            raise EventError("(json)", "malformed", f"one JSON object ({e})") from e
        if not isinstance(d, dict):
            raise EventError("(json)", "not an object", "one JSON object")
        if "coordinator_id" not in d or not isinstance(d["coordinator_id"], str):
            raise EventError("coordinator_id", json.dumps(d.get("coordinator_id", "")) if "coordinator_id" in d else "",
                             "1 to 64 characters of [A-Za-z0-9_.-]")
        rules = {"capacity": "an integer in [1, 1000000000]", "queue_size": "an integer in [0, 1000000000]",
                 "seq": "an integer >= 1, increasing per coordinator"}
        for name, rule in rules.items():
            if name not in d:
                raise EventError(name, "", rule)
            if not _is_int(d[name]):
                raise EventError(name, json.dumps(d[name]), rule)
        if not isinstance(d.get("level"), str):
            raise EventError("level", json.dumps(d["level"]) if "level" in d else "", "one of ok, soft, hard")
        ts = None
        if d.get("ts") is not None:
            try:
                ts = _dt.datetime.fromisoformat(str(d["ts"]).replace("Z", "+00:00"))
            except ValueError as e:
                raise EventError("ts", json.dumps(d["ts"]), "an RFC 3339 time string") from e
        level: Union[Level, str] = d["level"]
        if level in ("ok", "soft", "hard"):
            level = Level(level)
        event = cls(d["coordinator_id"], d["queue_size"], d["capacity"], level, d["seq"], ts)
        event.validate()
        return event


class Publisher(Protocol):
    """Anything that publishes an event: PressurePublisher, FeedbackClient."""

    def publish(self, event: Event) -> Any: ...


class Reporter:
    """Numbers and stamps one write coordinator's events: every event of a
    Python store is made here. seq starts at the start time in Unix
    microseconds (as the Go coordinator's), so it increases across
    restarts, and rises by one per event. Thread-safe."""

    def __init__(self, coordinator_id: str, capacity: int, publisher: Optional[Publisher] = None) -> None:
        Event(coordinator_id, 0, capacity, Level.OK, 1).validate()
        self.coordinator_id = coordinator_id
        self.capacity = capacity
        self.publisher = publisher
        self._lock = threading.Lock()
        self._seq = time.time_ns() // 1000

    def event(self, queue_size: int, level: Union[Level, str]) -> Event:
        """The next event: queue_size (capped at capacity) and level, the
        next seq, ts now. Raises EventError for a bad level or size."""
        if _is_int(queue_size) and queue_size > self.capacity:
            queue_size = self.capacity
        with self._lock:
            self._seq += 1
            seq = self._seq
        e = Event(self.coordinator_id, queue_size, self.capacity, level, seq,
                  _dt.datetime.now(_dt.timezone.utc))
        e.validate()
        return e

    def report(self, queue_size: int, level: Union[Level, str]) -> Event:
        """Make the next event and publish it through the publisher."""
        if self.publisher is None:
            raise InvalidArgumentError("publisher", None, "a Publisher (PressurePublisher or FeedbackClient)")
        e = self.event(queue_size, level)
        self.publisher.publish(e)
        return e


class _Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = check_name("prefix", prefix)

    def pressure(self, coordinator: str) -> str:
        return f"{self.prefix}:pressure:{{{coordinator}}}"

    def level_set(self, level: str) -> str:
        return f"{self.prefix}:pressure:{level}"

    @property
    def coordinators(self) -> str:
        return self.prefix + ":pressure:coordinators"

    @property
    def channel(self) -> str:
        return self.prefix + ":feedback"


def _ttl_ms(ttl: float) -> int:
    if not (isinstance(ttl, (int, float)) and 0.001 <= ttl <= 86400):
        raise InvalidArgumentError("ttl", ttl, "a number of seconds in [0.001, 86400]")
    return int(ttl * 1000)


def _stamped(event: Event) -> Event:
    event.validate()
    return event if event.ts is not None else replace(event, ts=_dt.datetime.now(_dt.timezone.utc))


# How long a stored report holds against a lower seq, as Go's
# feedback.DefaultHold (3 s, or the TTL if shorter): a bogus seq silences a
# coordinator for this long at most; a counter that restarts from 1 counts
# after it (docs/feedback.md, "Order, restarts and a bogus seq").
DEFAULT_HOLD_MS = 3000


def _pressure_args(e: Event, ttl_ms: int) -> list[str]:
    return [e.level_value, str(e.queue_size), str(e.capacity), str(e.seq), e.ts_text(), str(ttl_ms),
            str(min(DEFAULT_HOLD_MS, ttl_ms))]


class PressurePublisher:
    """Publishes a write coordinator's events through Redis exactly as the
    Go redisbus.Publisher: pressure.lua stores the event in
    <prefix>:pressure:{<c>} (a hash with a TTL; an older seq is dropped),
    then the coordinator joins <prefix>:pressure:coordinators and the set of
    its level (<prefix>:pressure:soft / :hard, which KEDA counts), leaves
    the other, and the JSON is PUBLISHed on <prefix>:feedback for the
    controller and every replica. client: ``redis.Redis`` or
    ``redis.cluster.RedisCluster`` (the calls go through a private copy of
    its pool, each bounded by call_timeout, 0.5 s, as Limiter's). ttl:
    seconds the hash outlives the last event (default 10; keep it above
    your heartbeat). Thread-safe."""

    def __init__(self, client: Any, *, prefix: str = DEFAULT_PREFIX, ttl: float = 10.0,
                 call_timeout: float = 0.5) -> None:
        self._keys = _Keys(prefix)
        self._ttl_ms = _ttl_ms(ttl)
        self._conn = Conn(client, check_call_timeout(call_timeout))

    def publish(self, event: Event) -> bool:
        """Store and announce event; False when an equal or newer seq was
        stored already (nothing published). An invalid event raises
        EventError; a Redis failure RedisUnavailableError."""
        e = _stamped(event)
        k = self._keys
        try:
            if not int(self._conn.script("pressure", [k.pressure(e.coordinator_id)], _pressure_args(e, self._ttl_ms))):
                return False
            self._conn.batch(_announce(k, e))
        except (SluiceError, *REDIS_ERRORS) as err:
            raise _redis_error(e.coordinator_id, err) from err
        return True

    def withdraw(self, coordinator_id: str) -> None:
        """Remove a coordinator that shuts down from every key."""
        try:
            self._conn.batch(_forget(self._keys, coordinator_id))
        except (SluiceError, *REDIS_ERRORS) as err:
            raise _redis_error(coordinator_id, err) from err

    def close(self) -> None:
        """Close this publisher's connections (the client given stays open)."""
        self._conn.close()


class AsyncPressurePublisher:
    """PressurePublisher on a redis.asyncio client (``redis.asyncio.Redis``
    or ``redis.asyncio.cluster.RedisCluster``)."""

    def __init__(self, client: Any, *, prefix: str = DEFAULT_PREFIX, ttl: float = 10.0,
                 call_timeout: float = 0.5) -> None:
        self._keys = _Keys(prefix)
        self._ttl_ms = _ttl_ms(ttl)
        self._conn = AsyncConn(client, check_call_timeout(call_timeout))

    async def publish(self, event: Event) -> bool:
        """See PressurePublisher.publish."""
        e = _stamped(event)
        k = self._keys
        try:
            if not int(await self._conn.script("pressure", [k.pressure(e.coordinator_id)],
                                               _pressure_args(e, self._ttl_ms))):
                return False
            await self._conn.batch(_announce(k, e))
        except (SluiceError, *REDIS_ERRORS) as err:
            raise _redis_error(e.coordinator_id, err) from err
        return True

    async def withdraw(self, coordinator_id: str) -> None:
        """See PressurePublisher.withdraw."""
        try:
            await self._conn.batch(_forget(self._keys, coordinator_id))
        except (SluiceError, *REDIS_ERRORS) as err:
            raise _redis_error(coordinator_id, err) from err

    async def close(self) -> None:
        """See PressurePublisher.close."""
        await self._conn.close()


Cmd = Tuple[str, str, Tuple[Any, ...]]


def _announce(k: _Keys, e: Event) -> List[Cmd]:
    """The coordinator joins the coordinators and its level's set, leaves
    the other level's, and the event is published."""
    c = e.coordinator_id
    cmds: List[Cmd] = [(k.coordinators, "sadd", (k.coordinators, c))]
    for s in ("soft", "hard"):
        cmds.append((k.level_set(s), "sadd" if s == e.level_value else "srem", (k.level_set(s), c)))
    cmds.append((k.channel, "publish", (k.channel, e.to_json())))
    return cmds


def _forget(k: _Keys, coordinator: str) -> List[Cmd]:
    return [(k.pressure(coordinator), "delete", (k.pressure(coordinator),))] + [
        (key, "srem", (key, coordinator)) for key in (k.coordinators, k.level_set("soft"), k.level_set("hard"))]


def _redis_error(coordinator: str, err: BaseException) -> SluiceError:
    if isinstance(err, InvalidArgumentError):
        return err
    msg = str(err)
    if msg.startswith("INVALID_ARGUMENT "):
        f, _, rest = msg[len("INVALID_ARGUMENT "):].partition("=")
        value, _, rng = rest.partition(" must be ")
        return InvalidArgumentError(f, value, rng)
    return RedisUnavailableError(f"sluice: publish pressure of {coordinator!r}: {msg}")


class FeedbackHTTPError(SluiceError):
    """The receiver refused an event and retrying will not help (a 4xx other
    than 429), or every attempt failed: ``code`` (0 for a network error),
    ``body`` (the receiver's error text) and ``field`` (the event field it
    named, if any)."""

    def __init__(self, code: int, body: str, field: str = "") -> None:
        super().__init__(f"sluice: feedback receiver answered {code}: {body}" if code else f"sluice: feedback post: {body}")
        self.code = code
        self.body = body
        self.field = field


class FeedbackClient:
    """Posts events to the HTTP receiver (`sluice receiver`, or `sluice
    controller --receiver`): POST <url> with Content-Type application/json
    and, when token is set, "Authorization: Bearer <token>". Retries with
    backoff (doubling from backoff seconds) on network errors, 429 and 5xx,
    attempts times in all; timeout bounds each attempt. Only the standard
    library (urllib); from asyncio, run publish in a thread
    (``await asyncio.to_thread(client.publish, event)``)."""

    def __init__(self, url: str, *, token: str = "", timeout: float = 2.0, attempts: int = 4,
                 backoff: float = 0.1) -> None:
        if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url):
            raise InvalidArgumentError("url", repr(url), "an absolute http(s) URL")
        if not (isinstance(attempts, int) and attempts >= 1):
            raise InvalidArgumentError("attempts", attempts, "an integer >= 1")
        for name, v in (("timeout", timeout), ("backoff", backoff)):
            if not (isinstance(v, (int, float)) and v > 0):
                raise InvalidArgumentError(name, v, "a number of seconds above 0")
        self.url, self.token, self.timeout, self.attempts, self.backoff = url, token, timeout, attempts, backoff

    def publish(self, event: Event) -> None:
        """Post event (validated first: EventError); raise FeedbackHTTPError
        when the receiver refuses it or every attempt failed."""
        event.validate()
        self.post_json(event.to_json())

    def post_json(self, body: str) -> None:
        """Post a JSON body as it is (no validation: the receiver's 400 names
        the field)."""
        wait = self.backoff
        for attempt in range(self.attempts):
            retry, err = self._post(body.encode("utf-8"))
            if err is None:
                return
            if not retry or attempt + 1 >= self.attempts:
                raise err
            time.sleep(wait)
            wait *= 2

    def _post(self, body: bytes) -> "tuple[bool, Optional[FeedbackHTTPError]]":
        req = urllib.request.Request(self.url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        if self.token:
            req.add_header("Authorization", "Bearer " + self.token)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                resp.read(4096)
                return False, None
        except urllib.error.HTTPError as e:
            raw = e.read(4096).decode("utf-8", "replace").strip()
            text, field = raw, ""
            try:
                j = json.loads(raw)
                text, field = j.get("error") or raw, j.get("field") or ""
            except (ValueError, AttributeError):
                pass
            return e.code == 429 or e.code >= 500, FeedbackHTTPError(e.code, text, field)
        except (urllib.error.URLError, OSError) as e:
            return True, FeedbackHTTPError(0, f"post to {self.url}: {e}")
