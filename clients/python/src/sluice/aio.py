"""The asyncio client: AsyncLimiter, on redis.asyncio."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from typing import Any, Dict, List, Optional, Tuple

import redis.asyncio

from ._core import (
    DEFAULT_PREFIX,
    Base,
    BreakerStatus,
    Decision,
    ProviderConfig,
    ProviderState,
    ScaleChange,
    Status,
    as_int,
    as_str,
    check_level,
    check_n,
    check_scale,
    cooldown_args,
    finite,
    fmt,
    is_unknown_provider,
    map_error,
    parse_breaker,
    parse_decision,
    parse_scale_change,
    parse_status,
    providers_key,
    RULES_CHANGED_TWICE,
    RulesChanged,
    lease_ms,
    reregister_calls,
    rules_request,
)
from ._redis import REDIS_ERRORS, AsyncConn, grant_in_time
from .errors import ClosedError, InvalidArgumentError, PermitLostError, RedisUnavailableError, SluiceError, refused

log = logging.getLogger("sluice")


class AsyncLimiter:
    """The asyncio form of :class:`sluice.Limiter`, on a ``redis.asyncio``
    client (``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster``):
    the same scripts, keys, options and semantics, every method a
    coroutine; every Redis call bounded by call_timeout and the caller's
    timeout whatever the client's socket_timeout, through a private copy of
    its connection pool. Safe for concurrent use by many tasks of one event
    loop; use one AsyncLimiter per loop. Close it with ``await
    limiter.close()`` (or ``async with``)."""

    def __init__(self, client: Any, *, prefix: str = DEFAULT_PREFIX,
                 replica_id: Optional[str] = None, source: str = "python", paused_recheck: float = 5.0,
                 wake_jitter: float = 0.005, heartbeat: float = 2.0, call_timeout: float = 0.5) -> None:
        self._b = Base(prefix=prefix, replica_id=replica_id, source=source, paused_recheck=paused_recheck,
                       wake_jitter=wake_jitter, heartbeat=heartbeat, call_timeout=call_timeout)
        self._conn = AsyncConn(client, self._b.call_timeout)
        self._rereg: Optional[asyncio.Lock] = None
        self._notifier = _AsyncNotifier(self._conn)
        self._beater: Optional["asyncio.Task[None]"] = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> "AsyncLimiter":
        """An AsyncLimiter on a new client for url (redis://, rediss://,
        unix://); options are the AsyncLimiter's."""
        return cls(redis.asyncio.Redis.from_url(url), **options)

    @property
    def replica_id(self) -> str:
        return self._b.replica_id

    @property
    def prefix(self) -> str:
        return self._b.prefix

    async def _call(self, name: str, keys: List[str], args: List[str], deadline: Optional[float] = None) -> Any:
        """One script call. A call that close() cut short (its connection
        closed under it, which redis-py reports as anything from a
        ConnectionError, mapped to RedisUnavailableError, to an
        AttributeError) raises ClosedError."""
        try:
            return await self._conn.script(name, keys, args, deadline)
        except Exception as e:
            if self._b._closed and (isinstance(e, RedisUnavailableError) or not isinstance(e, SluiceError)):
                raise ClosedError("sluice: limiter closed while the call was in flight") from e
            raise

    async def _run(self, provider: str, st: ProviderState, name: str, keys: List[str], args: List[str],
                   deadline: Optional[float] = None) -> Any:
        """As Limiter._run: registers again a provider Redis lost, once."""
        try:
            return await self._call(name, keys, args, deadline)
        except REDIS_ERRORS as e:
            if not (is_unknown_provider(e) and st.registered is not None):
                raise map_error(provider, e) from e
        if self._rereg is None:
            self._rereg = asyncio.Lock()
        async with self._rereg:
            try:
                return await self._call(name, keys, args, deadline)
            except REDIS_ERRORS as e:
                if not is_unknown_provider(e):
                    raise map_error(provider, e) from e
            log.warning("provider missing from Redis, registering it again: %s", provider)
            cfg = st.registered
            assert cfg is not None
            try:
                await self._reregister(provider, st, cfg)
                return await self._call(name, keys, args, deadline)
            except REDIS_ERRORS as e:
                raise map_error(provider, e) from e

    async def _reregister(self, provider: str, st: ProviderState, cfg: ProviderConfig) -> None:
        """See Limiter._reregister: the provider, its rules and its lanes
        in one MULTI, then the last scale seen."""
        k = st.keys
        calls, rules, lanes = reregister_calls(st, cfg)
        replies = await self._conn.scripts_atomic(calls)
        # set_rules' or set_lanes' refusal (lanes that no longer fit cfg):
        # the provider is registered all the same (a MULTI is not rolled
        # back), so it is listed and its scale restored before it raises.
        late = next((x for x in replies if isinstance(x, redis.exceptions.ResponseError)), None)
        pk = providers_key(self._b.prefix)
        await self._conn.run(pk, lambda c: c.sadd(pk, provider))
        if rules:
            log.warning("pacing rules set again with the provider (their state starts empty): %s %s", provider, rules)
        if lanes and late is None:
            log.warning("lanes set again with the provider: %s %s", provider, lanes)
        if st.last_scale is not None and st.last_scale != 1:
            await self._call("set_scale", [k.config, k.bucket, k.scale],
                             [fmt(st.last_scale), self._b.source + " (restored after redis lost it)", k.notify])
        if late is not None:
            raise late

    async def register(self, provider: str, config: Optional[ProviderConfig] = None, **fields: Any) -> str:
        """See Limiter.register."""
        cfg = config if config is not None else ProviderConfig(**fields)
        cfg.validate()
        st = self._state(provider)
        try:
            res = await self._register(provider, st, cfg)
        except REDIS_ERRORS as e:
            raise map_error(provider, e) from e
        st.registered = cfg
        return res

    async def _register(self, provider: str, st: ProviderState, cfg: ProviderConfig) -> str:
        k = st.keys
        res = as_str(await self._call("register", [k.config, k.bucket, k.scale], cfg.args()))
        pk = providers_key(self._b.prefix)
        await self._conn.run(pk, lambda c: c.sadd(pk, provider))
        return res

    async def try_acquire(self, provider: str, n: int = 1) -> Decision:
        """See Limiter.try_acquire."""
        check_n(n)
        return await self._decide(provider, self._state(provider), n)

    async def _decide(self, provider: str, st: ProviderState, n: int, deadline: Optional[float] = None,
                      key: str = "", keys: Optional[Dict[str, str]] = None, lane: str = "") -> Decision:
        if not st.active:
            st.active = True
            await self._beat(st, deadline)
            if self._beater is None:
                self._beater = asyncio.get_running_loop().create_task(self._beat_loop())
        if st.rules or key or keys:
            d = await self._decide_rules(provider, st, n, key, keys, deadline, lane)
        else:
            args = [str(n), "lane", lane] if lane else [str(n)]
            try:
                d = parse_decision(await self._run(provider, st, "acquire", st.keys.acquire(), args, deadline))
            except RulesChanged as ch:  # the provider has pacing rules now
                st.rules_rev, st.rules = ch.rev, ch.rules
                d = await self._decide_rules(provider, st, n, key, keys, deadline, lane)
        st.last_scale = d.scale
        if d.allowed:
            grant_in_time(provider, deadline)
        return d

    async def _decide_rules(self, provider: str, st: ProviderState, n: int, key: str,
                            keys: Optional[Dict[str, str]], deadline: Optional[float], lane: str = "") -> Decision:
        """See Limiter._decide_rules."""
        for _ in range(3):
            rkeys, args, rid, held = rules_request(st, n, key, keys, lane)
            try:
                d = parse_decision(await self._run(provider, st, "acquire", rkeys, args, deadline))
            except RulesChanged as ch:
                st.rules_rev, st.rules = ch.rev, ch.rules
                continue
            if d.allowed and held:
                d = dataclasses.replace(d, permit=AsyncPermit(self, provider, st, rid, n, held, d.permit_expiry_us))
            return d
        raise SluiceError(f"sluice: provider {provider!r}: {RULES_CHANGED_TWICE}")

    async def try_acquire_request(self, provider: str, cost: int = 1, key: str = "",
                                  keys: Optional[Dict[str, str]] = None, lane: str = "") -> Decision:
        """See Limiter.try_acquire_request (the permit is an AsyncPermit)."""
        check_n(cost)
        return await self._decide(provider, self._state(provider), cost, None, key, keys or {}, lane)

    async def acquire_request(self, provider: str, cost: int = 1, key: str = "",
                              keys: Optional[Dict[str, str]] = None, timeout: Optional[float] = None,
                              lane: str = "") -> Decision:
        """See Limiter.acquire_request."""
        check_n(cost)
        if timeout is not None and not (finite(timeout) and timeout >= 0):
            raise InvalidArgumentError("timeout", timeout, "None or a number of seconds >= 0")
        st = self._state(provider)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        call_deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            d = await self._decide(provider, st, cost, call_deadline, key, keys or {}, lane)
            if d.allowed:
                return d
            left = None if deadline is None else deadline - loop.time()
            wait = self._b.paused_recheck if d.reason == "paused" else d.retry_after
            if (d.retry_after < 0 and d.reason != "paused") or (left is not None and left < wait):
                raise refused(provider, cost, d)
            await self._sleep(wait + self._b._jitter(), deadline)

    async def set_rules(self, provider: str, rules: List[Dict[str, Any]]) -> Tuple[bool, int]:
        """See Limiter.set_rules."""
        st, text = self._state(provider), json.dumps(rules)
        res = await self._run(provider, st, "set_rules", [st.keys.config, st.keys.rules], [text])
        st.rules_given = json.loads(text)  # a copy, as given
        return as_str(res[0]) == "updated", as_int(res[1])

    async def set_lanes(self, provider: str, lanes: List[Dict[str, Any]]) -> bool:
        """See Limiter.set_lanes."""
        st, text = self._state(provider), json.dumps(lanes)
        res = await self._run(provider, st, "set_lanes", [st.keys.config, st.keys.bucket], [text])
        st.lanes_given = json.loads(text)  # a copy, as given
        return as_str(res) == "updated"

    async def acquire(self, provider: str, n: int = 1, timeout: Optional[float] = None) -> Decision:
        """See Limiter.acquire: waits out rate limits, cooldowns and an open
        breaker with jitter; while paused, waits for a notification (or the
        slow re-check); raises a RefusedError subclass when the wait would
        outlast timeout or timeout ends; the Redis calls count against
        timeout (DeadlineExceededError when it ends during one). Cancelling
        the task stops the wait."""
        check_n(n)
        if timeout is not None and not (finite(timeout) and timeout >= 0):
            raise InvalidArgumentError("timeout", timeout, "None or a number of seconds >= 0")
        st = self._state(provider)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        call_deadline = None if timeout is None else time.monotonic() + timeout
        turn: _AsyncTurn = st.turn  # as Limiter.acquire: one rate-limited waiter polls
        holding = False
        wake: Optional[asyncio.Event] = None
        last: Optional[Decision] = None
        try:
            while True:
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0 and last is not None:
                    raise refused(provider, n, last, timed_out=True)
                d = await self._decide(provider, st, n, call_deadline)
                if d.allowed:
                    return d
                last = d
                if d.reason == "paused":
                    if wake is None:
                        wake = await self._notifier.watch(st.keys.notify, 1.0 if left is None else min(1.0, max(left, 0)))
                        continue
                    wait = self._b.paused_recheck if left is None else max(min(self._b.paused_recheck, left), 0)
                    try:
                        await asyncio.wait_for(wake.wait(), wait)
                    except asyncio.TimeoutError:
                        pass
                    await self._sleep(self._b._jitter(), deadline)
                    wake = await self._notifier.watch(st.keys.notify, 0)
                    continue
                wake = None
                if d.retry_after < 0 or (left is not None and left < d.retry_after):
                    raise refused(provider, n, d)
                if not holding:
                    holding = turn.try_take()
                    if not holding:
                        holding = await turn.take(deadline)
                        continue
                await self._sleep(d.retry_after + self._b._jitter(), deadline)
        finally:
            if holding:
                turn.release()

    def _state(self, provider: str) -> ProviderState:
        st = self._b._state(provider)
        if st.turn is None:
            st.turn = _AsyncTurn()
        return st

    @staticmethod
    async def _sleep(seconds: float, deadline: Optional[float]) -> None:
        if deadline is not None:
            seconds = min(seconds, deadline - asyncio.get_running_loop().time())
        if seconds > 0:
            await asyncio.sleep(seconds)

    async def set_scale(self, provider: str, scale: float) -> ScaleChange:
        """See Limiter.set_scale."""
        s = check_scale(scale)
        st = self._state(provider)
        k = st.keys
        ch = parse_scale_change(await self._run(provider, st, "set_scale", [k.config, k.bucket, k.scale],
                                                [fmt(s), self._b.source, k.notify]))
        if ch.changed:
            log.info("budget scale changed: provider=%s old=%g new=%g source=%s", provider, ch.old, ch.new,
                     self._b.source)
        return ch

    async def set_pressure(self, provider: str, level: str) -> str:
        """See Limiter.set_pressure."""
        return await self._annotate(provider, "level", check_level(level))

    async def set_shadow_scale(self, provider: str, scale: float) -> str:
        """See Limiter.set_shadow_scale."""
        return await self._annotate(provider, "shadow", fmt(check_scale(scale)))

    async def _annotate(self, provider: str, kind: str, value: str) -> str:
        st = self._state(provider)
        return as_str(await self._run(provider, st, "annotate", [st.keys.config, st.keys.scale],
                                      [kind, value, self._b.source]))

    async def record_failure(self, provider: str) -> BreakerStatus:
        """See Limiter.record_failure."""
        return await self._breaker(provider, "failure")

    async def record_success(self, provider: str) -> BreakerStatus:
        """See Limiter.record_success."""
        return await self._breaker(provider, "success")

    async def reset_breaker(self, provider: str) -> BreakerStatus:
        """See Limiter.reset_breaker."""
        return await self._breaker(provider, "reset")

    async def _breaker(self, provider: str, op: str) -> BreakerStatus:
        st = self._state(provider)
        return parse_breaker(await self._run(provider, st, "breaker", [st.keys.config, st.keys.breaker],
                                             [op, st.keys.notify]))

    async def trigger_cooldown(self, provider: str, scope: str, reason: str = "",
                               duration: Optional[float] = None) -> Optional[float]:
        """See Limiter.trigger_cooldown."""
        st = self._state(provider)
        k = st.keys
        r = await self._run(provider, st, "cooldown", [k.config, k.cooldown],
                            cooldown_args(k, "set", scope, reason, duration))
        until = as_int(r[0])
        return until / 1000 if until else None

    async def clear_cooldown(self, provider: str) -> None:
        """See Limiter.clear_cooldown."""
        st = self._state(provider)
        k = st.keys
        await self._run(provider, st, "cooldown", [k.config, k.cooldown], cooldown_args(k, "clear", "", "", None))

    async def status(self, provider: str) -> Status:
        """See Limiter.status."""
        st = self._state(provider)
        k = st.keys
        return parse_status(provider, await self._run(
            provider, st, "status", [k.config, k.bucket, k.scale, k.breaker, k.cooldown, k.replicas], []))

    async def providers(self) -> List[str]:
        """The registered providers, sorted."""
        pk = providers_key(self._b.prefix)
        try:
            return sorted(as_str(p) for p in await self._conn.run(pk, lambda c: c.smembers(pk)))
        except REDIS_ERRORS as e:
            raise map_error("", e) from e

    async def _beat(self, st: ProviderState, deadline: Optional[float] = None) -> None:
        try:
            n = await self._call("heartbeat", [st.keys.replicas], self._b._heartbeat_args("beat"), deadline)
            st.replicas = max(as_int(n), 1)
        except (SluiceError, *REDIS_ERRORS) as e:
            log.debug("heartbeat failed: %s", e)

    async def _beat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._b.heartbeat)
            for s in [s for s in self._b._providers.values() if s.active]:
                await self._beat(s)

    def replicas(self, provider: str) -> int:
        """Live replicas of provider at this client's last heartbeat (>= 1)."""
        return self._b.replicas(provider)

    async def close(self) -> None:
        """See Limiter.close."""
        if self._b._closed:
            return
        self._b._closed = True
        if self._beater is not None:
            self._beater.cancel()
            try:
                await self._beater
            except asyncio.CancelledError:
                pass
        await self._notifier.close()
        for s in [s for s in self._b._providers.values() if s.active]:
            try:
                await self._call("heartbeat", [s.keys.replicas], self._b._heartbeat_args("leave"))
            except (SluiceError, *REDIS_ERRORS):
                pass
        await self._conn.close()

    async def __aenter__(self) -> "AsyncLimiter":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _AsyncTurn:
    """A provider's polling turn among one client's rate-limited waiters."""

    def __init__(self) -> None:
        self._held = False
        self._free = asyncio.Event()
        self._free.set()

    def try_take(self) -> bool:
        if self._held:
            return False
        self._held = True
        self._free.clear()
        return True

    async def take(self, deadline: Optional[float]) -> bool:
        """Take the turn, waiting for it until deadline (loop time; None: for ever)."""
        loop = asyncio.get_running_loop()
        while not self.try_take():
            try:
                await asyncio.wait_for(self._free.wait(), None if deadline is None else max(deadline - loop.time(), 0))
            except asyncio.TimeoutError:
                return False
        return True

    def release(self) -> None:
        self._held = False
        self._free.set()


class _AsyncSub:
    def __init__(self) -> None:
        self.ready = asyncio.Event()
        self.confirmed = False
        self.gen = asyncio.Event()


class _AsyncNotifier:
    """As limiter._Notifier, with a task owning the subscription."""

    POLL = 0.1

    def __init__(self, conn: AsyncConn) -> None:
        self._conn = conn
        self._subs: Dict[str, _AsyncSub] = {}
        self._pending: List[str] = []
        self._task: Optional["asyncio.Task[None]"] = None
        self._closed = False

    async def watch(self, channel: str, timeout: float) -> asyncio.Event:
        s = self._subs.get(channel)
        if s is None:
            s = _AsyncSub()
            self._subs[channel] = s
            self._pending.append(channel)
            if self._task is None and not self._closed:
                self._task = asyncio.get_running_loop().create_task(self._loop())
        gen = s.gen
        try:
            await asyncio.wait_for(s.ready.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        return gen

    async def _loop(self) -> None:
        ps: Any = None
        bound = self._conn.call_timeout + self.POLL
        try:
            while True:
                pending, self._pending = self._pending, []
                if ps is None:  # (again) on a new connection: every channel
                    pending = list(self._subs)
                try:
                    if ps is None:
                        ps = await self._conn.pubsub(pending[0])
                    if pending:
                        await asyncio.wait_for(ps.subscribe(*pending), bound)
                        pending = []
                    msg = await asyncio.wait_for(ps.get_message(timeout=self.POLL), bound)
                except (asyncio.TimeoutError, SluiceError, *REDIS_ERRORS) as e:
                    log.debug("notification subscription: %s", e)  # as limiter._Notifier
                    ps = await _close_pubsub(ps, bound)
                    await asyncio.sleep(0.5)
                    continue
                if msg:
                    self._handle(msg)
        finally:
            await _close_pubsub(ps, bound)

    def _handle(self, msg: Dict[str, Any]) -> None:
        kind, channel = as_str(msg.get("type")), as_str(msg.get("channel"))
        s = self._subs.get(channel)
        if s is None or kind not in ("subscribe", "message"):
            return
        if kind == "subscribe" and not s.confirmed:
            s.confirmed = True
            s.ready.set()
            return
        old, s.gen = s.gen, asyncio.Event()
        old.set()

    async def close(self) -> None:
        self._closed = True
        for s in self._subs.values():
            s.gen.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


async def _close_pubsub(ps: Any, bound: float) -> None:
    if ps is not None:
        try:
            await asyncio.wait_for(ps.reset(), bound)
        except (asyncio.TimeoutError, *REDIS_ERRORS):
            pass


class AsyncPermit:
    """See Permit: the places of a grant under concurrency rules, for
    AsyncLimiter."""

    def __init__(self, lim: AsyncLimiter, provider: str, st: ProviderState, rid: str, cost: int,
                 rules: List[str], expiry_us: int) -> None:
        self._lim, self._provider, self._st = lim, provider, st
        self.id, self.cost, self.rules, self.expiry_us = rid, cost, rules, expiry_us

    async def release(self) -> int:
        """See Permit.release."""
        k, freed = self._st.keys, 0
        for r in self.rules:
            freed += as_int(await self._lim._run(self._provider, self._st, "permit", [k.rules, k.released],
                                                 ["release", self.id, str(self.cost), "", r]))
        return freed

    async def renew(self, lease: float) -> None:
        """See Permit.renew."""
        ms, k = lease_ms(lease), self._st.keys
        for r in self.rules:
            exp = as_int(await self._lim._run(self._provider, self._st, "permit", [k.rules, k.released],
                                              ["renew", self.id, str(self.cost), str(ms), r]))
            if exp == 0:
                raise PermitLostError(f"sluice: permit lost: provider {self._provider!r}, rule {r}, permit {self.id}")
            self.expiry_us = exp
