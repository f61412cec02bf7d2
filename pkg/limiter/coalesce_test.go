package limiter_test

import (
	"context"
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/pkg/limiter"
)

// spinner is one replica in a race: its Limiter, and how many
// goroutines call TryAcquire(provider, 1) on it as fast as they can.
type spinner struct {
	c                           *limiter.Limiter
	workers                     int
	admitted, decisions, leased atomic.Int64
}

// race starts every spinner's goroutines while provider is paused, ends
// the pause through ctl once all are ready (so that none is late), lets
// them run for d, and returns the change that ended the pause after they
// stopped.
func race(t *testing.T, ctl *limiter.Limiter, provider string, d time.Duration, spinners ...*spinner) limiter.ScaleChange {
	t.Helper()
	ctx := context.Background()
	runCtx, stop := context.WithCancel(ctx)
	var started, wg sync.WaitGroup
	begin := make(chan struct{})
	for _, s := range spinners {
		for range s.workers {
			started.Add(1)
			wg.Go(func() {
				started.Done()
				<-begin
				for runCtx.Err() == nil {
					dec, err := s.c.TryAcquire(runCtx, provider, 1)
					if err != nil {
						if !errors.Is(err, context.Canceled) {
							t.Error(err)
						}
						return
					}
					s.decisions.Add(1)
					if dec.Allowed {
						s.admitted.Add(1)
					}
					if dec.Leased {
						s.leased.Add(1)
					}
				}
			})
		}
	}
	started.Wait()
	start, err := ctl.SetBudgetScale(ctx, provider, 1)
	if err != nil {
		stop()
		t.Fatal(err)
	}
	close(begin)
	time.Sleep(d)
	stop()
	wg.Wait()
	return start
}

// TestCoalescedAccuracy: 64 goroutines of one replica call TryAcquire as
// fast as they can, beside 8 goroutines of a second replica that sends every
// request alone (MaxBatch 1), on a real redis-server. Coalescing must take
// fewer script calls than decisions, and the two together must never admit
// more than burst + rate × elapsed (Redis time).
func TestCoalescedAccuracy(t *testing.T) {
	const rate, burst = 500, 50
	srv, admin, ctl := pausedProvider(t, "co", burst, rate)
	coalesced, _ := newCoord(t, srv.Client(t), limiter.Options{})
	single, _ := newCoord(t, srv.Client(t), limiter.Options{MaxBatch: 1})
	a, b := &spinner{c: coalesced, workers: 64}, &spinner{c: single, workers: 8}
	admin.ConfigResetStat(context.Background())
	start := race(t, ctl, "co", 2*time.Second, a, b)
	calls := commandCalls(t, admin)

	scripts := calls["evalsha"] + calls["eval"]
	all := a.decisions.Load() + b.decisions.Load()
	t.Logf("coalesced replica admitted %d, single %d; %d decisions in %d scripts", a.admitted.Load(), b.admitted.Load(), all, scripts)
	checkBound(t, admin, "co", start, rate, float64(a.admitted.Load()+b.admitted.Load()))
	if scripts >= all {
		t.Fatalf("%d scripts for %d decisions: nothing was coalesced", scripts, all)
	}
}

// TestHeldRefusalsFairShare: 4 replica processes, 16 goroutines each, call
// TryAcquire as fast as they can on a scarce provider (1000/s, burst 100)
// with the shipped defaults, so most refusals are held in the processes
// (no round trip). Together they never admit more than burst + rate ×
// elapsed, and no process gets less than half its fair share or more than
// 1.5 times it: a process
// told "not before T" comes back at T plus a random delay, and after it
// took tokens waits its turn (those tokens × live replicas ÷ rate), so
// none is first to every refill. The replicas count one another at their
// heartbeats: 100 ms here, so that each knows of the other three soon
// after the start (a process that joined first and saw only itself until
// its next heartbeat, 2 s by default, took +30–46% of its share). The
// target is ±25%, which sluice bench measures (BENCHMARKS.md); a test
// cannot hold it, because a spinning process's share also follows how
// often it gets a core on a shared machine: at load 8–12 the same run gave
// ±14–46% with holds and ±21–25% without.
func TestHeldRefusalsFairShare(t *testing.T) {
	const rate, burst, procs = 1000, 100, 4
	srv, admin, ctl := pausedProvider(t, "hold", burst, rate)
	var ps []*replicaProc
	for range procs {
		ps = append(ps, startReplica(t, srv.Addr, "hold", 16, "MODE=try", "HEARTBEAT=100ms", os.Getenv("HOLD_TEST_ENV")))
	}
	admin.ConfigResetStat(context.Background())
	start, err := ctl.SetBudgetScale(context.Background(), "hold", 1)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	var results []replicaResult
	var admitted, held int64
	for _, p := range ps {
		r := p.stop(t)
		results = append(results, r)
		admitted += r.Admitted
		held += r.Held
	}
	calls := commandCalls(t, admin)
	scripts := calls["evalsha"] + calls["eval"]
	t.Logf("per process %+v; %d refusals held, %d scripts", results, held, scripts)
	checkBound(t, admin, "hold", start, rate, float64(admitted))
	if held == 0 {
		t.Fatal("no refusal was held: the test did not exercise the hold")
	}
	fair := float64(admitted) / procs
	for i, r := range results {
		if dev := float64(r.Admitted)/fair - 1; dev > 0.5 || dev < -0.5 {
			t.Errorf("process %d admitted %d, %+.0f%% of its fair share %.0f (want within ±50%%)", i, r.Admitted, 100*dev, fair)
		}
	}
}

// TestHeldRefusal: after Redis refuses a TryAcquire, the process refuses
// the next ones itself (Decision.Held, no script run) while the refusal
// holds; a smaller request than the refused one is not held; a scale
// change made elsewhere ends the hold when its notification arrives, and
// one made through the Limiter ends it at once. Acquire never holds, and
// NoRefusalHold turns it off.
func TestHeldRefusal(t *testing.T) {
	srv := redistest.Start(t)
	admin := srv.Client(t)
	ctx := context.Background()
	ctl, _ := newCoord(t, admin, limiter.Options{})
	register(t, ctl, "h", 5, 0.01) // a token every 100 s: a refusal holds for RefusalHold
	c, _ := newCoord(t, srv.Client(t), limiter.Options{RefusalHold: time.Second})
	limiter.NoJoinBeatsForTest(c) // no heartbeat script among the counted commands
	if d := try(t, c, "h", 5); !d.Allowed {
		t.Fatalf("first call: %+v", d)
	}
	if d := try(t, c, "h", 2); d.Allowed || d.Held {
		t.Fatalf("second call: %+v, want refused by Redis", d)
	}
	admin.ConfigResetStat(ctx)
	for range 10 {
		if d := try(t, c, "h", 3); d.Allowed || !d.Held || d.Reason != limiter.ReasonRateLimited || d.RetryAfter <= 0 || d.RetryAfter > time.Second {
			t.Fatalf("held call: %+v", d)
		}
	}
	if n := commandCalls(t, admin)["evalsha"]; n != 0 {
		t.Fatalf("%d scripts run for held refusals, want 0", n)
	}
	if d := try(t, c, "h", 1); d.Held {
		t.Fatalf("a smaller request than the refused one was held: %+v", d)
	}
	// Elsewhere: the notification ends the hold (waited for, however long).
	if _, err := ctl.SetBudgetScale(ctx, "h", 0.5); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the notification to end the hold", func() bool { return !try(t, c, "h", 3).Held })
	// Through the Limiter: at once.
	try(t, c, "h", 3)
	if _, err := c.SetBudgetScale(ctx, "h", 1); err != nil {
		t.Fatal(err)
	}
	if d := try(t, c, "h", 3); d.Held {
		t.Fatalf("held after the Limiter's own change: %+v", d)
	}
	// Acquire asks Redis (and returns at once: the wait outlasts ctx).
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if d, err := c.Acquire(short, "h", 3); err == nil || d.Held {
		t.Fatalf("Acquire: %+v %v, want Redis's refusal", d, err)
	}
	off, _ := newCoord(t, srv.Client(t), limiter.Options{NoRefusalHold: true})
	for range 3 {
		if d := try(t, off, "h", 3); d.Allowed || d.Held {
			t.Fatalf("NoRefusalHold: %+v", d)
		}
	}
}
