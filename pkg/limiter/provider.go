package limiter

import (
	"sync"
	"sync/atomic"
	"time"
)

// providerState is what this replica knows locally about one provider.
type providerState struct {
	name string
	keys keys

	mu         sync.Mutex
	registered *ProviderConfig // set by Register: re-registered if Redis loses it
	last       Decision        // last decision from Redis
	lastAt     time.Time       // local time of last
	haveLast   bool
	replicas   int          // live replicas at the last heartbeat (>= 1)
	local      *localBucket // the fallback bucket during an outage

	turn  chan struct{} // held by the one rate-limited waiter that polls Redis
	batch batcher       // coalesces this process's concurrent acquisitions
	m     *providerMetrics
	rereg sync.Mutex // one re-registration at a time

	// active is set at the first acquisition: from then on this replica
	// heartbeats for the provider. Operator calls (Register, Status,
	// SetBudgetScale, ...) never make a process count as a replica.
	active atomic.Bool

	// health says whether Redis serves this provider: per provider, since
	// on a cluster each lives in its own slot, on its own node.
	health health
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
		st = &providerState{name: provider, keys: providerKeys(c.opts.Prefix, provider), replicas: 1, turn: make(chan struct{}, 1), m: c.m.forProvider(provider)}
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
