package limiter_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/internal/promutil"
	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/pkg/limiter"
)

// bucketTS returns the bucket's last write time: with no scale change after
// the start, the time of the last grant.
func bucketTS(t *testing.T, rdb *redis.Client, provider string) time.Time {
	t.Helper()
	us, err := rdb.HGet(context.Background(), "sluice:{"+provider+"}:bucket", "ts").Int64()
	if err != nil {
		t.Fatal(err)
	}
	return time.UnixMicro(us)
}

// commandCalls returns INFO commandstats as command -> calls.
func commandCalls(t *testing.T, rdb *redis.Client) map[string]int64 {
	t.Helper()
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	calls := map[string]int64{}
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":calls=")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.SplitN(rest, ",", 2)[0], 10, 64)
		calls[strings.TrimPrefix(name, "cmdstat_")] = n
	}
	return calls
}

// TestGlobalAccuracy: 4 OS processes (4 workers each) and 16 goroutine
// clients (each with its own client and Coordinator) share one provider at
// 200/s, burst 20, for 5 s of saturating demand. The total admitted must
// never exceed burst + rate × elapsed (Redis time), and reach 97% of it.
func TestGlobalAccuracy(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	const (
		rate     = 200
		burst    = 20
		duration = 5 * time.Second
	)
	srv := redistest.Start(t)
	admin := srv.Client(t)
	ctx := context.Background()
	ctl, _ := newCoord(t, admin, limiter.Options{})
	register(t, ctl, "acc", burst, rate)
	// Paused while the clients start, so that none is late to the race.
	if err := ctl.SetBudgetScale(ctx, "acc", 0); err != nil {
		t.Fatal(err)
	}
	var procs []*replicaProc
	for range 4 {
		procs = append(procs, startReplica(t, srv.Addr, "acc", 4))
	}
	runCtx, stop := context.WithCancel(ctx)
	var admitted atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		c, _ := newCoord(t, srv.Client(t), limiter.Options{})
		wg.Go(func() {
			for c.Acquire(runCtx, "acc", 1) == nil {
				admitted.Add(1)
			}
		})
	}
	time.Sleep(200 * time.Millisecond) // let the goroutines reach their paused wait
	admin.ConfigResetStat(ctx)
	start, err := ctl.Rescale(ctx, "acc", 1, "test")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(duration)
	stop()
	for _, p := range procs {
		admitted.Add(p.stop(t).Admitted)
	}
	wg.Wait()
	calls := commandCalls(t, admin)

	elapsed := bucketTS(t, admin, "acc").Sub(start.At)
	bound := start.Tokens + rate*elapsed.Seconds()
	got := float64(admitted.Load())
	evals := calls["evalsha"] + calls["eval"]
	t.Logf("admitted %d, bound %.2f (burst %.0f + %d/s × %v Redis time): %.2f%%; %d scripts run (%.2f per grant)",
		admitted.Load(), bound, start.Tokens, rate, elapsed, 100*got/bound, evals, float64(evals)/got)
	if got > bound+1e-6 {
		t.Fatalf("over-admission: %v admitted > bound %.3f", got, bound)
	}
	if got < 0.97*bound {
		t.Fatalf("under-admission: %v admitted < 97%% of bound %.3f", got, bound)
	}
	if elapsed < duration-time.Second {
		t.Fatalf("run lasted %v of Redis time, want about %v", elapsed, duration)
	}
}

// TestRescaleMidRun: after SetBudgetScale(0.5) returns, grants follow the
// new rate from the instant of the change (Redis time); the tokens accrued
// before it count at the old rate.
func TestRescaleMidRun(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	// The bucket starts empty and is never full while the clients saturate
	// it, so no accrual is lost to the cap and tokens are conserved exactly.
	const rate, burst = 200, 50
	srv := redistest.Start(t)
	admin := srv.Client(t)
	ctx := context.Background()
	ctl, _ := newCoord(t, admin, limiter.Options{})
	register(t, ctl, "rs", burst, rate)
	drain(t, ctl, "rs")
	if err := ctl.SetBudgetScale(ctx, "rs", 0); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	var grants []time.Time // Redis time of every grant
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for range 8 {
		c, _ := newCoord(t, srv.Client(t), limiter.Options{})
		wg.Go(func() {
			for {
				d, err := c.Wait(runCtx, "rs", 1)
				if err != nil {
					return
				}
				mu.Lock()
				grants = append(grants, d.Now)
				mu.Unlock()
			}
		})
	}
	time.Sleep(200 * time.Millisecond)
	start, err := ctl.Rescale(ctx, "rs", 1, "test")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	change, err := ctl.Rescale(ctx, "rs", 0.5, "test")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	stop()
	wg.Wait()
	end := bucketTS(t, admin, "rs")

	var before, after float64
	for _, g := range grants {
		if g.After(change.At) {
			after++
		} else {
			before++
		}
	}
	// Phase 1 at the old rate: the tokens left at the change are exactly
	// what phase 1's arithmetic says (accrued at the old rate, not the new).
	bound1 := start.Tokens + rate*change.At.Sub(start.At).Seconds()
	if d := bound1 - before - change.Tokens; d < -1e-6 || d > 1e-6 {
		t.Fatalf("phase 1: bound %.3f - admitted %v = %.6f, but the bucket held %.6f at the change", bound1, before, bound1-before, change.Tokens)
	}
	bound2 := change.Tokens + 0.5*rate*end.Sub(change.At).Seconds()
	t.Logf("phase 1: %v admitted of %.2f; phase 2 at scale 0.5: %v admitted of bound %.2f (%.2f%%)", before, bound1, after, bound2, 100*after/bound2)
	if after > bound2+1e-6 || after < 0.95*bound2 {
		t.Fatalf("phase 2: %v admitted, want in [95%%, 100%%] of %.3f", after, bound2)
	}
}

// TestPauseAndResume: at scale 0 nothing is granted, not even banked burst;
// paused waiters send Redis nothing while they wait (INFO commandstats) and
// resume as soon as the scale rises, long before their slow re-check.
func TestPauseAndResume(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	srv := redistest.Start(t)
	admin := srv.Client(t)
	ctx := context.Background()
	ctl, _ := newCoord(t, admin, limiter.Options{})
	register(t, ctl, "pz", 20, 10) // 20 tokens banked
	if err := ctl.SetBudgetScale(ctx, "pz", 0); err != nil {
		t.Fatal(err)
	}
	const waiters = 20
	var granted atomic.Int64
	done := make(chan time.Time, waiters)
	var regs []func() float64
	for i := range 2 {
		c, reg := newCoord(t, srv.Client(t), limiter.Options{PausedRecheck: time.Minute})
		regs = append(regs, func() float64 {
			v, _ := promutil.Sum(reg, "rate_coordinator_paused_waiters", map[string]string{"provider": "pz"})
			return v
		})
		for range waiters / 2 {
			go func() {
				if err := c.Acquire(ctx, "pz", 1); err != nil {
					t.Errorf("replica %d: %v", i, err)
				}
				granted.Add(1)
				done <- time.Now()
			}()
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for regs[0]()+regs[1]() < waiters {
		if time.Now().After(deadline) {
			t.Fatalf("only %v waiters paused", regs[0]()+regs[1]())
		}
		time.Sleep(10 * time.Millisecond)
	}
	admin.ConfigResetStat(ctx)
	time.Sleep(time.Second)
	calls := commandCalls(t, admin)
	if n := granted.Load(); n != 0 {
		t.Fatalf("%d grants while paused", n)
	}
	for cmd, n := range calls {
		if cmd != "config|resetstat" && cmd != "ping" && n > 0 {
			t.Fatalf("paused waiters sent %d %s commands (all: %v)", n, cmd, calls)
		}
	}

	resumed := time.Now()
	if err := ctl.SetBudgetScale(ctx, "pz", 1); err != nil {
		t.Fatal(err)
	}
	var last time.Duration
	for range waiters {
		select {
		case at := <-done:
			last = max(last, at.Sub(resumed))
		case <-time.After(10 * time.Second):
			t.Fatalf("only %d of %d waiters resumed", granted.Load(), waiters)
		}
	}
	t.Logf("all %d paused waiters granted %v after the scale rose (re-check timer: 1m)", waiters, last)
	// The notification, not the one-minute re-check, woke them.
	if last > 5*time.Second {
		t.Fatalf("waiters resumed after %v", last)
	}
}

// TestPausedAcquireHonoursContext: a paused Acquire returns when its context
// ends, with an error matching ErrPaused and the context's error.
func TestPausedAcquireHonoursContext(t *testing.T) {
	_, rdb := redistest.Mini(t)
	c, _ := newCoord(t, rdb, limiter.Options{})
	register(t, c, "p", 10, 10)
	if err := c.SetBudgetScale(context.Background(), "p", 0); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	err := c.Acquire(ctx, "p", 1)
	if !errors.Is(err, limiter.ErrPaused) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want ErrPaused and DeadlineExceeded", err)
	}
}

// TestAcquireDeadline: a wait that would outlast the deadline returns at once.
func TestAcquireDeadline(t *testing.T) {
	_, rdb := redistest.Mini(t)
	c, _ := newCoord(t, rdb, limiter.Options{})
	register(t, c, "p", 1, 0.1) // one token per 10 s
	try(t, c, "p", 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	err := c.Acquire(ctx, "p", 1)
	var de *limiter.DeniedError
	if !errors.As(err, &de) || !errors.Is(err, limiter.ErrRateLimited) || de.Decision.RetryAfter < 9*time.Second {
		t.Fatalf("err = %v, want a DeniedError (rate limited, retry ~10s)", err)
	}
	if waited := time.Since(start); waited > 500*time.Millisecond {
		t.Fatalf("Acquire waited %v before refusing", waited)
	}
}
