package limiter_test

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/pkg/limiter"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// defaultCallTimeout is Options.CallTimeout's default, which the tests of
// outages (a stalled, killed or cut Redis; a slot in motion) pass
// explicitly: newCoord gives every other test a minute.
const defaultCallTimeout = 500 * time.Millisecond

// newCoord returns a Limiter on rdb with its own registry, closed when t
// ends. A zero opts.CallTimeout is a minute, not the library's 500 ms: on
// a starved machine (CI's two shared cores, -race) a healthy Redis can take
// longer than 500 ms to answer, which the limiter rightly takes for an
// outage; a test that is not about outages must not see one. The tests of
// outages set CallTimeout themselves (defaultCallTimeout, or shorter).
func newCoord(t testing.TB, rdb redis.UniversalClient, opts limiter.Options) (*limiter.Limiter, *prometheus.Registry) {
	t.Helper()
	if opts.CallTimeout == 0 {
		opts.CallTimeout = time.Minute
	}
	reg := prometheus.NewRegistry()
	if opts.Registerer == nil {
		opts.Registerer = reg
	}
	if opts.Logger == nil {
		opts.Logger = quiet
	}
	c, err := limiter.New(rdb, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, reg
}

func register(t testing.TB, c *limiter.Limiter, provider string, capacity int64, rate float64) {
	t.Helper()
	cfg := limiter.DefaultProviderConfig()
	cfg.Capacity, cfg.RefillRate = capacity, rate
	if _, err := c.Register(context.Background(), provider, cfg); err != nil {
		t.Fatal(err)
	}
}

func mustStatus(t testing.TB, c *limiter.Limiter, provider string) limiter.Status {
	t.Helper()
	s, err := c.Status(context.Background(), provider)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func try(t testing.TB, c *limiter.Limiter, provider string, n int) limiter.Decision {
	t.Helper()
	d, err := c.TryAcquire(context.Background(), provider, n)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// sharedGrant waits until c has a grant from Redis for provider, however
// long a loaded machine takes (an early call that timed out puts the
// provider in its outage mode until a probe brings it back).
func sharedGrant(t testing.TB, c *limiter.Limiter, provider string) {
	t.Helper()
	waitFor(t, "a grant from Redis", func() bool {
		d, err := c.TryAcquire(context.Background(), provider, 1)
		return err == nil && d.Allowed && !d.Local
	})
}

// drain takes every whole token from the bucket, one at a time, and returns
// the first refusal.
func drain(t testing.TB, c *limiter.Limiter, provider string) limiter.Decision {
	t.Helper()
	for range 1_000_000 {
		if d := try(t, c, provider, 1); !d.Allowed {
			return d
		}
	}
	t.Fatal("bucket never drained")
	return limiter.Decision{}
}

// spin runs fn again and again in n goroutines of wg until stop is closed.
func spin(wg *sync.WaitGroup, stop <-chan struct{}, n int, fn func()) {
	for range n {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				fn()
			}
		})
	}
}

func near(a, b, eps float64) bool { return a-b <= eps && b-a <= eps }

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
