// Package limiter is sluice's shared rate limiter (the seed's
// RateCoordinator; the Python client keeps that name): one token bucket per
// provider, kept in Redis and used by every pipeline replica. A Limiter is
// one process's handle on those buckets. It is not the write coordinator
// (package store's WriteCoordinator, run by the `sluice coordinator`
// command), which measures the store's queue and reports its pressure.
//
// A provider's bucket holds at most Capacity tokens and refills at
// RefillRate × scale tokens per second. The scale factor (1 by default, 0
// pauses, at most MaxScale) lives in Redis beside the bucket, so a change
// made by one process — a feedback handler, the controller, an operator —
// reaches every replica at its next acquisition. Each decision is one Lua
// script (package lua) that reads the config, bucket, scale, breaker and
// cooldown and decides atomically at Redis time; replicas' clocks are never
// used.
//
// Two ways to ask, as in golang.org/x/time/rate:
//
//   - TryAcquire: don't wait; the Decision says allowed, remaining,
//     retry-after, scale and reason.
//   - Acquire: block until granted, honouring the context, and return the
//     granting Decision. Most callers should use Acquire.
//
// One way to change each shared setting: SetBudgetScale (the rate, for
// every replica), SetPressure (the level operators see), SetShadowScale (what
// a feedback handler on trial would set); RecordFailure and RecordSuccess
// drive the shared circuit breaker, TriggerCooldown stops every replica for
// a while, ResetBreaker and ClearCooldown are the operator's overrides. Who
// made a change is Options.Source, recorded in Redis beside it. Status reads
// it all back.
//
// When Redis cannot serve a provider (unreachable, stalled past
// Options.CallTimeout, or on a cluster its slot in motion for longer), that
// provider alone follows Options.Outage until a background probe finds it
// served again; the others keep using Redis. Cluster redirects and
// TRYAGAIN are retried within the call's budget, never returned raw. Every
// call returns within Options.CallTimeout and its context's deadline with
// any go-redis client, and no grant is returned once its context has ended.
//
// Keys are <prefix>:{<provider>}:config|bucket|scale|breaker|cooldown and
// <prefix>:replicas:{<provider>}; the hash tag puts one provider in one
// cluster slot. docs/lua.md is the full contract.
package limiter
