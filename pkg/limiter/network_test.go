package limiter_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/pkg/limiter"
)

// faultProxy is a toxiproxy, run in the test process, between the limiter
// and a real redis-server: it adds latency, swallows traffic or resets
// connections on demand.
type faultProxy struct {
	t *testing.T
	p *toxiproxy.Proxy
}

func newFaultProxy(t *testing.T, upstream string) *faultProxy {
	t.Helper()
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	p := toxiproxy.NewProxy(srv, "redis", "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	return &faultProxy{t: t, p: p}
}

func (f *faultProxy) addr() string { return f.p.Listen }

// toxic adds a toxic on the replies (downstream), e.g. latency with
// {"latency": 300}, timeout with {"timeout": 0} (traffic swallowed, the
// connection left open), reset_peer with {"timeout": 0}.
func (f *faultProxy) toxic(kind, attrs string) {
	f.t.Helper()
	js := fmt.Sprintf(`{"name":%q,"type":%q,"stream":"downstream","attributes":%s}`, kind, kind, attrs)
	if _, err := f.p.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
		f.t.Fatal(err)
	}
}

func (f *faultProxy) heal() { f.p.Toxics.ResetToxics(context.Background()) }

// TestNetworkFaults: latency, a network that swallows traffic (the
// connection stays open, nothing comes back) and connections reset by the
// peer, injected between the limiter and a real Redis with toxiproxy.
// Every call returns within its bound (its deadline, or CallTimeout when
// Redis gives nothing back) plus a margin for a loaded machine; the outage
// mode decides while Redis cannot be reached (fail_closed refuses,
// local_fallback admits no more than its share of the budget); once the
// fault is gone the limiter is back on Redis within RedisRetry periods.
// The figures are logged (RELIABILITY.md quotes them).
func TestNetworkFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	const (
		callTimeout = 300 * time.Millisecond
		retry       = 100 * time.Millisecond
		margin      = 250 * time.Millisecond // scheduling on a busy 2-core machine; the logs show the real overshoot
	)
	srv := redistest.Start(t)
	// How late this process's timers fire: a bound cannot hold tighter than
	// the scheduler runs the goroutine (see TestDeadlinesAnyClient).
	stop := make(chan struct{})
	defer close(stop)
	late := watchLateness(stop)
	setup := func(t *testing.T, mode limiter.OutageMode, callTimeout time.Duration) (fp *faultProxy, admin, c *limiter.Limiter) {
		fp = newFaultProxy(t, srv.Addr)
		rdb := redis.NewClient(&redis.Options{Addr: fp.addr(), MaxRetries: -1, ContextTimeoutEnabled: true,
			DialTimeout: 200 * time.Millisecond})
		t.Cleanup(func() { rdb.Close() })
		// Setup through Redis itself, not the proxy, by a limiter that
		// waits: on a starved machine a healthy Redis may take longer than
		// CallTimeout, which the limiter under test would take for an
		// outage before the fault.
		admin, _ = newCoord(t, srv.Client(t), limiter.Options{})
		register(t, admin, "p", 10, 100)
		c, _ = newCoord(t, rdb, limiter.Options{Outage: mode, CallTimeout: callTimeout, RedisRetry: retry})
		sharedGrant(t, c, "p")
		return fp, admin, c
	}
	ctx := context.Background()
	// timed runs one TryAcquire under a deadline and says how long it took.
	timed := func(c *limiter.Limiter, deadline time.Duration) (limiter.Decision, time.Duration, error) {
		cctx, cancel := context.WithTimeout(ctx, deadline)
		defer cancel()
		start := time.Now()
		d, err := c.TryAcquire(cctx, "p", 1)
		return d, time.Since(start), err
	}
	backOnRedis := func(t *testing.T, c *limiter.Limiter, healed time.Time) time.Duration {
		t.Helper()
		waitFor(t, "the shared bucket back", func() bool {
			d, err := c.TryAcquire(ctx, "p", 1)
			return err == nil && !d.Local
		})
		back := time.Since(healed)
		if back > 10*retry+margin+late.Load() {
			t.Errorf("back on Redis %v after the fault ended, want within a few RedisRetry (%v)", back, retry)
		}
		return back
	}

	// A new connection costs round trips before the script's (HELLO, CLIENT
	// SETINFO): CallTimeout must cover about three of them, here 1s for
	// 100ms each way.
	t.Run("latency_below_call_timeout", func(t *testing.T) {
		fp, _, c := setup(t, limiter.FailClosed, time.Second)
		fp.toxic("latency", `{"latency":100}`)
		d, took, err := timed(c, 5*time.Second)
		if err != nil || d.Local || took < 100*time.Millisecond {
			t.Fatalf("100ms latency: %+v, %v after %v; want Redis's own decision, late", d, err, took)
		}
		// A caller whose deadline comes first gets its deadline error by then.
		_, short, err := timed(c, 50*time.Millisecond)
		t.Logf("100ms latency: decision in %v; a 50ms deadline returned after %v", took.Round(time.Millisecond), short.Round(time.Millisecond))
		if !errors.Is(err, context.DeadlineExceeded) || short > 50*time.Millisecond+margin {
			t.Fatalf("a 50ms deadline under 100ms latency: %v after %v", err, short)
		}
		if d, err := c.TryAcquire(ctx, "p", 1); err != nil || d.Local {
			t.Fatalf("a caller's deadline must not count as an outage: %+v, %v", d, err)
		}
	})

	for _, fault := range []struct{ name, kind, attrs string }{
		{"latency_above_call_timeout", "latency", `{"latency":1000}`},
		{"traffic_swallowed", "timeout", `{"timeout":0}`},
		{"connections_reset", "reset_peer", `{"timeout":0}`},
	} {
		for _, mode := range []limiter.OutageMode{limiter.FailClosed, limiter.LocalFallback} {
			t.Run(fault.name+"/"+mode.String(), func(t *testing.T) {
				fp, admin, c := setup(t, mode, callTimeout)
				if _, err := admin.SetBudgetScale(ctx, "p", 0.5); err != nil {
					t.Fatal(err)
				}
				waitFor(t, "the limiter learns the scale", func() bool {
					d, err := c.TryAcquire(ctx, "p", 1)
					return err == nil && !d.Local && d.Scale == 0.5
				})
				fp.toxic(fault.kind, fault.attrs)
				start := time.Now()
				d, first, err := timed(c, 5*time.Second)
				switch mode {
				case limiter.FailClosed:
					if !errors.Is(err, limiter.ErrRedisUnavailable) {
						t.Fatalf("first call: %+v, %v; want ErrRedisUnavailable", d, err)
					}
				case limiter.LocalFallback:
					if err != nil || !d.Local {
						t.Fatalf("first call: %+v, %v; want a local decision", d, err)
					}
				}
				if first > callTimeout+margin+late.Load() {
					t.Fatalf("the first call took %v, want within CallTimeout %v", first, callTimeout)
				}
				// 8 goroutines for a second, a call every millisecond each:
				// each call returns at once, and local_fallback grants no
				// more than 100/s × 0.5 over it.
				var granted, calls atomic.Int64
				var slowest atomic.Int64
				var wg sync.WaitGroup
				for range 8 {
					wg.Go(func() {
						for time.Since(start) < time.Second {
							d, took, _ := timed(c, 5*time.Second)
							calls.Add(1)
							if d.Allowed {
								granted.Add(1)
							}
							if int64(took) > slowest.Load() {
								slowest.Store(int64(took))
							}
							time.Sleep(time.Millisecond)
						}
					})
				}
				wg.Wait()
				window := time.Since(start)
				fp.heal()
				back := backOnRedis(t, c, time.Now())
				t.Logf("%s, %s: first call %v; %d calls in %v, slowest %v, %d granted (budget %.0f); back on Redis %v after the fault ended",
					fault.name, mode, first.Round(time.Millisecond), calls.Load(), window.Round(time.Millisecond),
					time.Duration(slowest.Load()).Round(time.Millisecond), granted.Load(), 100*0.5*window.Seconds(), back.Round(time.Millisecond))
				// Once the outage mode decides, calls do not touch Redis: none
				// waits out CallTimeout again and again. (How long one takes
				// is the scheduler's on a loaded machine, with -race: the log
				// has the figure.)
				if time.Duration(slowest.Load()) > 2*time.Second {
					t.Errorf("a call took %v during the fault", time.Duration(slowest.Load()))
				}
				switch b := 100 * 0.5 * window.Seconds(); {
				case mode == limiter.FailClosed && granted.Load() != 0:
					t.Errorf("fail_closed granted %d during the fault", granted.Load())
				case mode == limiter.LocalFallback && float64(granted.Load()) > b:
					t.Errorf("local_fallback granted %d during a %v fault, budget %.0f", granted.Load(), window, b)
				}
			})
		}
	}
}
