package limiter_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/pkg/limiter"
)

// TestScriptFlushAndRestart: calls keep working after SCRIPT FLUSH (NOSCRIPT
// -> EVAL) and after a restart that lost every key (the replica that
// registered the provider registers it again).
func TestScriptFlushAndRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	c, _ := newCoord(t, rdb, limiter.Options{CallTimeout: defaultCallTimeout})
	register(t, c, "p", 100, 100)
	if d := try(t, c, "p", 1); !d.Allowed {
		t.Fatalf("%+v", d)
	}
	if err := rdb.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SetBudgetScale(ctx, "p", 0.5); err != nil {
		t.Fatalf("after SCRIPT FLUSH: %v", err)
	}
	if d := try(t, c, "p", 1); !d.Allowed || d.Scale != 0.5 {
		t.Fatalf("after SCRIPT FLUSH: %+v", d)
	}

	srv.Restart(t) // no persistence: keys and scripts are gone
	waitRedis(t, rdb)
	d := try(t, c, "p", 1)
	if !d.Allowed || d.Local || d.Capacity != 100 || d.Scale != 0.5 {
		t.Fatalf("after restart: %+v, want a grant from the re-registered bucket at the scale it had, 0.5", d)
	}
	if src := rdb.HGet(ctx, "sluice:{p}:scale", "source").Val(); !strings.Contains(src, "restored") {
		t.Fatalf("scale source after the restore: %q", src)
	}
	// Many callers at once re-register once.
	var logs syncBuf
	many, _ := newCoord(t, srv.Client(t), limiter.Options{CallTimeout: defaultCallTimeout, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	register(t, many, "p", 100, 100)
	srv.Restart(t)
	waitRedis(t, rdb)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { _, _ = many.TryAcquire(ctx, "p", 1) })
	}
	wg.Wait()
	if n := strings.Count(logs.String(), "registering it again"); n != 1 {
		t.Fatalf("8 concurrent callers re-registered %d times, want once:\n%s", n, logs.String())
	}
	// A replica that never registered the provider learns it is unknown
	// until someone registers it; it does not invent a config.
	other, _ := newCoord(t, srv.Client(t), limiter.Options{CallTimeout: defaultCallTimeout})
	srv.Restart(t)
	waitRedis(t, rdb)
	if _, err := other.TryAcquire(ctx, "p", 1); !errors.Is(err, limiter.ErrUnknownProvider) {
		t.Fatalf("unregistered replica after data loss: %v", err)
	}
}

// syncBuf is a log buffer safe for concurrent writers.
type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func waitRedis(t *testing.T, rdb *redis.Client) {
	t.Helper()
	for range 100 {
		if rdb.Ping(context.Background()).Err() == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("redis did not come back")
}

// fakeClock is a settable clock for the local fallback bucket.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (f *fakeClock) Now() time.Time { f.mu.Lock(); defer f.mu.Unlock(); return f.now }
func (f *fakeClock) Add(d time.Duration) {
	f.mu.Lock()
	f.now = f.now.Add(d)
	f.mu.Unlock()
}

// TestOutageModes stops Redis under each mode, checks what the limiter does,
// starts Redis again and checks that it goes back to the shared bucket by
// itself.
// TestHeartbeatFindsRedisGone: a replica that stopped acquiring still
// learns that Redis is gone, from its failing heartbeat:
// rate_coordinator_redis_up turns 0 with no acquisition (the alert
// SluiceRedisUnreachable rests on it), and 1 again once its prober reaches
// Redis after a restart.
func TestHeartbeatFindsRedisGone(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	srv := redistest.Start(t)
	c, reg := newCoord(t, redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1}),
		// No lease: its refund would be a call besides the heartbeats. A
		// heartbeat's context lasts Heartbeat: longer than CallTimeout, so
		// that a failed heartbeat is the call's own failure, not its
		// caller's deadline (which suspect would check in the background).
		limiter.Options{CallTimeout: 100 * time.Millisecond, RedisRetry: 50 * time.Millisecond, Heartbeat: 400 * time.Millisecond, NoTokenLease: true})
	register(t, c, "p", 100, 100)
	if d := try(t, c, "p", 1); !d.Allowed { // joins the registry: heartbeats from now on
		t.Fatal(d)
	}
	if up := redisUpGauge(t, reg); up != 1 {
		t.Fatalf("rate_coordinator_redis_up %v before the fault, want 1", up)
	}
	srv.Stop()
	waitFor(t, "rate_coordinator_redis_up 0 with Redis gone and no acquisition", func() bool { return redisUpGauge(t, reg) == 0 })
	srv.Restart(t)
	waitFor(t, "rate_coordinator_redis_up 1 once the prober reaches Redis", func() bool { return redisUpGauge(t, reg) == 1 })
}

func TestOutageModes(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	ctx := context.Background()
	setup := func(t *testing.T, mode limiter.OutageMode) (*redistest.Server, *limiter.Limiter, *fakeClock, *prometheus.Registry) {
		srv := redistest.Start(t)
		clock := &fakeClock{now: time.Now()}
		c, reg := newCoord(t, redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1}), limiter.Options{CallTimeout: defaultCallTimeout, Outage: mode, Now: clock.Now, RedisRetry: 50 * time.Millisecond, Heartbeat: 50 * time.Millisecond})
		register(t, c, "p", 100, 100)
		if d := try(t, c, "p", 1); !d.Allowed {
			t.Fatal(d)
		}
		return srv, c, clock, reg
	}
	recovers := func(t *testing.T, srv *redistest.Server, c *limiter.Limiter) {
		t.Helper()
		srv.Restart(t)
		// The background probe finds Redis within a few RedisRetry periods.
		waitFor(t, "the limiter back on Redis", func() bool {
			d, err := c.TryAcquire(ctx, "p", 1)
			return err == nil && d.Allowed && !d.Local
		})
	}

	t.Run("fail_closed", func(t *testing.T) {
		srv, c, _, _ := setup(t, limiter.FailClosed)
		srv.Stop()
		for range 3 {
			if _, err := c.TryAcquire(ctx, "p", 1); !errors.Is(err, limiter.ErrRedisUnavailable) {
				t.Fatalf("err = %v, want ErrRedisUnavailable", err)
			}
		}
		if _, err := c.Acquire(ctx, "p", 1); !errors.Is(err, limiter.ErrRedisUnavailable) {
			t.Fatalf("Acquire: err = %v, want ErrRedisUnavailable at once", err)
		}
		if _, err := c.SetBudgetScale(ctx, "p", 0.5); !errors.Is(err, limiter.ErrRedisUnavailable) {
			t.Fatalf("SetBudgetScale: err = %v", err)
		}
		recovers(t, srv, c)
	})

	t.Run("fail_open", func(t *testing.T) {
		srv, c, _, _ := setup(t, limiter.FailOpen)
		srv.Stop()
		for range 1000 {
			if d := try(t, c, "p", 1); !d.Allowed || !d.Local {
				t.Fatalf("%+v, want granted by fail_open", d)
			}
		}
		recovers(t, srv, c)
	})

	t.Run("local_fallback", func(t *testing.T) {
		srv, c, clock, reg := setup(t, limiter.LocalFallback)
		// A second replica of the provider: the local rate is shared by 2.
		peer, _ := newCoord(t, srv.Client(t), limiter.Options{CallTimeout: defaultCallTimeout})
		try(t, peer, "p", 1) // the first acquisition joins the replica registry
		if _, err := c.SetBudgetScale(ctx, "p", 0.5); err != nil {
			t.Fatal(err)
		}
		// c learns at its next heartbeat.
		waitFor(t, "2 live replicas", func() bool { return liveReplicas(t, reg, "p") == 2 })
		try(t, c, "p", 1) // learn the scale 0.5
		srv.Stop()
		// 100/s × 0.5 ÷ 2 replicas = 25/s, burst 100 ÷ 2 = 50, starting empty.
		d := try(t, c, "p", 1)
		if d.Allowed || !d.Local || d.RetryAfter != 40*time.Millisecond {
			t.Fatalf("first outage decision %+v, want local, empty, retry 40ms", d)
		}
		clock.Add(time.Second)
		granted := 0
		for try(t, c, "p", 1).Allowed {
			granted++
		}
		if granted != 25 {
			t.Fatalf("granted %d in 1s of outage, want 25 (rate × scale ÷ replicas)", granted)
		}
		clock.Add(time.Hour)
		granted = 0
		for try(t, c, "p", 1).Allowed {
			granted++
		}
		if granted != 50 {
			t.Fatalf("granted %d after an hour, want the local burst 50", granted)
		}
		recovers(t, srv, c)
	})
}

// TestStalledRedis: a Redis that accepts connections and answers nothing
// (SIGSTOP) does not hold callers: a call gets no answer within
// CallTimeout and the outage mode decides (fail_closed refuses,
// local_fallback decides locally), before the caller's deadline; a caller
// whose deadline is shorter gets its deadline error by then. When Redis
// thaws, the shared bucket is back.
//
// The 100 ms CallTimeout is the stall's measure, not the setup's: on a
// loaded machine a healthy Redis may take longer than that to answer (the
// test failed 1 run in 2 with two busy loops when it registered through
// the limiter under test). So the provider is registered through a
// limiter that waits, and the one under test learns it from Redis with as
// many tries as a loaded machine needs (a slow answer sends it to its
// outage mode, and its probe brings it back).
func TestStalledRedis(t *testing.T) {
	ctx := context.Background()
	for _, mode := range []limiter.OutageMode{limiter.FailClosed, limiter.LocalFallback} {
		t.Run(mode.String(), func(t *testing.T) {
			srv := redistest.Start(t)
			rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1, ContextTimeoutEnabled: true})
			t.Cleanup(func() { rdb.Close() })
			admin, _ := newCoord(t, rdb, limiter.Options{CallTimeout: time.Minute})
			register(t, admin, "p", 100, 100)
			c, _ := newCoord(t, rdb, limiter.Options{Outage: mode, CallTimeout: 100 * time.Millisecond, RedisRetry: 50 * time.Millisecond})
			waitFor(t, "a decision from Redis", func() bool {
				d, err := c.TryAcquire(ctx, "p", 1)
				return err == nil && !d.Local
			})
			srv.Pause(t)
			for range 3 {
				cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				d, err := c.TryAcquire(cctx, "p", 1)
				deadline := cctx.Err()
				cancel()
				if deadline != nil {
					t.Fatal("the caller's 5s deadline passed: the stall held the call")
				}
				switch mode {
				case limiter.FailClosed:
					if !errors.Is(err, limiter.ErrRedisUnavailable) {
						t.Fatalf("stalled, fail_closed: %+v, %v; want ErrRedisUnavailable", d, err)
					}
				case limiter.LocalFallback:
					if err != nil || !d.Local {
						t.Fatalf("stalled, local_fallback: %+v, %v; want a local decision", d, err)
					}
				}
			}
			// A replica's first acquisition (which joins the registry) is
			// bounded too.
			first, _ := newCoord(t, rdb, limiter.Options{Outage: mode, CallTimeout: 100 * time.Millisecond})
			cctx, cancelFirst := context.WithTimeout(ctx, 5*time.Second)
			_, err := first.TryAcquire(cctx, "p", 1)
			if cctx.Err() != nil {
				t.Fatalf("a first acquisition on a stalled Redis held the call past the caller's 5s deadline: %v", err)
			}
			cancelFirst()
			// A caller's deadline shorter than CallTimeout bounds the call.
			c2, _ := newCoord(t, rdb, limiter.Options{Outage: mode, CallTimeout: time.Hour})
			cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
			start := time.Now()
			_, err = c2.TryAcquire(cctx, "p", 1)
			cancel()
			if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 30*time.Second {
				t.Fatalf("a 100ms deadline on a stalled Redis: %v after %v", err, time.Since(start))
			}
			srv.Resume(t)
			waitFor(t, "the shared bucket back", func() bool {
				d, err := c.TryAcquire(ctx, "p", 1)
				return err == nil && !d.Local
			})
		})
	}
}

// TestLocalFallbackOutageStart: Redis dies while 16 goroutines acquire;
// the local fallback grants no more than its rate allows from the moment
// Redis died (it starts empty), however many calls were in flight.
func TestLocalFallbackOutageStart(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	c, _ := newCoord(t, redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1}),
		limiter.Options{CallTimeout: defaultCallTimeout, Outage: limiter.LocalFallback, RedisRetry: 50 * time.Millisecond})
	register(t, c, "p", 100, 10)
	var local, shared atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	spin(&wg, stop, 16, func() {
		cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		d, err := c.TryAcquire(cctx, "p", 1)
		cancel()
		switch {
		case err != nil || !d.Allowed:
			time.Sleep(time.Millisecond)
		case d.Local:
			local.Add(1)
		default:
			shared.Add(1)
		}
	})
	waitFor(t, "grants from Redis", func() bool { return shared.Load() >= 100 }) // the burst is spent
	srv.Stop()
	stopped := time.Now()
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	elapsed := time.Since(stopped)
	// 10/s from an empty bucket, for at most the time since Redis died.
	if bound := int64(10*elapsed.Seconds()) + 1; local.Load() > bound {
		t.Fatalf("local fallback granted %d in %v of outage, more than rate × time = %d", local.Load(), elapsed, bound)
	}
	t.Logf("outage of %v: %d local grants (bound %.0f)", elapsed.Round(time.Millisecond), local.Load(), 10*elapsed.Seconds()+1)
}

// TestRestartUnderLoad: Redis killed (-9) under load from 3 replicas and
// restarted a second later, without persistence (it comes back empty: the
// replicas register the provider again and restore the scale they saw) and
// with an append-only file (it comes back with its keys), under each outage
// mode. Across the whole run the grants from Redis never exceed the shared
// bucket's bound (plus one full bucket after a restart without
// persistence); during the outage fail_closed grants nothing and
// local_fallback no more than rate × scale over the outage, across the
// replicas; the operator's scale 0.5 survives; the limiter is back on
// Redis within RedisRetry periods of its return.
func TestRestartUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	for _, tc := range []struct {
		aof  bool
		mode limiter.OutageMode
	}{{false, limiter.LocalFallback}, {true, limiter.FailClosed}, {true, limiter.FailOpen}, {true, limiter.LocalFallback}} {
		name := "no_persistence/" + tc.mode.String()
		if tc.aof {
			name = "aof/" + tc.mode.String()
		}
		t.Run(name, func(t *testing.T) { restartUnderLoad(t, tc.aof, tc.mode) })
	}
}

func restartUnderLoad(t *testing.T, aof bool, mode limiter.OutageMode) {
	const capacity, rate, scale = 20, 300, 0.5
	srv := redistest.Start(t)
	if aof {
		srv = redistest.StartAOF(t)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var replicas []*limiter.Limiter
	var regs []*prometheus.Registry
	for range 3 {
		rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
		t.Cleanup(func() { rdb.Close() })
		c, reg := newCoord(t, rdb, limiter.Options{CallTimeout: defaultCallTimeout, Outage: mode, RedisRetry: 100 * time.Millisecond, Heartbeat: 100 * time.Millisecond})
		register(t, c, "p", capacity, rate)
		try(t, c, "p", 1)
		replicas, regs = append(replicas, c), append(regs, reg)
	}
	// Each replica learns that there are 3 at a heartbeat.
	for i, reg := range regs {
		waitFor(t, fmt.Sprintf("replica %d to see 3 live replicas", i), func() bool { return liveReplicas(t, reg, "p") == 3 })
	}
	op, _ := newCoord(t, srv.Client(t), limiter.Options{CallTimeout: defaultCallTimeout, Source: "operator"})
	ch, err := op.SetBudgetScale(ctx, "p", scale)
	if err != nil {
		t.Fatal(err)
	}
	var fromRedis, local, errs atomic.Int64
	var wg sync.WaitGroup
	for _, c := range replicas {
		wg.Go(func() {
			for ctx.Err() == nil {
				d, err := c.Acquire(ctx, "p", 1)
				switch {
				case err != nil && ctx.Err() == nil:
					errs.Add(1)
					time.Sleep(time.Millisecond) // fail_closed refuses at once: do not spin
				case err != nil:
				case d.Local:
					local.Add(1)
				default:
					fromRedis.Add(1)
				}
			}
		})
	}
	waitFor(t, "grants from Redis", func() bool { return fromRedis.Load() > 10 })
	down := time.Now()
	srv.Stop()
	time.Sleep(time.Second) // the outage
	outageLocal, outageErrs := local.Load(), errs.Load()
	window := time.Since(down)
	srv.Restart(t)
	back := time.Now()
	before := fromRedis.Load()
	waitFor(t, "grants from Redis after the restart", func() bool { return fromRedis.Load() > before })
	recovery := time.Since(back)
	time.Sleep(500 * time.Millisecond) // load on the restarted Redis
	cancel()
	wg.Wait()

	admin := srv.Client(t)
	_, last := bucketState(t, admin, "p")
	elapsed := last.Sub(ch.At)
	bound := ch.Tokens + rate*scale*elapsed.Seconds()
	if !aof {
		bound += capacity // registered again, full
	}
	t.Logf("%v outage: %d local grants, %d errors; %d grants from Redis of bound %.0f; back on Redis %v after the restart",
		window.Round(time.Millisecond), outageLocal, outageErrs, fromRedis.Load(), bound, recovery.Round(time.Millisecond))
	if got := admin.HGet(context.Background(), "sluice:{p}:scale", "scale").Val(); got != "0.5" {
		t.Errorf("scale after the restart: %q, want the operator's 0.5", got)
	}
	if float64(fromRedis.Load()) > bound {
		t.Errorf("over-admission: %d grants from Redis > bound %.1f", fromRedis.Load(), bound)
	}
	if recovery > 2*time.Second {
		t.Errorf("back on Redis %v after it returned, want within a few RedisRetry (100ms)", recovery)
	}
	switch mode {
	case limiter.FailClosed:
		if outageLocal != 0 || outageErrs == 0 {
			t.Errorf("fail_closed: %d local grants, %d errors during the outage; want 0 and some", outageLocal, outageErrs)
		}
	case limiter.FailOpen:
		if outageLocal == 0 || outageErrs != 0 {
			t.Errorf("fail_open: %d local grants, %d errors; want grants, no error", outageLocal, outageErrs)
		}
	case limiter.LocalFallback:
		// 300/s × 0.5 shared by 3 replicas, each local bucket starting
		// empty: never more than the global budget over the outage.
		if b := rate * scale * window.Seconds(); outageLocal == 0 || float64(outageLocal) > b || outageErrs != 0 {
			t.Errorf("local_fallback: %d local grants during a %v outage, want (0, %.0f]; %d errors", outageLocal, window, b, outageErrs)
		}
	}
}

// TestBreakerAndCooldownAcrossReplicas: one replica's failures open the
// breaker for all; half-open lets exactly one probe through; its success
// closes it for all. A cooldown triggered by one replica stops every one.
func TestBreakerAndCooldownAcrossReplicas(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		ctx := context.Background()
		clock := newRedisClock(b)
		var rs []*limiter.Limiter
		for range 3 {
			// Redis's clock jumps here (clock.advance), the process's does
			// not: every call asks Redis, none is held.
			c, _ := newCoord(t, b.Client(t), limiter.Options{CallTimeout: defaultCallTimeout, NoRefusalHold: true})
			rs = append(rs, c)
		}
		// Timeouts of a second: on the real server, a test stalled that long
		// by a busy machine would see the breaker's state move on.
		conf := cfg(100, 1000)
		conf.BreakerThreshold, conf.BreakerTimeout, conf.Cooldown = 3, time.Second, time.Second
		if _, err := rs[0].Register(ctx, "p", conf); err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if err := rs[0].RecordFailure(ctx, "p"); err != nil {
				t.Fatal(err)
			}
		}
		for i, c := range rs {
			if d := try(t, c, "p", 1); d.Allowed || d.Reason != limiter.ReasonCircuitOpen {
				t.Fatalf("replica %d: %+v, want circuit_open", i, d)
			}
		}
		clock.advance(time.Second + 50*time.Millisecond)
		// Several replicas race for the probe: exactly one wins.
		var probes, open atomic.Int64
		var wg sync.WaitGroup
		for _, c := range rs {
			wg.Go(func() {
				d := try(t, c, "p", 1)
				switch {
				case d.Reason == limiter.ReasonProbe:
					probes.Add(1)
				case d.Reason == limiter.ReasonCircuitOpen:
					open.Add(1)
				}
			})
		}
		wg.Wait()
		if probes.Load() != 1 || open.Load() != 2 {
			t.Fatalf("%d probes and %d refusals, want 1 and 2", probes.Load(), open.Load())
		}
		if err := rs[2].RecordSuccess(ctx, "p"); err != nil {
			t.Fatal(err)
		}
		for i, c := range rs {
			if d := try(t, c, "p", 1); !d.Allowed || d.Breaker != "closed" {
				t.Fatalf("replica %d after the probe succeeded: %+v", i, d)
			}
		}

		until, err := rs[1].TriggerCooldown(ctx, "p", "pacing", "", 0)
		if err != nil {
			t.Fatal(err)
		}
		for i, c := range rs {
			d := try(t, c, "p", 1)
			if d.Now.Before(until) && (d.Allowed || d.Reason != limiter.ReasonCooldown || d.RetryAfter > time.Second) {
				t.Fatalf("replica %d during cooldown: %+v", i, d)
			}
		}
		if s := mustStatus(t, rs[0], "p"); s.Now.Before(until) && (s.Cooldown == nil || s.Cooldown.Scope != "pacing" || !s.Cooldown.Until.Equal(until)) {
			t.Fatalf("status cooldown %+v, want pacing until %v", s.Cooldown, until)
		}
		if b.Mini != nil {
			clock.advance(time.Second)
			if d := try(t, rs[0], "p", 1); !d.Allowed {
				t.Fatalf("after cooldown: %+v", d)
			}
			return
		}
		// On the real server, Acquire waits the cooldown out.
		d, err := rs[0].Acquire(ctx, "p", 1)
		if err != nil || d.Now.Before(until) {
			t.Fatalf("Acquire during cooldown returned %+v %v, before the cooldown ended at %v", d, err, until)
		}
	})
}

// redisClock moves Redis time forward: miniredis's fixed clock, or real time
// on a real server.
type redisClock struct {
	b   redistest.Backend
	now time.Time
}

func newRedisClock(b redistest.Backend) *redisClock {
	c := &redisClock{b: b, now: time.Now()}
	if b.Mini != nil {
		b.Mini.SetTime(c.now)
	}
	return c
}

func (c *redisClock) advance(d time.Duration) {
	if c.b.Mini == nil {
		time.Sleep(d)
		return
	}
	c.now = c.now.Add(d)
	c.b.Mini.SetTime(c.now)
}

// TestRestartRestoresRulesAndLanes: after a restart without persistence the
// replica that registers the provider again sets its pacing rules and lanes
// again too — the rules it learnt from Redis (here set by another replica),
// the lanes it set — or every request would be decided against the bucket
// alone. The rules' state starts empty (docs/rules.md says what that costs).
func TestRestartRestoresRulesAndLanes(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	c, _ := newCoord(t, rdb, limiter.Options{CallTimeout: defaultCallTimeout})
	register(t, c, "p", 100, 100)
	lanes := []limiter.Lane{{Name: "live", Priority: 1, Burst: 10}, {Name: "backfill"}}
	if _, err := c.SetLanes(ctx, "p", lanes); err != nil {
		t.Fatal(err)
	}
	admin, _ := newCoord(t, srv.Client(t), limiter.Options{CallTimeout: defaultCallTimeout})
	rules := []limiter.Rule{{Name: "hist", Kind: limiter.RuleWindow, Limit: 2, Period: time.Hour}}
	if _, err := admin.SetRules(ctx, "p", rules); err != nil {
		t.Fatal(err)
	}
	req := limiter.Request{Key: "k", Lane: "backfill"}
	if d, err := c.TryAcquireRequest(ctx, "p", req); err != nil || !d.Allowed {
		t.Fatalf("before the restart: %+v, %v", d, err) // c learns the rules here
	}
	srv.Restart(t) // no persistence: the config, rules, lanes and state are gone
	waitRedis(t, rdb)
	granted := 0
	for range 4 {
		d, err := c.TryAcquireRequest(ctx, "p", req)
		if err != nil {
			t.Fatalf("after the restart: %v", err)
		}
		if d.Allowed {
			granted++
		} else if d.Rule != "hist" {
			t.Fatalf("refused by %q, want hist: %+v", d.Rule, d)
		}
	}
	if granted != 2 {
		t.Fatalf("%d of 4 granted after the restart, want the window's 2 (its state starts empty; without the rules all 4)", granted)
	}
	got, err := c.Lanes(ctx, "p")
	if err != nil || len(got) != 2 || got[0].Name != "live" || got[0].Burst != 10 {
		t.Fatalf("lanes after the restart: %+v, %v", got, err)
	}
	// Replicas asking at once: none is decided on the provider registered
	// again but without its rules (it would learn it has none, and grant).
	cs := []*limiter.Limiter{c}
	for range 2 {
		r, _ := newCoord(t, srv.Client(t), limiter.Options{CallTimeout: defaultCallTimeout})
		register(t, r, "p", 100, 100)
		if _, err := r.TryAcquireRequest(ctx, "p", req); err != nil { // learns the rules
			t.Fatal(err)
		}
		cs = append(cs, r)
	}
	for round := range 5 {
		srv.Restart(t)
		waitRedis(t, rdb)
		var wg sync.WaitGroup
		var n atomic.Int64
		for _, r := range cs {
			for range 4 {
				wg.Go(func() {
					if d, err := r.TryAcquireRequest(ctx, "p", req); err == nil && d.Allowed {
						n.Add(1)
					}
				})
			}
		}
		wg.Wait()
		if n.Load() > 2 {
			t.Fatalf("restart %d: %d of 12 concurrent requests granted through a window of 2", round, n.Load())
		}
	}
}
