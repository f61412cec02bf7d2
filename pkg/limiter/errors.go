package limiter

import (
	"cmp"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Sentinel errors, for errors.Is. Errors returned by this package wrap them
// with the provider and the numbers involved.
var (
	// ErrUnknownProvider: the provider has no config in Redis (never
	// registered, or Redis lost its data and this process cannot re-register it).
	ErrUnknownProvider = errors.New("limiter: unknown provider")
	// ErrInvalidArgument: a config field, scale, level, n or name is out of range.
	// The error is a *ArgumentError naming the field and the allowed range.
	ErrInvalidArgument = errors.New("limiter: invalid argument")
	// ErrExceedsCapacity: n is larger than the provider's capacity, so no wait can grant it.
	ErrExceedsCapacity = errors.New("limiter: n exceeds capacity")
	// ErrRateLimited: the tokens will not be there before the context's deadline.
	ErrRateLimited = errors.New("limiter: rate limited")
	// ErrRuleLimited: a pacing rule (Decision.Rule) will not let the
	// request pass before the context's deadline, or never will (its cost
	// is above the rule's limit).
	ErrRuleLimited = errors.New("limiter: rule limited")
	// ErrPermitLost: a permit's lease ended before Renew: its places may
	// be another caller's now, so the request must stop.
	ErrPermitLost = errors.New("limiter: permit lost")
	// ErrPaused: the provider's scale is 0 and the context ended before it rose.
	ErrPaused = errors.New("limiter: provider paused")
	// ErrCoolingDown: a shared cooldown lasts beyond the context's deadline.
	ErrCoolingDown = errors.New("limiter: cooling down")
	// ErrCircuitOpen: the shared breaker is open (or its probe is in flight)
	// beyond the context's deadline.
	ErrCircuitOpen = errors.New("limiter: circuit open")
	// ErrRedisUnavailable: Redis could not be reached and the outage mode is
	// FailClosed (or LocalFallback without anything known about the provider).
	ErrRedisUnavailable = errors.New("limiter: redis unavailable")
	// ErrCorruptState: a value stored in Redis (the provider's config,
	// scale) is not a finite number in the range its writer allows
	// (docs/lua.md, "Errors"). The scripts refuse to decide on
	// it (a corrupt bucket is repaired empty instead): the budget never
	// widens. The error names the key and field; Register or SetBudgetScale
	// writes them again.
	ErrCorruptState = errors.New("limiter: corrupt state in redis")
	// ErrClosed: the Limiter was closed.
	ErrClosed = errors.New("limiter: limiter closed")
)

// ArgumentError reports a bad argument: which field, the value given and the
// allowed range. It matches ErrInvalidArgument with errors.Is.
type ArgumentError struct {
	Field string // e.g. "capacity", "scale", "n", "provider"
	Value any    // the value that was refused
	Range string // e.g. "an integer in [1, 1000000000]"
}

func (e *ArgumentError) Error() string {
	return fmt.Sprintf("limiter: %s=%v must be %s", e.Field, e.Value, e.Range)
}

// Unwrap makes errors.Is(err, ErrInvalidArgument) true.
func (e *ArgumentError) Unwrap() error { return ErrInvalidArgument }

// check returns an *ArgumentError naming field, value and the allowed
// range rng, unless ok: a table of range checks is a run of check calls
// under opts.Check, which returns the first error.
func check(ok bool, field string, value any, rng string) error {
	if ok {
		return nil
	}
	return &ArgumentError{field, value, rng}
}

// within reports whether v is in [lo, hi]; NaN is in no range.
func within[T cmp.Ordered](v, lo, hi T) bool { return lo <= v && v <= hi }

// withinAbove reports whether v is in (lo, hi]; NaN is in no range.
func withinAbove[T cmp.Ordered](v, lo, hi T) bool { return lo < v && v <= hi }

// denied is Acquire's error for a refusal no wait within ctx can turn into a
// grant: it matches the sentinel of d's reason.
func denied(provider string, n int, d Decision) error {
	if d.Reason == ReasonExceedsCapacity {
		return fmt.Errorf("%w: provider %q, n=%d > capacity %d", ErrExceedsCapacity, provider, n, d.Capacity)
	}
	return fmt.Errorf("%w: provider %q, n=%d, retry after %v", d.Reason.err(), provider, n, d.RetryAfter.Round(time.Millisecond))
}

// mapErr turns script error replies into this package's errors and
// connection failures into ErrRedisUnavailable.
func (c *Limiter) mapErr(provider string, err error) error {
	if err == nil {
		return nil
	}
	var rerr redis.Error
	if errors.As(err, &rerr) {
		msg := rerr.Error()
		switch {
		case strings.HasPrefix(msg, "UNKNOWN_PROVIDER"):
			return fmt.Errorf("%w %q", ErrUnknownProvider, provider)
		case strings.HasPrefix(msg, "INVALID_ARGUMENT "):
			return parseArgumentError(strings.TrimPrefix(msg, "INVALID_ARGUMENT "))
		case strings.HasPrefix(msg, "CORRUPT "):
			return fmt.Errorf("%w: %s", ErrCorruptState, strings.TrimPrefix(msg, "CORRUPT "))
		case strings.HasPrefix(msg, "RULES_CHANGED "):
			if ch := parseRulesChanged(strings.TrimPrefix(msg, "RULES_CHANGED ")); ch != nil {
				return ch
			}
			// The set in force is not one this process can read: never decide around it.
			return fmt.Errorf("%w: provider %q: its stored rules are not a rule set as set_rules writes it: %s",
				ErrCorruptState, provider, strings.TrimPrefix(msg, "RULES_CHANGED "))
		}
	}
	if isOutage(err) {
		return fmt.Errorf("%w: %v", ErrRedisUnavailable, err)
	}
	return fmt.Errorf("limiter: %w", err)
}

// parseArgumentError reads "<field>=<value> must be <range>" from a script.
func parseArgumentError(s string) error {
	field, rest, _ := strings.Cut(s, "=")
	value, rng, _ := strings.Cut(rest, " must be ")
	return &ArgumentError{Field: field, Value: value, Range: rng}
}
