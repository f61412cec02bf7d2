// Package sim runs sluice's whole loop with synthetic parts: pipeline
// replicas pull market-data ticks from a simulated provider with a pacing
// limit, through one shared limiter budget, and write them through a write
// coordinator whose sink is slower than the budget; the coordinator's
// pressure flows back through Redis to every replica's feedback handler. It
// uses only the public APIs of limiter, feedback and store, each replica with
// its own Redis client; one handler steers the shared scale, as the
// controller does in a fleet. `sluice demo` and the closed-loop tests run it.
package sim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/feedback/redisbus"
	"github.com/sluice-dev/sluice/pkg/keyspace"
	"github.com/sluice-dev/sluice/pkg/limiter"
	"github.com/sluice-dev/sluice/pkg/pipeline"
	"github.com/sluice-dev/sluice/pkg/state"
	"github.com/sluice-dev/sluice/pkg/store"
)

// Config describes one run. Zero fields take the defaults given.
type Config struct {
	// NewClient returns a new Redis client; every replica, the coordinator
	// and the controller get their own. Required.
	NewClient func() redis.UniversalClient
	// Prefix of the Redis keys; default "sluice".
	Prefix string
	// Provider name; default "ibkr".
	Provider string
	// Rate is the provider's pacing limit (tokens/s), the budget's base
	// rate; default 600. Burst is the bucket's capacity; default 20.
	Rate  float64
	Burst int64
	// Replicas pulling from the provider; default 3.
	Replicas int
	// SinkRate is how many items per second the store can write; default 300.
	SinkRate float64
	// QueueCapacity of the write coordinator; default 1000.
	QueueCapacity int
	// Feedback closes the loop; false runs the same without handlers (open loop).
	Feedback bool
	// Policy, and Dwell and MaxRise (feedback.Options.Rise's Dwell and
	// MaxStep) of the handlers; defaults: the PI policy, the policy's rise
	// shaping.
	Policy  feedback.Policy
	Dwell   time.Duration
	MaxRise float64
	// Duration of the run; default 20s. Interval between samples; default 1s.
	Duration time.Duration
	Interval time.Duration
	// Symbols the ticks are for; default a handful.
	Symbols []string
	// Lanes, when set, runs live requests beside the pull, which becomes
	// a backfill starting mid-run (lanes.go).
	Lanes *Lanes
	// OnSample, when set, is called after every sample (the demo prints a line).
	OnSample func(Sample)
	Logger   *slog.Logger
}

func (c *Config) defaults() error {
	if c.NewClient == nil {
		return errors.New("sim: NewClient is required")
	}
	setS := func(v *string, d string) {
		if *v == "" {
			*v = d
		}
	}
	setF := func(v *float64, d float64) {
		if *v == 0 {
			*v = d
		}
	}
	setD := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	setS(&c.Prefix, keyspace.DefaultPrefix)
	setS(&c.Provider, "ibkr")
	setF(&c.Rate, 600)
	setF(&c.SinkRate, 300)
	if c.Burst == 0 {
		c.Burst = 20
	}
	if c.Replicas == 0 {
		c.Replicas = 3
	}
	if c.QueueCapacity == 0 {
		c.QueueCapacity = 1000
	}
	if c.Policy == nil {
		c.Policy = feedback.DefaultPIPolicy
	}
	setD(&c.Duration, 20*time.Second)
	setD(&c.Interval, time.Second)
	if len(c.Symbols) == 0 {
		c.Symbols = []string{"AAPL", "MSFT", "NVDA", "SPY", "ES", "EURUSD"}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.laneDefaults()
	switch {
	case c.Rate <= 0 || c.SinkRate <= 0:
		return fmt.Errorf("sim: rate=%v sink_rate=%v: must be > 0", c.Rate, c.SinkRate)
	case c.Replicas < 1 || c.Replicas > 256:
		return fmt.Errorf("sim: replicas=%d: must be in [1, 256]", c.Replicas)
	case c.Duration < time.Second:
		return fmt.Errorf("sim: duration=%v: must be at least 1s", c.Duration)
	}
	return nil
}

// Tick is one synthetic market-data update.
type Tick struct {
	Symbol string
	Price  float64
	At     time.Time
}

// Sample is the state of the run at one instant.
type Sample struct {
	T          time.Duration // since the start
	Admitted   float64       // grants per second across replicas, over the last interval
	PerReplica []float64     // the same, per replica
	Scale      float64       // the provider's scale in force
	Level      state.Level
	QueueDepth int
	Written    int64   // items written so far
	WriteRate  float64 // items written per second over the last interval
	// Live is the live lane's grants a second (in Admitted too; the rest,
	// PerReplica, is the backfill), LiveP99 its p99 wait in ms, over the
	// last interval, when the run has lanes.
	Live, LiveP99 float64
}

// Result sums up a run.
type Result struct {
	Config           Config
	Fetched          int64   // ticks pulled from the provider
	Written          int64   // ticks the sink wrote
	Lost             int64   // fetched but never written (should be 0)
	PacingViolations int64   // calls the provider refused for breaking its pacing limit
	MaxQueueFill     float64 // highest queue depth ÷ capacity
	LevelChanges     int64
	LevelChangesPerM float64
	SubmitsBlocked   int64   // submits that found the queue full
	Utilisation      float64 // sink busy fraction in the steady state (after the first 25% of the run)
	Samples          []Sample
}

// Run runs the loop for cfg.Duration (or until ctx ends) and reports.
func Run(ctx context.Context, cfg Config) (Result, error) {
	if err := cfg.defaults(); err != nil {
		return Result{}, err
	}
	log := cfg.Logger
	var clients []redis.UniversalClient
	newClient := func() redis.UniversalClient {
		c := cfg.NewClient()
		clients = append(clients, c)
		return c
	}
	defer func() {
		for _, c := range clients {
			_ = c.Close()
		}
	}()

	// The controller registers the provider (as an operator would) and reads the scale.
	ctl, err := limiter.New(newClient(), limiter.Options{Prefix: cfg.Prefix, Source: "sim", Logger: log})
	if err != nil {
		return Result{}, err
	}
	defer ctl.Close()
	pc := limiter.DefaultProviderConfig()
	pc.Capacity, pc.RefillRate = cfg.Burst, cfg.Rate
	pc.Cooldown, pc.BreakerTimeout = 2*time.Second, 2*time.Second
	if _, err := ctl.Register(ctx, cfg.Provider, pc); err != nil {
		return Result{}, fmt.Errorf("sim: register provider: %w", err)
	}
	if _, err := ctl.SetBudgetScale(ctx, cfg.Provider, 1); err != nil {
		return Result{}, err
	}
	if err := cfg.setLanes(ctx, ctl); err != nil {
		return Result{}, err
	}

	// The store: a write coordinator in front of a slow sink, publishing its
	// pressure through Redis.
	sink := &pacedSink{rate: cfg.SinkRate}
	pub, err := redisbus.NewPublisher(newClient(), redisbus.Options{Prefix: cfg.Prefix, TTL: 5 * time.Second})
	if err != nil {
		return Result{}, err
	}
	wc, err := store.New[Tick](sink, store.Options[Tick]{
		ID: "store-0", Capacity: cfg.QueueCapacity, Workers: 4, BatchSize: 50, Linger: 20 * time.Millisecond,
		Publisher: pub, Heartbeat: 500 * time.Millisecond, Logger: log,
	})
	if err != nil {
		return Result{}, err
	}

	// One handler steers the shared scale, as the controller does in a
	// fleet: the replicas only acquire.
	if cfg.Feedback {
		steer, err := pipeline.New(ctx, newClient(), pipeline.Options{
			Limiter: limiter.Options{Prefix: cfg.Prefix, ReplicaID: "controller", Source: "controller", Logger: log},
			Feedback: &feedback.Options{
				Providers: []string{cfg.Provider}, Policy: cfg.Policy, Rise: feedback.Rise{Dwell: cfg.Dwell, MaxStep: cfg.MaxRise},
				CoordinatorTTL: 5 * time.Second, Tick: 250 * time.Millisecond, Logger: log,
			},
		})
		if err != nil {
			_ = wc.Close(context.Background())
			return Result{}, err
		}
		defer steer.Close()
	}

	upstream := newProvider(cfg.Rate, float64(cfg.Burst))
	runCtx, stop := context.WithTimeout(ctx, cfg.Duration)
	defer stop()
	var wg sync.WaitGroup
	var fetched atomic.Int64
	var live laneStats
	start := time.Now()
	replicas := make([]*replica, cfg.Replicas)
	for i := range replicas {
		r, err := newReplica(ctx, i, newClient(), cfg, log)
		if err != nil {
			stop()
			wg.Wait()
			_ = wc.Close(context.Background())
			return Result{}, err
		}
		defer r.Close()
		replicas[i] = r
		wg.Go(func() { r.produce(runCtx, cfg, upstream, wc, &fetched, start) })
		if cfg.Lanes != nil {
			wg.Go(func() { r.live(runCtx, cfg, upstream, wc, &fetched, &live) })
		}
	}

	res := Result{Config: cfg}
	var last Sample
	lastAdmitted := make([]int64, len(replicas))
	tick := time.NewTicker(cfg.Interval)
	defer tick.Stop()
sampling:
	for {
		select {
		case <-runCtx.Done():
			break sampling
		case <-tick.C:
		}
		st := wc.Stats()
		s := Sample{T: time.Since(start), Level: st.Level, QueueDepth: st.Depth, Written: sink.written.Load()}
		secs := cfg.Interval.Seconds()
		for i, r := range replicas {
			n := r.admitted.Load()
			rate := float64(n-lastAdmitted[i]) / secs
			lastAdmitted[i] = n
			s.PerReplica = append(s.PerReplica, rate)
			s.Admitted += rate
		}
		s.WriteRate = float64(s.Written-last.Written) / secs
		if cfg.Lanes != nil {
			s.Live, s.LiveP99 = live.take(secs)
			s.Admitted += s.Live
		}
		if st, err := ctl.Status(runCtx, cfg.Provider); err == nil {
			s.Scale = st.Scale
		}
		res.Samples = append(res.Samples, s)
		last = s
		if cfg.OnSample != nil {
			cfg.OnSample(s)
		}
	}
	wg.Wait()
	if err := wc.Close(context.Background()); err != nil {
		return res, err
	}
	elapsed := time.Since(start)
	st := wc.Stats()
	res.Fetched = fetched.Load()
	res.Written = sink.written.Load()
	res.Lost = res.Fetched - res.Written
	res.PacingViolations = upstream.violations.Load()
	res.MaxQueueFill = float64(st.MaxDepth) / float64(st.Capacity)
	res.LevelChanges = st.Transitions
	res.LevelChangesPerM = float64(st.Transitions) / elapsed.Minutes()
	res.SubmitsBlocked = st.SubmitsBlocked
	res.Utilisation = sink.utilisation(start.Add(cfg.Duration/4), start.Add(cfg.Duration))
	return res, nil
}

// replica is one pipeline replica: its own client and limiter (a
// pipeline.Replica without feedback: the steering handler is another).
type replica struct {
	*pipeline.Replica
	id       int
	admitted atomic.Int64
}

func newReplica(ctx context.Context, id int, rdb redis.UniversalClient, cfg Config, log *slog.Logger) (*replica, error) {
	o := pipeline.Options{Limiter: limiter.Options{Prefix: cfg.Prefix, ReplicaID: fmt.Sprintf("replica-%d", id), Logger: log}}
	p, err := pipeline.New(ctx, rdb, o)
	if err != nil {
		return nil, err
	}
	return &replica{Replica: p, id: id}, nil
}

// produce pulls ticks while ctx lasts (the backfill of a run with lanes).
// A fetched tick is always submitted, even after ctx ends, so that nothing
// fetched is lost.
func (r *replica) produce(ctx context.Context, cfg Config, up *provider, wc *store.WriteCoordinator[Tick], fetched *atomic.Int64, start time.Time) {
	rnd := rand.New(rand.NewPCG(uint64(r.id), 42))
	for ctx.Err() == nil {
		d, err := r.acquire(ctx, cfg, start)
		if err != nil {
			continue // ctx ended, or a transient error: the loop condition decides
		}
		r.admitted.Add(1)
		if !r.fetchAndSubmit(cfg, d, up, wc, fetched, rnd) {
			return
		}
	}
}

// fetchAndSubmit fetches one tick after grant d and submits it; false
// when the coordinator is closed (cannot happen before the run ends). A
// pacing violation is reported as a real pipeline must: a failure and a
// shared cooldown; a probe's success closes the breaker.
func (r *replica) fetchAndSubmit(cfg Config, d limiter.Decision, up *provider, wc *store.WriteCoordinator[Tick], fetched *atomic.Int64, rnd *rand.Rand) bool {
	lim := r.Limiter()
	tick, err := up.fetch(cfg.Symbols[rnd.IntN(len(cfg.Symbols))], rnd)
	if err != nil {
		_ = lim.RecordFailure(context.Background(), cfg.Provider)
		_, _ = lim.TriggerCooldown(context.Background(), cfg.Provider, "pacing", "the provider refused a call", 0)
		return true
	}
	if d.Reason == limiter.ReasonProbe {
		_ = lim.RecordSuccess(context.Background(), cfg.Provider)
	}
	fetched.Add(1)
	return wc.Submit(context.Background(), tick) == nil
}

// provider simulates an upstream API that enforces its pacing limit with
// its own token bucket (with 5% of a second of slack for clock and network
// jitter) and refuses calls that break it.
type provider struct {
	mu         sync.Mutex
	rate, cap  float64
	tokens     float64
	last       time.Time
	prices     map[string]float64
	violations atomic.Int64
}

var errPacing = errors.New("sim: pacing violation")

func newProvider(rate, burst float64) *provider {
	c := burst + 0.05*rate
	return &provider{rate: rate, cap: c, tokens: c, last: time.Now(), prices: map[string]float64{}}
}

func (p *provider) fetch(symbol string, rnd *rand.Rand) (Tick, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	p.tokens = min(p.cap, p.tokens+now.Sub(p.last).Seconds()*p.rate)
	p.last = now
	if p.tokens < 1 {
		p.violations.Add(1)
		return Tick{}, errPacing
	}
	p.tokens--
	price, ok := p.prices[symbol]
	if !ok {
		price = 100 + rnd.Float64()*100
	}
	price *= 1 + (rnd.Float64()-0.5)*0.002
	p.prices[symbol] = price
	return Tick{Symbol: symbol, Price: price, At: now}, nil
}

// pacedSink is a store that writes at most rate items per second, however
// many workers call it: each batch occupies it for len(batch)/rate seconds.
type pacedSink struct {
	rate    float64
	mu      sync.Mutex
	next    time.Time // when the store is free again
	busy    []span
	written atomic.Int64
}

type span struct{ from, to time.Time }

func (s *pacedSink) Write(ctx context.Context, batch []Tick) error {
	s.mu.Lock()
	from := later(time.Now(), s.next)
	to := from.Add(time.Duration(float64(len(batch)) / s.rate * float64(time.Second)))
	s.next = to
	s.busy = append(s.busy, span{from, to})
	s.mu.Unlock()
	t := time.NewTimer(time.Until(to))
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return ctx.Err()
	}
	s.written.Add(int64(len(batch)))
	return nil
}

// utilisation is the fraction of [from, to] the sink was busy.
func (s *pacedSink) utilisation(from, to time.Time) float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var busy time.Duration
	for _, b := range s.busy {
		lo, hi := later(b.from, from), b.to
		if to.Before(hi) {
			hi = to
		}
		if hi.After(lo) {
			busy += hi.Sub(lo)
		}
	}
	return busy.Seconds() / to.Sub(from).Seconds()
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
