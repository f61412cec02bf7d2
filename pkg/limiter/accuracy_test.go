package limiter_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
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

// bucketState reads provider's bucket as stored: its tokens, and the Redis
// time of its last write (with no scale change after a race's start, the
// time of the last grant).
func bucketState(t *testing.T, rdb *redis.Client, provider string) (float64, time.Time) {
	t.Helper()
	h, err := rdb.HMGet(context.Background(), "sluice:{"+provider+"}:bucket", "tokens", "ts").Result()
	if err != nil {
		t.Fatal(err)
	}
	tokens, terr := strconv.ParseFloat(fmt.Sprint(h[0]), 64)
	us, uerr := strconv.ParseInt(fmt.Sprint(h[1]), 10, 64)
	if terr != nil || uerr != nil {
		t.Fatalf("bucket of %s: tokens %v, ts %v", provider, h[0], h[1])
	}
	return tokens, time.UnixMicro(us)
}

// pausedProvider starts a real redis-server with provider registered at
// burst and rate and paused (scale 0), so that the replicas of a race can
// start and none is late to it; it returns the server, an admin client and
// the Limiter that will end the pause.
func pausedProvider(t *testing.T, provider string, burst int64, rate float64) (*redistest.Server, *redis.Client, *limiter.Limiter) {
	t.Helper()
	if testing.Short() {
		t.Skip("-short")
	}
	srv := redistest.Start(t)
	admin := srv.Client(t)
	ctl, _ := newCoord(t, admin, limiter.Options{})
	register(t, ctl, provider, burst, rate)
	if _, err := ctl.SetBudgetScale(context.Background(), provider, 0); err != nil {
		t.Fatal(err)
	}
	return srv, admin, ctl
}

// checkBound fails t when got, the tokens granted since start (the
// SetBudgetScale that began the run), exceeds start's tokens + rate × the
// Redis time from start to the bucket's last write, or is below half of it:
// a starved machine cannot fail a test by that, a limiter granting too
// little still does. It returns the bound and that time.
func checkBound(t *testing.T, admin *redis.Client, provider string, start limiter.ScaleChange, rate, got float64) (float64, time.Duration) {
	t.Helper()
	_, last := bucketState(t, admin, provider)
	elapsed := last.Sub(start.At)
	bound := start.Tokens + rate*elapsed.Seconds()
	t.Logf("admitted %v, bound %.2f (burst %.0f + %v/s × %v Redis time): %.2f%%", got, bound, start.Tokens, rate, elapsed, 100*got/bound)
	if got > bound+1e-6 {
		t.Fatalf("over-admission: %v admitted > bound %.3f", got, bound)
	}
	if got < 0.5*bound {
		t.Fatalf("under-admission: %v admitted < 50%% of bound %.3f", got, bound)
	}
	return bound, elapsed
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
// clients (each with its own client and Limiter) share one provider at
// 200/s, burst 20, for 5 s of saturating demand. The total admitted must
// never exceed burst + rate × elapsed (Redis time). How close it comes
// (99.97% on a quiet machine) is logged; the test only requires half, so
// that a starved machine cannot fail it while a limiter granting too little
// still does.
func TestGlobalAccuracy(t *testing.T) {
	const (
		rate     = 200
		burst    = 20
		duration = 5 * time.Second
	)
	srv, admin, ctl := pausedProvider(t, "acc", burst, rate)
	ctx := context.Background()
	var procs []*replicaProc
	for range 4 {
		procs = append(procs, startReplica(t, srv.Addr, "acc", 4))
	}
	runCtx, stop := context.WithCancel(ctx)
	var admitted atomic.Int64
	var wg sync.WaitGroup
	var regs []*prometheus.Registry
	for range 16 {
		c, reg := newCoord(t, srv.Client(t), limiter.Options{})
		regs = append(regs, reg)
		wg.Go(func() {
			for _, err := c.Acquire(runCtx, "acc", 1); err == nil; _, err = c.Acquire(runCtx, "acc", 1) {
				admitted.Add(1)
			}
		})
	}
	// Every goroutine waits for the pause to end (the processes said so
	// before they said ready), so that none is late to the race.
	waitFor(t, "16 paused waiters", func() bool {
		n := 0.0
		for _, reg := range regs {
			n += pausedWaiters(reg, "acc")
		}
		return n == 16
	})
	admin.ConfigResetStat(ctx)
	start, err := ctl.SetBudgetScale(ctx, "acc", 1)
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

	got := float64(admitted.Load())
	_, elapsed := checkBound(t, admin, "acc", start, rate, got)
	evals := calls["evalsha"] + calls["eval"]
	t.Logf("%d scripts run (%.2f per grant)", evals, float64(evals)/got)
	if elapsed < duration/2 {
		t.Fatalf("the last grant came %v after the start (Redis time), want about %v", elapsed, duration)
	}
}

// TestRescaleMidRun: after SetBudgetScale(0.5) returns, grants follow the
// new rate from the instant of the change (Redis time); the tokens accrued
// before it count at the old rate. The bucket is too large ever to fill, so
// no accrual is lost to the cap and every token is accounted for exactly:
// granted, or still in the bucket at the next change. That holds however
// fast the clients are.
func TestRescaleMidRun(t *testing.T) {
	const rate, capacity = 200, 1_000_000
	srv := redistest.Start(t)
	admin := srv.Client(t)
	ctx := context.Background()
	ctl, _ := newCoord(t, admin, limiter.Options{})
	register(t, ctl, "rs", capacity, rate)
	if d := try(t, ctl, "rs", capacity); !d.Allowed { // empty it
		t.Fatalf("%+v", d)
	}
	if _, err := ctl.SetBudgetScale(ctx, "rs", 0); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	var grants []time.Time // Redis time of every grant
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var regs []*prometheus.Registry
	for range 8 {
		c, reg := newCoord(t, srv.Client(t), limiter.Options{})
		regs = append(regs, reg)
		wg.Go(func() {
			for {
				d, err := c.Acquire(runCtx, "rs", 1)
				if err != nil {
					return
				}
				mu.Lock()
				grants = append(grants, d.Now)
				mu.Unlock()
			}
		})
	}
	waitFor(t, "8 paused waiters", func() bool {
		n := 0.0
		for _, reg := range regs {
			n += pausedWaiters(reg, "rs")
		}
		return n == 8
	})
	start, err := ctl.SetBudgetScale(ctx, "rs", 1)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // phase 1
	change, err := ctl.SetBudgetScale(ctx, "rs", 0.5)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)                      // phase 2
	end, err := ctl.SetBudgetScale(ctx, "rs", 0) // pause: no grant after it
	if err != nil {
		t.Fatal(err)
	}
	stop()
	wg.Wait()

	var before, after, later float64
	for _, g := range grants {
		switch {
		case g.After(end.At):
			later++
		case g.After(change.At):
			after++
		default:
			before++
		}
	}
	// Tokens accrued at the old rate up to the change, at the new one after.
	accrued1 := rate * change.At.Sub(start.At).Seconds()
	accrued2 := 0.5 * rate * end.At.Sub(change.At).Seconds()
	t.Logf("phase 1 at scale 1: %v admitted of %.2f accrued; phase 2 at scale 0.5: %v admitted of %.2f accrued",
		before, start.Tokens+accrued1, after, change.Tokens+accrued2)
	if d := start.Tokens + accrued1 - before - change.Tokens; d < -1e-6 || d > 1e-6 {
		t.Fatalf("phase 1: %.6f + %.6f accrued - %v admitted = %.6f, but the bucket held %.6f at the change",
			start.Tokens, accrued1, before, start.Tokens+accrued1-before, change.Tokens)
	}
	if d := change.Tokens + accrued2 - after - end.Tokens; d < -1e-6 || d > 1e-6 {
		t.Fatalf("phase 2: %.6f + %.6f accrued at half rate - %v admitted = %.6f, but the bucket held %.6f at the pause",
			change.Tokens, accrued2, after, change.Tokens+accrued2-after, end.Tokens)
	}
	if later != 0 || before == 0 || after == 0 {
		t.Fatalf("%v grants after the pause, %v and %v in the phases", later, before, after)
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
	if _, err := ctl.SetBudgetScale(ctx, "pz", 0); err != nil {
		t.Fatal(err)
	}
	const waiters = 20
	var granted atomic.Int64
	done := make(chan time.Time, waiters)
	var regs []func() float64
	for i := range 2 {
		c, reg := newCoord(t, srv.Client(t), limiter.Options{PausedRecheck: time.Hour, Heartbeat: time.Hour}) // no heartbeat script in the quiet window
		limiter.NoJoinBeatsForTest(c)
		regs = append(regs, func() float64 { return pausedWaiters(reg, "pz") })
		for range waiters / 2 {
			go func() {
				if _, err := c.Acquire(ctx, "pz", 1); err != nil {
					t.Errorf("replica %d: %v", i, err)
				}
				granted.Add(1)
				done <- time.Now()
			}()
		}
	}
	waitFor(t, "every waiter paused", func() bool { return regs[0]()+regs[1]() == waiters })
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
	if _, err := ctl.SetBudgetScale(ctx, "pz", 1); err != nil {
		t.Fatal(err)
	}
	var last time.Duration
	for range waiters {
		select {
		case at := <-done:
			last = max(last, at.Sub(resumed))
		case <-time.After(time.Minute):
			t.Fatalf("only %d of %d waiters resumed within a minute", granted.Load(), waiters)
		}
	}
	// The notification, not the one-hour re-check, woke them.
	t.Logf("all %d paused waiters granted %v after the scale rose (re-check timer: 1h)", waiters, last)
}

// TestPausedAcquireHonoursContext: a paused Acquire returns when its context
// ends, with an error matching ErrPaused and the context's error.
func TestPausedAcquireHonoursContext(t *testing.T) {
	_, rdb := redistest.Mini(t)
	c, _ := newCoord(t, rdb, limiter.Options{})
	register(t, c, "p", 10, 10)
	if _, err := c.SetBudgetScale(context.Background(), "p", 0); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := c.Acquire(ctx, "p", 1)
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
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d, err := c.Acquire(ctx, "p", 1)
	if !errors.Is(err, limiter.ErrRateLimited) || d.Allowed || d.RetryAfter < 9*time.Second {
		t.Fatalf("Acquire = %+v, %v; want a refusal, rate limited, retry ~10s", d, err)
	}
	// It refused without waiting for the deadline: the error is not the context's.
	if errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
		t.Fatalf("err = %v: Acquire waited for the deadline instead of refusing at once", err)
	}
}
