package e2e_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/limiter"
	"github.com/sluice-dev/sluice/pkg/store"
)

func newLimiter(t *testing.T, rdb redis.UniversalClient, provider string) *limiter.Coordinator {
	t.Helper()
	c, err := limiter.New(rdb, limiter.Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	cfg := limiter.DefaultProviderConfig()
	cfg.Capacity, cfg.RefillRate = 100, 100
	if _, err := c.Register(context.Background(), provider, cfg); err != nil {
		t.Fatal(err)
	}
	return c
}

func newHandler(t *testing.T, rate feedback.RateCoordinator, source string) *feedback.Handler {
	t.Helper()
	h, err := feedback.NewHandler(rate, feedback.Options{Providers: []string{"ibkr"}, Dwell: -1, Source: source, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// gatedStore is a write coordinator whose sink waits for open, so a test
// can fill its queue to a chosen level.
func gatedStore(t *testing.T, pub feedback.Publisher) (*store.WriteCoordinator[int], func()) {
	t.Helper()
	gate := make(chan struct{})
	var once sync.Once
	open := func() { once.Do(func() { close(gate) }) }
	sink := store.SinkFunc[int](func(ctx context.Context, _ []int) error {
		select {
		case <-gate:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	w, err := store.New[int](sink, store.Options[int]{ID: "store-0", Capacity: 100, Workers: 1, BatchSize: 1,
		Linger: time.Millisecond, Publisher: pub, Heartbeat: 100 * time.Millisecond, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { open(); _ = w.Close(context.Background()) })
	return w, open
}

func fill(t *testing.T, w *store.WriteCoordinator[int], n int) {
	t.Helper()
	for i := range n {
		if err := w.Submit(context.Background(), i); err != nil {
			t.Fatal(err)
		}
	}
}

func waitScale(t *testing.T, c *limiter.Coordinator, want float64) {
	t.Helper()
	var got float64
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		got, _, _ = c.CurrentScale(context.Background(), "ibkr")
		if got == want {
			return
		}
	}
	t.Fatalf("scale %v, want %v", got, want)
}

// TestInProcessLoop is the seed's integration test: store -> in-process bus
// -> handler -> limiter, in one process.
func TestInProcessLoop(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		lim := newLimiter(t, b.Client(t), "ibkr")
		h := newHandler(t, lim, "feedback")
		var bus feedback.Bus
		bus.Subscribe(h.Handle)
		w, open := gatedStore(t, &bus)
		fill(t, w, 1+70) // one in the worker, 70% queued: soft
		waitScale(t, lim, 0.5)
		fill(t, w, 20) // 90%: hard
		waitScale(t, lim, 0)
		if s, _ := lim.Status(context.Background(), "ibkr"); s.Level != "hard" || s.Source != "feedback" {
			t.Fatalf("status %+v, want level hard set by feedback", s)
		}
		open() // drains: ok
		waitScale(t, lim, 1)
	})
}

// TestRedisLoopThreeReplicas: the store publishes through Redis; three
// pipeline replicas, each with its own client, subscriber, handler and
// limiter, converge on one scale; a fourth that starts after the last event
// converges too.
func TestRedisLoopThreeReplicas(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var wg sync.WaitGroup
		defer wg.Wait()
		defer cancel()
		var replicas []*limiter.Coordinator
		start := func(i int) *limiter.Coordinator {
			rdb := b.Client(t)
			lim := newLimiter(t, rdb, "ibkr")
			h := newHandler(t, lim, fmt.Sprintf("feedback:r%d", i))
			sub := feedback.NewRedisSubscriber(rdb, feedback.RedisKeys{}, time.Second, quiet)
			wg.Go(func() { _ = sub.Run(ctx, h.Handle) })
			wg.Go(func() { _ = h.Run(ctx) })
			return lim
		}
		for i := range 3 {
			replicas = append(replicas, start(i))
		}
		time.Sleep(100 * time.Millisecond)
		w, open := gatedStore(t, feedback.NewRedisPublisher(b.Client(t), feedback.RedisKeys{}, 5*time.Second))
		fill(t, w, 1+90)
		for _, lim := range replicas {
			waitScale(t, lim, 0)
			if d, err := lim.TryAcquire(ctx, "ibkr", 1); err != nil || d.Reason != limiter.ReasonPaused {
				t.Fatalf("replica decision %+v %v, want paused", d, err)
			}
		}
		late := start(3)
		waitScale(t, late, 0)
		if n := b.Client(t).SCard(ctx, "sluice:pressure:hard").Val(); n != 1 {
			t.Fatalf("SCARD sluice:pressure:hard = %d, want 1 (KEDA's view)", n)
		}
		open()
		for _, lim := range append(replicas, late) {
			waitScale(t, lim, 1)
		}
	})
}

// TestHTTPLoop: a store in another process posts its pressure over HTTP to
// the receiver, which drives the handler and the limiter.
func TestHTTPLoop(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		lim := newLimiter(t, b.Client(t), "ibkr")
		h := newHandler(t, lim, "feedback:http")
		recv, err := feedback.NewReceiver(feedback.ReceiverOptions{Deliver: h.Handle, Token: "t0k", Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(recv)
		defer srv.Close()
		client, err := feedback.NewHTTPClient(feedback.HTTPClientOptions{URL: srv.URL + "/feedback", Token: "t0k"})
		if err != nil {
			t.Fatal(err)
		}
		w, open := gatedStore(t, client)
		fill(t, w, 1+70)
		waitScale(t, lim, 0.5)
		if s, _ := lim.Status(context.Background(), "ibkr"); s.Source != "feedback:http" || s.Level != "soft" {
			t.Fatalf("status %+v", s)
		}
		open()
		waitScale(t, lim, 1)
	})
}
