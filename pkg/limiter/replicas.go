package limiter

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"
)

// membership is this replica's entry in a provider's replica registry.
// It joins at its first acquisition and heartbeats from then on;
// operator calls (Register, Status, SetBudgetScale, ...) never make a
// process count as a replica. Safe for concurrent use.
type membership struct {
	active atomic.Bool
	count  atomic.Int64 // live replicas at the last heartbeat; 0 before one
	beaten atomic.Int64 // local time (Unix ns) of the last heartbeat sent
	period atomic.Int64 // the heartbeat period (ns) that heartbeat announced; 0 before one
}

// join marks the replica active; it returns true for the call that did,
// which must then heartbeat at once.
func (m *membership) join() bool { return !m.active.Load() && !m.active.Swap(true) }

// joinBeats are when a replica heartbeats again after joining, before
// its regular Heartbeat (those not shorter than Heartbeat are skipped):
// replicas that start together learn of each other within a second, not a
// Heartbeat later (a process's fair turn under held refusals divides by
// the count, hold.go).
var joinBeats = []time.Duration{100 * time.Millisecond, 400 * time.Millisecond, time.Second}

// joinOnce makes this process a replica of st at its first acquisition: a
// heartbeat now, then the early ones of joinBeats.
func (c *Limiter) joinOnce(ctx context.Context, st *providerState) {
	if !st.member.join() {
		return
	}
	c.beat(ctx, st)
	c.background(func() {
		start := time.Now()
		for _, at := range c.joinBeats {
			if at >= c.opts.Heartbeat {
				return
			}
			t := time.NewTimer(time.Until(start.Add(at)))
			select {
			case <-c.stop:
				t.Stop()
				return
			case <-t.C:
			}
			bctx, cancel := context.WithTimeout(context.Background(), c.opts.Heartbeat)
			if !st.health.isDown() {
				c.beat(bctx, st)
			}
			cancel()
		}
	})
}

// joined reports whether the replica acquired from the provider.
func (m *membership) joined() bool { return m.active.Load() }

// live is the number of live replicas at the last heartbeat, at least 1.
func (m *membership) live() int { return int(max(m.count.Load(), 1)) }

// nextPeriod is the heartbeat period the next heartbeat for st announces:
// beatPeriod, but at most twice the last one announced, so that the next
// heartbeat after it comes before the entry it renewed expires (three
// periods) however fast the count grew.
func (c *Limiter) nextPeriod(st *providerState) time.Duration {
	p := c.beatPeriod(st)
	if last := time.Duration(st.member.period.Load()); last > 0 {
		p = min(p, 2*last)
	}
	return p
}

// beatAll heartbeats for every provider this replica acquired from whose
// heartbeat period (beatPeriod: Heartbeat, or longer for a large fleet)
// is, to within half a Heartbeat, over, except those in outage mode (their
// probe watches Redis; on a cluster, a dead node's providers must not
// spend the others' heartbeat time); it always returns true (keep going).
func (c *Limiter) beatAll() bool {
	c.mu.Lock()
	states := c.statesLocked()
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.Heartbeat)
	defer cancel()
	now := time.Now()
	for _, st := range states {
		due := time.Unix(0, st.member.beaten.Load()).Add(time.Duration(st.member.period.Load()) - c.opts.Heartbeat/2)
		if st.member.joined() && !st.health.isDown() && !now.Before(due) {
			c.beat(ctx, st)
		}
	}
	return true
}

// beat renews this replica in provider's registry for three heartbeat
// periods (nextPeriod) and learns how many live replicas share it. On
// failure the last count stays; a failure that says Redis cannot serve
// the provider (isOutage) puts it in outage mode, as a failed acquisition
// would, so that a replica that stopped acquiring (blocked elsewhere, say
// retrying a write to the same Redis) still reports it
// (rate_coordinator_redis_up) within a heartbeat, and its prober brings it
// back.
func (c *Limiter) beat(ctx context.Context, st *providerState) {
	period := c.nextPeriod(st)
	st.member.beaten.Store(time.Now().UnixNano())
	st.member.period.Store(int64(period))
	res, err := c.script(ctx, st, heartbeatScript, []string{st.keys.replicas}, "beat", c.opts.ReplicaID, (3 * period).Milliseconds())
	n, ok := res.(int64)
	if err == nil && !ok {
		err = fmt.Errorf("heartbeat: reply %v is not an integer", res)
	}
	if err != nil {
		c.log.Debug("heartbeat failed", "provider", st.name, "err", err)
		if isOutage(err) {
			c.redisDown(st, err)
		}
		return
	}
	st.member.count.Store(n)
	c.m.replicas.WithLabelValues(st.name).Set(float64(n))
}

// leave removes this replica from the registry of st, if it joined it.
func (c *Limiter) leave(ctx context.Context, st *providerState) {
	if st.member.joined() {
		_, _ = c.script(ctx, st, heartbeatScript, []string{st.keys.replicas}, "leave", c.opts.ReplicaID, (3 * c.opts.Heartbeat).Milliseconds())
	}
}
