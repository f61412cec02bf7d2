package limiter

import (
	"fmt"
	"strings"
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

// remember keeps the last decision Redis took, for the outage modes, and
// drops the fallback bucket: the shared one is back in charge.
func (st *providerState) remember(d Decision, now time.Time) {
	st.mu.Lock()
	st.last, st.lastAt, st.haveLast = d, now, true
	st.local = nil
	st.mu.Unlock()
}

// outage decides for st while Redis cannot serve it, by the configured mode.
func (c *Limiter) outage(st *providerState, n int, now time.Time, cause error) (Decision, error) {
	switch c.opts.Outage {
	case FailOpen:
		return Decision{Allowed: true, Reason: ReasonOK, RetryAfter: 0, Scale: 1, Now: now, Local: true}, nil
	case LocalFallback:
		st.mu.Lock()
		defer st.mu.Unlock()
		if st.haveLast {
			return st.fallback(n, now), nil
		}
	}
	why := strings.TrimPrefix(strings.TrimPrefix(cause.Error(), ErrRedisUnavailable.Error()), ": ") // said once
	if why == "" {
		why = "in outage mode until a probe finds redis serving it again"
	}
	return Decision{}, fmt.Errorf("%w: provider %q (%s): %s", ErrRedisUnavailable, st.name, c.opts.Outage, why)
}

// fallback decides from the local bucket; st.mu is held.
func (st *providerState) fallback(n int, now time.Time) Decision {
	last := st.last
	d := Decision{
		Scale: last.Scale, Level: last.Level, Capacity: last.Capacity, RefillRate: last.RefillRate,
		Breaker: last.Breaker, Now: now, Local: true,
	}
	if int64(n) > last.Capacity {
		d.Reason, d.RetryAfter = ReasonExceedsCapacity, -1
		return d
	}
	// A cooldown or open breaker seen last still holds: it is shared.
	if last.Reason == ReasonCooldown || last.Reason == ReasonCircuitOpen {
		if left := st.lastAt.Add(last.RetryAfter).Sub(now); left > 0 {
			d.Reason, d.RetryAfter = last.Reason, left
			return d
		}
	}
	if st.local == nil {
		replicas := max(st.replicas, 1)
		st.local = &localBucket{
			capacity: max(float64(last.Capacity)/float64(replicas), float64(n)),
			rate:     last.RefillRate * last.Scale / float64(replicas),
			ts:       now,
		}
	}
	b := st.local
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

// localBucket is an in-process token bucket with the same arithmetic as the
// shared one. It starts empty, so an outage never adds a burst.
type localBucket struct {
	capacity, rate, tokens float64
	ts                     time.Time
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
