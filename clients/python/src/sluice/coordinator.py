"""The seed's API shape over the shared limiter, so the seed's pipeline
(Python, asyncio) adopts sluice with little change:

    coord = RateCoordinator(redis.asyncio.Redis.from_url(url))
    coord.register_provider("ibkr", capacity=100, refill_rate=60)
    await coord.acquire("ibkr")                  # the shared bucket, Go replicas included
    handler = FeedbackHandler(coord, "ibkr")     # ok 1.0, soft 0.5, hard 0.0
    feedback_bus().subscribe(handler.handle)     # in process; across processes the
                                                 # sluice controller owns the scale

Everything lives in Redis, shared by every replica: set_budget_scale sets
the scale of the provider for all of them (never retroactive; capacity not
scaled), set_global_pressure records the level beside it.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Protocol, Union

from ._core import ProviderConfig, check_level, check_name
from .aio import AsyncLimiter
from .feedback import Event, Level

log = logging.getLogger("sluice")

#: The seed's names for the event and its level.
FeedbackEvent = Event
BackpressureLevel = Level


class RateCoordinator:
    """The seed's RateCoordinator on sluice's AsyncLimiter: one budget per
    provider shared through Redis. register_provider stays synchronous, as
    in the seed: it checks the config at once and registers it in Redis at
    the first awaited call for that provider. client is a redis.asyncio
    client (``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster``),
    or an AsyncLimiter (then its options apply)."""

    def __init__(self, client: Any, *, source: str = "python", **limiter_options: Any) -> None:
        if isinstance(client, AsyncLimiter):
            self.limiter = client
        else:
            self.limiter = AsyncLimiter(client, source=source, **limiter_options)
        self._configs: Dict[str, ProviderConfig] = {}
        self._pending: Dict[str, ProviderConfig] = {}

    def register_provider(self, name: str, capacity: int = 60, refill_rate: float = 60, cooldown_sec: float = 600,
                          breaker_threshold: int = 5, breaker_timeout: float = 60.0) -> None:
        """The seed's signature. Raises InvalidArgumentError (naming the
        field and its range) for a bad value; the provider is registered in
        Redis at the first awaited call for it (or by ``await start()``)."""
        cfg = ProviderConfig(capacity=capacity, refill_rate=float(refill_rate), cooldown_sec=float(cooldown_sec),
                             breaker_threshold=breaker_threshold, breaker_timeout_sec=float(breaker_timeout))
        cfg.validate()
        check_name("provider", name)
        self._configs[name] = cfg
        self._pending[name] = cfg

    async def start(self) -> None:
        """Register every provider registered so far (else done lazily)."""
        for name in list(self._pending):
            await self._ensure(name)

    async def _ensure(self, provider: str) -> bool:
        cfg = self._pending.pop(provider, None)
        if cfg is not None:
            try:
                await self.limiter.register(provider, cfg)
            except BaseException:
                self._pending[provider] = cfg
                raise
        return provider in self._configs

    async def acquire(self, provider: str, n: int = 1, timeout: Optional[float] = None, *, key: str = "",
                      keys: Optional[Dict[str, str]] = None, lane: str = "") -> Any:
        """Wait until the shared bucket grants n tokens (rate limits,
        cooldown, an open breaker and a pause are waited out); returns the
        Decision. With timeout, raises the refusal's error when the wait
        would outlast it. For a provider with pacing rules (set_rules), n is
        the request's cost on every rule, key its key for keyed and spacing
        rules (keys: one per rule), and a grant under a concurrency rule
        carries a permit to release: ``await d.permit.release()``. lane
        names the request's lane for a provider with lanes (set_lanes)."""
        await self._ensure(provider)
        if key or keys or lane:
            return await self.limiter.acquire_request(provider, n, key, keys, timeout, lane)
        return await self.limiter.acquire(provider, n, timeout)

    async def set_rules(self, provider: str, rules: List[Dict[str, Any]]) -> bool:
        """Replace provider's pacing rules (docs/rules.md; [] removes them)
        for every replica; checked whole. Returns whether they changed."""
        await self._ensure(provider)
        changed, _ = await self.limiter.set_rules(provider, rules)
        return changed

    async def set_lanes(self, provider: str, lanes: List[Dict[str, Any]]) -> bool:
        """Replace provider's lanes (docs/lanes.md; [] removes them) for
        every replica; checked whole. Returns whether they changed."""
        await self._ensure(provider)
        return await self.limiter.set_lanes(provider, lanes)

    async def record_failure(self, provider: str) -> None:
        """Count a failure towards the shared breaker."""
        await self._ensure(provider)
        await self.limiter.record_failure(provider)

    async def record_success(self, provider: str) -> None:
        """Report a success (closes a half-open breaker)."""
        await self._ensure(provider)
        await self.limiter.record_success(provider)

    async def trigger_cooldown(self, provider: str, scope: str, reason: str = "",
                               duration: Optional[float] = None) -> Optional[float]:
        """Stop every replica of provider for its cooldown_sec (or duration
        seconds); returns when it ends (Unix seconds)."""
        await self._ensure(provider)
        return await self.limiter.trigger_cooldown(provider, scope, reason, duration)

    async def set_budget_scale(self, provider: str, scale: float) -> None:
        """Set the rate in force to refill_rate × scale for every replica.
        scale must be finite, in [0, 1] (InvalidArgumentError otherwise); 0
        pauses. As in the seed, a provider not registered with this
        coordinator is ignored (logged)."""
        if not await self._ensure(provider):
            log.warning("set_budget_scale: provider %r not registered here; ignored", provider)
            return
        ch = await self.limiter.set_scale(provider, scale)
        log.info("Scaled %s rate: %g -> %g (scale=%g)", provider, self._configs[provider].refill_rate,
                 self._configs[provider].refill_rate * ch.new, ch.new)

    async def set_global_pressure(self, provider: str, level: Union[str, Level]) -> None:
        """Record the pressure level (ok, soft, hard) beside the provider's
        scale, for operators; it does not change the rate. A provider not
        registered here is ignored, as in the seed."""
        lv = check_level(level)
        if not await self._ensure(provider):
            log.warning("set_global_pressure: provider %r not registered here; ignored", provider)
            return
        await self.limiter.set_pressure(provider, lv)

    def base_rate(self, provider: str) -> float:
        """The registered refill_rate (unscaled)."""
        return self._configs[provider].refill_rate

    async def budget_scale(self, provider: str) -> float:
        """The scale in force, read from Redis (whoever set it)."""
        await self._ensure(provider)
        return (await self.limiter.status(provider)).scale

    async def pressure_level(self, provider: str) -> str:
        """The pressure level recorded in Redis."""
        await self._ensure(provider)
        return (await self.limiter.status(provider)).level

    async def effective_rate(self, provider: str) -> float:
        """refill_rate × scale, from Redis."""
        await self._ensure(provider)
        return (await self.limiter.status(provider)).effective_rate

    async def close(self) -> None:
        await self.limiter.close()


class RateControl(Protocol):
    """What a FeedbackHandler steers: the seed's protocol."""

    async def set_global_pressure(self, provider: str, level: str) -> None: ...

    async def set_budget_scale(self, provider: str, scale: float) -> None: ...


#: The seed's step policy: ok 1.0, soft 0.5, hard 0.0.
STEP_POLICY: Mapping[str, float] = {"ok": 1.0, "soft": 0.5, "hard": 0.0}


class FeedbackHandler:
    """Translates a store's FeedbackEvent into the provider's rate signals,
    as the seed's: the level is recorded (set_global_pressure) and the
    budget scaled by the policy (set_budget_scale), default ok 1.0, soft
    0.5, hard 0.0. Pass another mapping as policy, or subclass and override
    scale_for. An event whose seq is not above the last one seen from its
    coordinator is ignored (events without seq, 0, always apply).

    This is the in-process loop of one pipeline. Across processes the
    sluice controller owns the scale (dwell, soft start, several
    coordinators, expiry) and Python replicas only acquire."""

    def __init__(self, rate: RateControl, provider: str, policy: Optional[Mapping[str, float]] = None) -> None:
        self.rate = rate
        self.provider = provider
        self.policy = dict(STEP_POLICY if policy is None else policy)
        for level in STEP_POLICY:
            if level not in self.policy:
                raise ValueError(f"policy: missing level {level!r}")
        self.events: Counter[str] = Counter()  # handled events by level
        self.ignored = 0  # stale or duplicate events
        self._last_seq: Dict[str, int] = {}

    def scale_for(self, level: str) -> float:
        """The scale for a level; override for a custom policy."""
        return self.policy[level]

    async def handle(self, event: Event) -> None:
        event.validate(require_seq=False)
        if event.seq:
            if event.seq <= self._last_seq.get(event.coordinator_id, 0):
                self.ignored += 1
                return
            self._last_seq[event.coordinator_id] = event.seq
        level = event.level_value
        scale = self.scale_for(level)
        self.events[level] += 1
        log.debug("[feedback] provider=%s level=%s scale=%s q=%d/%d", self.provider, level, scale,
                  event.queue_size, event.capacity)
        await self.rate.set_global_pressure(self.provider, level)
        await self.rate.set_budget_scale(self.provider, scale)


Subscriber = Callable[[Event], Awaitable[None]]


class FeedbackBus:
    """The seed's in-process bus: publish awaits every subscriber in turn."""

    def __init__(self) -> None:
        self._subscribers: List[Subscriber] = []

    def subscribe(self, fn: Subscriber) -> None:
        self._subscribers.append(fn)

    def unsubscribe(self, fn: Subscriber) -> None:
        self._subscribers.remove(fn)

    async def publish(self, event: Event) -> None:
        for fn in list(self._subscribers):
            await fn(event)


_global_bus = FeedbackBus()


def feedback_bus() -> FeedbackBus:
    """The process-wide bus, as the seed's feedback_bus()."""
    return _global_bus
