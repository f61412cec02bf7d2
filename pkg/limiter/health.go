package limiter

import (
	"context"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// health tracks whether Redis serves one provider. While it does not, the
// provider's calls go straight to the outage mode and a single background
// goroutine probes Redis for that provider every RedisRetry; callers never
// wait on a dead server's dial retries. Health is per provider because on a
// cluster each provider lives in its own slot, on its own node: one slot in
// motion or one node down is an outage of the providers there, not of the
// process. Going up also ends the probing duty, in one step: a failure
// that follows at once then starts a new prober, never finds a finished one
// still marked as running. Lock-free, because isDown and markUp run on
// every decision.
type health struct {
	down      atomic.Bool
	probing   atomic.Bool
	nextCheck atomic.Int64 // Unix ns before which suspect starts no check
}

func (h *health) isDown() bool { return h.down.Load() }

// checkDue reports whether a check may start at now; if so, the next one
// may not start before now + gap.
func (h *health) checkDue(now time.Time, gap time.Duration) bool {
	next := h.nextCheck.Load()
	return now.UnixNano() >= next && h.nextCheck.CompareAndSwap(next, now.Add(gap).UnixNano())
}

// markDown records a failure; it returns whether the provider was served
// until now, and whether the caller must start the prober.
func (h *health) markDown() (changed, probe bool) {
	changed = h.down.CompareAndSwap(false, true)
	probe = h.probing.CompareAndSwap(false, true)
	return changed, probe
}

// markUp records an answer; it returns whether the provider was down until now.
func (h *health) markUp() bool {
	if !h.down.Load() { // the common case: no write to a shared cache line
		return false
	}
	h.probing.Store(false)
	return h.down.CompareAndSwap(true, false)
}

// redisDown puts st in outage mode after err and starts its prober.
func (c *Limiter) redisDown(st *providerState, err error) {
	changed, probe := st.health.markDown()
	if changed {
		c.log.Warn("redis cannot serve the provider; provider in outage mode", "provider", st.name, "mode", c.opts.Outage.String(), "err", err)
		c.countDown(1)
	}
	if probe {
		c.background(func() { c.every(c.opts.RedisRetry, func() bool { return c.probeOnce(st) }) })
	}
}

// suspect checks whether Redis still serves st after a call that its
// caller's deadline ended before Redis answered. The deadline says nothing
// of Redis, CallTimeout does: a probe in the background gives Redis the
// whole CallTimeout, and if it gets no answer either, st goes to its
// outage mode as after a stalled call. So callers whose deadlines are all
// shorter than CallTimeout still see a stalled Redis replaced by the
// outage mode, instead of each waiting out its deadline. At most one check
// per provider every CallTimeout + RedisRetry; none while st is in outage
// mode (its prober watches) or for a call about no provider (st nil).
func (c *Limiter) suspect(st *providerState) {
	if st == nil || st.health.isDown() || !st.health.checkDue(time.Now(), c.opts.CallTimeout+c.opts.RedisRetry) {
		return
	}
	c.background(func() {
		if err := c.probe(st, c.opts.CallTimeout); isOutage(err) {
			c.redisDown(st, err)
		}
	})
}

// redisUp records that Redis served st.
func (c *Limiter) redisUp(st *providerState) {
	if st.health.markUp() {
		c.log.Info("redis serves the provider again; back on the shared bucket", "provider", st.name)
		c.countDown(-1)
	}
}

// countDown adds d to the providers in outage mode; rate_coordinator_redis_up
// is 1 while there is none.
func (c *Limiter) countDown(d int) {
	c.downMu.Lock()
	defer c.downMu.Unlock()
	c.down += d
	if c.down == 0 {
		c.m.redisUp.Set(1)
	} else {
		c.m.redisUp.Set(0)
	}
}

// probeOnce probes st for the prober: it returns false (stop probing) once
// Redis answers. On a single server every provider in outage probes on its
// own: a handful of EXISTS per RedisRetry, and each provider comes back as
// soon as its own call would work.
func (c *Limiter) probeOnce(st *providerState) bool {
	if c.probe(st, min(c.opts.RedisRetry, c.opts.CallTimeout)) != nil {
		return true
	}
	c.redisUp(st)
	return false
}

// probe asks Redis, within timeout, whether st's keys exist, which costs
// O(1) and needs only read rights: a cluster routes it to the node of st's
// slot, and with all five keys of acquire it meets the same refusals
// (TRYAGAIN while the slot migrates, LOADING, CLUSTERDOWN) as the script
// would. No answer within timeout is an *outageError; Close ends a probe
// with ErrClosed. After a failed probe, a cluster client reloads its slot
// map.
func (c *Limiter) probe(st *providerState, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	go func() { // Close does not wait for it
		select {
		case <-c.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	k := st.keys
	_, err := c.bounded(ctx, roundTrip{cmd: func(ctx context.Context) (any, error) {
		return c.rdb.Exists(ctx, k.config, k.bucket, k.scale, k.breaker, k.cooldown).Result()
	}})
	if err == nil {
		return nil
	}
	// A cluster client learns of a new master from a redirect, or from its
	// reload timer (60 s by default): a dead master sends no redirect, so
	// ask for the slot map again.
	if cc, ok := c.rdb.(*redis.ClusterClient); ok {
		cc.ReloadState(ctx)
	}
	switch {
	case c.isClosed():
		return ErrClosed
	case ended(ctx):
		return &outageError{false, timeout, err}
	}
	return err
}

// isSlotMoving reports whether err is a cluster's answer that the keys'
// slot is in motion and the call may succeed if sent again: TRYAGAIN (a
// multi-key call during a migration, some keys on each side), ASK and
// MOVED (the redirects go-redis follows itself, up to its MaxRedirects)
// and CLUSTERDOWN (a slot without a master, as during a failover).
func isSlotMoving(err error) bool {
	if err == nil {
		return false
	}
	_, moved := redis.IsMovedError(err)
	_, ask := redis.IsAskError(err)
	return moved || ask || redis.IsTryAgainError(err) || redis.IsClusterDownError(err)
}

// slotBackoff is the wait before attempt+1 of a call whose slot is in
// motion: 10, 20, 40 then 50 ms, each jittered down to half, so the
// replicas of a provider do not retry in step.
func slotBackoff(attempt int) time.Duration {
	d := min(10*time.Millisecond<<min(attempt, 3), 50*time.Millisecond)
	return d/2 + rand.N(d/2+1)
}
