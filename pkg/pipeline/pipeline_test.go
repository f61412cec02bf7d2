package pipeline_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/feedback/redisbus"
	"github.com/sluice-dev/sluice/pkg/limiter"
	"github.com/sluice-dev/sluice/pkg/pipeline"
	"github.com/sluice-dev/sluice/pkg/state"
)

func register(t *testing.T, rdb redis.UniversalClient) {
	t.Helper()
	c, err := limiter.New(rdb, limiter.Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Register(context.Background(), "ibkr", limiter.DefaultProviderConfig()); err != nil {
		t.Fatal(err)
	}
}

func status(t *testing.T, r *pipeline.Replica) limiter.Status {
	t.Helper()
	st, err := r.Limiter().Status(context.Background(), "ibkr")
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestStartsAtTheRightScale: a replica that starts while a store is at hard
// is paused when New returns: the snapshot of the pressure in Redis is
// handled before, not after.
func TestStartsAtTheRightScale(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		ctx := context.Background()
		rdb := b.Client(t)
		register(t, rdb)
		pub, err := redisbus.NewPublisher(b.Client(t), redisbus.Options{})
		if err != nil {
			t.Fatal(err)
		}
		e := feedback.Event{CoordinatorID: "store-0", QueueSize: 900, Capacity: 1000, Level: state.Hard, Seq: 1}
		if err := pub.Publish(ctx, e); err != nil {
			t.Fatal(err)
		}
		r, err := pipeline.New(ctx, rdb, pipeline.Options{
			Limiter:  limiter.Options{ReplicaID: "pod-1", Logger: quiet},
			Feedback: &feedback.Options{Providers: []string{"ibkr"}, Logger: quiet},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if st := status(t, r); st.Scale != 0 || st.Level != state.Hard || st.Source != "feedback" {
			t.Fatalf("when New returned: %+v, want scale 0 and level hard, set by feedback", st)
		}
		if r.Handler() == nil {
			t.Fatal("no handler with feedback on")
		}
		// Later events arrive over pub/sub.
		e.Seq, e.Level, e.QueueSize = 2, state.Soft, 650
		if err := pub.Publish(ctx, e); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(30 * time.Second); status(t, r).Level != state.Soft; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("level %s 30 s after soft was published", status(t, r).Level)
			}
		}
		// Close leaves the replica registry and stops the handler; a second
		// Close does nothing.
		if _, err := r.Limiter().TryAcquire(ctx, "ibkr", 1); err != nil {
			t.Fatal(err)
		}
		if got := status(t, r).Replicas; len(got) != 1 || got[0] != "pod-1" {
			t.Fatalf("replicas %v, want pod-1", got)
		}
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Limiter().TryAcquire(ctx, "ibkr", 1); err == nil {
			t.Fatal("the limiter still decides after Close")
		}
	})
}

// TestWithoutFeedback: the replica only acquires; it subscribes to nothing
// and changes no scale.
func TestWithoutFeedback(t *testing.T) {
	_, rdb := redistest.Mini(t)
	register(t, rdb)
	r, err := pipeline.New(context.Background(), rdb, pipeline.Options{Limiter: limiter.Options{Logger: quiet}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.Handler() != nil {
		t.Fatal("a handler without feedback")
	}
	if d, err := r.Limiter().TryAcquire(context.Background(), "ibkr", 1); err != nil || !d.Allowed {
		t.Fatalf("%+v %v", d, err)
	}
}

// TestNewFails: bad options, an unreachable Redis and a provider the
// handler cannot set are errors.
func TestNewFails(t *testing.T) {
	_, rdb := redistest.Mini(t)
	ctx := context.Background()
	for _, o := range []pipeline.Options{
		{Limiter: limiter.Options{Prefix: "a b"}},
		{Feedback: &feedback.Options{}}, // no providers
		{Feedback: &feedback.Options{Providers: []string{"ibkr"}, Rise: feedback.Rise{Dwell: -time.Second}}},
	} {
		if r, err := pipeline.New(ctx, rdb, o); err == nil {
			r.Close()
			t.Errorf("New(%+v) accepted", o)
		}
	}
	// The handler must set ibkr's scale, but nobody registered it.
	_, err := pipeline.New(ctx, rdb, pipeline.Options{Feedback: &feedback.Options{Providers: []string{"ibkr"}, Logger: quiet}})
	if !errors.Is(err, limiter.ErrUnknownProvider) {
		t.Fatalf("New with an unregistered provider: %v, want ErrUnknownProvider", err)
	}
	gone := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
	defer gone.Close()
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err = pipeline.New(sctx, gone, pipeline.Options{Feedback: &feedback.Options{Providers: []string{"ibkr"}}})
	if err == nil || !strings.Contains(err.Error(), "pipeline: redisbus: subscribe") {
		t.Fatalf("New on an unreachable Redis: %v", err)
	}
}

// TestStartsFromNoPressure: with no coordinator reporting, New still acts:
// a scale left at 0 in Redis (by a store that has since gone) rises once the
// dwell since its change has passed, not at the handler's next tick.
func TestStartsFromNoPressure(t *testing.T) {
	m, rdb := redistest.Mini(t)
	m.SetTime(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	register(t, rdb)
	c, err := limiter.New(rdb, limiter.Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.SetBudgetScale(context.Background(), "ibkr", 0); err != nil {
		t.Fatal(err)
	}
	m.SetTime(time.Date(2026, 1, 2, 3, 4, 15, 0, time.UTC)) // Redis time: 10 s later
	r, err := pipeline.New(context.Background(), rdb, pipeline.Options{
		Limiter: limiter.Options{Logger: quiet},
		// The handler's clock says 10 s have passed too: past the 5 s dwell
		// of the step policy (the PI ramps instead: TestControllerRampsRises).
		Feedback: &feedback.Options{Providers: []string{"ibkr"}, Policy: feedback.DefaultStepPolicy, Logger: quiet, Tick: time.Hour,
			Clock: func() time.Time { return time.Date(2026, 1, 2, 3, 4, 15, 0, time.UTC) }},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if st := status(t, r); st.Scale != 1 || st.Source != "feedback" {
		t.Fatalf("when New returned: scale %v set by %q, want 1 set by feedback", st.Scale, st.Source)
	}
}
