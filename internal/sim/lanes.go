package sim

import (
	"context"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-dev/sluice/pkg/limiter"
	"github.com/sluice-dev/sluice/pkg/store"
)

// Lanes makes a run two lanes of one budget (docs/lanes.md): live
// requests at LiveShare of the provider's rate in all, Poisson, each an
// AcquireRequest of lane "live" (priority 1, half the burst held for it),
// for the whole run; the replicas' usual pull becomes the backfill (lane
// "backfill", as fast as it is granted), from BackfillAt on.
type Lanes struct {
	LiveShare  float64       // default 0.2
	BackfillAt time.Duration // default a third of the run
}

// laneStats are the live lane's figures of the current sample interval.
type laneStats struct {
	mu       sync.Mutex
	waits    []float64 // ms, arrival to grant
	admitted atomic.Int64
}

// take returns the live grants a second and the p99 wait (ms) since the
// last take.
func (l *laneStats) take(secs float64) (float64, float64) {
	l.mu.Lock()
	w := l.waits
	l.waits = nil
	l.mu.Unlock()
	n := float64(l.admitted.Swap(0))
	if len(w) == 0 {
		return n / secs, 0
	}
	slices.Sort(w)
	return n / secs, w[min(len(w)-1, len(w)*99/100)]
}

func (c *Config) laneDefaults() {
	if c.Lanes == nil {
		return
	}
	if c.Lanes.LiveShare == 0 {
		c.Lanes.LiveShare = 0.2
	}
	if c.Lanes.BackfillAt == 0 {
		c.Lanes.BackfillAt = c.Duration / 3
	}
}

// setLanes gives the provider its lanes when the run has them.
func (c *Config) setLanes(ctx context.Context, ctl *limiter.Limiter) error {
	if c.Lanes == nil {
		return nil
	}
	_, err := ctl.SetLanes(ctx, c.Provider, []limiter.Lane{
		{Name: "live", Priority: 1, Burst: max(1, c.Burst/2)},
		{Name: "backfill"},
	})
	return err
}

// acquire is one grant of the replica's pull: the backfill lane's, from
// BackfillAt on, when the run has lanes.
func (r *replica) acquire(ctx context.Context, cfg Config, start time.Time) (limiter.Decision, error) {
	if cfg.Lanes == nil {
		return r.Limiter().Acquire(ctx, cfg.Provider, 1)
	}
	select {
	case <-time.After(time.Until(start.Add(cfg.Lanes.BackfillAt))):
	case <-ctx.Done():
		return limiter.Decision{}, ctx.Err()
	}
	return r.Limiter().AcquireRequest(ctx, cfg.Provider, limiter.Request{Lane: "backfill"})
}

// live sends the replica's live requests until ctx ends: each waits for
// its grant on its own, fetches and submits its tick.
func (r *replica) live(ctx context.Context, cfg Config, up *provider, wc *store.WriteCoordinator[Tick], fetched *atomic.Int64, st *laneStats) {
	rnd := rand.New(rand.NewPCG(uint64(r.id), 7))
	rate := cfg.Rate * cfg.Lanes.LiveShare / float64(cfg.Replicas)
	var wg sync.WaitGroup
	defer wg.Wait()
	for next := time.Now(); ; {
		next = next.Add(time.Duration(rnd.ExpFloat64() / rate * float64(time.Second)))
		select {
		case <-time.After(time.Until(next)):
		case <-ctx.Done():
			return
		}
		wg.Go(func() {
			at := time.Now()
			d, err := r.Limiter().AcquireRequest(ctx, cfg.Provider, limiter.Request{Lane: "live"})
			if err != nil {
				return // the run ended
			}
			st.admitted.Add(1)
			st.mu.Lock()
			st.waits = append(st.waits, float64(time.Since(at).Microseconds())/1000)
			st.mu.Unlock()
			r.fetchAndSubmit(cfg, d, up, wc, fetched, rand.New(rand.NewPCG(uint64(at.UnixNano()), 9)))
		})
	}
}
