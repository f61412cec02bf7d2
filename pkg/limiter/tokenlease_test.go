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

// checkGivenBack checks that between two reads of provider's bucket
// exactly the tokens a lease held came back, beside the refill at rate.
func checkGivenBack(t *testing.T, rdb *redis.Client, provider string, capacity, rate float64, held int64, tokens0 float64, ts0 time.Time) {
	t.Helper()
	tokens1, ts1 := bucketState(t, rdb, provider)
	want := min(capacity, tokens0+rate*ts1.Sub(ts0).Seconds()+float64(held))
	if !near(tokens1, want, 1e-6*capacity) {
		t.Fatalf("bucket %v, want %v (%v + refill %v + %d held)", tokens1, want, tokens0, rate*ts1.Sub(ts0).Seconds(), held)
	}
}

// leaseUp takes single tokens from c until one comes from its token lease,
// and returns how many it took (all granted).
func leaseUp(t *testing.T, c *limiter.Limiter, provider string) int {
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
// script call (in this process or the others).
func TestTokenLeaseAccuracy(t *testing.T) {
	const rate, burst = 2000, 3000
	// A lease is refused to a call that outlived it: 200 ms, not the 2 ms
	// bench runs, so that leases are taken on a loaded machine too, where a
	// round trip can take tens of milliseconds (with 20 ms, none was taken
	// in 1 of 9 runs with two busy loops).
	const lease = 200 * time.Millisecond
	srv, admin, ctl := pausedProvider(t, "tl", burst, rate)
	var procs []*replicaProc
	for range 2 {
		procs = append(procs, startReplica(t, srv.Addr, "tl", 8, "TOKEN_LEASE="+lease.String()))
	}
	var spinners []*spinner
	for _, o := range []limiter.Options{{TokenLease: lease}, {TokenLease: lease}, {MaxBatch: 1}} {
		c, _ := newCoord(t, srv.Client(t), o)
		spinners = append(spinners, &spinner{c: c, workers: map[bool]int{true: 48, false: 8}[o.TokenLease > 0]})
	}
	start := race(t, ctl, "tl", 2*time.Second, spinners...)
	var admitted, leased int64
	for _, s := range spinners {
		admitted += s.admitted.Load()
		leased += s.leased.Load()
	}
	for _, p := range procs {
		r := p.stop(t)
		admitted += r.Admitted
		leased += r.Leased
	}

	t.Logf("%d grants from leases", leased)
	checkBound(t, admin, "tl", start, rate, float64(admitted))
	if leased == 0 {
		t.Fatal("no grant came from a lease: the test did not exercise them")
	}
}

// heldLease builds a lease in c (single grants until one is leased and the
// lease still holds some) and returns the bucket as stored then and what
// the lease holds: read in that order, so that the lease's give-back, if it
// comes, is a later write.
func heldLease(t *testing.T, c *limiter.Limiter, rdb *redis.Client, provider string) (float64, time.Time, int64) {
	t.Helper()
	for range 100 {
		leaseUp(t, c, provider)
		tokens, ts := bucketState(t, rdb, provider)
		if held := limiter.LeaseLeftForTest(c, provider); held > 0 {
			return tokens, ts, held
		}
	}
	t.Fatal("no lease held")
	return 0, time.Time{}, 0
}

// TestTokenLeaseReturnsUnused: what a lease did not hand out goes back to
// the bucket when it expires, and at Close: exactly what it held, beside
// the refill.
func TestTokenLeaseReturnsUnused(t *testing.T) {
	const capacity, rate = 10_000, 100
	srv := redistest.Start(t)
	admin := srv.Client(t)
	ctl, _ := newCoord(t, admin, limiter.Options{})
	register(t, ctl, "ret", capacity, rate)

	c, _ := newCoord(t, srv.Client(t), limiter.Options{TokenLease: 200 * time.Millisecond})
	tokens0, ts0, held := heldLease(t, c, admin, "ret")
	deadline := time.Now().Add(10 * time.Second) // the expiry timer, on a busy machine
	for _, ts := bucketState(t, admin, "ret"); ts.Equal(ts0); _, ts = bucketState(t, admin, "ret") {
		if time.Now().After(deadline) {
			t.Fatalf("nothing given back %v after the lease was taken", 10*time.Second)
		}
		time.Sleep(5 * time.Millisecond)
	}
	checkGivenBack(t, admin, "ret", capacity, rate, held, tokens0, ts0)
	if left := limiter.LeaseLeftForTest(c, "ret"); left != 0 {
		t.Fatalf("the expired lease still holds %d", left)
	}

	// Close gives back at once what a long lease holds.
	long, _ := newCoord(t, srv.Client(t), limiter.Options{TokenLease: time.Second})
	tokens0, ts0, held = heldLease(t, long, admin, "ret")
	if err := long.Close(); err != nil {
		t.Fatal(err)
	}
	checkGivenBack(t, admin, "ret", capacity, rate, held, tokens0, ts0)
}

// TestTokenLeaseScaleBound: a scale change made elsewhere reaches a leasing
// replica within Options.TokenLease even when its notification is lost:
// after a pause written without one, its calls may still be granted from
// the lease until the lease expires, and are refused after. With the
// notification (SetBudgetScale elsewhere), the lease ends when it arrives;
// a change made through the replica itself drops its lease at once.
func TestTokenLeaseScaleBound(t *testing.T) {
	srv := redistest.Start(t)
	admin := srv.Client(t)
	ctx := context.Background()
	ctl, _ := newCoord(t, admin, limiter.Options{})
	register(t, ctl, "sb", 1_000_000, 1_000_000)

	const ttl = 500 * time.Millisecond
	// No held refusals: after the pause ends, the replica must see it at
	// once (a held "paused" would wait for the notification).
	c, _ := newCoord(t, srv.Client(t), limiter.Options{TokenLease: ttl, NoRefusalHold: true})
	for limiter.LeaseLeftForTest(c, "sb") < 8 { // the lease doubles as it is used
		leaseUp(t, c, "sb")
	}
	changed := time.Now()
	// The pause, published nowhere (channel ""): as if its notification
	// were lost.
	k := []string{"sluice:{sb}:config", "sluice:{sb}:bucket", "sluice:{sb}:scale"}
	if err := limiter.SetScaleScriptForTest.Run(ctx, admin, k, "0", "test", "").Err(); err != nil {
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

	// Elsewhere, with its notification: the lease ends when it arrives
	// (the test waits for that, however long it takes, and checks that
	// nothing is granted after it).
	if _, err := ctl.SetBudgetScale(ctx, "sb", 1); err != nil {
		t.Fatal(err)
	}
	for limiter.LeaseLeftForTest(c, "sb") < 8 {
		leaseUp(t, c, "sb")
	}
	if _, err := ctl.SetBudgetScale(ctx, "sb", 0); err != nil {
		t.Fatal(err)
	}
	for limiter.LeaseLeftForTest(c, "sb") > 0 {
		time.Sleep(time.Millisecond)
	}
	if d := try(t, c, "sb", 1); d.Allowed || d.Reason != limiter.ReasonPaused {
		t.Fatalf("after the notified pause ended the lease: %+v, want paused", d)
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
// TriggerCooldown) ends its lease before the shared state changes: the
// leased tokens are back in the bucket, and the next call is refused by
// Redis.
func TestTokenLeaseFailureDrops(t *testing.T) {
	const capacity, rate = 10_000, 100
	srv := redistest.Start(t)
	admin := srv.Client(t)
	ctx := context.Background()
	ctl, _ := newCoord(t, admin, limiter.Options{})
	cfg := limiter.DefaultProviderConfig()
	cfg.Capacity, cfg.RefillRate, cfg.BreakerThreshold = capacity, rate, 1
	if _, err := ctl.Register(ctx, "fd", cfg); err != nil {
		t.Fatal(err)
	}
	c, _ := newCoord(t, srv.Client(t), limiter.Options{TokenLease: time.Second})

	tokens0, ts0, held := heldLease(t, c, admin, "fd")
	if err := c.RecordFailure(ctx, "fd"); err != nil {
		t.Fatal(err)
	}
	checkGivenBack(t, admin, "fd", capacity, rate, held, tokens0, ts0)
	if d := try(t, c, "fd", 1); d.Allowed || d.Reason != limiter.ReasonCircuitOpen {
		t.Fatalf("after RecordFailure: %+v, want circuit_open", d)
	}
	if err := c.ResetBreaker(ctx, "fd"); err != nil {
		t.Fatal(err)
	}

	tokens0, ts0, held = heldLease(t, c, admin, "fd")
	if _, err := c.TriggerCooldown(ctx, "fd", "pacing", "test", time.Minute); err != nil {
		t.Fatal(err)
	}
	checkGivenBack(t, admin, "fd", capacity, rate, held, tokens0, ts0)
	if d := try(t, c, "fd", 1); d.Allowed || d.Reason != limiter.ReasonCooldown {
		t.Fatalf("after TriggerCooldown: %+v, want cooldown", d)
	}
}

// TestTokenLeaseOnlyFromPlenty: a lease takes at most half of what the
// bucket held, so a replica draining a bucket of 64 tokens (refilling at
// 100/s) one grant at a time never holds more in its lease than is left in
// the shared bucket, and is refused only once the bucket is below one
// token: no token is stranded in a lease while callers are refused.
func TestTokenLeaseOnlyFromPlenty(t *testing.T) {
	srv := redistest.Start(t)
	admin := srv.Client(t)
	ctl, _ := newCoord(t, admin, limiter.Options{})
	register(t, ctl, "pl", 64, 100)
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
		held := limiter.LeaseLeftForTest(c, "pl")
		if left, _ := bucketState(t, admin, "pl"); float64(held) > left+0.01 {
			t.Fatalf("after %d grants the lease holds %d, the bucket %v: more than half was leased", granted, held, left)
		}
	}
	if granted < 64 || leased == 0 {
		t.Fatalf("%d granted (%d from the lease), want at least 64 with some leased", granted, leased)
	}
	if left, _ := bucketState(t, admin, "pl"); left >= 1 {
		t.Fatalf("bucket %v after the refusal", left)
	}
}

// TestTokenLeaseOwnChange: while 16 goroutines of a leasing replica take
// tokens, the replica itself pauses the provider, again and again: no call
// that starts after SetBudgetScale(0) returned is granted, even when a call
// in flight during the change leased at the old scale.
func TestTokenLeaseOwnChange(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	c, _ := newCoord(t, srv.Client(t), limiter.Options{TokenLease: time.Second})
	register(t, c, "oc", 1_000_000, 1_000_000)
	// phase is odd from the return of a pause to the start of the next
	// resume: a call that begins and ends in one odd phase must be refused.
	var phase, late, leased atomic.Int64
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for runCtx.Err() == nil {
				before := phase.Load()
				d, err := c.TryAcquire(runCtx, "oc", 1)
				if err != nil {
					return
				}
				if d.Leased {
					leased.Add(1)
				}
				if d.Allowed && before%2 == 1 && phase.Load() == before {
					late.Add(1)
				}
			}
		})
	}
	for range 20 {
		if _, err := c.SetBudgetScale(ctx, "oc", 1); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
		if _, err := c.SetBudgetScale(ctx, "oc", 0); err != nil {
			t.Fatal(err)
		}
		phase.Add(1) // paused
		time.Sleep(5 * time.Millisecond)
		phase.Add(1) // about to resume
	}
	stop()
	wg.Wait()
	t.Logf("%d leased grants over 20 cycles", leased.Load())
	if late.Load() > 0 {
		t.Fatalf("%d calls begun after SetBudgetScale(0) returned were granted", late.Load())
	}
	if leased.Load() == 0 {
		t.Fatal("nothing was leased: the test did not exercise the lease")
	}
}

// TestTokenLeaseStalledRedis: with Redis stalled (SIGSTOP), a leasing
// replica hands out what its lease holds (those tokens were taken before
// the stall), then falls to its outage mode within CallTimeout; Close,
// which tries to give the rest back, is bounded too.
func TestTokenLeaseStalledRedis(t *testing.T) {
	srv := redistest.Start(t)
	admin := srv.Client(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1, ContextTimeoutEnabled: true})
	t.Cleanup(func() { rdb.Close() })
	ctl, _ := newCoord(t, admin, limiter.Options{})
	register(t, ctl, "st", 1_000_000, 1_000_000)
	c, _ := newCoord(t, rdb, limiter.Options{TokenLease: time.Second, CallTimeout: 100 * time.Millisecond, RedisRetry: 50 * time.Millisecond}) // closed below; Close again does nothing
	for limiter.LeaseLeftForTest(c, "st") < 4 {
		leaseUp(t, c, "st")
	}
	srv.Pause(t)
	t.Cleanup(func() { srv.Resume(t) })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for range 2 { // the lease holds at least 4
		if d, err := c.TryAcquire(ctx, "st", 1); err != nil || !d.Allowed || !d.Leased {
			t.Fatalf("stalled, lease held: %+v, %v; want a leased grant", d, err)
		}
	}
	for {
		d, err := c.TryAcquire(ctx, "st", 1)
		if ctx.Err() != nil {
			t.Fatal("the caller's 5s deadline passed: the stall held the call")
		}
		if err != nil {
			if !errors.Is(err, limiter.ErrRedisUnavailable) {
				t.Fatalf("after the lease: %v, want ErrRedisUnavailable", err)
			}
			break
		}
		if !d.Leased {
			t.Fatalf("granted without the lease while Redis is stalled: %+v", d)
		}
	}
	start := time.Now()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	t.Logf("Close took %v on the stalled Redis", took)
	if took > 5*time.Second {
		t.Fatalf("Close took %v on a stalled Redis", took)
	}
}
