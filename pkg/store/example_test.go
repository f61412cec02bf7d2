package store_test

import (
	"context"
	"fmt"
	"time"

	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/store"
)

// A write coordinator in front of a store: Submit queues, workers write in
// batches, Close drains; every level change and heartbeat is published.
func Example() {
	var written int
	sink := store.SinkFunc[string](func(_ context.Context, batch []string) error {
		written += len(batch) // one worker: no race
		return nil
	})
	var bus feedback.Bus // or a redisbus.Publisher, an httpbus.Client
	var last feedback.Event
	_, _ = bus.Subscribe(context.Background(), func(_ context.Context, e feedback.Event) error {
		last = e
		return nil
	})
	w, err := store.New(sink, store.Options[string]{
		ID: "store-0", Capacity: 100, Workers: 1, BatchSize: 10, Linger: time.Millisecond,
		Publisher: &bus, Logger: quiet,
	})
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	for i := range 25 {
		if err := w.Submit(ctx, fmt.Sprintf("tick-%d", i)); err != nil {
			panic(err)
		}
	}
	if err := w.Close(ctx); err != nil { // drains the queue first
		panic(err)
	}
	st := w.Stats()
	fmt.Println("written", written, "unwritten", st.Unwritten, "level", st.Level)
	fmt.Println("last event:", last.CoordinatorID, last.Level, last.QueueSize, "of", last.Capacity)
	// Output:
	// written 25 unwritten 0 level ok
	// last event: store-0 ok 0 of 100
}
