// Package state is the vocabulary that sluice's limiter, feedback and store
// packages share without importing one another: the backpressure levels of a
// write coordinator and the states of a provider's shared circuit breaker.
// Both are strings exactly as they appear in Redis, in pressure events and in
// metric help texts, so a value read with redis-cli converts with a cast.
package state

import (
	"fmt"
	"slices"
)

// Level is a write coordinator's backpressure level: OK, Soft or Hard. The
// zero value "" is not a valid level.
type Level string

// Levels, from no pressure to the most.
const (
	OK   Level = "ok"
	Soft Level = "soft"
	Hard Level = "hard"
)

// levels lists the levels in rank order.
var levels = []Level{OK, Soft, Hard}

// Rank orders levels for comparison and metrics: OK 0, Soft 1, Hard 2; -1
// for anything else.
func (l Level) Rank() int { return slices.Index(levels, l) }

// ParseLevel returns the Level spelled s ("ok", "soft" or "hard"), or an
// error naming the field and the allowed values.
func ParseLevel(s string) (Level, error) {
	if l := Level(s); l.Rank() >= 0 {
		return l, nil
	}
	return "", fmt.Errorf("state: level=%q: must be one of ok, soft, hard", s)
}

// Breaker is the state of a provider's shared circuit breaker. Redis holds
// no breaker hash while it is closed; the zero value "" means closed too.
type Breaker string

// Breaker states. An open breaker refuses every replica for the provider's
// breaker timeout, then lets one probe through and is half-open until the
// probe is reported.
const (
	BreakerClosed   Breaker = "closed"
	BreakerHalfOpen Breaker = "half_open"
	BreakerOpen     Breaker = "open"
)

// breakers lists the breaker states in rank order.
var breakers = []Breaker{BreakerClosed, BreakerHalfOpen, BreakerOpen}

// Rank orders breaker states for metrics: closed (or "") 0, half-open 1,
// open 2; -1 for anything else.
func (b Breaker) Rank() int {
	if b == "" {
		b = BreakerClosed
	}
	return slices.Index(breakers, b)
}
