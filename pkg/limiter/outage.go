package limiter

import (
	"fmt"
	"strings"
	"sync"
	"time"
)

// OutageMode is what TryAcquire and Acquire do for a provider while Redis
// cannot serve it (unreachable, stalled, or, on a cluster, its slot not
// settled within CallTimeout). Health is per provider: the mode applies to
// the providers whose calls failed, the others keep using Redis.
type OutageMode int

const (
	// FailClosed refuses: calls return an error wrapping ErrRedisUnavailable.
	FailClosed OutageMode = iota
	// FailOpen grants every request (Decision.Local is set).
	FailOpen
	// LocalFallback decides from an in-process bucket (Decision.Local is
	// set) refilled at base rate × last known scale ÷ live replicas, with
	// capacity ÷ live replicas, starting empty; a cooldown or open breaker
	// seen last is honoured. Without any earlier answer from Redis about
	// the provider it behaves as FailClosed.
	LocalFallback
)

var outageNames = []string{"fail_closed", "fail_open", "local_fallback"}

// String returns the mode's name in configuration: fail_closed, fail_open
// or local_fallback.
func (m OutageMode) String() string {
	if m >= 0 && int(m) < len(outageNames) {
		return outageNames[m]
	}
	return fmt.Sprintf("OutageMode(%d)", int(m))
}

// UnmarshalText sets m from its name (fail_closed, fail_open or
// local_fallback); anything else is a *ArgumentError and leaves m alone.
func (m *OutageMode) UnmarshalText(text []byte) error {
	for i, n := range outageNames {
		if string(text) == n {
			*m = OutageMode(i)
			return nil
		}
	}
	return &ArgumentError{"outage_mode", string(text), "one of " + strings.Join(outageNames, ", ")}
}

// outage decides for st while Redis cannot serve it, by the configured mode.
func (c *Limiter) outage(st *providerState, n int, now time.Time, cause error) (Decision, error) {
	switch c.opts.Outage {
	case FailOpen:
		return Decision{Allowed: true, Reason: ReasonOK, RetryAfter: 0, Scale: 1, Now: now, Local: true}, nil
	case LocalFallback:
		if d, ok := st.seen.fallback(n, now, st.member.live()); ok {
			return d, nil
		}
	}
	why := strings.TrimPrefix(strings.TrimPrefix(cause.Error(), ErrRedisUnavailable.Error()), ": ") // said once
	if why == "" {
		why = "in outage mode until a probe finds redis serving it again"
	}
	return Decision{}, fmt.Errorf("%w: provider %q (%s): %s", ErrRedisUnavailable, st.name, c.opts.Outage, why)
}

// lastKnown is what this replica last learned from Redis about a provider:
// the last decision Redis took, which the outage modes and the token lease
// go by, and, during an outage, the local bucket LocalFallback decides
// from. Safe for concurrent use.
type lastKnown struct {
	mu    sync.Mutex
	d     Decision     // the last decision from Redis
	at    time.Time    // local time of d
	ok    bool         // d is set
	local *localBucket // the fallback bucket during an outage; nil while Redis serves
}

// remember keeps d, the decision Redis took at local time now, and drops
// the fallback bucket: the shared one is back in charge.
func (k *lastKnown) remember(d Decision, now time.Time) {
	k.mu.Lock()
	k.d, k.at, k.ok = d, now, true
	k.local = nil
	k.mu.Unlock()
}

// get returns the last decision from Redis, and whether there was one.
func (k *lastKnown) get() (Decision, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.d, k.ok
}

// scale returns the scale of the last decision from Redis; 1 when there
// was none.
func (k *lastKnown) scale() float64 {
	if d, ok := k.get(); ok {
		return d.Scale
	}
	return 1
}

// fallback decides n tokens at now from the local bucket, which holds this
// replica's share (one of replicas) of the provider's capacity and rate at
// the last scale seen; false when Redis never answered about the provider.
func (k *lastKnown) fallback(n int, now time.Time, replicas int) (Decision, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.ok {
		return Decision{}, false
	}
	last := k.d
	d := Decision{
		Scale: last.Scale, Level: last.Level, Capacity: last.Capacity, RefillRate: last.RefillRate,
		Breaker: last.Breaker, Now: now, Local: true,
	}
	if int64(n) > last.Capacity {
		d.Reason, d.RetryAfter = ReasonExceedsCapacity, -1
		return d, true
	}
	if left := k.held(now); left > 0 {
		d.Reason, d.RetryAfter = last.Reason, left
		return d, true
	}
	if k.local == nil {
		k.local = newLocalBucket(last, replicas, n, now)
	}
	return k.local.decide(d, n, now), true
}

// held returns how long the cooldown or open breaker of the last decision
// still holds at now: it is shared, so an outage does not lift it. Zero or
// less: none holds.
func (k *lastKnown) held(now time.Time) time.Duration {
	if k.d.Reason != ReasonCooldown && k.d.Reason != ReasonCircuitOpen {
		return 0
	}
	return k.at.Add(k.d.RetryAfter).Sub(now)
}

// localBucket is an in-process token bucket with the same arithmetic as the
// shared one. It starts empty, so an outage never adds a burst.
type localBucket struct {
	capacity, rate, tokens float64
	ts                     time.Time
}

// newLocalBucket returns an empty bucket for one of replicas (at least 1),
// from the config and scale of last; it holds at least n tokens, so that
// the request that opens it can be granted in time.
func newLocalBucket(last Decision, replicas, n int, now time.Time) *localBucket {
	replicas = max(replicas, 1)
	return &localBucket{
		capacity: max(float64(last.Capacity)/float64(replicas), float64(n)),
		rate:     last.RefillRate * last.Scale / float64(replicas),
		ts:       now,
	}
}

// decide takes n tokens at now if the bucket holds them, and completes d
// (the config and state as last seen) with the answer.
func (b *localBucket) decide(d Decision, n int, now time.Time) Decision {
	b.settle(now)
	d.Remaining = b.tokens
	switch {
	case b.rate <= 0:
		d.Reason, d.RetryAfter = ReasonPaused, -1
	case b.tokens < float64(n):
		d.Reason = ReasonRateLimited
		d.RetryAfter = time.Duration((float64(n) - b.tokens) / b.rate * float64(time.Second))
	default:
		b.tokens -= float64(n)
		d.Allowed, d.Reason, d.Remaining = true, ReasonOK, b.tokens
	}
	return d
}

// settle refills up to now. Its time never goes back: a decision with an
// older now (taken by a goroutine that waited on the lock) refills nothing
// and leaves ts, so no interval is refilled twice.
func (b *localBucket) settle(now time.Time) {
	if elapsed := now.Sub(b.ts); elapsed > 0 {
		b.tokens = min(b.capacity, b.tokens+elapsed.Seconds()*b.rate)
		b.ts = now
	}
}
