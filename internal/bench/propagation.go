package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/pkg/controller"
	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/feedback/redisbus"
	"github.com/sluice-dev/sluice/pkg/keyspace"
	"github.com/sluice-dev/sluice/pkg/limiter"
	"github.com/sluice-dev/sluice/pkg/state"
)

// PropagationConfig is a propagation measurement: one controller steering
// the scale from the Redis bus, Replicas acquire-only replicas (each with its
// own client and limiter), Samples level changes and scale changes.
type PropagationConfig struct {
	// Client makes the clients: the controller's, the publisher's, the
	// observer's and each replica's are separate connections of it (a
	// *redis.Client: its options are copied).
	Client   *redis.Client
	Replicas int
	Waiters  int // paused Acquire calls, spread over the replicas
	Samples  int
}

// Latencies are quantiles of one measured path, in milliseconds.
type Latencies struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
}

func latencies(d []time.Duration) Latencies {
	slices.Sort(d)
	ms := func(q float64) float64 {
		if len(d) == 0 {
			return 0
		}
		return float64(d[min(len(d)-1, int(q*float64(len(d))))]) / 1e6
	}
	return Latencies{N: len(d), P50: ms(0.5), P99: ms(0.99), Max: ms(1)}
}

// Propagation is what MeasurePropagation found.
type Propagation struct {
	// Floor: a bare PUBLISH to a subscriber on another connection.
	Floor Latencies `json:"floor_publish_to_subscriber"`
	// Enforced: a coordinator's hard event published → the shared scale
	// written by the controller (Redis time of the write), from which
	// every replica's next decision is paused.
	Enforced Latencies `json:"level_change_to_scale_written"`
	// Seen: the same event → the scale change's notification received by
	// another process (one pub/sub hop more).
	Seen Latencies `json:"level_change_to_notified"`
	// Resumed: the scale set from 0 to 1 → each paused waiter's Acquire
	// returning granted (it wakes on the notification, with up to
	// WakeJitter of jitter, 5ms by default, on purpose).
	Resumed Latencies `json:"scale_change_to_waiter_resumed"`
	// Missed counts replica decisions taken after the scale was written
	// that were not paused: must be 0.
	Missed int `json:"missed"`
}

// MeasurePropagation measures how fast pressure reaches the replicas.
func MeasurePropagation(ctx context.Context, cfg PropagationConfig) (Propagation, error) {
	var out Propagation
	prefix := fmt.Sprintf("sluiceprop-%d", time.Now().UnixNano())
	defer cleanup(cfg.Client, prefix)
	client := func() *redis.Client { return redis.NewClient(cfg.Client.Options()) }

	// Floor: bare pub/sub on a channel of its own.
	floor, err := pubsubFloor(ctx, client(), client(), prefix+":floor", cfg.Samples)
	if err != nil {
		return out, err
	}
	out.Floor = latencies(floor)

	ctlRDB := client()
	defer ctlRDB.Close()
	ctl, err := controller.New(ctlRDB, controller.Options{
		Prefix: prefix, ID: "bench", Logger: discard,
		Providers: map[string]limiter.ProviderConfig{provider: benchProvider(cfg.Waiters)},
		Feedback: &feedback.Options{
			Providers: []string{provider}, Policy: feedback.DefaultStepPolicy,
			Rise: feedback.Rise{Dwell: time.Millisecond, MaxStep: 1}, Logger: discard, // rises come back at once between samples
		},
	})
	if err != nil {
		return out, err
	}
	cctx, cancelCtl := context.WithCancel(ctx)
	ctlDone := make(chan error, 1)
	go func() { ctlDone <- ctl.Run(cctx) }()
	stopCtl := sync.OnceValue(func() error { cancelCtl(); return <-ctlDone })
	defer stopCtl()

	var reps []*limiter.Limiter
	var regs []*prometheus.Registry
	for range cfg.Replicas {
		rdb := client()
		defer rdb.Close()
		reg := prometheus.NewRegistry()
		// The plain path: no token lease, no held refusals. It measures how
		// fast the shared scale changes; a leasing replica applies it up
		// to Options.TokenLease later (5 ms by default), or at the
		// scale's notification if that comes first.
		c, err := limiter.New(rdb, limiter.Options{Prefix: prefix, Logger: discard, Registerer: reg, NoTokenLease: true, NoRefusalHold: true})
		if err != nil {
			return out, err
		}
		defer c.Close()
		reps, regs = append(reps, c), append(regs, reg)
	}
	obs := client()
	defer obs.Close()
	if err := waitUntil(ctx, 10*time.Second, func() bool { return ctl.Leader() && exists(ctx, obs, prefix) }); err != nil {
		return out, fmt.Errorf("controller did not take the lease and register: %w", err)
	}
	pubRDB := client()
	defer pubRDB.Close()
	pub, err := redisbus.NewPublisher(pubRDB, redisbus.Options{Prefix: prefix})
	if err != nil {
		return out, err
	}
	notify := obs.Subscribe(ctx, keyspace.Prefix(prefix).Provider(provider).Notify)
	defer notify.Close()
	if _, err := notify.Receive(ctx); err != nil { // the subscription is confirmed
		return out, err
	}
	scaleKey := keyspace.Prefix(prefix).Provider(provider).Scale
	seq := uint64(time.Now().UnixMicro())
	publish := func(level state.Level) error {
		seq++
		return pub.Publish(ctx, feedback.Event{CoordinatorID: "bench-store", QueueSize: 0, Capacity: 100, Level: level, Seq: seq})
	}
	scaleIs := func(want string) func() bool {
		return func() bool { return obs.HGet(ctx, scaleKey, "scale").Val() == want }
	}
	var enforced, seen []time.Duration
	for range cfg.Samples {
		if err := publish(state.OK); err != nil {
			return out, err
		}
		if err := waitUntil(ctx, 5*time.Second, scaleIs("1")); err != nil {
			return out, fmt.Errorf("scale did not come back to 1: %w", err)
		}
		drain(notify)
		t0 := time.Now()
		if err := publish(state.Hard); err != nil {
			return out, err
		}
		for { // a late notification of the rise before may come first
			msg, err := receiveTimeout(ctx, notify, 5*time.Second)
			if err != nil {
				return out, fmt.Errorf("no scale notification after a hard event: %w", err)
			}
			if msg.Payload == "scale 0" {
				break
			}
		}
		seen = append(seen, time.Since(t0))
		at, err := obs.HGet(ctx, scaleKey, "updated_at").Int64()
		if err != nil {
			return out, err
		}
		enforced = append(enforced, time.UnixMicro(at).Sub(t0))
		for _, c := range reps {
			if d, err := c.TryAcquire(ctx, provider, 1); err != nil || d.Reason != limiter.ReasonPaused {
				out.Missed++
			}
		}
	}
	out.Enforced, out.Seen = latencies(enforced), latencies(seen)

	// Paused waiters resuming: the controller holds the scale at 0 while
	// the store is hard; an operator's scale 1 wakes them (the controller
	// would set it back at its next evaluation, so it is stopped first).
	if err := stopCtl(); err != nil {
		return out, err
	}
	op, err := limiter.New(obs, limiter.Options{Prefix: prefix, Logger: discard})
	if err != nil {
		return out, err
	}
	defer op.Close()
	var resumed []time.Duration
	for range cfg.Samples {
		if _, err := op.SetBudgetScale(ctx, provider, 0); err != nil {
			return out, err
		}
		times := make(chan time.Time, cfg.Waiters)
		var wg sync.WaitGroup
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		for i := range cfg.Waiters {
			c := reps[i%len(reps)]
			wg.Go(func() {
				if _, err := c.Acquire(wctx, provider, 1); err == nil {
					times <- time.Now()
				}
			})
		}
		err := waitUntil(ctx, 10*time.Second, func() bool { return pausedWaiters(regs) == cfg.Waiters })
		if err == nil {
			var ch limiter.ScaleChange
			if ch, err = op.SetBudgetScale(ctx, provider, 1); err == nil {
				wg.Wait()
				close(times)
				for t := range times {
					resumed = append(resumed, t.Sub(ch.At))
				}
			}
		}
		cancel()
		wg.Wait()
		if err != nil {
			return out, err
		}
	}
	out.Resumed = latencies(resumed)
	if len(resumed) != cfg.Samples*cfg.Waiters {
		return out, fmt.Errorf("%d of %d paused waiters resumed", len(resumed), cfg.Samples*cfg.Waiters)
	}
	return out, nil
}

// benchProvider has room for every waiter at once and refills fast, so a
// resumed waiter is never rate limited.
func benchProvider(waiters int) limiter.ProviderConfig {
	cfg := limiter.DefaultProviderConfig()
	cfg.Capacity, cfg.RefillRate = int64(max(waiters, 1))*10, 1e6
	return cfg
}

func pubsubFloor(ctx context.Context, pubRDB, subRDB *redis.Client, channel string, samples int) ([]time.Duration, error) {
	defer pubRDB.Close()
	defer subRDB.Close()
	sub := subRDB.Subscribe(ctx, channel)
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		return nil, err
	}
	var out []time.Duration
	for range samples {
		t0 := time.Now()
		if err := pubRDB.Publish(ctx, channel, "x").Err(); err != nil {
			return nil, err
		}
		if _, err := receiveTimeout(ctx, sub, 5*time.Second); err != nil {
			return nil, err
		}
		out = append(out, time.Since(t0))
	}
	return out, nil
}

func receiveTimeout(ctx context.Context, ps *redis.PubSub, d time.Duration) (*redis.Message, error) {
	rctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for {
		m, err := ps.Receive(rctx)
		if err != nil {
			return nil, err
		}
		if msg, ok := m.(*redis.Message); ok {
			return msg, nil
		}
	}
}

// drain drops notifications already received (the rise back to 1).
func drain(ps *redis.PubSub) {
	for {
		m, err := ps.ReceiveTimeout(context.Background(), time.Millisecond)
		if err != nil || m == nil {
			return
		}
	}
}

func exists(ctx context.Context, rdb *redis.Client, prefix string) bool {
	return rdb.Exists(ctx, keyspace.Prefix(prefix).Provider(provider).Config).Val() == 1
}

func waitUntil(ctx context.Context, limit time.Duration, cond func() bool) error {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return errors.New("timed out after " + limit.String())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Microsecond):
		}
	}
	return nil
}

// pausedWaiters sums rate_coordinator_paused_waiters over the replicas.
func pausedWaiters(regs []*prometheus.Registry) int {
	n := 0.0
	for _, reg := range regs {
		mfs, _ := reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() == "rate_coordinator_paused_waiters" {
				for _, m := range mf.GetMetric() {
					n += m.GetGauge().GetValue()
				}
			}
		}
	}
	return int(n)
}

// String formats p as a short table.
func (p Propagation) String() string {
	row := func(name string, l Latencies) string {
		return fmt.Sprintf("%-46s %6d %8.3f %8.3f %8.3f\n", name, l.N, l.P50, l.P99, l.Max)
	}
	return fmt.Sprintf("%-46s %6s %8s %8s %8s\n", "path", "n", "p50 ms", "p99 ms", "max ms") +
		row("PUBLISH → subscriber (floor)", p.Floor) +
		row("hard event → shared scale written", p.Enforced) +
		row("hard event → scale notification received", p.Seen) +
		row("scale 0 → 1 → paused waiter granted", p.Resumed) +
		"replica decisions not paused after the write: " + strconv.Itoa(p.Missed) + "\n"
}
