package limiter

import (
	"fmt"
	"time"

	"github.com/sluice-dev/sluice/pkg/state"
)

// Reason says why a decision was taken.
type Reason string

// Reasons of a Decision. They are the strings acquire.lua returns.
const (
	ReasonOK              Reason = "ok"               // granted
	ReasonProbe           Reason = "probe"            // granted as the half-open breaker's single probe: report its outcome
	ReasonRateLimited     Reason = "rate_limited"     // not enough tokens yet; RetryAfter says when
	ReasonPaused          Reason = "paused"           // scale is 0; no estimate (RetryAfter -1)
	ReasonCooldown        Reason = "cooldown"         // a shared cooldown is active; RetryAfter is what is left of it
	ReasonCircuitOpen     Reason = "circuit_open"     // breaker open or probe in flight; RetryAfter is when a probe may go
	ReasonExceedsCapacity Reason = "exceeds_capacity" // n > capacity; no wait will do (RetryAfter -1)
	ReasonRuleLimited     Reason = "rule_limited"     // a pacing rule (Decision.Rule) refuses; RetryAfter is the longest wait, -1 when the cost is above its limit
)

func (r Reason) err() error {
	switch r {
	case ReasonRateLimited:
		return ErrRateLimited
	case ReasonPaused:
		return ErrPaused
	case ReasonCooldown:
		return ErrCoolingDown
	case ReasonCircuitOpen:
		return ErrCircuitOpen
	case ReasonExceedsCapacity:
		return ErrExceedsCapacity
	case ReasonRuleLimited:
		return ErrRuleLimited
	}
	return fmt.Errorf("limiter: refused (%s)", string(r)) // a reason this version does not know
}

// Decision is the answer to one TryAcquire or Acquire.
type Decision struct {
	// Allowed is true when the tokens were taken.
	Allowed bool
	// Reason says why (ReasonOK or ReasonProbe when allowed).
	Reason Reason
	// Remaining is the tokens left in the bucket after the decision.
	Remaining float64
	// RetryAfter is 0 when allowed; -1 when no wait will do (paused, n >
	// capacity); otherwise the wait until the request could be granted if
	// nothing else changes.
	RetryAfter time.Duration
	// Scale is the scale factor in force; Level the pressure level recorded.
	Scale float64
	Level state.Level
	// Capacity and RefillRate are the provider's config (RefillRate unscaled).
	Capacity   int64
	RefillRate float64
	// Breaker is the shared breaker's state after the decision.
	Breaker state.Breaker
	// Now is the time of the decision: Redis time, or local time when Local.
	Now time.Time
	// Local is true when Redis could not be reached and the decision was
	// taken in this process by Options.Outage (FailOpen or LocalFallback),
	// not by the shared bucket.
	Local bool
	// Leased is true when the tokens came from this process's token lease
	// (Options.TokenLease): taken from the shared bucket ahead, and handed
	// out at most TokenLease after the latest call that added to the lease
	// (a call that found the provider open). Remaining, Scale, Level,
	// Breaker and the config are as that call saw them; Now is its Redis
	// time plus the local time since.
	Leased bool
	// Held is true when the refusal was answered in this process, without
	// a round trip, from a refusal Redis gave one of its callers at most
	// Options.RefusalHold before (TryAcquire only). Remaining, Scale,
	// Level, Breaker and the config are as Redis said then; RetryAfter is
	// what is left of the hold.
	Held bool
	// Rule is the pacing rule whose wait a refusal reports (ReasonRuleLimited):
	// of the rules that refused, the one that lets the request pass last.
	Rule string
	// Permit is set on a grant by a provider with a concurrency rule: the
	// places the request holds, to Release when it is done.
	Permit *Permit
}

// parseDecision reads acquire.lua's reply, documented at the script's top:
// granted (a count for a batch), tokens, retry-after (µs, -1: none), scale,
// reason, level, capacity, refill rate, breaker, Redis time (µs).
func parseDecision(res any) (Decision, error) {
	r, err := replyArray(res, 10)
	if err != nil {
		return Decision{}, err
	}
	return Decision{
		Allowed:    r.int(0) >= 1, // a batch: how many were granted
		Remaining:  r.float(1),
		RetryAfter: micros(r.int(2)),
		Scale:      r.float(3),
		Reason:     Reason(r.str(4)),
		Level:      state.Level(r.str(5)),
		Capacity:   int64(r.float(6)),
		RefillRate: r.float(7),
		Breaker:    state.Breaker(r.str(8)),
		Now:        time.UnixMicro(r.int(9)),
	}, nil
}

// micros converts a script's microsecond count; -1 stays -1.
func micros(us int64) time.Duration {
	if us < 0 {
		return -1
	}
	return time.Duration(us) * time.Microsecond
}
