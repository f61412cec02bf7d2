package limiter

import (
	"context"
	"fmt"
	"time"
)

func (c *Limiter) heartbeatTTL() time.Duration { return 3 * c.opts.Heartbeat }

// beatAll heartbeats for every provider this replica acquired from, except
// those in outage mode (their probe watches Redis; on a cluster, a dead
// node's providers must not spend the others' heartbeat time); it always
// returns true (keep going).
func (c *Limiter) beatAll() bool {
	c.mu.Lock()
	states := c.statesLocked()
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.Heartbeat)
	defer cancel()
	for _, st := range states {
		if st.active.Load() && !st.health.isDown() {
			c.beat(ctx, st)
		}
	}
	return true
}

// beat renews this replica in provider's registry and learns how many live
// replicas share it. On failure the last count stays.
func (c *Limiter) beat(ctx context.Context, st *providerState) {
	res, err := c.script(ctx, st, heartbeatScript, []string{st.keys.replicas}, "beat", c.opts.ReplicaID, c.heartbeatTTL().Milliseconds())
	n, ok := res.(int64)
	if err == nil && !ok {
		err = fmt.Errorf("heartbeat: reply %v is not an integer", res)
	}
	if err != nil {
		c.log.Debug("heartbeat failed", "provider", st.name, "err", err)
		return
	}
	st.mu.Lock()
	st.replicas = max(int(n), 1)
	st.mu.Unlock()
	c.m.replicas.WithLabelValues(st.name).Set(float64(n))
}
