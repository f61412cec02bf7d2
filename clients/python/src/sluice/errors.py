"""Exceptions of the sluice client. They mirror the Go sentinels of
pkg/limiter (errors.go): ``GO_SENTINELS`` maps each Go name to its class.

Every exception is a :class:`SluiceError`. A refusal that no wait within the
caller's timeout can turn into a grant is a :class:`RefusedError` carrying the
refusing :class:`~sluice.Decision`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Type

if TYPE_CHECKING:  # pragma: no cover
    from ._core import Decision


class SluiceError(Exception):
    """Base class of every error raised by this package."""


class UnknownProviderError(SluiceError):
    """The provider has no config in Redis (never registered, or Redis lost
    its data and this client did not register it itself)."""

    def __init__(self, provider: str) -> None:
        super().__init__(f"sluice: unknown provider {provider!r}")
        self.provider = provider


class InvalidArgumentError(SluiceError, ValueError):
    """A config field, scale, level, n or name is out of range. ``field``
    names it, ``value`` is what was refused, ``range`` what it must be."""

    def __init__(self, field: str, value: object, range: str) -> None:
        super().__init__(f"sluice: {field}={value} must be {range}")
        self.field = field
        self.value = value
        self.range = range


class CorruptStateError(SluiceError):
    """A value stored in Redis (a provider's config or scale) is not a finite
    number in the range its writer allows (docs/lua.md, "Errors"). The
    scripts refuse to decide on it, so the budget never widens; register()
    or set_scale() writes it again."""


class RedisUnavailableError(SluiceError):
    """Redis could not serve the call: connection refused or lost, no answer
    within the client's call_timeout (a stalled Redis), loading, or on a
    cluster a slot still in motion (migration, failover) when call_timeout
    ended. The client fails closed: it never grants without Redis."""


class DeadlineExceededError(SluiceError, TimeoutError):
    """The caller's timeout ended while a Redis call was in flight (the Go
    client returns context.DeadlineExceeded then). Nothing is granted to
    that call: tokens the script may still take when a late Redis runs it
    are never handed out (under-admission, never over)."""


class ClosedError(SluiceError):
    """The limiter was closed."""


class RefusedError(SluiceError):
    """A refusal: the tokens will not be granted within the caller's timeout.
    ``decision`` is the refusing decision (its ``retry_after`` says how long
    the wait would have been); ``timed_out`` is True when the timeout ended
    while waiting, False when the wait was known to outlast it (or no wait
    will do)."""

    def __init__(self, message: str, decision: "Decision", timed_out: bool = False) -> None:
        super().__init__(message)
        self.decision = decision
        self.timed_out = timed_out


class ExceedsCapacityError(RefusedError):
    """n is larger than the provider's capacity: no wait can grant it."""


class RateLimitedError(RefusedError):
    """The tokens will not be there before the timeout."""


class PausedError(RefusedError):
    """The provider's scale is 0 and the timeout ended before it rose."""


class CoolingDownError(RefusedError):
    """A shared cooldown lasts beyond the timeout."""


class CircuitOpenError(RefusedError):
    """The shared breaker is open (or its probe is in flight) beyond the timeout."""


class RuleLimitedError(RefusedError):
    """A pacing rule (docs/rules.md; the decision's rule) will not let the
    request pass before the timeout, or never will (its cost is above the
    rule's limit)."""


class PermitLostError(SluiceError):
    """A concurrency rule's permit lease ended before it was renewed."""


#: The Go sentinel of pkg/limiter each class mirrors (a test checks that
#: every sentinel of errors.go is here).
GO_SENTINELS: Dict[str, Type[SluiceError]] = {
    "ErrUnknownProvider": UnknownProviderError,
    "ErrInvalidArgument": InvalidArgumentError,
    "ErrExceedsCapacity": ExceedsCapacityError,
    "ErrRateLimited": RateLimitedError,
    "ErrPaused": PausedError,
    "ErrCoolingDown": CoolingDownError,
    "ErrCircuitOpen": CircuitOpenError,
    "ErrRuleLimited": RuleLimitedError,
    "ErrPermitLost": PermitLostError,
    "ErrRedisUnavailable": RedisUnavailableError,
    "ErrCorruptState": CorruptStateError,
    "ErrClosed": ClosedError,
}

#: The refusal class of each reason acquire.lua returns.
REFUSALS: Dict[str, Type[RefusedError]] = {
    "exceeds_capacity": ExceedsCapacityError,
    "rate_limited": RateLimitedError,
    "paused": PausedError,
    "cooldown": CoolingDownError,
    "circuit_open": CircuitOpenError,
    "rule_limited": RuleLimitedError,
}


def refused(provider: str, n: int, decision: "Decision", timed_out: bool = False) -> RefusedError:
    """The error for a refusal of n tokens of provider, by its reason."""
    cls: Type[RefusedError] = REFUSALS.get(decision.reason, RefusedError)
    if cls is ExceedsCapacityError:
        msg = f"sluice: n exceeds capacity: provider {provider!r}, n={n} > capacity {decision.capacity}"
    else:
        msg = f"sluice: {decision.reason}: provider {provider!r}, n={n}"
        if decision.retry_after >= 0:
            msg += f", retry after {decision.retry_after:.3f}s"
        if timed_out:
            msg += " (timeout)"
    return cls(msg, decision, timed_out)

