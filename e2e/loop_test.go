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
	"github.com/sluice-dev/sluice/pkg/feedback/httpbus"
	"github.com/sluice-dev/sluice/pkg/feedback/redisbus"
	"github.com/sluice-dev/sluice/pkg/limiter"
	"github.com/sluice-dev/sluice/pkg/pipeline"
	"github.com/sluice-dev/sluice/pkg/state"
	"github.com/sluice-dev/sluice/pkg/store"
)

// newReplica starts a pipeline replica with feedback on provider "ibkr"
// (registered: 100 tokens, 100/s), fed by events (nil: Redis), closed when
// t ends. Its handler rises as soon as the pressure allows (1 ms dwell).
func newReplica(t *testing.T, rdb redis.UniversalClient, events feedback.Subscriber, source string) *pipeline.Replica {
	t.Helper()
	ctx := context.Background()
	cfg := limiter.DefaultProviderConfig()
	cfg.Capacity, cfg.RefillRate = 100, 100
	reg, err := limiter.New(rdb, limiter.Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	if _, err := reg.Register(ctx, "ibkr", cfg); err != nil {
		t.Fatal(err)
	}
	r, err := pipeline.New(ctx, rdb, pipeline.Options{
		Limiter: limiter.Options{Source: source, Logger: quiet},
		// The seed's step mapping: these tests follow levels over each bus.
		Feedback: &feedback.Options{Providers: []string{"ibkr"}, Policy: feedback.DefaultStepPolicy, Rise: feedback.Rise{Dwell: time.Millisecond}, Logger: quiet},
		Events:   events,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
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

// waitScale waits until the replica's limiter sees the scale want.
func waitScale(t *testing.T, r *pipeline.Replica, want float64) {
	t.Helper()
	waitStatus(t, r, fmt.Sprintf("scale %v", want), func(st limiter.Status) bool { return st.Scale == want })
}

// waitStatus waits until ibkr's status, as r's limiter reads it, satisfies
// ok. (The handler writes the scale before the level: a test that needs
// both waits for both.)
func waitStatus(t *testing.T, r *pipeline.Replica, what string, ok func(limiter.Status) bool) {
	t.Helper()
	var st limiter.Status
	var err error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if st, err = r.Limiter().Status(context.Background(), "ibkr"); err == nil && ok(st) {
			return
		}
	}
	t.Fatalf("status %+v (%v), want %s", st, err, what)
}

// TestInProcessLoop is the seed's integration test: store -> in-process bus
// -> handler -> limiter, in one process.
func TestInProcessLoop(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		var bus feedback.Bus
		r := newReplica(t, b.Client(t), &bus, "")
		w, open := gatedStore(t, &bus)
		fill(t, w, 1+70) // one in the worker, 70% queued: soft
		waitScale(t, r, 0.5)
		fill(t, w, 20) // 90%: hard
		waitScale(t, r, 0)
		waitStatus(t, r, "level hard set by feedback", func(s limiter.Status) bool {
			return s.Level == state.Hard && s.Source == "feedback"
		})
		open() // drains: ok
		waitScale(t, r, 1)
	})
}

// TestRedisLoopThreeReplicas: the store publishes through Redis; three
// pipeline replicas, each with its own client, subscriber, handler and
// limiter, converge on one scale; a fourth that starts after the last event
// converges too.
func TestRedisLoopThreeReplicas(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		ctx := context.Background()
		var replicas []*pipeline.Replica
		for i := range 3 { // each returns subscribed: nothing published later is missed
			replicas = append(replicas, newReplica(t, b.Client(t), nil, fmt.Sprintf("feedback:r%d", i)))
		}
		pub, err := redisbus.NewPublisher(b.Client(t), redisbus.Options{TTL: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		w, open := gatedStore(t, pub)
		fill(t, w, 1+90)
		for _, r := range replicas {
			waitScale(t, r, 0)
			if d, err := r.Limiter().TryAcquire(ctx, "ibkr", 1); err != nil || d.Reason != limiter.ReasonPaused {
				t.Fatalf("replica decision %+v %v, want paused", d, err)
			}
		}
		late := newReplica(t, b.Client(t), nil, "feedback:r3")
		waitScale(t, late, 0)
		if n := b.Client(t).SCard(ctx, "sluice:pressure:hard").Val(); n != 1 {
			t.Fatalf("SCARD sluice:pressure:hard = %d, want 1 (KEDA's view)", n)
		}
		open()
		for _, r := range append(replicas, late) {
			waitScale(t, r, 1)
		}
	})
}

// TestHTTPLoop: a store in another process posts its pressure over HTTP to
// the receiver, which drives the handler and the limiter.
func TestHTTPLoop(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		var bus feedback.Bus
		r := newReplica(t, b.Client(t), &bus, "feedback:http")
		recv, err := httpbus.NewReceiver(httpbus.ReceiverOptions{Deliver: bus.Publish, Token: "t0k", Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(recv)
		defer srv.Close()
		client, err := httpbus.NewClient(httpbus.ClientOptions{URL: srv.URL + "/feedback", Token: "t0k"})
		if err != nil {
			t.Fatal(err)
		}
		w, open := gatedStore(t, client)
		fill(t, w, 1+70)
		waitScale(t, r, 0.5)
		waitStatus(t, r, "level soft set by feedback:http", func(s limiter.Status) bool {
			return s.Level == state.Soft && s.Source == "feedback:http"
		})
		open()
		waitScale(t, r, 1)
	})
}
