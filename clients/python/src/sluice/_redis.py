"""How this package talks to Redis, whatever redis-py client it is given:
every call is bounded by the client's call_timeout and the caller's
deadline, and on a Redis Cluster routed by this module (the node of the
key's slot, the slot map read with CLUSTER SLOTS), with a slot in motion
retried within the same bound, as pkg/limiter does.

- A plain client (``redis.Redis``, ``redis.asyncio.Redis``) is used through
  a private copy of its connection pool (same address, TLS, auth, db,
  decoding; no retries of its own), so a client built without
  ``socket_timeout`` cannot hold a call, and the caller's client is left as
  it is. Sync calls are bounded by socket timeouts taken from the deadline
  of the call in progress; async calls by ``asyncio.wait_for`` (redis-py
  drops a connection whose call was cancelled, and the private pool's
  connections also when the cancel comes during their handshake).
- A cluster client (``redis.cluster.RedisCluster``,
  ``redis.asyncio.cluster.RedisCluster``) gives its nodes and connection
  settings; the calls go to plain clients of the nodes, made as above.

A call ends in its reply, in an error reply that is an answer (re-raised
as redis-py raised it, for the caller to map), or in
RedisUnavailableError (no answer within call_timeout, a connection error,
LOADING or BUSY, a slot still in motion when the bound ends) or
DeadlineExceededError (the caller's deadline ended first). A cluster's
redirections and redis-py's cluster exceptions never reach the caller.

A call is sent again only when Redis cannot have run it: an answer that
the slot is in motion (MOVED, ASK, TRYAGAIN, CLUSTERDOWN, MASTERDOWN:
nothing ran), or a connection error before the command was sent (the
connect, its handshake, a dead node's address). A connection that breaks
after the command went out, or a timeout, is not tried again: Redis may
have run the script, and sending it again would take its tokens twice
(over-admission); the caller gets RedisUnavailableError and the tokens, if
taken, go unused. A pooled connection that Redis closed between two calls
(CLIENT KILL, an idle timeout, a restart) is found closed and replaced
before anything is sent on it, so it costs nothing: by redis-py's pool,
and for asyncio also by _AsyncBound (the event loop may not have read the
close yet when the call starts).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import functools
import hashlib
import inspect
import random
import socket
import threading
import time
from typing import Any, Awaitable, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import redis
import redis.asyncio
import redis.exceptions
from redis.asyncio.cluster import RedisCluster as _AsyncCluster
from redis.cluster import RedisCluster as _SyncCluster
from redis.connection import SSLConnection
from redis.crc import key_slot

from ._core import script_source
from .errors import DeadlineExceededError, InvalidArgumentError, RedisUnavailableError

REDIS_ERRORS = (redis.exceptions.RedisError, OSError)

#: The monotonic deadline of the sync call in progress in this thread (or
#: task): the private pool's connections take their socket timeouts from it.
_DEADLINE: "contextvars.ContextVar[Optional[float]]" = contextvars.ContextVar("sluice_deadline", default=None)

#: Whether the call in progress in this thread (or task) has sent a
#: command on a connection of this module's pools (a cell set per attempt,
#: shared with the tasks asyncio.wait_for makes): a connection error after
#: that is not tried again (see the module's doc).
_SENT: "contextvars.ContextVar[Optional[List[bool]]]" = contextvars.ContextVar("sluice_sent", default=None)

_MIN_TIMEOUT = 1e-4  # a timeout of 0 would make a socket non-blocking


@contextlib.contextmanager
def bounded(seconds: float) -> Iterator[None]:
    """Bound the sync calls made inside (on connections of this module's
    pools) to end within seconds from now, all together."""
    token = _DEADLINE.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


# Answers that mean the key's slot is in motion (a migration, a failover):
# the script did not run, so trying again never takes tokens twice.
_MOVING = ("MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN")


def reply_text(e: BaseException) -> str:
    """An error reply's text, without the prefix redis-py adds to an error
    inside a pipeline ("Command # 1 (...) of pipeline caused error: ")."""
    return str(e).split(" of pipeline caused error: ", 1)[-1]


def _atomic_replies(replies: List[Any]) -> List[Any]:
    """scripts_atomic's replies: error replies as the scripts gave them
    (without redis-py's pipeline prefix); the first one's raises."""
    out = [type(x)(reply_text(x)) if isinstance(x, redis.exceptions.ResponseError) else x for x in replies]
    if out and isinstance(out[0], redis.exceptions.ResponseError):
        raise out[0]
    return out


def classify(e: BaseException, cluster: bool) -> str:
    """What an error of a call means: "answer" (an error reply: the caller
    maps it), "moved" (MOVED: the slot has a new owner), "moving" (the slot
    is in motion: try again shortly), "timeout" (no reply in time), "down"
    (a connection error) or "outage" (LOADING, BUSY; READONLY off a cluster)."""
    if isinstance(e, (redis.exceptions.TimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(e, redis.exceptions.BusyLoadingError):
        return "outage"
    if isinstance(e, redis.exceptions.ReadOnlyError):  # a failover demoted the node
        return "moving" if cluster else "outage"
    if isinstance(e, redis.exceptions.ResponseError):
        msg = reply_text(e)
        if msg.startswith("MOVED "):
            return "moved"
        if msg.startswith(_MOVING):
            return "moving"
        if msg.startswith(("BUSY", "LOADING")):
            return "outage"
        return "answer"
    if isinstance(e, (redis.exceptions.ConnectionError, OSError)):
        return "down"
    return "answer"


@functools.lru_cache(maxsize=None)
def script_sha(name: str) -> str:
    """The SHA1 of a script (EVALSHA's argument)."""
    return hashlib.sha1(script_source(name).encode("utf-8")).hexdigest()


def _noscript(e: BaseException) -> bool:
    return isinstance(e, redis.exceptions.NoScriptError) or str(e).startswith("NOSCRIPT")


def grant_in_time(provider: str, deadline: Optional[float]) -> None:
    """Raise DeadlineExceededError when deadline (time.monotonic()) has
    passed: a grant that reaches its caller after the caller's timeout is
    not returned (as Go's decide), its tokens go unused (under-admission,
    never a late grant)."""
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlineExceededError(
            f"sluice: provider {provider!r}: granted after the timeout ended; the tokens are not used")


# Connections of the private pools.

def _bounded(configured: Optional[float]) -> Optional[float]:
    """A socket timeout: the configured one, cut to what is left of the
    deadline of the call in progress, if any."""
    dl = _DEADLINE.get()
    if dl is None:
        return configured
    left = max(dl - time.monotonic(), _MIN_TIMEOUT)
    return left if configured is None or configured <= 0 or configured > left else configured


def _bounded_setting(name: str) -> Any:
    """A property for a Connection's timeout setting: stored as set, read
    through _bounded."""
    def get(self: Any) -> Optional[float]:
        return _bounded(self.__dict__.get(name))

    def put(self: Any, v: Optional[float]) -> None:
        self.__dict__[name] = v
    return property(get, put)


def _mark_sent(conn: Any) -> None:
    """Note in the call in progress (_SENT) that conn sends a command now,
    unless conn is connecting (its handshake: HELLO, AUTH, SELECT, which
    are safe to send again)."""
    cell = _SENT.get()
    if cell is not None and not conn.__dict__.get("_sluice_handshake"):
        cell[0] = True


class _SyncBound:
    """A sync Connection whose socket timeouts are bounded by the deadline
    of the call in progress (_DEADLINE); outside a call, the configured
    ones. It sets its socket's timeout before every send and read, notes
    (_SENT) when a command leaves it, and disconnects one thread at a time
    (see disconnect)."""

    socket_timeout = _bounded_setting("_sluice_timeout")
    socket_connect_timeout = _bounded_setting("_sluice_connect_timeout")

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)  # type: ignore[call-arg]
        self.__dict__["_sluice_disconnecting"] = threading.RLock()

    def disconnect(self, *a: Any, **kw: Any) -> None:
        """redis-py's disconnect, one thread at a time. close() disconnects
        the connections in use (pool.disconnect) while the thread using one
        may be disconnecting it after an error (its call cut short by that
        very close); redis-py's disconnect is not thread-safe: one of the
        two would find the socket or the parser's buffer already None and
        raise AttributeError, out of close()."""
        with self.__dict__["_sluice_disconnecting"]:
            super().disconnect(*a, **kw)  # type: ignore[misc]

    def _sluice_apply(self) -> None:
        sock = getattr(self, "_sock", None)
        if sock is not None:
            sock.settimeout(self.socket_timeout)

    def connect(self) -> None:
        self.__dict__["_sluice_handshake"] = True
        try:
            super().connect()  # type: ignore[misc]
        finally:
            self.__dict__["_sluice_handshake"] = False

    def send_packed_command(self, *a: Any, **kw: Any) -> Any:
        if getattr(self, "_sock", None) is None:
            self.connect()  # before the mark: a failed connect sent nothing
        _mark_sent(self)
        self._sluice_apply()
        return super().send_packed_command(*a, **kw)  # type: ignore[misc]

    def read_response(self, *a: Any, **kw: Any) -> Any:
        self._sluice_apply()
        return super().read_response(*a, **kw)  # type: ignore[misc]


_PEEK = socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0)


def _closed_by_server(conn: Any) -> bool:
    """Whether the server closed an asyncio connection that looks open: its
    end of stream already read by the event loop, or a reset that made the
    loop close the transport (its socket's descriptor is then -1, the
    reader holds the error and no end of stream: a node killed with a
    request unread), or either still waiting in the kernel because the loop
    has not run since (redis-py's pool looks only at what the loop has
    read). Never consumes a byte."""
    reader, writer = getattr(conn, "_reader", None), getattr(conn, "_writer", None)
    if reader is not None and reader.at_eof():
        return True
    if writer is not None and writer.transport.is_closing():
        return True
    sock = writer.get_extra_info("socket") if writer is not None else None
    if sock is None or not hasattr(socket, "MSG_DONTWAIT"):
        return False
    if sock.fileno() < 0:
        return True
    # The transport's socket allows no recv: a socket object on its file
    # descriptor, detached after (so it never closes it).
    s = socket.socket(sock.family, sock.type, sock.proto, sock.fileno())
    try:
        return s.recv(1, _PEEK) == b""
    except BlockingIOError:  # nothing to read: open
        return False
    except OSError:  # reset by the server
        return True
    finally:
        s.detach()


class _AsyncBound:
    """An asyncio Connection that drops itself when its connection attempt
    (handshake included) is cancelled, so a reply to AUTH or SELECT left
    unread is never taken for the reply of the next command. Before it
    sends, it replaces itself if the server closed it (_closed_by_server),
    then notes (_SENT) that a command leaves it."""

    async def connect(self) -> None:
        self.__dict__["_sluice_handshake"] = True
        try:
            await super().connect()  # type: ignore[misc]
        except BaseException:
            await self.disconnect()  # type: ignore[attr-defined]
            raise
        finally:
            self.__dict__["_sluice_handshake"] = False

    async def send_packed_command(self, *a: Any, **kw: Any) -> Any:
        if self.is_connected and _closed_by_server(self):  # type: ignore[attr-defined]
            await self.disconnect()  # type: ignore[attr-defined]
        if not self.is_connected:  # type: ignore[attr-defined]
            await self.connect()  # before the mark: a failed connect sent nothing
        _mark_sent(self)
        return await super().send_packed_command(*a, **kw)  # type: ignore[misc]


_CLASSES: Dict[Tuple[type, type], type] = {}


def _bound_class(mixin: type, cls: type) -> type:
    k = (mixin, cls)
    if k not in _CLASSES:
        _CLASSES[k] = type("Sluice" + cls.__name__, (mixin, cls), {})
    return _CLASSES[k]


def _private_pool(pool: Any, mixin: type) -> Any:
    """A copy of pool (same class and settings, no connections) whose
    connections are bounded and never retry on their own."""
    p = copy.copy(pool)
    kw = dict(pool.connection_kwargs)
    if "retry" in kw:
        kw["retry"] = None
    if kw.get("retry_on_timeout"):
        kw["retry_on_timeout"] = False
    if kw.get("retry_on_error"):
        kw["retry_on_error"] = []
    p.connection_kwargs = kw
    p.connection_class = _bound_class(mixin, pool.connection_class)
    p.reset()
    return p


def _private(client: Any, sync: bool) -> Any:
    pool = client.connection_pool
    if sync:
        return redis.Redis(connection_pool=_private_pool(pool, _SyncBound))
    return redis.asyncio.Redis(connection_pool=_private_pool(pool, _AsyncBound))


def _client_kinds(sync: bool) -> str:
    if sync:
        return "a redis.Redis or redis.cluster.RedisCluster"
    return "a redis.asyncio.Redis or redis.asyncio.cluster.RedisCluster"


# The cluster's slot map.

def _addr(host: Any, port: Any) -> str:
    h = host.decode() if isinstance(host, bytes) else str(host)
    return f"{h}:{int(port)}"


def parse_cluster_slots(reply: Any, asked: str) -> List[Optional[str]]:
    """The master of each of the 16384 slots from a CLUSTER SLOTS reply
    (None: not served). An empty host means the node that was asked."""
    owners: List[Optional[str]] = [None] * 16384
    for entry in reply or []:
        start, end, master = int(entry[0]), int(entry[1]), entry[2]
        host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
        addr = _addr(host, master[1]) if host and host != "?" else f"{asked.rsplit(':', 1)[0]}:{int(master[1])}"
        for s in range(max(start, 0), min(end, 16383) + 1):
            owners[s] = addr
    return owners


def backoff(attempt: int) -> float:
    """The wait before attempt+1 of a call whose slot is in motion: 10, 20,
    40, then 50 ms, each jittered down to half (pkg/limiter's slotBackoff)."""
    d = min(0.010 * (1 << min(attempt, 3)), 0.050)
    return d / 2 + random.uniform(0, d / 2)


class _Topology:
    """What the sync and async routers share: the call bound, the slot map
    of a cluster and the reading of errors. No I/O here."""

    RELOAD_EVERY = 0.1  # at most one slot map reload per 100 ms

    def __init__(self, client: Any, call_timeout: float, sync: bool) -> None:
        self.call_timeout = call_timeout
        self.cluster = isinstance(client, _SyncCluster if sync else _AsyncCluster)
        self.kw: Dict[str, Any] = {}
        self.seeds: List[str] = []
        self.owners: List[Optional[str]] = []
        self.reloaded = 0.0
        self.stale = True
        if self.cluster:
            self.kw = {k: v for k, v in client.get_connection_kwargs().items()
                       if k not in ("host", "port", "redis_connect_func", "response_callbacks", "connection_pool",
                                    "single_connection_client")}
            nodes = list(client.get_nodes()) or list(getattr(client.nodes_manager, "startup_nodes", {}).values())
            self.seeds = [_addr(n.host, n.port) for n in nodes]
        elif not isinstance(client, redis.Redis if sync else redis.asyncio.Redis):
            raise InvalidArgumentError("client", type(client).__name__, _client_kinds(sync))

    def node_kwargs(self, redis_cls: type) -> Dict[str, Any]:
        """The cluster client's connection settings that redis_cls takes."""
        params = inspect.signature(redis_cls.__init__).parameters
        kw = {k: v for k, v in self.kw.items() if k in params}
        cls = self.kw.get("connection_class")
        if isinstance(cls, type) and issubclass(cls, SSLConnection):
            kw["ssl"] = True
        return kw

    def bound(self, deadline: Optional[float]) -> Tuple[float, float]:
        """(end of this call, end of call_timeout) for a call starting now."""
        call_end = time.monotonic() + self.call_timeout
        return (call_end if deadline is None or deadline > call_end else deadline), call_end

    def owner(self, key: str) -> Optional[str]:
        return self.owners[key_slot(key.encode())] if self.owners else None

    def served(self, key: str) -> str:
        """The address of the master serving key, or a redis-py error: a
        connection error without a slot map (no node answered), CLUSTERDOWN
        for a slot nobody serves."""
        if not self.owners:
            raise redis.exceptions.ConnectionError("no node of the cluster gave its slot map")
        addr = self.owner(key)
        if addr is None:
            self.stale = True
            raise redis.exceptions.ResponseError(f"CLUSTERDOWN the slot of {key} is not served")
        return addr

    def reload_due(self) -> bool:
        return self.stale and time.monotonic() - self.reloaded >= self.RELOAD_EVERY

    def reload_order(self, failed: Optional[str]) -> List[str]:
        """Nodes to ask for the slot map: the known masters and the seeds,
        shuffled, the one that just failed last."""
        known = list(dict.fromkeys([a for a in self.owners if a] + self.seeds))
        random.shuffle(known)
        return sorted(known, key=lambda a: a == failed)

    def retry_after(self, kind: str, e: BaseException, attempt: int, sent: bool) -> Optional[float]:
        """The seconds to wait before trying a failed call again, or None
        when it is not tried again; sent says whether the command had left
        (see the module's doc: a call that may have run is never sent
        again). On a cluster a slot in motion is tried again (at once after
        the first MOVED, the slot's new owner noted), and so is a
        connection error before sending, the slot map read again (the node
        may be gone, its replica promoted). Off a cluster a connection
        error before sending is tried again once, at once. After sending,
        a cluster still reads its slot map again before the next call."""
        if kind in ("moved", "moving") and not self.cluster:
            return None
        if kind == "moved":
            parts = reply_text(e).split()
            if len(parts) >= 3 and self.owners:
                self.owners[int(parts[1]) % 16384] = parts[2]
            else:
                self.stale = True
            return 0.0 if attempt == 0 else backoff(attempt)
        if kind == "moving":
            self.stale = self.stale or not reply_text(e).startswith(("TRYAGAIN", "ASK "))
            return backoff(attempt)
        if kind == "down":
            if self.cluster:
                self.stale = True
                return None if sent else backoff(attempt)
            return 0.0 if attempt == 0 and not sent else None
        if kind == "timeout":
            self.stale = self.stale or self.cluster
        return None

    def give_up(self, kind: str, e: BaseException, deadline: Optional[float], call_end: float) -> BaseException:
        """The error of a call that is not tried again after e."""
        msg = str(e) or type(e).__name__
        if deadline is not None and deadline <= call_end and time.monotonic() >= deadline - 0.001:
            return DeadlineExceededError(f"sluice: timeout ended while waiting for redis ({msg})")
        if kind == "timeout":
            return RedisUnavailableError(
                f"sluice: redis unavailable: no answer within {self.call_timeout:g}s (call_timeout): {msg}")
        if kind in ("moving", "moved") and self.cluster:
            return RedisUnavailableError(f"sluice: redis unavailable: cluster slot still in motion after "
                                         f"{self.call_timeout:g}s (call_timeout): {msg}")
        return RedisUnavailableError(f"sluice: redis unavailable: {msg}")


class Conn:
    """Runs Redis calls for the sync clients of this package (Limiter,
    PressurePublisher, StreamProducer): see the module's doc. Thread-safe."""

    def __init__(self, client: Any, call_timeout: float) -> None:
        self._t = _Topology(client, call_timeout, sync=True)
        self._plain = None if self._t.cluster else _private(client, sync=True)
        self._nodes: Dict[str, "redis.Redis[Any]"] = {}
        self._lock = threading.Lock()
        self._reloading = threading.Lock()

    @property
    def call_timeout(self) -> float:
        return self._t.call_timeout

    def run(self, key: str, fn: Callable[["redis.Redis[Any]"], Any], deadline: Optional[float] = None) -> Any:
        """fn(client) on the client serving key, within call_timeout and
        deadline (time.monotonic()); see the module's doc for the errors."""
        t = self._t
        end, call_end = t.bound(deadline)
        attempt = 0
        while True:
            sent: List[bool] = [False]
            token, sent_token = _DEADLINE.set(end), _SENT.set(sent)
            failed: Optional[str] = None
            try:
                c, failed = self._client(key)
                return fn(c)
            except REDIS_ERRORS as e:
                kind = classify(e, t.cluster)
                if kind == "answer":
                    raise
                err: BaseException = e
                wait = t.retry_after(kind, e, attempt, sent[0])
            finally:
                _SENT.reset(sent_token)
                _DEADLINE.reset(token)
            if wait is None or time.monotonic() + wait >= end:
                raise t.give_up(kind, err, deadline, call_end) from err
            if wait > 0:
                time.sleep(wait)
            attempt += 1
            if t.cluster and t.reload_due():
                self._reload(end, failed)

    def script(self, name: str, keys: Sequence[str], args: Sequence[Any], deadline: Optional[float] = None) -> Any:
        """Run one of the package's scripts on keys (one slot): EVALSHA,
        then EVAL on NOSCRIPT."""
        def call(c: "redis.Redis[Any]") -> Any:
            try:
                return c.evalsha(script_sha(name), len(keys), *keys, *args)
            except redis.exceptions.ResponseError as e:
                if not _noscript(e):
                    raise
                return c.eval(script_source(name), len(keys), *keys, *args)
        return self.run(keys[0], call, deadline)

    def scripts_atomic(self, calls: Sequence[Tuple[str, Sequence[str], Sequence[Any]]],
                       deadline: Optional[float] = None) -> List[Any]:
        """Scripts (name, keys, args), all on keys of one slot, run by EVAL
        in one MULTI: no other client's command runs between them. Their
        replies: the first script's error reply raises; a later one's is
        in its place as a ResponseError (a MULTI is not rolled back: the
        scripts before and after it ran)."""
        def call(c: "redis.Redis[Any]") -> Any:
            pipe = c.pipeline(transaction=True)
            for name, keys, args in calls:
                pipe.eval(script_source(name), len(keys), *keys, *args)
            return _atomic_replies(pipe.execute(raise_on_error=False))
        return self.run(calls[0][1][0], call, deadline)  # type: ignore[no-any-return]

    def batch(self, cmds: Sequence[Tuple[str, str, Sequence[Any]]], deadline: Optional[float] = None) -> None:
        """Commands (key, method, args) in one pipeline, one per node on a
        cluster; error replies raise."""
        for key, group in _groups(self._t, cmds):
            def call(c: "redis.Redis[Any]", group: Any = group) -> Any:
                pipe = c.pipeline(transaction=False)
                for _, method, args in group:
                    getattr(pipe, method)(*args)
                return pipe.execute()
            self.run(key, call, deadline)

    def pubsub(self, channel: str) -> Any:
        """A PubSub on the client serving channel's slot (on a cluster a
        message published on any node reaches every node's subscribers)."""
        end, _ = self._t.bound(None)
        token = _DEADLINE.set(end)
        try:
            return self._client(channel)[0].pubsub()
        finally:
            _DEADLINE.reset(token)

    def _client(self, key: str) -> Tuple["redis.Redis[Any]", Optional[str]]:
        if self._plain is not None:
            return self._plain, None
        t = self._t
        if not t.owners or t.reload_due():
            self._reload(_DEADLINE.get() or time.monotonic() + t.call_timeout, None)
        addr = t.served(key)
        return self._node(addr), addr

    def _node(self, addr: str) -> "redis.Redis[Any]":
        with self._lock:
            c = self._nodes.get(addr)
            if c is None:
                host, port = addr.rsplit(":", 1)
                made = redis.Redis(host=host, port=int(port), **self._t.node_kwargs(redis.Redis))
                if isinstance(self._t.kw.get("connection_class"), type):
                    made.connection_pool.connection_class = self._t.kw["connection_class"]
                c = self._nodes[addr] = _private(made, sync=True)
            return c

    def _reload(self, end: float, failed: Optional[str]) -> None:
        """Read the slot map from the first node that answers (one reload at
        a time; the others go on with the map they have)."""
        t = self._t
        if not self._reloading.acquire(blocking=not t.owners):
            return
        try:
            if t.owners and not t.reload_due():
                return
            t.reloaded = time.monotonic()
            token = _DEADLINE.set(end)
            try:
                for addr in t.reload_order(failed):
                    try:
                        t.owners = parse_cluster_slots(self._node(addr).execute_command("CLUSTER", "SLOTS"), addr)
                        t.stale = False
                        return
                    except REDIS_ERRORS:
                        if time.monotonic() >= end:
                            return
            finally:
                _DEADLINE.reset(token)
        finally:
            self._reloading.release()

    def close(self) -> None:
        for c in [self._plain, *self._nodes.values()]:
            if c is not None:
                c.connection_pool.disconnect()


class AsyncConn:
    """Conn for the asyncio clients (AsyncLimiter, AsyncPressurePublisher,
    AsyncStreamProducer); one event loop at a time."""

    def __init__(self, client: Any, call_timeout: float) -> None:
        self._t = _Topology(client, call_timeout, sync=False)
        self._plain = None if self._t.cluster else _private(client, sync=False)
        self._nodes: Dict[str, "redis.asyncio.Redis[Any]"] = {}
        self._reloading = False

    @property
    def call_timeout(self) -> float:
        return self._t.call_timeout

    async def run(self, key: str, fn: Callable[["redis.asyncio.Redis[Any]"], Awaitable[Any]],
                  deadline: Optional[float] = None) -> Any:
        """See Conn.run; deadline is time.monotonic() too."""
        t = self._t
        end, call_end = t.bound(deadline)
        attempt = 0
        while True:
            failed: Optional[str] = None
            err: BaseException
            sent: List[bool] = [False]
            sent_token = _SENT.set(sent)  # the task wait_for makes copies the context: the same cell
            try:
                c, failed = await self._client(key, end)
                return await asyncio.wait_for(fn(c), max(end - time.monotonic(), _MIN_TIMEOUT))
            except asyncio.TimeoutError:
                kind, err = "timeout", redis.exceptions.TimeoutError(f"no reply from {failed or 'redis'}")
                wait = t.retry_after(kind, err, attempt, sent[0])
            except REDIS_ERRORS as e:
                kind = classify(e, t.cluster)
                if kind == "answer":
                    raise
                err = e
                wait = t.retry_after(kind, e, attempt, sent[0])
            finally:
                _SENT.reset(sent_token)
            if wait is None or time.monotonic() + wait >= end:
                raise t.give_up(kind, err, deadline, call_end) from err
            if wait > 0:
                await asyncio.sleep(wait)
            attempt += 1
            if t.cluster and t.reload_due():
                await self._reload(end, failed)

    async def script(self, name: str, keys: Sequence[str], args: Sequence[Any],
                     deadline: Optional[float] = None) -> Any:
        """See Conn.script."""
        async def call(c: "redis.asyncio.Redis[Any]") -> Any:
            try:
                return await c.evalsha(script_sha(name), len(keys), *keys, *args)
            except redis.exceptions.ResponseError as e:
                if not _noscript(e):
                    raise
                return await c.eval(script_source(name), len(keys), *keys, *args)
        return await self.run(keys[0], call, deadline)

    async def scripts_atomic(self, calls: Sequence[Tuple[str, Sequence[str], Sequence[Any]]],
                             deadline: Optional[float] = None) -> List[Any]:
        """See Conn.scripts_atomic."""
        async def call(c: "redis.asyncio.Redis[Any]") -> Any:
            pipe = c.pipeline(transaction=True)
            for name, keys, args in calls:
                pipe.eval(script_source(name), len(keys), *keys, *args)
            return _atomic_replies(await pipe.execute(raise_on_error=False))
        return await self.run(calls[0][1][0], call, deadline)  # type: ignore[no-any-return]

    async def batch(self, cmds: Sequence[Tuple[str, str, Sequence[Any]]], deadline: Optional[float] = None) -> None:
        """See Conn.batch."""
        for key, group in _groups(self._t, cmds):
            async def call(c: "redis.asyncio.Redis[Any]", group: Any = group) -> Any:
                pipe = c.pipeline(transaction=False)
                for _, method, args in group:
                    getattr(pipe, method)(*args)
                return await pipe.execute()
            await self.run(key, call, deadline)

    async def pubsub(self, channel: str) -> Any:
        """See Conn.pubsub."""
        end, _ = self._t.bound(None)
        return (await self._client(channel, end))[0].pubsub()

    async def _client(self, key: str, end: float) -> Tuple["redis.asyncio.Redis[Any]", Optional[str]]:
        if self._plain is not None:
            return self._plain, None
        t = self._t
        if not t.owners or t.reload_due():
            await self._reload(end, None)
        addr = t.served(key)
        return self._node(addr), addr

    def _node(self, addr: str) -> "redis.asyncio.Redis[Any]":
        c = self._nodes.get(addr)
        if c is None:
            host, port = addr.rsplit(":", 1)
            made = redis.asyncio.Redis(host=host, port=int(port), **self._t.node_kwargs(redis.asyncio.Redis))
            c = self._nodes[addr] = _private(made, sync=False)
        return c

    async def _reload(self, end: float, failed: Optional[str]) -> None:
        """See Conn._reload."""
        t = self._t
        if self._reloading:
            return
        self._reloading = True
        try:
            t.reloaded = time.monotonic()
            for addr in t.reload_order(failed):
                left = end - time.monotonic()
                if left <= 0:
                    return
                try:
                    reply = await asyncio.wait_for(self._node(addr).execute_command("CLUSTER", "SLOTS"), left)
                    t.owners = parse_cluster_slots(reply, addr)
                    t.stale = False
                    return
                except (asyncio.TimeoutError, *REDIS_ERRORS):
                    pass
        finally:
            self._reloading = False

    async def close(self) -> None:
        for c in [self._plain, *self._nodes.values()]:
            if c is not None:
                await c.connection_pool.disconnect()


def _groups(t: _Topology, cmds: Sequence[Tuple[str, str, Sequence[Any]]]) -> List[Tuple[str, List[Any]]]:
    """cmds in runs served by one node (one run on a plain client), in
    order, each named by its first key."""
    runs: List[Tuple[str, List[Any]]] = []
    last: Any = object()
    for c in cmds:
        node = t.owner(c[0]) if t.cluster else None
        if not runs or node != last or node is None and t.cluster:
            runs.append((c[0], []))
        runs[-1][1].append(c)
        last = node
    return runs
