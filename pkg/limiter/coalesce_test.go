package limiter_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/pkg/limiter"
)

// TestCoalescedAccuracy: 64 goroutines of one replica call TryAcquire as
// fast as they can, beside 8 goroutines of a second replica that sends every
// request alone (MaxBatch 1), on a real redis-server. Coalescing must take
// fewer script calls than decisions, and the two together must never admit
// more than burst + rate × elapsed (Redis time).
func TestCoalescedAccuracy(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	const rate, burst = 500, 50
	srv := redistest.Start(t)
	admin := srv.Client(t)
	ctx := context.Background()
	ctl, _ := newCoord(t, admin, limiter.Options{})
	register(t, ctl, "co", burst, rate)
	if _, err := ctl.SetBudgetScale(ctx, "co", 0); err != nil {
		t.Fatal(err)
	}
	coalesced, _ := newCoord(t, srv.Client(t), limiter.Options{})
	single, _ := newCoord(t, srv.Client(t), limiter.Options{MaxBatch: 1})

	runCtx, stop := context.WithCancel(ctx)
	var admitted, decisions [2]atomic.Int64
	var started, wg sync.WaitGroup
	begin := make(chan struct{})
	for i, c := range []*limiter.Coordinator{coalesced, single} {
		workers := 64 >> (3 * i) // 64, then 8
		for range workers {
			started.Add(1)
			wg.Go(func() {
				started.Done()
				<-begin
				for runCtx.Err() == nil {
					d, err := c.TryAcquire(runCtx, "co", 1)
					if err != nil {
						if !errors.Is(err, context.Canceled) {
							t.Error(err)
						}
						return
					}
					decisions[i].Add(1)
					if d.Allowed {
						admitted[i].Add(1)
					}
				}
			})
		}
	}
	started.Wait()
	admin.ConfigResetStat(ctx)
	start, err := ctl.SetBudgetScale(ctx, "co", 1)
	if err != nil {
		t.Fatal(err)
	}
	close(begin)
	time.Sleep(2 * time.Second)
	stop()
	wg.Wait()
	calls := commandCalls(t, admin)

	scripts := calls["evalsha"] + calls["eval"]
	all := decisions[0].Load() + decisions[1].Load()
	t.Logf("coalesced replica admitted %d, single %d; %d decisions in %d scripts", admitted[0].Load(), admitted[1].Load(), all, scripts)
	checkBound(t, admin, "co", start, rate, float64(admitted[0].Load()+admitted[1].Load()))
	if scripts >= all {
		t.Fatalf("%d scripts for %d decisions: nothing was coalesced", scripts, all)
	}
}
