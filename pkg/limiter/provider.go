package limiter

import "sync/atomic"

// providerState is what this process holds about one provider: its name
// and keys, and one part per feature, each a type of the feature's own file
// that keeps its own lock, so that the features depend on this struct only
// to reach their part.
type providerState struct {
	name string
	keys keys
	m    *providerMetrics

	reg    registration // the config Register was given (register.go)
	seen   lastKnown    // the last decision from Redis, for the outage mode (outage.go)
	member membership   // this replica's entry in the replica registry (replicas.go)
	health health       // whether Redis serves the provider (health.go)
	rules  ruleSet      // its pacing rules, as Redis last told (rules.go)
	batch  batcher      // coalesces this process's concurrent acquisitions (batch.go)
	hold   refusalHold  // the last refusal, answered locally for a while (hold.go)
	// watching is set once a goroutine listens to the provider's
	// notifications for the lease and the hold (hold.go).
	watching atomic.Bool
	turn     chan struct{} // held by the one rate-limited waiter that polls Redis (acquire.go)
	lanes    laneTurns     // the same for each named lane (lanes.go)
}

// state returns the local state of provider, creating it on first use.
func (c *Limiter) state(provider string) (*providerState, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	st := c.providers[provider]
	if st == nil {
		if err := validName("provider", provider); err != nil { // checked once per name
			return nil, err
		}
		st = &providerState{name: provider, keys: providerKeys(c.opts.Prefix, provider), turn: make(chan struct{}, 1), m: c.m.forProvider(provider)}
		c.providers[provider] = st
	}
	return st, nil
}

func (c *Limiter) statesLocked() []*providerState {
	out := make([]*providerState, 0, len(c.providers))
	for _, st := range c.providers {
		out = append(out, st)
	}
	return out
}
