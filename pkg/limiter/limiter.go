package limiter

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Limiter shares one token bucket per provider among every replica that
// talks to the same Redis: each bucket holds at most its capacity and refills
// at base rate × scale tokens per second, where the scale (0 pauses) lives in
// Redis so a change reaches every replica at its next acquisition. Every
// decision is one Lua script at Redis time. A Limiter is safe for
// concurrent use by many goroutines, and many processes may each have one.
type Limiter struct {
	rdb      redis.UniversalClient
	direct   bool // rdb bounds each round trip by its context (honoursDeadlines): called straight through
	opts     Options
	ownClock bool // Options.Now was given: the local clock is not time.Now (see clocks)
	log      *slog.Logger
	m        *metrics
	notifier *notifier
	// deadlines ends calls to Redis at CallTimeout (call).
	deadlines callDeadlines
	// joinBeats are the early heartbeats after joining (replicas.go);
	// tests that count Redis commands turn them off.
	joinBeats []time.Duration

	downMu sync.Mutex // orders the changes of down and the redis_up gauge
	down   int        // providers now in outage mode

	mu        sync.Mutex
	providers map[string]*providerState
	closed    bool

	stop chan struct{}
	wg   sync.WaitGroup
}

// New returns a Limiter on rdb, which may be a *redis.Client,
// *redis.ClusterClient or *redis.Ring (any redis.UniversalClient), with any
// options: every call returns within Options.CallTimeout and its caller's
// deadline whatever they say. A client with ContextTimeoutEnabled is the
// cheaper one (no goroutine per call; see CallTimeout). It starts the
// heartbeat goroutine; Close stops it.
func New(rdb redis.UniversalClient, o Options) (*Limiter, error) {
	if rdb == nil {
		return nil, &ArgumentError{"client", nil, "a Redis client"}
	}
	ownClock := o.Now != nil
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(o.Registerer)
	if err != nil {
		return nil, fmt.Errorf("limiter: %w", err)
	}
	m.redisUp.Set(1)
	c := &Limiter{
		joinBeats: joinBeats,
		ownClock:  ownClock,
		rdb:       rdb,
		direct:    honoursDeadlines(rdb),
		opts:      o,
		log:       o.Logger.With("component", "limiter", "replica", o.ReplicaID),
		m:         m,
		providers: map[string]*providerState{},
		stop:      make(chan struct{}),
		deadlines: callDeadlines{timeout: o.CallTimeout},
	}
	if !c.direct {
		c.log.Debug("the redis client does not end round trips at context deadlines (ContextTimeoutEnabled off): " +
			"each call runs in a goroutine of its own, so that call_timeout and callers' deadlines hold; set ContextTimeoutEnabled for the direct path")
	}
	c.notifier = newNotifier(rdb, c.log, o.PausedRecheck)
	c.background(func() { c.every(o.Heartbeat, c.beatAll) })
	return c, nil
}

// Close stops the heartbeat and the notification subscription and removes
// this replica from the registry of every provider it used. Calls after Close
// return ErrClosed. Close does not close the Redis client.
func (c *Limiter) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	states := c.statesLocked()
	c.mu.Unlock()
	close(c.stop)
	c.wg.Wait()
	c.notifier.close(c.opts.CallTimeout)
	for _, st := range states {
		c.dropLease(st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for _, st := range states {
		c.leave(ctx, st)
	}
	c.deadlines.stop()
	return nil
}

// isClosed reports whether Close has begun.
func (c *Limiter) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// every calls fn every d until Close, or until fn returns false. It runs in
// the caller's goroutine: start it with background.
func (c *Limiter) every(d time.Duration, fn func() bool) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		if !fn() {
			return
		}
	}
}

// background runs fn in a goroutine that Close waits for; once Close has
// begun it runs nothing.
func (c *Limiter) background(fn func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		fn()
	}()
}

// clocks returns the local time a call to Redis starts at, for the held
// refusals (time.Now), and for the last decision known (Options.Now): one
// reading of the clock when Options.Now is time.Now, its default.
func (c *Limiter) clocks() (start, now time.Time) {
	start = time.Now()
	if c.ownClock {
		return start, c.opts.Now()
	}
	return start, start
}
