// Package limiter is sluice's shared rate coordinator: one token bucket per
// provider, kept in Redis and used by every pipeline replica.
//
// A provider's bucket holds at most Capacity tokens and refills at
// RefillRate × scale tokens per second. The scale factor (1 by default, 0
// pauses, at most MaxScale) lives in Redis beside the bucket, so a change
// made by one process — the feedback handler, an operator — reaches every
// replica at its next acquisition. Each decision is one Lua script (package
// lua) that reads the config, bucket, scale, breaker and cooldown and decides
// atomically at Redis time; replicas' clocks are never used.
//
// Three ways to ask, as in golang.org/x/time/rate:
//
//   - TryAcquire: don't wait; the Decision says allowed, remaining,
//     retry-after, scale and reason.
//   - Acquire: block until granted, honouring the context. Most callers
//     should use Acquire.
//   - Wait: Acquire returning the granting Decision (needed to notice the
//     breaker's half-open probe).
//
// The same Redis holds a circuit breaker and a cooldown per provider, shared
// by all replicas (RecordFailure, RecordSuccess, TriggerCooldown), and a
// registry of live replicas (heartbeats), used by the LocalFallback outage
// mode to split the rate.
//
// Keys are <prefix>:{<provider>}:config|bucket|scale|breaker|cooldown and
// <prefix>:replicas:{<provider>}; the hash tag puts one provider in one
// cluster slot. docs/lua.md is the full contract.
package limiter
