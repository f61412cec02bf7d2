package redisstream_test

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/pkg/store"
	"github.com/sluice-dev/sluice/pkg/store/redisstream"
)

// BenchmarkWritePath measures the durable write path on a real
// redis-server: 4 producers append b.N items (batches of 100) as fast as
// they can while one consumer writes them into a discard sink. It reports
// items/s through the coordinator and the p50/p99 from append to sink (at
// saturation: the latency includes the backlog).
func BenchmarkWritePath(b *testing.B) { benchWritePath(b, 0) }

// BenchmarkWritePath20k is the same at an offered load of 20,000 items/s
// (100 items every 5 ms): the latency of a path that keeps up.
func BenchmarkWritePath20k(b *testing.B) { benchWritePath(b, 20000) }

func benchWritePath(b *testing.B, rate float64) {
	srv := redistest.Start(b)
	rdb := srv.Client(b)
	var (
		mu      sync.Mutex
		lat     []time.Duration
		written atomic.Int64
		done    = make(chan struct{})
	)
	total := int64(b.N)
	sink := store.SinkFunc[redisstream.Entry](func(_ context.Context, batch []redisstream.Entry) error {
		now := time.Now()
		mu.Lock()
		for _, e := range batch {
			lat = append(lat, now.Sub(e.Appended))
		}
		mu.Unlock()
		if written.Add(int64(len(batch))) == total {
			close(done)
		}
		return nil
	})
	c, err := redisstream.NewConsumer(rdb, sink, redisstream.ConsumerOptions{
		Options: redisstream.Options{Stream: "bench"}, Name: "c0", Logger: quiet,
		Store: store.Options[redisstream.Entry]{Capacity: 20000, Logger: quiet},
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- c.Run(ctx) }()
	item := []byte(`{"id":"p1.abc-123456","provider":"ibkr","symbol":"NVDA","price":131.2417,"fetched_at":"2026-11-27T16:00:00.123456Z"}`)
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	producers := 4
	if rate > 0 {
		producers = 1
	}
	per := (b.N + producers - 1) / producers
	for w := range producers {
		wg.Go(func() {
			p, _ := redisstream.NewProducer(srv.Client(b), redisstream.Options{Stream: "bench"})
			tick := time.NewTicker(time.Duration(100 / max(rate, 1) * float64(time.Second)))
			defer tick.Stop()
			for i := w * per; i < min(b.N, (w+1)*per); i += 100 {
				if rate > 0 {
					<-tick.C
				}
				batch := make([][]byte, 0, 100)
				for range min(100, min(b.N, (w+1)*per)-i) {
					batch = append(batch, item)
				}
				if err := p.Append(context.Background(), batch...); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if b.N > 0 {
		select {
		case <-done:
		case <-time.After(5 * time.Minute):
			b.Fatalf("written %d of %d", written.Load(), b.N)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	cancel()
	<-ran
	slices.Sort(lat)
	if len(lat) > 0 {
		b.ReportMetric(float64(b.N)/elapsed.Seconds(), "items/s")
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	}
}
