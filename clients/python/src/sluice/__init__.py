"""sluice: one global rate budget per provider, shared through Redis by
pipeline replicas in Go and Python, that follows the store's backpressure.

This package runs the same Lua scripts on the same keys as the Go client
(github.com/sluice-dev/sluice/pkg/limiter): a Python replica shares the
buckets, the scale, the breaker and the cooldown with Go replicas.
"""

from ._core import (
    SCRIPT_NAMES,
    BreakerStatus,
    Cooldown,
    Decision,
    ProviderConfig,
    ScaleChange,
    Status,
    script_source,
)
from .errors import (
    CircuitOpenError,
    ClosedError,
    CoolingDownError,
    CorruptStateError,
    DeadlineExceededError,
    ExceedsCapacityError,
    InvalidArgumentError,
    PausedError,
    PermitLostError,
    RateLimitedError,
    RedisUnavailableError,
    RefusedError,
    RuleLimitedError,
    SluiceError,
    UnknownProviderError,
)
from .limiter import Limiter, Permit

__all__ = [
    "SCRIPT_NAMES", "BreakerStatus", "Cooldown", "Decision", "ProviderConfig", "ScaleChange", "Status",
    "script_source", "CircuitOpenError", "ClosedError", "CoolingDownError", "CorruptStateError",
    "DeadlineExceededError", "ExceedsCapacityError", "InvalidArgumentError", "PausedError", "RateLimitedError",
    "RedisUnavailableError", "RefusedError", "SluiceError", "UnknownProviderError", "Limiter",
    "PermitLostError", "RuleLimitedError", "Permit",
]
__version__ = "0.1.0"
