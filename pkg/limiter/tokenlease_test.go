package limiter_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/pkg/limiter"
)

// bucketTokens reads the tokens stored in provider's bucket.
func bucketTokens(t *testing.T, rdb *redis.Client, provider string) float64 {
	t.Helper()
	v, err := rdb.HGet(context.Background(), "sluice:{"+provider+"}:bucket", "tokens").Float64()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// leaseUp takes single tokens from c until one comes from its token lease,
// and returns how many it took (all granted).
func leaseUp(t *testing.T, c *limiter.Coordinator, provider string) int {
	t.Helper()
	for i := 1; i <= 1000; i++ {
		d := try(t, c, provider, 1)
		if !d.Allowed {
			t.Fatalf("call %d refused: %+v", i, d)
		}
		if d.Leased {
			return i
		}
	}
	t.Fatal("no grant came from the lease")
	return 0
}

// TestTokenLeaseAccuracy: two leasing replicas in this process (48
// goroutines each), one that sends every request alone (8 goroutines) and
// two leasing replica processes (8 workers each, blocking Acquire) share a
// bucket that starts with plenty (leases are taken) and runs dry (they
// stop): together they never admit more than burst + rate × elapsed, on a
// real redis-server, and the leases served a share of the grants without a
// script call.
func TestTokenLeaseAccuracy(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	const rate, burst = 2000, 3000
	srv := redistest.Start(t)
	admin := srv.Client(t)
	ctx := context.Background()
	ctl, _ := newCoord(t, admin, limiter.Options{})
	register(t, ctl, "tl", burst, rate)
	if _, err := ctl.SetBudgetScale(ctx, "tl", 0); err != nil {
		t.Fatal(err)
	}
	var procs []*replicaProc
	for range 2 {
		procs = append(procs, startReplica(t, srv.Addr, "tl", 8, "TOKEN_LEASE=20ms"))
	}
	replicas := []*limiter.Coordinator{}
	for _, o := range []limiter.Options{{TokenLease: 20 * time.Millisecond}, {TokenLease: 20 * time.Millisecond}, {MaxBatch: 1}} {
		c, _ := newCoord(t, srv.Client(t), o)
		replicas = append(replicas, c)
	}
	runCtx, stop := context.WithCancel(ctx)
	var admitted, leased atomic.Int64
	var started, wg sync.WaitGroup
	begin := make(chan struct{})
	for i, c := range replicas {
		workers := 48
		if i == 2 {
			workers = 8
		}
		for range workers {
			started.Add(1)
			wg.Go(func() {
				started.Done()
				<-begin
				for runCtx.Err() == nil {
					d, err := c.TryAcquire(runCtx, "tl", 1)
					if err != nil {
						if !errors.Is(err, context.Canceled) {
							t.Error(err)
						}
						return
					}
					if d.Allowed {
						admitted.Add(1)
					}
					if d.Leased {
						leased.Add(1)
					}
				}
			})
		}
	}
	started.Wait()
	start, err := ctl.SetBudgetScale(ctx, "tl", 1)
	if err != nil {
		t.Fatal(err)
	}
	close(begin)
	time.Sleep(2 * time.Second)
	stop()
	for _, p := range procs {
		admitted.Add(p.stop(t).Admitted)
	}
	wg.Wait()

	t.Logf("%d grants from leases in this process", leased.Load())
	checkBound(t, admin, "tl", start, rate, float64(admitted.Load()))
	if leased.Load() == 0 {
		t.Fatal("no grant came from a lease: the test did not exercise them")
	}
}

// TestTokenLeaseReturnsUnused: what a lease did not hand out goes back to
// the bucket when it expires, and at Close: in the end the bucket has lost
// exactly the tokens its callers were granted (the refill is negligible).
func TestTokenLeaseReturnsUnused(t *testing.T) {
	srv := redistest.Start(t)
	admin := srv.Client(t)
	ctl, _ := newCoord(t, admin, limiter.Options{})
	register(t, ctl, "ret", 10_000, 0.001)

	const ttl = 50 * time.Millisecond
	c, _ := newCoord(t, srv.Client(t), limiter.Options{TokenLease: ttl})
	granted := leaseUp(t, c, "ret")
	for range 20 {
		try(t, c, "ret", 1)
		granted++
	}
	if left := bucketTokens(t, admin, "ret"); left > 10_000-float64(granted)-1 {
		t.Fatalf("bucket %v after %d grants: no lease is held", left, granted)
	}
	deadline := time.Now().Add(10 * time.Second) // the expiry timer, on a busy machine
	for bucketTokens(t, admin, "ret") < 10_000-float64(granted)-0.01 {
		if time.Now().After(deadline) {
			t.Fatalf("bucket %v, want %d back after the lease expired", bucketTokens(t, admin, "ret"), 10_000-granted)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if left := bucketTokens(t, admin, "ret"); left > 10_000-float64(granted)+0.01 {
		t.Fatalf("bucket %v after %d grants: more came back than was left", left, granted)
	}

	// Close gives back at once what a long lease holds.
	long, _ := newCoord(t, srv.Client(t), limiter.Options{TokenLease: time.Second})
	before := bucketTokens(t, admin, "ret")
	n := leaseUp(t, long, "ret")
	if err := long.Close(); err != nil {
		t.Fatal(err)
	}
	if left := bucketTokens(t, admin, "ret"); !near(left, before-float64(n), 0.01) {
		t.Fatalf("after Close: bucket %v, want %v (%v less %d granted)", left, before-float64(n), before, n)
	}
}

// TestTokenLeaseScaleBound: a scale change made elsewhere reaches a leasing
// replica within Options.TokenLease: after a pause, its calls may still be
// granted from the lease until the lease expires, and are refused after;
// a change made through the replica itself drops its lease at once.
func TestTokenLeaseScaleBound(t *testing.T) {
	srv := redistest.Start(t)
	admin := srv.Client(t)
	ctx := context.Background()
	ctl, _ := newCoord(t, admin, limiter.Options{})
	register(t, ctl, "sb", 1_000_000, 1_000_000)

	const ttl = 500 * time.Millisecond
	c, _ := newCoord(t, srv.Client(t), limiter.Options{TokenLease: ttl})
	for limiter.LeaseLeftForTest(c, "sb") < 8 { // the lease doubles as it is used
		leaseUp(t, c, "sb")
	}
	changed := time.Now()
	if _, err := ctl.SetBudgetScale(ctx, "sb", 0); err != nil {
		t.Fatal(err)
	}
	bound := changed.Add(ttl)
	var afterBound, leasedAfterChange int
	var lastLeased time.Duration
	for afterBound < 20 {
		at := time.Now()
		d := try(t, c, "sb", 1)
		switch {
		case d.Allowed && !at.Before(bound):
			t.Fatalf("granted %v after the scale change (lease %v): %+v", at.Sub(changed), ttl, d)
		case d.Allowed && !d.Leased:
			t.Fatalf("granted by Redis while paused: %+v", d)
		case d.Allowed:
			leasedAfterChange++
			lastLeased = at.Sub(changed)
		case d.Reason != limiter.ReasonPaused:
			t.Fatalf("refused for %s, want paused", d.Reason)
		}
		if !at.Before(bound) {
			afterBound++
		}
	}
	t.Logf("%d grants from the lease after the pause, the last %v after it (bound %v)", leasedAfterChange, lastLeased, ttl)
	if leasedAfterChange == 0 {
		t.Fatal("no grant from the lease after the pause: the test did not exercise the bound")
	}

	// Through the replica itself: its lease goes at once.
	if _, err := ctl.SetBudgetScale(ctx, "sb", 1); err != nil {
		t.Fatal(err)
	}
	leaseUp(t, c, "sb")
	if _, err := c.SetBudgetScale(ctx, "sb", 0); err != nil {
		t.Fatal(err)
	}
	if d := try(t, c, "sb", 1); d.Allowed || d.Reason != limiter.ReasonPaused {
		t.Fatalf("after its own SetBudgetScale(0): %+v, want paused", d)
	}
}

// TestTokenLeaseFailureDrops: a failure this replica reports (RecordFailure,
// TriggerCooldown) ends its lease before the shared state changes: the next
// call is refused by Redis, and the leased tokens are back in the bucket.
func TestTokenLeaseFailureDrops(t *testing.T) {
	srv := redistest.Start(t)
	admin := srv.Client(t)
	ctx := context.Background()
	ctl, _ := newCoord(t, admin, limiter.Options{})
	cfg := limiter.DefaultProviderConfig()
	cfg.Capacity, cfg.RefillRate, cfg.BreakerThreshold = 10_000, 0.001, 1
	if _, err := ctl.Register(ctx, "fd", cfg); err != nil {
		t.Fatal(err)
	}
	c, _ := newCoord(t, srv.Client(t), limiter.Options{TokenLease: time.Second})

	n := leaseUp(t, c, "fd")
	if err := c.RecordFailure(ctx, "fd"); err != nil {
		t.Fatal(err)
	}
	if d := try(t, c, "fd", 1); d.Allowed || d.Reason != limiter.ReasonCircuitOpen {
		t.Fatalf("after RecordFailure: %+v, want circuit_open", d)
	}
	if left := bucketTokens(t, admin, "fd"); !near(left, 10_000-float64(n), 0.01) {
		t.Fatalf("bucket %v, want %d: the lease was not given back", left, 10_000-n)
	}
	if err := c.ResetBreaker(ctx, "fd"); err != nil {
		t.Fatal(err)
	}

	n += leaseUp(t, c, "fd")
	if _, err := c.TriggerCooldown(ctx, "fd", "pacing", "test", time.Minute); err != nil {
		t.Fatal(err)
	}
	if d := try(t, c, "fd", 1); d.Allowed || d.Reason != limiter.ReasonCooldown {
		t.Fatalf("after TriggerCooldown: %+v, want cooldown", d)
	}
	if left := bucketTokens(t, admin, "fd"); !near(left, 10_000-float64(n), 0.01) {
		t.Fatalf("bucket %v, want %d: the lease was not given back", left, 10_000-n)
	}
}

// TestTokenLeaseOnlyFromPlenty: a lease takes at most half of what the
// bucket held, so a replica drains a bucket of 64 tokens one grant at a
// time, leased or not, to exactly 0, and then is refused: no token is
// stranded in a lease while callers are refused.
func TestTokenLeaseOnlyFromPlenty(t *testing.T) {
	srv := redistest.Start(t)
	admin := srv.Client(t)
	ctl, _ := newCoord(t, admin, limiter.Options{})
	register(t, ctl, "pl", 64, 0.001)
	c, _ := newCoord(t, srv.Client(t), limiter.Options{TokenLease: time.Second})
	granted, leased := 0, 0
	for {
		d := try(t, c, "pl", 1)
		if !d.Allowed {
			if d.Reason != limiter.ReasonRateLimited {
				t.Fatalf("refused for %s", d.Reason)
			}
			break
		}
		granted++
		if d.Leased {
			leased++
		}
	}
	if granted != 64 || leased == 0 {
		t.Fatalf("%d granted (%d from the lease), want all 64 with some leased", granted, leased)
	}
	if left := bucketTokens(t, admin, "pl"); left > 0.01 {
		t.Fatalf("bucket %v after the refusal", left)
	}
}
