"""The synchronous client: Limiter."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import redis

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
from ._redis import REDIS_ERRORS, Conn, bounded, grant_in_time
from .errors import ClosedError, InvalidArgumentError, PermitLostError, RedisUnavailableError, SluiceError, refused

log = logging.getLogger("sluice")


class Limiter:
    """Shares one token bucket per provider among every replica, in any
    language, that talks to the same Redis: each bucket holds at most its
    capacity and refills at base rate × scale tokens per second, where the
    scale (0 pauses) lives in Redis so a change reaches every replica at its
    next acquisition. Every decision is one Lua script (the same text as the
    Go client's) at Redis time.

    A Limiter is safe for concurrent use by many threads, and many processes
    may each have one. It needs a redis-py client: ``redis.Redis`` or
    ``redis.cluster.RedisCluster`` (decoded responses or not). It calls
    Redis through a private copy of the client's connection pool (the
    client itself is left as it is), and bounds every call by
    ``call_timeout`` (0.5 s) and by the caller's timeout, whatever the
    client's ``socket_timeout``: a stalled Redis cannot hold a caller. Its
    outage mode is fail closed: when Redis cannot serve a call (refused, no
    answer within call_timeout, loading, on a cluster a slot in motion
    beyond call_timeout) it raises RedisUnavailableError and grants
    nothing; when the caller's timeout ends first, DeadlineExceededError.
    On a cluster the calls go to the node of the provider's slot (every key
    of a provider is in one slot); a slot in motion (MOVED, ASK, TRYAGAIN,
    CLUSTERDOWN) or a lost node is tried again, the slot map read again,
    within call_timeout.

    Options: ``prefix`` of every key (default "sluice"); ``replica_id`` in the
    replica registry (default <host>-<pid>-<random>); ``source`` recorded as
    who changed a scale or level (default "python"); ``paused_recheck``
    seconds between re-checks of a paused waiter in case a notification is
    lost (5); ``wake_jitter``, the upper bound of the random delay added to
    every wait (0.005); ``heartbeat`` seconds between replica-registry beats
    (2; an entry lives 3 beats); ``call_timeout``, seconds in (0, 3600]
    that bound each Redis call (0.5, as the Go client's CallTimeout: keep it
    above a few round trips).
    """

    def __init__(self, client: Any, *, prefix: str = DEFAULT_PREFIX,
                 replica_id: Optional[str] = None, source: str = "python", paused_recheck: float = 5.0,
                 wake_jitter: float = 0.005, heartbeat: float = 2.0, call_timeout: float = 0.5) -> None:
        self._b = Base(prefix=prefix, replica_id=replica_id, source=source, paused_recheck=paused_recheck,
                       wake_jitter=wake_jitter, heartbeat=heartbeat, call_timeout=call_timeout)
        self._conn = Conn(client, self._b.call_timeout)
        self._lock = threading.Lock()
        self._rereg = threading.Lock()
        self._notifier = _Notifier(self._conn)
        self._stop = threading.Event()
        self._beater: Optional[threading.Thread] = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> "Limiter":
        """A Limiter on a new client for url (redis://, rediss://, unix://);
        options are the Limiter's."""
        return cls(redis.Redis.from_url(url), **options)

    @property
    def replica_id(self) -> str:
        return self._b.replica_id

    @property
    def prefix(self) -> str:
        return self._b.prefix

    def _state(self, provider: str) -> ProviderState:
        with self._lock:
            st = self._b._state(provider)
            if st.turn is None:
                st.turn = _Turn()
            return st

    # Script calls.

    def _call(self, name: str, keys: List[str], args: List[str], deadline: Optional[float] = None) -> Any:
        """One script call. A call that close() cut short (its connection
        closed under it, which redis-py reports as anything from a
        ConnectionError, mapped to RedisUnavailableError, to an
        AttributeError) raises ClosedError."""
        try:
            return self._conn.script(name, keys, args, deadline)
        except Exception as e:
            if self._b._closed and (isinstance(e, RedisUnavailableError) or not isinstance(e, SluiceError)):
                raise ClosedError("sluice: limiter closed while the call was in flight") from e
            raise

    def _run(self, provider: str, st: ProviderState, name: str, keys: List[str], args: List[str],
             deadline: Optional[float] = None) -> Any:
        """Run a script for provider, within call_timeout and deadline
        (time.monotonic()). If Redis answers UNKNOWN_PROVIDER for a provider
        this client registered (Redis restarted without persistence),
        register it again, restore the last scale seen if it was not 1, and
        retry once."""
        try:
            return self._call(name, keys, args, deadline)
        except REDIS_ERRORS as e:
            if not (is_unknown_provider(e) and st.registered is not None):
                raise map_error(provider, e) from e
        with self._rereg:
            try:
                return self._call(name, keys, args, deadline)  # another thread may have registered it meanwhile
            except REDIS_ERRORS as e:
                if not is_unknown_provider(e):
                    raise map_error(provider, e) from e
            log.warning("provider missing from Redis, registering it again: %s", provider)
            cfg = st.registered
            assert cfg is not None
            try:
                self._reregister(provider, st, cfg)
                return self._call(name, keys, args, deadline)
            except REDIS_ERRORS as e:
                raise map_error(provider, e) from e

    def _reregister(self, provider: str, st: ProviderState, cfg: ProviderConfig) -> None:
        """Register provider again with cfg after Redis lost it, with its
        pacing rules and lanes (restore_texts: the rules last learnt from
        Redis, else the ones given to set_rules; the lanes given to
        set_lanes) in one MULTI: no client can be decided on the provider
        without its rules in between (it would learn that the provider has
        none and be granted by the bucket alone). Then restore the last
        scale seen if it was not 1. The rules' state (windows, permits) is
        lost with Redis's (docs/rules.md)."""
        k = st.keys
        calls, rules, lanes = reregister_calls(st, cfg)
        replies = self._conn.scripts_atomic(calls)
        # set_rules' or set_lanes' refusal (lanes that no longer fit cfg):
        # the provider is registered all the same (a MULTI is not rolled
        # back), so it is listed and its scale restored before it raises.
        late = next((x for x in replies if isinstance(x, redis.exceptions.ResponseError)), None)
        pk = providers_key(self._b.prefix)
        self._conn.run(pk, lambda c: c.sadd(pk, provider))
        if rules:
            log.warning("pacing rules set again with the provider (their state starts empty): %s %s", provider, rules)
        if lanes and late is None:
            log.warning("lanes set again with the provider: %s %s", provider, lanes)
        if st.last_scale is not None and st.last_scale != 1:
            self._call("set_scale", [k.config, k.bucket, k.scale],
                       [fmt(st.last_scale), self._b.source + " (restored after redis lost it)", k.notify])
        if late is not None:
            raise late

    # Providers.

    def register(self, provider: str, config: Optional[ProviderConfig] = None, **fields: Any) -> str:
        """Create or update provider's config in Redis, shared by every
        replica; idempotent. config defaults to ProviderConfig(**fields).
        A new provider starts with a full bucket and scale 1; an update
        settles the bucket at the old rate and caps it at the new capacity.
        Returns "created", "updated" or "unchanged". This client registers
        it again if Redis loses it."""
        cfg = config if config is not None else ProviderConfig(**fields)
        cfg.validate()
        st = self._state(provider)
        try:
            res = self._register(provider, st, cfg)
        except REDIS_ERRORS as e:
            raise map_error(provider, e) from e
        st.registered = cfg
        return res

    def _register(self, provider: str, st: ProviderState, cfg: ProviderConfig) -> str:
        k = st.keys
        res = as_str(self._call("register", [k.config, k.bucket, k.scale], cfg.args()))
        pk = providers_key(self._b.prefix)
        self._conn.run(pk, lambda c: c.sadd(pk, provider))
        return res

    # Acquisition.

    def try_acquire(self, provider: str, n: int = 1) -> Decision:
        """Take n tokens from provider's shared bucket if it can, never
        waiting: one round trip. A refusal is a Decision, not an error."""
        check_n(n)
        st = self._state(provider)
        return self._decide(provider, st, n)

    def _decide(self, provider: str, st: ProviderState, n: int, deadline: Optional[float] = None,
                key: str = "", keys: Optional[Dict[str, str]] = None, lane: str = "") -> Decision:
        if not st.active:
            st.active = True  # first acquisition: join the replica registry now
            self._beat(st, deadline)
            self._start_beater()
        if st.rules or key or keys:
            d = self._decide_rules(provider, st, n, key, keys, deadline, lane)
        else:
            args = [str(n), "lane", lane] if lane else [str(n)]
            try:
                d = parse_decision(self._run(provider, st, "acquire", st.keys.acquire(), args, deadline))
            except RulesChanged as ch:  # the provider has pacing rules now
                st.rules_rev, st.rules = ch.rev, ch.rules
                d = self._decide_rules(provider, st, n, key, keys, deadline, lane)
        st.last_scale = d.scale
        if d.allowed:
            grant_in_time(provider, deadline)
        return d

    def _decide_rules(self, provider: str, st: ProviderState, n: int, key: str,
                      keys: Optional[Dict[str, str]], deadline: Optional[float], lane: str = "") -> Decision:
        """One request by acquire.lua's rules form (docs/lua.md), learning
        the set in force from a RULES_CHANGED reply (at most twice)."""
        for _ in range(3):
            rkeys, args, rid, held = rules_request(st, n, key, keys, lane)
            try:
                d = parse_decision(self._run(provider, st, "acquire", rkeys, args, deadline))
            except RulesChanged as ch:
                st.rules_rev, st.rules = ch.rev, ch.rules
                continue
            if d.allowed and held:
                d = dataclasses.replace(d, permit=Permit(self, provider, st, rid, n, held, d.permit_expiry_us))
            return d
        raise SluiceError(f"sluice: provider {provider!r}: {RULES_CHANGED_TWICE}")

    def try_acquire_request(self, provider: str, cost: int = 1, key: str = "",
                            keys: Optional[Dict[str, str]] = None, lane: str = "") -> Decision:
        """Decide one request of cost against provider's bucket and every
        pacing rule in one script call, never waiting (docs/rules.md): granted
        only if all allow it, and then all are charged. key is the request's
        key for keyed and spacing rules; keys gives a rule its own, by name.
        A grant under a concurrency rule carries a Permit to release; a
        refusal by a rule has reason rule_limited and names it (rule)."""
        check_n(cost)
        return self._decide(provider, self._state(provider), cost, None, key, keys or {}, lane)

    def acquire_request(self, provider: str, cost: int = 1, key: str = "",
                        keys: Optional[Dict[str, str]] = None, timeout: Optional[float] = None,
                        lane: str = "") -> Decision:
        """Block until provider grants the request (as try_acquire_request
        decides it), sleeping what each refusal says; RuleLimitedError (or
        the reason's error) when the wait would outlast timeout or can never
        end (cost above a rule's limit)."""
        check_n(cost)
        if timeout is not None and not (finite(timeout) and timeout >= 0):
            raise InvalidArgumentError("timeout", timeout, "None or a number of seconds >= 0")
        st = self._state(provider)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            d = self._decide(provider, st, cost, deadline, key, keys or {}, lane)
            if d.allowed:
                return d
            left = None if deadline is None else deadline - time.monotonic()
            wait = self._b.paused_recheck if d.reason == "paused" else d.retry_after
            if (d.retry_after < 0 and d.reason != "paused") or (left is not None and left < wait):
                raise refused(provider, cost, d)
            self._sleep(wait + self._b._jitter(), deadline)

    def set_rules(self, provider: str, rules: List[Dict[str, Any]]) -> Tuple[bool, int]:
        """Replace provider's pacing rules (docs/lua.md, set_rules: dicts of
        name, kind, limit, period_ms, lease_ms, scaled), checked whole by
        the script: InvalidArgumentError naming the field (rules.<name>.limit)
        changes nothing. Returns (changed, revision)."""
        st, text = self._state(provider), json.dumps(rules)
        res = self._run(provider, st, "set_rules", [st.keys.config, st.keys.rules], [text])
        st.rules_given = json.loads(text)  # a copy, as given
        return as_str(res[0]) == "updated", as_int(res[1])

    def set_lanes(self, provider: str, lanes: List[Dict[str, Any]]) -> bool:
        """Replace provider's lanes (docs/lanes.md; docs/lua.md, set_lanes:
        dicts of name, priority, weight, burst, guarantee, floor), checked
        whole by the script: InvalidArgumentError naming the field
        (lanes.<name>.weight) changes nothing. [] removes them. Returns
        whether they changed. A request names its lane with lane= in
        try_acquire_request and acquire_request."""
        st, text = self._state(provider), json.dumps(lanes)
        res = self._run(provider, st, "set_lanes", [st.keys.config, st.keys.bucket], [text])
        st.lanes_given = json.loads(text)  # a copy, as given
        return as_str(res) == "updated"

    def acquire(self, provider: str, n: int = 1, timeout: Optional[float] = None) -> Decision:
        """Block until provider grants n tokens and return the granting
        decision. Most callers should use acquire. When the reason is
        "probe" the call is the half-open breaker's single probe: report its
        outcome with record_success or record_failure.

        It waits out rate limits, cooldowns and an open breaker, waking with
        jitter; while the provider is paused (scale 0) it waits for a
        notification on <prefix>:{<provider>}:notify, re-checking every
        paused_recheck seconds, without polling Redis. It raises at once, a
        RefusedError subclass carrying the refusing decision, when n exceeds
        the capacity (ExceedsCapacityError) or the known wait would outlast
        timeout (RateLimitedError, CoolingDownError, CircuitOpenError); when
        timeout ends while it waits, the reason's error with timed_out set
        (PausedError, ...). timeout None waits for ever. The Redis calls
        count against timeout: when it ends during one,
        DeadlineExceededError; RedisUnavailableError when Redis cannot serve
        one (see the class doc); it returns a grant only before timeout ends."""
        check_n(n)
        if timeout is not None and not (finite(timeout) and timeout >= 0):
            raise InvalidArgumentError("timeout", timeout, "None or a number of seconds >= 0")
        st = self._state(provider)
        deadline = None if timeout is None else time.monotonic() + timeout
        # While rate limited (or cooling down, or the breaker is open), the
        # waiters of one provider in this client take turns: only the one
        # holding the turn polls Redis, the others wait for it to be
        # granted. Redis sees about one call per grant, not one per waiter.
        turn: _Turn = st.turn
        holding = False
        wake: Optional[threading.Event] = None
        last: Optional[Decision] = None
        try:
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0 and last is not None:
                    raise refused(provider, n, last, timed_out=True)
                d = self._decide(provider, st, n, deadline)
                if d.allowed:
                    return d
                last = d
                if d.reason == "paused":
                    if wake is None:
                        # Subscribe first, then look again: a change between
                        # the two is then either seen by the check or notified.
                        wake = self._notifier.watch(st.keys.notify, 1.0 if left is None else min(1.0, max(left, 0)))
                        continue
                    wake.wait(self._b.paused_recheck if left is None else max(min(self._b.paused_recheck, left), 0))
                    self._sleep(self._b._jitter(), deadline)  # resumed waiters spread out
                    wake = self._notifier.watch(st.keys.notify, 0)
                    continue
                wake = None
                if d.retry_after < 0 or (left is not None and left < d.retry_after):
                    raise refused(provider, n, d)
                if not holding:
                    holding = turn.take(0)  # nobody polls: this waiter does
                    if not holding:
                        holding = turn.take(left)  # our turn came: time passed, look again now
                        continue
                self._sleep(d.retry_after + self._b._jitter(), deadline)
        finally:
            if holding:
                turn.release()

    def _sleep(self, seconds: float, deadline: Optional[float]) -> None:
        if deadline is not None:
            seconds = min(seconds, deadline - time.monotonic())
        if seconds > 0:
            time.sleep(seconds)

    # The scale and the pressure level.

    def set_scale(self, provider: str, scale: float) -> ScaleChange:
        """Set provider's scale factor for every replica: the rate in force
        becomes base rate × scale. The bucket is first settled at the old
        scale up to now (Redis time), so the change is never retroactive;
        capacity is not scaled. 0 pauses the provider; paused waiters (Go or
        Python) are notified when it changes. scale must be finite, in [0,
        max_scale]; anything else is an InvalidArgumentError and changes
        nothing. The scale hash records this client's source."""
        s = check_scale(scale)
        st = self._state(provider)
        k = st.keys
        ch = parse_scale_change(self._run(provider, st, "set_scale", [k.config, k.bucket, k.scale],
                                          [fmt(s), self._b.source, k.notify]))
        if ch.changed:
            log.info("budget scale changed: provider=%s old=%g new=%g source=%s", provider, ch.old, ch.new,
                     self._b.source)
        return ch

    def set_pressure(self, provider: str, level: str) -> str:
        """Record the pressure level (ok, soft, hard) that applies to
        provider, beside its scale (for operators); it does not change the
        rate. Returns the previous level ("" when none)."""
        return self._annotate(provider, "level", check_level(level))

    def set_shadow_scale(self, provider: str, scale: float) -> str:
        """Record the scale a shadow-mode feedback handler would set, beside
        the scale in force; the rate does not change."""
        return self._annotate(provider, "shadow", fmt(check_scale(scale)))

    def _annotate(self, provider: str, kind: str, value: str) -> str:
        st = self._state(provider)
        return as_str(self._run(provider, st, "annotate", [st.keys.config, st.keys.scale],
                                [kind, value, self._b.source]))

    # Breaker and cooldown.

    def record_failure(self, provider: str) -> BreakerStatus:
        """Count a failed call towards the shared breaker: at
        breaker_threshold consecutive failures it opens for every replica
        for breaker_timeout_sec; a failed half-open probe opens it again."""
        return self._breaker(provider, "failure")

    def record_success(self, provider: str) -> BreakerStatus:
        """Report a successful call: resets the failure count and closes a
        half-open breaker (the probe succeeded)."""
        return self._breaker(provider, "success")

    def reset_breaker(self, provider: str) -> BreakerStatus:
        """Close provider's breaker whatever its state (operator override)."""
        return self._breaker(provider, "reset")

    def _breaker(self, provider: str, op: str) -> BreakerStatus:
        st = self._state(provider)
        return parse_breaker(self._run(provider, st, "breaker", [st.keys.config, st.keys.breaker],
                                       [op, st.keys.notify]))

    def trigger_cooldown(self, provider: str, scope: str, reason: str = "",
                         duration: Optional[float] = None) -> Optional[float]:
        """Stop every replica of provider for duration seconds, in [0,
        86400] (None or 0: the provider's cooldown_sec), recording scope
        (what tripped it) and reason. A running cooldown that ends later is
        kept. Returns when the cooldown in force ends (Unix seconds, Redis
        time), or None when there is none."""
        st = self._state(provider)
        k = st.keys
        r = self._run(provider, st, "cooldown", [k.config, k.cooldown], cooldown_args(k, "set", scope, reason, duration))
        until = as_int(r[0])
        return until / 1000 if until else None

    def clear_cooldown(self, provider: str) -> None:
        """End provider's cooldown now; waiters are told at once."""
        st = self._state(provider)
        k = st.keys
        self._run(provider, st, "cooldown", [k.config, k.cooldown], cooldown_args(k, "clear", "", "", None))

    # Inspection.

    def status(self, provider: str) -> Status:
        """provider's shared state in one round trip, read at Redis time.
        It writes nothing and does not make this process a replica."""
        st = self._state(provider)
        k = st.keys
        return parse_status(provider, self._run(provider, st, "status",
                                                [k.config, k.bucket, k.scale, k.breaker, k.cooldown, k.replicas], []))

    def providers(self) -> List[str]:
        """The registered providers, sorted."""
        pk = providers_key(self._b.prefix)
        try:
            return sorted(as_str(p) for p in self._conn.run(pk, lambda c: c.smembers(pk)))
        except REDIS_ERRORS as e:
            raise map_error("", e) from e

    # The replica registry.

    def _beat(self, st: ProviderState, deadline: Optional[float] = None) -> None:
        try:
            n = self._call("heartbeat", [st.keys.replicas], self._b._heartbeat_args("beat"), deadline)
            st.replicas = max(as_int(n), 1)
        except (SluiceError, *REDIS_ERRORS) as e:  # the last count stays; the next beat tries again
            log.debug("heartbeat failed: %s", e)

    def _start_beater(self) -> None:
        with self._lock:
            if self._beater is not None or self._b._closed:
                return
            self._beater = threading.Thread(target=self._beat_loop, name="sluice-heartbeat", daemon=True)
            self._beater.start()

    def _beat_loop(self) -> None:
        while not self._stop.wait(self._b.heartbeat):
            with self._lock:
                states = [s for s in self._b._providers.values() if s.active]
            for s in states:
                self._beat(s)

    def replicas(self, provider: str) -> int:
        """Live replicas of provider at this client's last heartbeat (>= 1)."""
        return self._b.replicas(provider)

    def close(self) -> None:
        """Stop the heartbeat and the notification subscription, leave the
        registry of every provider this client acquired from (each within
        call_timeout) and close this Limiter's connections. Calls after
        close, and calls in flight that close cuts short, raise
        ClosedError. The Redis client given stays open."""
        with self._lock:
            if self._b._closed:
                return
            self._b._closed = True
            states = [s for s in self._b._providers.values() if s.active]
        self._stop.set()
        if self._beater is not None:
            self._beater.join()
        self._notifier.close()
        for s in states:
            try:
                self._call("heartbeat", [s.keys.replicas], self._b._heartbeat_args("leave"))
            except (SluiceError, *REDIS_ERRORS):
                pass
        self._conn.close()

    def __enter__(self) -> "Limiter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Turn:
    """A provider's polling turn among one client's rate-limited waiters."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._held = False

    def take(self, timeout: Optional[float]) -> bool:
        """Take the turn, waiting up to timeout (None: for ever) for it."""
        with self._cond:
            if not self._cond.wait_for(lambda: not self._held, timeout):
                return False
            self._held = True
            return True

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify()


class _Sub:
    def __init__(self) -> None:
        self.ready = threading.Event()  # set once Redis confirmed the subscription
        self.confirmed = False
        self.gen = threading.Event()  # set and replaced at every notification


class _Notifier:
    """Wakes paused waiters when a provider's notify channel says its scale
    (or breaker, or cooldown) changed. One subscription per Limiter serves
    every waiter; a thread owns it (redis-py's PubSub is not thread-safe)
    and starts at the first paused waiter. A waiter costs Redis nothing."""

    POLL = 0.1  # how often the thread looks for new channels to subscribe

    def __init__(self, conn: Conn) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._subs: Dict[str, _Sub] = {}
        self._pending: List[str] = []
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()

    def watch(self, channel: str, timeout: float) -> threading.Event:
        """An event set at the next notification on channel. It subscribes
        on first use and waits (up to timeout) for Redis to confirm, so a
        check made after watch returns cannot miss a change. If Redis cannot
        confirm, the waiter still has its slow re-check."""
        with self._lock:
            s = self._subs.get(channel)
            if s is None:
                s = _Sub()
                self._subs[channel] = s
                self._pending.append(channel)
                if self._thread is None and not self._stop.is_set():
                    self._thread = threading.Thread(target=self._loop, name="sluice-notify", daemon=True)
                    self._thread.start()
            gen, ready = s.gen, s.ready
        ready.wait(timeout)
        return gen

    def _loop(self) -> None:
        ps: Any = None
        while not self._stop.is_set():
            with self._lock:
                pending, self._pending = self._pending, []
                if ps is None:  # (again) on a new connection: every channel
                    pending = list(self._subs)
            try:
                # Each step within call_timeout (and the poll): a stalled
                # Redis cannot hold the thread, so close can always stop it.
                with bounded(self._conn.call_timeout + self.POLL):
                    if ps is None:
                        ps = self._conn.pubsub(pending[0])
                    if pending:
                        ps.subscribe(*pending)
                        pending = []
                    msg = ps.get_message(timeout=self.POLL)
            except (SluiceError, *REDIS_ERRORS) as e:
                # Lost: subscribe again on a new connection (on a cluster,
                # maybe another node); the confirmations then wake every
                # waiter, since notifications may have been lost meanwhile.
                log.debug("notification subscription: %s", e)
                ps = _close_pubsub(ps)
                self._stop.wait(0.5)
                continue
            if msg:
                self._handle(msg)
        _close_pubsub(ps)

    def _handle(self, msg: Dict[str, Any]) -> None:
        kind, channel = as_str(msg.get("type")), as_str(msg.get("channel"))
        if kind not in ("subscribe", "message"):
            return
        with self._lock:
            s = self._subs.get(channel)
            if s is None:
                return
            if kind == "subscribe" and not s.confirmed:
                s.confirmed = True
                s.ready.set()
                return
            # A message, or a confirmation after a reconnect (notifications
            # may have been lost meanwhile): wake every waiter.
            old, s.gen = s.gen, threading.Event()
        old.set()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            t = self._thread
            for s in self._subs.values():
                s.gen.set()
        if t is not None:
            t.join()


def _close_pubsub(ps: Any) -> None:
    if ps is not None:
        try:
            ps.close()
        except REDIS_ERRORS:
            pass


class Permit:
    """The places a granted request holds under its provider's concurrency
    rules (docs/rules.md). Release it when the request is done; one not
    released frees its places when its lease ends (a holder that crashed)."""

    def __init__(self, lim: Limiter, provider: str, st: ProviderState, rid: str, cost: int,
                 rules: List[str], expiry_us: int) -> None:
        self._lim, self._provider, self._st = lim, provider, st
        self.id, self.cost, self.rules, self.expiry_us = rid, cost, rules, expiry_us

    def release(self) -> int:
        """Free the places at once (and wake other replicas' waiters):
        the units freed, 0 when the lease had already ended."""
        k, freed = self._st.keys, 0
        for r in self.rules:
            freed += as_int(self._lim._run(self._provider, self._st, "permit", [k.rules, k.released],
                                           ["release", self.id, str(self.cost), "", r]))
        return freed

    def renew(self, lease: float) -> None:
        """Extend the lease to lease seconds from now (whole milliseconds in
        [0.001, 86400]); PermitLostError when it had already ended: the
        places may be another caller's, so the request must stop."""
        ms = lease_ms(lease)
        k = self._st.keys
        for r in self.rules:
            exp = as_int(self._lim._run(self._provider, self._st, "permit", [k.rules, k.released],
                                        ["renew", self.id, str(self.cost), str(ms), r]))
            if exp == 0:
                raise PermitLostError(f"sluice: permit lost: provider {self._provider!r}, rule {r}, permit {self.id}")
            self.expiry_us = exp
