package limiter

import (
	"context"
	"time"
)

func (c *Coordinator) heartbeatTTL() time.Duration { return 3 * c.opts.Heartbeat }

// beatAll heartbeats for every provider this replica acquired from; it
// always returns true (keep going).
func (c *Coordinator) beatAll() bool {
	c.mu.Lock()
	states := c.statesLocked()
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.Heartbeat)
	defer cancel()
	for _, st := range states {
		if st.active.Load() {
			c.beat(ctx, st)
		}
	}
	return true
}

// beat renews this replica in provider's registry and learns how many live
// replicas share it. On failure the last count stays.
func (c *Coordinator) beat(ctx context.Context, st *providerState) {
	n, err := heartbeatScript.Run(ctx, c.rdb, []string{st.keys.replicas}, "beat", c.opts.ReplicaID, c.heartbeatTTL().Milliseconds()).Int()
	if err != nil {
		c.log.Debug("heartbeat failed", "provider", st.name, "err", err)
		return
	}
	st.mu.Lock()
	st.replicas = max(n, 1)
	st.mu.Unlock()
	c.m.replicas.WithLabelValues(st.name).Set(float64(n))
}
