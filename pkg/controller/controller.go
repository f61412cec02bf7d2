// Package controller is sluice's feedback controller: the one place where
// the store's pressure becomes the shared scale for a fleet. Run two or more;
// a lease in Redis elects the one that writes. The writer registers the
// configured providers, runs a feedback.Handler (through pipeline.New) on
// the pressure of the Redis bus and on the backlog of the write streams it
// watches (so a stream stays bounded with no coordinator alive to report),
// and reaps coordinators whose report expired from the pressure sets that
// KEDA counts. Pipeline replicas in any language then only acquire.
package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/lua"
	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/feedback/redisbus"
	"github.com/sluice-dev/sluice/pkg/internal/opts"
	"github.com/sluice-dev/sluice/pkg/internal/promutil"
	"github.com/sluice-dev/sluice/pkg/keyspace"
	"github.com/sluice-dev/sluice/pkg/limiter"
	"github.com/sluice-dev/sluice/pkg/pipeline"
)

// ErrNotLeader is returned (through the handler's writes) by a controller
// that does not hold the lease, or may have lost it.
var ErrNotLeader = errors.New("controller: not the lease holder")

// ErrNoConfig is matched by Ready's error while a provider the handler
// steers has no configuration: it is not in Options.Providers and nobody
// registered it in Redis. The controller does not make one up; it steers
// once the provider is registered.
var ErrNoConfig = errors.New("controller: provider has no configuration")

// Options configure a Controller. ID is required; every other zero field
// takes the default its comment gives.
type Options struct {
	// Prefix starts every key; default "sluice".
	Prefix string
	// ID names this controller in the lease: 1 to 64 of [A-Za-z0-9_.-],
	// unique among the controllers (a pod name). Required.
	ID string
	// LeaseTTL is the lease's life; default 5s. The holder renews it every
	// LeaseTTL/4 (or every Reap, if shorter) and writes nothing from LeaseTTL/5 before it could run out
	// without a renewal; a standby tries to take it every LeaseTTL/20. So a
	// standby takes over within LeaseTTL (and a twentieth) of the holder's
	// death, and two controllers never write at once.
	LeaseTTL time.Duration
	// Providers are registered (created, or updated) each time this
	// controller takes the lease; nil registers none (someone else does).
	// A provider of Feedback.Providers that is not here must be registered
	// in Redis by someone else: until it is, the controller does not steer
	// and Ready says why (ErrNoConfig).
	Providers map[string]limiter.ProviderConfig
	// Feedback, when set, runs a handler on these options while this
	// controller holds the lease. Nil opens the loop: the scales are left as
	// they are (an operator's); the providers are still registered and the
	// pressure sets reaped.
	Feedback *feedback.Options
	// Streams are the write streams whose backlog the handler counts as
	// pressure, each as the report of a coordinator of its own,
	// "stream.<name>": the entries no living coordinator holds (the
	// group's lag, and what is pending on consumers whose coordinator no
	// longer reports), against the stream's Capacity and the store's
	// watermarks. With coordinators alive the backlog is part of what they
	// report (their queue plus the lag) and asks for no less; with none
	// alive it is what bounds the stream: the scale goes down as it grows,
	// and pauses at the soft mark (see Stream.Capacity). Nil watches none.
	// Read every Reap, while the handler runs (feedback on).
	Streams []Stream
	// Reap is how often the writer reaps the pressure sets and reads the
	// streams' backlog; default 250ms, so that a coordinator that died
	// leaves the sets within its report TTL and a quarter of a second.
	Reap time.Duration
	// RateWindow is the time over which the controller measures each
	// stream's demand and its writers' throughput (controller_stream_*
	// gauges, the writers the demand needs); default 10s, at most 1h. A
	// longer window is steadier and follows a change later.
	RateWindow time.Duration
	// Limiter configures the limiter the handler writes through; its
	// Prefix is Prefix, its Source defaults to "controller/<ID>" (the
	// scale hash then says which controller set it).
	Limiter limiter.Options
	// Logger receives lease changes and errors; default slog.Default().
	Logger *slog.Logger
	// Registerer receives the controller's metrics and its handler's; nil
	// registers none.
	Registerer prometheus.Registerer
}

func (o *Options) setDefaults() error {
	if !keyspace.ValidName(o.ID) {
		return fmt.Errorf("controller: id=%q: must be %s", o.ID, keyspace.NameRule)
	}
	if err := opts.Check(
		opts.Positive("lease_ttl", &o.LeaseTTL, 5*time.Second),
		opts.Positive("reap", &o.Reap, 250*time.Millisecond),
		opts.Positive("rate_window", &o.RateWindow, DefaultRateWindow),
	); err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	if o.RateWindow > time.Hour {
		return fmt.Errorf("controller: rate_window=%v: must be in (0, 1h]", o.RateWindow)
	}
	if o.LeaseTTL < 100*time.Millisecond || o.LeaseTTL > time.Hour {
		return fmt.Errorf("controller: lease_ttl=%v: must be in [100ms, 1h]", o.LeaseTTL)
	}
	if o.Prefix == "" {
		o.Prefix = keyspace.DefaultPrefix
	}
	o.Limiter.Prefix = o.Prefix
	if o.Limiter.Source == "" {
		o.Limiter.Source = "controller/" + o.ID
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Limiter.Logger == nil {
		o.Limiter.Logger = o.Logger
	}
	if o.Feedback != nil {
		fb := *o.Feedback
		if fb.Registerer == nil {
			fb.Registerer = o.Registerer
		}
		if fb.Logger == nil {
			fb.Logger = o.Logger
		}
		o.Feedback = &fb
	}
	return nil
}

var leaseScript = redis.NewScript(lua.Source("lease"))

// Controller competes for the lease and, while it holds it, steers the
// shared scales. Run drives it; it is safe for concurrent use.
type Controller struct {
	rdb redis.UniversalClient
	o   Options
	key string
	log *slog.Logger

	mu         sync.Mutex
	validUntil time.Time        // writes allowed before this (local clock); zero: not the holder
	steering   bool             // the providers are registered (and the handler runs, with feedback)
	lim        *limiter.Limiter // the term's: it registers the providers and the handler writes through it
	loop       *pipeline.Loop   // the handler's; nil without feedback

	lastStartErr string       // the last failure to start steering, logged once
	streams      []*watched   // Options.Streams, with what was last read of each
	seq          atomic.Int64 // of the streams' events

	leader   atomic.Bool
	terms    atomic.Int64
	lastErr  atomic.Pointer[error] // the last lease round trip's
	steerErr atomic.Pointer[error] // the last failure to start steering, while holding the lease
	m        struct {
		acquired                  prometheus.Counter
		reaped                    prometheus.Counter
		backlog, alive            *prometheus.GaugeVec
		demand, perWriter, needed *prometheus.GaugeVec
	}
}

// New returns a Controller on rdb (a Client, ClusterClient or Ring); Run
// starts it. A bad option is an error naming it.
func New(rdb redis.UniversalClient, o Options) (*Controller, error) {
	if err := o.setDefaults(); err != nil {
		return nil, err
	}
	streams, err := o.streams()
	if err != nil {
		return nil, err
	}
	c := &Controller{rdb: rdb, o: o, key: keyspace.Prefix(o.Prefix).ControllerLease(), streams: streams,
		log: o.Logger.With("component", "controller", "controller", o.ID)}
	c.seq.Store(time.Now().UnixMicro()) // the streams' events: increasing across restarts, as a coordinator's
	r := &promutil.Registrar{Reg: o.Registerer}
	r.Add(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "controller_leader", ConstLabels: prometheus.Labels{"controller_id": o.ID},
		Help: "1 while this controller holds the lease and writes the scales."}, func() float64 {
		if c.Leader() {
			return 1
		}
		return 0
	}))
	c.m.acquired = r.CounterVec(prometheus.CounterOpts{Name: "controller_lease_acquired_total",
		Help: "Times this controller took the lease."}, "controller_id").WithLabelValues(o.ID)
	c.m.reaped = r.CounterVec(prometheus.CounterOpts{Name: "controller_reaped_coordinators_total",
		Help: "Coordinators whose report expired, taken out of the pressure sets."}, "controller_id").WithLabelValues(o.ID)
	c.m.backlog = r.GaugeVec(prometheus.GaugeOpts{Name: "controller_stream_backlog",
		Help: "Entries of the write stream that no living coordinator holds (the group's lag plus what is pending on dead consumers), at the leader's last read."}, "controller_id", "stream")
	c.m.alive = r.GaugeVec(prometheus.GaugeOpts{Name: "controller_stream_coordinators",
		Help: "Consumers of the write stream's group whose coordinator reports, at the leader's last read."}, "controller_id", "stream")
	c.m.demand = r.GaugeVec(prometheus.GaugeOpts{Name: "controller_stream_demand",
		Help: "Items/s the pipelines would append to the write stream at the full budget: the appended rate divided by the mean scale, over the rate window."}, "controller_id", "stream")
	c.m.perWriter = r.GaugeVec(prometheus.GaugeOpts{Name: "controller_stream_writer_rate",
		Help: "Items/s one busy coordinator reads from the write stream, measured while the loop held demand back."}, "controller_id", "stream")
	c.m.needed = r.GaugeVec(prometheus.GaugeOpts{Name: "controller_stream_writers_needed",
		Help: "Coordinators the demand needs to run at the full budget: controller_stream_demand / controller_stream_writer_rate (KEDA's signal)."}, "controller_id", "stream")
	return c, r.Err
}

// Leader reports whether this controller holds the lease now: it took or
// renewed it, and not so long ago that it could have run out (a renewal
// stuck on a frozen Redis does not keep it the leader).
func (c *Controller) Leader() bool { return c.leader.Load() && c.valid() }

// Terms returns how many times this controller took the lease.
func (c *Controller) Terms() int64 { return c.terms.Load() }

// Ready returns nil when the controller's last round trip to Redis (taking
// or renewing the lease) succeeded and, while it holds the lease, it
// steers: the providers are registered and the handler runs. Otherwise it
// returns why not: the round trip's error, or the failure to start
// steering (ErrNoConfig for a provider nobody configured, a name the
// limiter refuses, ...), which is retried every round. A standby is ready
// while Redis answers.
func (c *Controller) Ready() error {
	if p := c.lastErr.Load(); p != nil {
		return *p
	}
	if p := c.steerErr.Load(); p != nil {
		return *p
	}
	return nil
}

// Run competes for the lease until ctx ends, steering the scales while it
// holds it; then it stops the handler, releases the lease (so a standby
// takes over at once) and returns. Redis errors do not end it: they are
// logged and reported by Ready, and a holder that cannot renew in time
// stops writing.
func (c *Controller) Run(ctx context.Context) error {
	nextReap := time.Time{}
	for {
		c.round(ctx)
		if c.Leader() && time.Now().After(nextReap) {
			if live, ok := c.reap(ctx); ok {
				c.watchStreams(ctx, live)
			}
			nextReap = time.Now().Add(c.o.Reap)
		}
		wait := c.o.LeaseTTL / 20
		if c.Leader() {
			wait = min(c.o.LeaseTTL/4, c.o.Reap)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			c.stepDown("shutting down")
			rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if _, err := leaseScript.Run(rctx, c.rdb, []string{c.key}, "release", c.o.ID).Result(); err != nil {
				c.log.Warn("releasing the lease failed; it runs out by itself", "err", err)
			}
			return nil
		case <-t.C:
		}
	}
}

// round takes or renews the lease once, and starts or stops the handler.
func (c *Controller) round(ctx context.Context) {
	held0 := c.leader.Load() // took the lease, and has not stepped down (it may have run out)
	op := "acquire"
	if held0 {
		op = "renew"
	}
	start := time.Now()
	rctx, cancel := context.WithTimeout(ctx, c.o.LeaseTTL/5)
	held, err := leaseScript.Run(rctx, c.rdb, []string{c.key}, op, c.o.ID, c.o.LeaseTTL.Milliseconds()).Int()
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		c.lastErr.Store(&err)
		c.log.Warn("lease round trip failed", "op", op, "err", err)
		if held0 && !c.valid() {
			c.stepDown("could not renew the lease in time")
		}
		return
	}
	c.lastErr.Store(nil)
	if held == 0 {
		if held0 {
			c.stepDown("another controller holds the lease")
		}
		return
	}
	c.mu.Lock()
	// Redis set the TTL after start: the lease lives at least until
	// start+LeaseTTL; stop writing a fifth of it earlier.
	c.validUntil = start.Add(c.o.LeaseTTL - c.o.LeaseTTL/5)
	c.mu.Unlock()
	if !held0 {
		c.leader.Store(true)
		c.m.acquired.Inc()
		c.terms.Add(1)
		c.log.Info("took the lease: writing the scales", "lease_ttl", c.o.LeaseTTL)
	}
	if !c.steering {
		// Bounded by the lease: a Redis that freezes now cannot hold the
		// loop (and its renewals) past it.
		sctx, cancel, err := c.guard(ctx)
		if err == nil {
			err = c.startReplica(sctx)
			cancel()
		}
		if err != nil && ctx.Err() == nil && err.Error() != c.lastStartErr {
			c.log.Error("cannot steer the scales; retrying", "err", err)
		}
		switch {
		case err == nil:
			c.lastStartErr = ""
			c.steerErr.Store(nil)
		case ctx.Err() == nil:
			c.lastStartErr = err.Error()
			err = fmt.Errorf("cannot steer the scales: %w", err)
			c.steerErr.Store(&err)
		}
	}
}

// valid reports whether the lease is certainly still held.
func (c *Controller) valid() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Before(c.validUntil)
}

// guard lets a write through only while the lease is certainly held, and
// bounds it by the time it is.
func (c *Controller) guard(ctx context.Context) (context.Context, context.CancelFunc, error) {
	c.mu.Lock()
	until := c.validUntil
	c.mu.Unlock()
	if !time.Now().Before(until) {
		return nil, nil, ErrNotLeader
	}
	gctx, cancel := context.WithDeadline(ctx, until)
	return gctx, cancel, nil
}

// startReplica checks that every provider the handler steers has a
// configuration, registers the providers and starts the handler, on one
// limiter kept for the term. A provider without a configuration fails it
// before anything is written, so that waiting for it registers nothing
// again and again.
func (c *Controller) startReplica(ctx context.Context) error {
	lim, err := limiter.New(c.rdb, c.o.Limiter)
	if err != nil {
		return err
	}
	if err := c.register(ctx, lim); err != nil {
		lim.Close()
		return err
	}
	if c.o.Feedback == nil {
		c.log.Info("feedback off: the scales are left as they are")
	} else if c.loop, err = pipeline.StartLoop(ctx, c.rdb, limiter.FeedbackRate{Limiter: lim, Guard: c.guard}, *c.o.Feedback, nil, c.o.Prefix); err != nil {
		lim.Close()
		return err
	}
	c.lim, c.steering = lim, true
	return nil
}

// register checks the steered providers (ensure), then registers the
// configured ones through the guard.
func (c *Controller) register(ctx context.Context, lim *limiter.Limiter) error {
	if c.o.Feedback != nil {
		for _, name := range c.o.Feedback.Providers {
			if err := c.ensure(ctx, lim, name); err != nil {
				return err
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(c.o.Providers)) {
		gctx, cancel, err := c.guard(ctx)
		if err != nil {
			return err
		}
		res, err := lim.Register(gctx, name, c.o.Providers[name])
		cancel()
		if err != nil {
			return fmt.Errorf("register %s: %w", name, err)
		}
		c.log.Info("provider registered", "provider", name, "result", res)
	}
	return nil
}

// ensure checks that a provider the handler steers has a configuration:
// it is in Providers (registered next), or registered in Redis by someone
// else. A provider with none is an ErrNoConfig: steering it would
// make one up (the limiter's defaults), and a typo in its name would then
// go unnoticed.
func (c *Controller) ensure(ctx context.Context, lim *limiter.Limiter, name string) error {
	if _, ok := c.o.Providers[name]; ok {
		return nil
	}
	_, err := lim.Status(ctx, name)
	if errors.Is(err, limiter.ErrUnknownProvider) {
		return fmt.Errorf("%w: %q is not among the providers this controller registers, and nobody registered it in Redis (sluice register %s ...)", ErrNoConfig, name, name)
	}
	return err
}

// stepDown stops writing.
func (c *Controller) stepDown(why string) {
	c.mu.Lock()
	c.validUntil = time.Time{}
	c.mu.Unlock()
	if c.loop != nil {
		c.loop.Stop()
	}
	if c.lim != nil {
		_ = c.lim.Close()
	}
	c.lim, c.loop, c.steering = nil, nil, false
	c.steerErr.Store(nil) // a standby does not steer: nothing failed
	c.forgetStreams()
	if c.leader.Swap(false) {
		c.log.Warn("gave up the lease: not writing the scales", "why", why)
	}
}

// reap takes expired coordinators out of the pressure sets; it returns the
// live ones, and false when it could not read them.
func (c *Controller) reap(ctx context.Context) ([]feedback.Event, bool) {
	gctx, cancel, err := c.guard(ctx)
	if err != nil {
		return nil, false
	}
	defer cancel()
	p, err := redisbus.Reap(gctx, c.rdb, c.o.Prefix)
	if err != nil {
		if ctx.Err() == nil {
			c.log.Warn("reaping the pressure sets failed", "err", err)
		}
		return nil, false
	}
	if len(p.Expired) > 0 {
		c.m.reaped.Add(float64(len(p.Expired)))
		c.log.Info("coordinators stopped reporting: taken out of the pressure sets", "coordinators", p.Expired)
	}
	return p.Live, true
}
