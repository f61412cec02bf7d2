package limiter_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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
