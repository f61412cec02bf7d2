"""What the sync and asyncio clients share: the scripts, the key schema, the
values exchanged with the scripts, argument checks, reply parsing and error
mapping. No I/O here: limiter.py and aio.py do the calls."""

from __future__ import annotations

import json
import math
import os
import random
import re
import socket
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import redis.exceptions

from .errors import (
    CorruptStateError,
    InvalidArgumentError,
    RedisUnavailableError,
    SluiceError,
    UnknownProviderError,
)

#: The scripts, as lua/lua.go's Names: each file is the complete text
#: (lib.lua prelude + script) that the Go code loads, copied by
#: `make python-scripts` and checked byte-identical by the tests.
SCRIPT_NAMES: Tuple[str, ...] = (
    "register", "acquire", "set_scale", "annotate", "breaker",
    "cooldown", "heartbeat", "status", "pressure", "lease", "refund",
    "set_rules", "permit", "set_lanes", "refuse", "forget",
)

DEFAULT_PREFIX = "sluice"
LEVELS: Tuple[str, ...] = ("ok", "soft", "hard")

_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def script_source(name: str) -> str:
    """The complete text of the named script, as shipped in this package."""
    if name not in SCRIPT_NAMES:
        raise InvalidArgumentError("script", repr(name), "one of " + ", ".join(SCRIPT_NAMES))
    return (resources.files("sluice") / "lua" / f"{name}.lua").read_bytes().decode("utf-8")


def check_name(field_name: str, s: object) -> str:
    """A provider name, key prefix, coordinator or stream name: 1 to 64 of
    [A-Za-z0-9_.-], so it can never break the {hash tag} of the keys."""
    if not isinstance(s, str) or not _NAME_RE.match(s):
        raise InvalidArgumentError(field_name, repr(s), "1 to 64 characters of [A-Za-z0-9_.-]")
    return s


@dataclass(frozen=True)
class Keys:
    """The Redis names of one provider (docs/lua.md). Every key carries the
    hash tag {provider}, so one script touches one cluster slot."""

    config: str
    bucket: str
    scale: str
    breaker: str
    cooldown: str
    replicas: str
    notify: str

    @classmethod
    def of(cls, prefix: str, provider: str) -> "Keys":
        tag = f"{prefix}:{{{provider}}}:"
        return cls(tag + "config", tag + "bucket", tag + "scale", tag + "breaker",
                   tag + "cooldown", f"{prefix}:replicas:{{{provider}}}", tag + "notify")

    def acquire(self) -> List[str]:
        return [self.config, self.bucket, self.scale, self.breaker, self.cooldown]

    def tag(self) -> str:
        """"<prefix>:{<provider>}:", with which the rules' keys start."""
        return self.config[: -len("config")]

    @property
    def rules(self) -> str:
        """The hash of the window and concurrency rules' state."""
        return self.tag() + "rules"

    def rule_key(self, rule: str, key: str) -> str:
        """A keyed or spacing rule's state for one request key."""
        return self.tag() + "rule:" + rule + ":" + key

    @property
    def released(self) -> str:
        """The channel on which permit.lua says a permit was released."""
        return self.tag() + "released"


def providers_key(prefix: str) -> str:
    """The set of registered provider names (for listing; the Go client and
    `sluice status` read it)."""
    return prefix + ":providers"


def fmt(x: Union[int, float]) -> str:
    """A number as the scripts read it: decimal, shortest round trip, no
    exponent for whole numbers below 1e15."""
    if isinstance(x, bool):
        raise TypeError("bool is not a number here")
    if isinstance(x, int):
        return str(x)
    f = float(x)
    if f.is_integer() and abs(f) < 1e15:
        return str(int(f))
    return repr(f)


def finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def whole(x: object) -> bool:
    return finite(x) and float(x) == math.floor(float(x))  # type: ignore[arg-type]


def check_n(n: object) -> int:
    if not (isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 1_000_000_000):
        raise InvalidArgumentError("n", n, "an integer in [1, 1000000000]")
    return n


def check_scale(scale: object) -> float:
    # The upper bound is the provider's max_scale, which the script checks.
    if not finite(scale) or float(scale) < 0:  # type: ignore[arg-type]
        raise InvalidArgumentError("scale", scale, "a finite number in [0, max_scale]")
    return float(scale)  # type: ignore[arg-type]


def check_level(level: object) -> str:
    value = getattr(level, "value", level)  # a Level enum member or its string
    if value not in LEVELS:
        raise InvalidArgumentError("level", repr(level), "one of ok, soft, hard")
    return str(value)


@dataclass(frozen=True)
class ProviderConfig:
    """One provider's shared bucket and breaker, as stored in Redis
    (<prefix>:{<provider>}:config). The defaults are the seed's: capacity
    60, 60 tokens/s, cooldown 600 s, breaker after 5 failures for 60 s,
    scale at most 1."""

    capacity: int = 60
    """The most tokens the bucket holds (the burst), in [1, 1e9]; not scaled."""
    refill_rate: float = 60.0
    """Base tokens per second at scale 1, in (0, 1e9]."""
    cooldown_sec: float = 600.0
    """Default length of trigger_cooldown, in [0, 86400]."""
    breaker_threshold: int = 5
    """Consecutive failures that open the breaker, in [0, 1e6]; 0 = no breaker."""
    breaker_timeout_sec: float = 60.0
    """How long an open breaker refuses before one probe, in (0, 86400]."""
    max_scale: float = 1.0
    """The highest scale set_scale accepts, in [1, 100]."""

    def validate(self) -> None:
        """Raise InvalidArgumentError for the first field out of range."""
        c = self
        if not (isinstance(c.capacity, int) and not isinstance(c.capacity, bool) and 1 <= c.capacity <= 1e9):
            raise InvalidArgumentError("capacity", c.capacity, "an integer in [1, 1000000000]")
        if not (finite(c.refill_rate) and 0 < c.refill_rate <= 1e9):
            raise InvalidArgumentError("refill_rate", c.refill_rate, "a number in (0, 1000000000]")
        if not (finite(c.cooldown_sec) and 0 <= c.cooldown_sec <= 86400):
            raise InvalidArgumentError("cooldown_sec", c.cooldown_sec, "a number in [0, 86400]")
        if not (isinstance(c.breaker_threshold, int) and not isinstance(c.breaker_threshold, bool)
                and 0 <= c.breaker_threshold <= 1e6):
            raise InvalidArgumentError("breaker_threshold", c.breaker_threshold, "an integer in [0, 1000000]")
        if not (finite(c.breaker_timeout_sec) and 0 < c.breaker_timeout_sec <= 86400):
            raise InvalidArgumentError("breaker_timeout_sec", c.breaker_timeout_sec, "a number in (0, 86400]")
        if not (finite(c.max_scale) and 1 <= c.max_scale <= 100):
            raise InvalidArgumentError("max_scale", c.max_scale, "a number in [1, 100]")

    def args(self) -> List[str]:
        """register.lua's ARGV."""
        return [fmt(self.capacity), fmt(self.refill_rate), fmt(self.cooldown_sec),
                fmt(self.breaker_threshold), fmt(self.breaker_timeout_sec), fmt(self.max_scale)]

    @classmethod
    def from_hash(cls, h: Dict[str, str]) -> "ProviderConfig":
        return cls(capacity=int(_float(h.get("capacity"))), refill_rate=_float(h.get("refill_rate")),
                   cooldown_sec=_float(h.get("cooldown_sec")),
                   breaker_threshold=int(_float(h.get("breaker_threshold"))),
                   breaker_timeout_sec=_float(h.get("breaker_timeout_sec")),
                   max_scale=_float(h.get("max_scale"), 1.0))


@dataclass(frozen=True)
class Decision:
    """The answer to one try_acquire or acquire (acquire.lua's reply)."""

    allowed: bool
    """True when the tokens were taken."""
    reason: str
    """ok or probe when allowed; else rate_limited, paused, cooldown,
    circuit_open or exceeds_capacity. probe: the half-open breaker's single
    probe: report its outcome with record_success or record_failure."""
    remaining: float
    """Tokens left in the bucket after the decision."""
    retry_after: float
    """Seconds: 0 when allowed; -1 when no wait will do (paused, n >
    capacity); otherwise the wait until the request could be granted if
    nothing else changes."""
    scale: float
    """The scale factor in force."""
    level: str
    """The pressure level recorded beside the scale (ok, soft, hard)."""
    capacity: int
    refill_rate: float
    """The base rate (not scaled)."""
    breaker: str
    """closed, open or half_open, after the decision."""
    now_us: int
    """Redis time of the decision, microseconds since the epoch."""
    rule: str = ""
    """The pacing rule whose wait a refusal reports (reason rule_limited):
    of the rules that refused, the one that lets the request pass last."""
    permit_expiry_us: int = 0
    """A grant under a concurrency rule: the permit's lease end (Redis µs)."""
    permit: Any = None
    """A grant under a concurrency rule: the Permit to release."""


def parse_decision(reply: Any) -> Decision:
    r = _array(reply, 10)
    retry = _int(r[2])
    rule, expiry = "", 0
    if len(r) >= 12:  # the rules form (docs/lua.md)
        rule, expiry = _str(r[10]), _int(r[11])
    return Decision(
        allowed=_int(r[0]) >= 1, reason=_str(r[4]), remaining=_float(r[1]),
        retry_after=-1.0 if retry < 0 else retry / 1e6, scale=_float(r[3]), level=_str(r[5]),
        capacity=int(_float(r[6])), refill_rate=_float(r[7]), breaker=_str(r[8]), now_us=_int(r[9]),
        rule=rule, permit_expiry_us=expiry,
    )


class RulesChanged(SluiceError):
    """acquire.lua's RULES_CHANGED: the provider's rule set in force (rev ""
    and no rules when it has none). Internal: the limiter learns the set
    from it and asks again."""

    def __init__(self, rev: str, rules: List[Dict[str, Any]]) -> None:
        super().__init__(f"sluice: the provider's pacing rules changed to rev {rev!r} (docs/rules.md)")
        self.rev = rev
        self.rules = rules


def parse_rules_changed(msg: str) -> Optional[RulesChanged]:
    """RULES_CHANGED <rev> <rules JSON> (rev "-": none), or None."""
    if not msg.startswith("RULES_CHANGED "):
        return None
    rev, _, text = msg[len("RULES_CHANGED "):].partition(" ")
    try:
        rules = json.loads(text)
    except ValueError:
        return None
    if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
        return None
    return RulesChanged("" if rev == "-" else rev, rules)


def check_request_key(rule: str, key: str) -> None:
    """A request's key for rule: 1 to 256 bytes without braces, spaces or
    control characters. acquire.lua checks only that there is one and its
    length (the characters are the client's to check: docs/lua.md); an
    empty key is left to it (key.<rule>=(none))."""
    b = key.encode()
    if b and (len(b) > 256 or any(c <= 0x20 or c == 0x7F or c in (0x7B, 0x7D) for c in b)):
        raise InvalidArgumentError("key." + rule, key, "1 to 256 bytes without braces, spaces or control characters")


def rule_keys(keys: "Keys", rules: List[Dict[str, Any]], key: str, per_rule: Optional[Dict[str, str]]) -> List[str]:
    """acquire.lua's KEYS of the rules form: the bucket's five, the rules'
    state hash, then one per keyed or spacing rule with the request's key
    for that rule."""
    out = keys.acquire() + [keys.rules]
    for r in rules:
        name, kind = str(r.get("name")), r.get("kind")
        if kind in ("keyed", "spacing"):
            k = (per_rule or {}).get(name, key)
            check_request_key(name, k)
            out.append(keys.rule_key(name, k))
    return out


def new_request_id() -> str:
    """16 random hex digits: a request's id in the rules form."""
    return os.urandom(8).hex()


def rules_request(st: "ProviderState", n: int, key: str,
                  keys: Optional[Dict[str, str]], lane: str = "") -> Tuple[List[str], List[str], str, List[str]]:
    """One rules-form call for st's known set (in lane): its KEYS, its
    ARGV, the request's id and the concurrency rules a grant holds places
    under."""
    rid = new_request_id()
    held = [str(r["name"]) for r in st.rules if r.get("kind") == "concurrency"]
    return rule_keys(st.keys, st.rules, key, keys), [str(n), "rules", st.rules_rev or "", rid, lane], rid, held


def lease_ms(lease: float) -> int:
    """A permit's lease in seconds as whole milliseconds, checked."""
    ms = round(lease * 1000) if finite(lease) else 0
    if not (1 <= ms <= 86400000 and abs(ms - lease * 1000) < 1e-6):
        raise InvalidArgumentError("lease", lease, "whole milliseconds in [0.001, 86400] seconds")
    return ms


RULES_CHANGED_TWICE = "its rules changed three times during one acquisition"


@dataclass(frozen=True)
class ScaleChange:
    """What set_scale did."""

    old: float
    new: float
    changed: bool
    """False when new was already in force (nothing written, nothing published)."""
    seq: int
    """The scale hash's seq after the call (+1 per change)."""
    tokens: float
    """The bucket at the change, settled at the old scale."""
    now_us: int
    """Redis time of the call."""


def parse_scale_change(reply: Any) -> ScaleChange:
    r = _array(reply, 6)
    return ScaleChange(old=_float(r[0]), new=_float(r[1]), changed=_int(r[2]) == 1, seq=_int(r[3]),
                       tokens=_float(r[4]), now_us=_int(r[5]))


@dataclass(frozen=True)
class BreakerStatus:
    """A provider's shared circuit breaker."""

    state: str
    """closed, open or half_open."""
    failures: int
    """Consecutive failures counted."""
    retry_after: float
    """While open: seconds until a probe may go; else 0."""


def parse_breaker(reply: Any) -> BreakerStatus:
    r = _array(reply, 3)
    return BreakerStatus(state=_str(r[0]), failures=_int(r[1]), retry_after=_int(r[2]) / 1e6)


@dataclass(frozen=True)
class Cooldown:
    """An active shared cooldown."""

    scope: str
    reason: str
    until_ms: int
    """When it ends, Unix milliseconds (Redis time)."""


@dataclass(frozen=True)
class Status:
    """One consistent snapshot of a provider's shared state (status.lua)."""

    provider: str
    config: ProviderConfig
    now_us: int
    """Redis time of the snapshot."""
    tokens: float
    """The bucket settled at now."""
    scale: float
    source: str
    """Who set the scale."""
    seq: int
    updated_at_us: int
    """Redis time of the last scale change (0: never changed)."""
    effective_rate: float
    """config.refill_rate × scale."""
    level: str
    shadow_scale: float
    shadow_source: str
    breaker: BreakerStatus
    cooldown: Optional[Cooldown]
    replicas: List[str] = field(default_factory=list)
    """Ids of the live replicas, sorted."""


def parse_status(provider: str, reply: Any) -> Status:
    r = _array(reply, 8)
    now_us = _int(r[0])
    cfg = ProviderConfig.from_hash(_hash(r[1]))
    sh = _hash(r[2])
    scale = _float(sh["scale"]) if "scale" in sh else 1.0
    b = _hash(r[3])
    state = b.get("state") or "closed"
    retry = 0.0
    if state == "open":
        reopen_us = _float(b.get("opened_at")) + cfg.breaker_timeout_sec * 1e6
        retry = max(reopen_us - now_us, 0.0) / 1e6
    cooldown = None
    raw = _str(r[4])
    if raw:
        try:
            c = json.loads(raw)
            until = int(c.get("until_ms", 0))
            if until * 1000 > now_us:
                cooldown = Cooldown(scope=str(c.get("scope", "")), reason=str(c.get("reason", "")), until_ms=until)
        except (ValueError, TypeError, AttributeError):
            pass
    live = r[5] or []
    replicas = sorted(_str(live[i]) for i in range(0, len(live) - 1, 2))
    return Status(
        provider=provider, config=cfg, now_us=now_us, tokens=_float(r[6]), scale=scale,
        source=sh.get("source", ""), seq=int(_float(sh.get("seq"))), updated_at_us=int(_float(sh.get("updated_at"))),
        effective_rate=cfg.refill_rate * scale, level=sh.get("level", "ok"),
        shadow_scale=_float(sh.get("shadow_scale")), shadow_source=sh.get("shadow_source", ""),
        breaker=BreakerStatus(state=state, failures=int(_float(b.get("failures"))), retry_after=retry),
        cooldown=cooldown, replicas=replicas,
    )


def default_replica_id() -> str:
    """<hostname>-<pid>-<random>, as the Go client's default."""
    host = socket.gethostname() or "replica"
    return f"{host}-{os.getpid()}-{random.getrandbits(24):06x}"


def check_replica_id(rid: str) -> str:
    if not isinstance(rid, str) or not rid or len(rid) > 128 or any(c.isspace() for c in rid):
        raise InvalidArgumentError("replica_id", repr(rid), "1 to 128 characters without spaces")
    return rid


def check_source(source: str) -> str:
    if not isinstance(source, str) or len(source) > 128 or any(ord(c) < 32 or ord(c) == 127 for c in source):
        raise InvalidArgumentError("source", repr(source), "at most 128 characters without control characters")
    return source


def check_positive(field_name: str, v: object) -> float:
    if not finite(v) or float(v) <= 0:  # type: ignore[arg-type]
        raise InvalidArgumentError(field_name, v, "a number of seconds above 0")
    return float(v)  # type: ignore[arg-type]


def check_call_timeout(v: object) -> float:
    """call_timeout: seconds in (0, 3600]."""
    if not finite(v) or not 0 < float(v) <= 3600:  # type: ignore[arg-type]
        raise InvalidArgumentError("call_timeout", v, "a number of seconds in (0, 3600]")
    return float(v)  # type: ignore[arg-type]


# Errors that mean Redis could not serve the call, as opposed to an answer.
_OUTAGE_PREFIXES = ("LOADING", "CLUSTERDOWN", "MASTERDOWN", "TRYAGAIN", "MOVED ", "ASK ", "READONLY", "BUSY")


def is_unknown_provider(err: BaseException) -> bool:
    return isinstance(err, redis.exceptions.ResponseError) and str(err).startswith("UNKNOWN_PROVIDER")


def map_error(provider: str, err: BaseException) -> SluiceError:
    """Turn a redis-py exception into this package's: the scripts' error
    codes (docs/lua.md) and connection failures."""
    if isinstance(err, SluiceError):
        return err
    msg = str(err)
    if isinstance(err, redis.exceptions.ResponseError) and not isinstance(err, redis.exceptions.ReadOnlyError):
        if msg.startswith("UNKNOWN_PROVIDER"):
            return UnknownProviderError(provider)
        if msg.startswith("INVALID_ARGUMENT "):
            f, _, rest = msg[len("INVALID_ARGUMENT "):].partition("=")
            value, _, rng = rest.partition(" must be ")
            return InvalidArgumentError(f, value, rng)
        if msg.startswith("CORRUPT "):
            return CorruptStateError("sluice: corrupt state in redis: " + msg[len("CORRUPT "):])
        if msg.startswith("RULES_CHANGED "):
            ch = parse_rules_changed(msg)
            if ch is None:
                return CorruptStateError(f"sluice: provider {provider!r}: its stored rules are not a rule set "
                                         "as set_rules writes it: " + msg[len("RULES_CHANGED "):])
            return ch
        if not msg.startswith(_OUTAGE_PREFIXES):
            return SluiceError(f"sluice: {msg}")
    if isinstance(err, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                        redis.exceptions.ResponseError, OSError)):
        return RedisUnavailableError(f"sluice: redis unavailable: {msg}")
    return SluiceError(f"sluice: {msg}")


# Reply readers: a client may or may not decode responses (bytes or str).

def _str(x: Any) -> str:
    if isinstance(x, bytes):
        return x.decode("utf-8", "replace")
    if x is None:
        return ""
    return str(x)


def _int(x: Any) -> int:
    if isinstance(x, int):
        return x
    try:
        return int(_str(x))
    except ValueError:
        return int(_float(x))


# A number as the scripts write it: decimal, an optional sign, fraction and
# exponent (docs/lua.md, "Errors"). Go's parseFloat reads the same way.
_DECIMAL_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _float(x: Any, default: float = 0.0) -> float:
    """A number Redis returned (a script's reply, a stored field): a finite
    decimal, else default. acquire guards the stored numbers it decides on
    with Lua's tonumber, so a hand-written "0x32" or " 50" in the config is
    decided on and echoed as written; read here, as in Go, as default."""
    if x is None:
        return default
    s = _str(x)
    if not _DECIMAL_RE.fullmatch(s):
        return default
    f = float(s)
    return f if math.isfinite(f) else default


def _array(reply: Any, n: int) -> Sequence[Any]:
    if not isinstance(reply, (list, tuple)) or len(reply) < n:
        raise SluiceError(f"sluice: unexpected script reply {reply!r} (want an array of {n})")
    return reply


def _hash(flat: Any) -> Dict[str, str]:
    flat = flat or []
    return {_str(flat[i]): _str(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


def as_str(x: Any) -> str:
    """A reply value as text (bytes decoded)."""
    return _str(x)


def as_int(x: Any) -> int:
    return _int(x)


@dataclass
class ProviderState:
    """What one client knows locally about a provider."""

    keys: Keys
    registered: Optional[ProviderConfig] = None  # set by register: registered again if Redis loses it
    last_scale: Optional[float] = None  # the scale of the last decision from Redis
    active: bool = False  # acquired from: heartbeats for it
    replicas: int = 1  # live replicas at the last heartbeat
    turn: Any = None  # held by the one rate-limited waiter of this client that polls Redis
    rules_rev: Optional[str] = None  # the pacing rules' revision Redis last told ("" none; None not told)
    rules: List[Dict[str, Any]] = field(default_factory=list)  # and the rules
    rules_given: Optional[List[Dict[str, Any]]] = None  # set by set_rules: set again if Redis loses the provider
    lanes_given: Optional[List[Dict[str, Any]]] = None  # set by set_lanes: likewise


def reregister_calls(st: ProviderState, cfg: ProviderConfig) -> Tuple[List[Tuple[str, List[str], List[str]]], str, str]:
    """The scripts that register st's provider again with cfg after Redis
    lost it, to run in one MULTI: register, then set_rules and set_lanes
    when there are any, as the Go client's reregister: the rules this
    client last learnt from Redis, else the ones it last gave set_rules;
    the lanes it last gave set_lanes. Also the rules' and lanes' JSON ("":
    none)."""
    k = st.keys
    rules = st.rules if st.rules_rev is not None else st.rules_given
    rtext = json.dumps(rules) if rules else ""
    ltext = json.dumps(st.lanes_given) if st.lanes_given else ""
    calls = [("register", [k.config, k.bucket, k.scale], cfg.args())]
    if rtext:
        calls.append(("set_rules", [k.config, k.rules], [rtext]))
    if ltext:
        calls.append(("set_lanes", [k.config, k.bucket], [ltext]))
    return calls, rtext, ltext


class Base:
    """Options and local state shared by Limiter and AsyncLimiter."""

    def __init__(self, *, prefix: str = DEFAULT_PREFIX, replica_id: Optional[str] = None,
                 source: str = "python", paused_recheck: float = 5.0, wake_jitter: float = 0.005,
                 heartbeat: float = 2.0, call_timeout: float = 0.5) -> None:
        self.call_timeout = check_call_timeout(call_timeout)
        self.prefix = check_name("prefix", prefix)
        self.replica_id = check_replica_id(default_replica_id() if replica_id is None else replica_id)
        self.source = check_source(source)
        self.paused_recheck = check_positive("paused_recheck", paused_recheck)
        self.wake_jitter = check_positive("wake_jitter", wake_jitter)
        self.heartbeat = check_positive("heartbeat", heartbeat)
        self._providers: Dict[str, ProviderState] = {}
        self._closed = False

    def _state(self, provider: str) -> ProviderState:
        from .errors import ClosedError

        if self._closed:
            raise ClosedError("sluice: limiter closed")
        st = self._providers.get(provider)
        if st is None:
            check_name("provider", provider)
            st = ProviderState(keys=Keys.of(self.prefix, provider))
            self._providers[provider] = st
        return st

    def _jitter(self) -> float:
        return random.uniform(0, self.wake_jitter)

    def _heartbeat_args(self, op: str) -> List[str]:
        return [op, self.replica_id, str(int(self.heartbeat * 3 * 1000))]

    def replicas(self, provider: str) -> int:
        """Live replicas of provider at this client's last heartbeat (>= 1)."""
        st = self._providers.get(provider)
        return st.replicas if st else 1


def cooldown_args(keys: Keys, op: str, scope: str, reason: str, duration: Optional[float]) -> List[str]:
    """cooldown.lua's ARGV. duration in seconds, [0, 86400]; None or 0: the
    provider's cooldown_sec (as the Go client's TriggerCooldown)."""
    dur = ""
    if duration is not None:
        if not finite(duration) or not 0 <= duration <= 86400:
            raise InvalidArgumentError("duration", duration, "a number of seconds in [0, 86400]")
        if duration > 0:
            dur = str(max(1, round(duration * 1000)))
    return [op, scope, reason, dur, keys.notify]
