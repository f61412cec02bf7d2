package sim_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/internal/sim"
)

// TestRunWithLanes: the loop with lanes on a real redis-server: live
// requests are granted in every interval, the backfill only once it has
// started, and nothing fetched is lost.
func TestRunWithLanes(t *testing.T) {
	srv := redistest.Start(t)
	res, err := sim.Run(context.Background(), sim.Config{
		NewClient: func() redis.UniversalClient { return redis.NewClient(&redis.Options{Addr: srv.Addr}) },
		Rate:      200, SinkRate: 100, Replicas: 2, Feedback: true,
		Duration: 3 * time.Second, Interval: 500 * time.Millisecond,
		Lanes:  &sim.Lanes{BackfillAt: 1500 * time.Millisecond},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Lost != 0 {
		t.Errorf("lost %d", res.Lost)
	}
	var live, before, after float64
	for _, s := range res.Samples {
		live += s.Live
		backfill := s.Admitted - s.Live
		if s.T < 1400*time.Millisecond {
			before += backfill
		} else if s.T > 2*time.Second {
			after += backfill
		}
	}
	if live == 0 || before != 0 || after == 0 {
		t.Fatalf("live %v/s in all, backfill %v before it started and %v after; samples %+v", live, before, after, res.Samples)
	}
}
