package pipeline_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/limiter"
	"github.com/sluice-dev/sluice/pkg/pipeline"
	"github.com/sluice-dev/sluice/pkg/state"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// The feedback loop in one process (a monolith): the store publishes its
// pressure on an in-process Bus, the replica's handler turns it into the
// shared scale. Across processes, leave Events nil (Redis) and give the
// store a redisbus.Publisher.
func Example() {
	mr, _ := miniredis.Run() // any Redis
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true}) // deadlines end round trips
	defer rdb.Close()
	ctx := context.Background()

	// An operator (or the controller) registers the provider once.
	admin, err := limiter.New(rdb, limiter.Options{Source: "operator", Logger: quiet})
	if err != nil {
		panic(err)
	}
	defer admin.Close()
	if _, err := admin.Register(ctx, "ibkr", limiter.DefaultProviderConfig()); err != nil {
		panic(err)
	}

	var bus feedback.Bus // the store's feedback.Publisher
	r, err := pipeline.New(ctx, rdb, pipeline.Options{
		Limiter: limiter.Options{Logger: quiet},
		// The seed's step mapping, 5 s dwell; without Policy, the default
		// PI policy follows the store's fill samples instead of its levels.
		Feedback: &feedback.Options{Providers: []string{"ibkr"}, Policy: feedback.DefaultStepPolicy, Logger: quiet},
		Events:   &bus,
	})
	if err != nil {
		panic(err)
	}
	defer r.Close()
	lim := r.Limiter()

	report := func(seq uint64, level state.Level, queue int) {
		// What a store.WriteCoordinator publishes at a level change.
		e := feedback.Event{CoordinatorID: "store-0", QueueSize: queue, Capacity: 1000, Level: level, Seq: seq}
		if err := bus.Publish(ctx, e); err != nil {
			panic(err)
		}
		d, _ := lim.TryAcquire(ctx, "ibkr", 1)
		fmt.Printf("%-4s -> scale %g, level %s, decision %s\n", level, d.Scale, d.Level, d.Reason)
	}
	report(1, state.Soft, 650)
	report(2, state.Hard, 900)
	report(3, state.OK, 100) // the rise waits for the dwell
	// Output:
	// soft -> scale 0.5, level soft, decision ok
	// hard -> scale 0, level hard, decision paused
	// ok   -> scale 0, level ok, decision paused
}
