package limiter_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/pkg/limiter"
)

// stallTarget is the Redis a stall test talks to: the client under test,
// and the server (on a cluster, the master of the provider's slot) to stall.
type stallTarget struct {
	rdb      redis.UniversalClient
	srv      *redistest.Server
	provider string
}

// stall freezes tg's server for d, by SIGSTOP or by DEBUG SLEEP (the server
// runs but answers nothing, as during a long command), and for as much
// longer as it takes until() to hold (nil: not at all; at most 10 × d): on
// a starved machine the limiter's goroutines may not run within d, and a
// stall that ends before they do tests nothing. (DEBUG SLEEP is extended by
// another one, so the server may answer between the two.) It returns once
// the server is stalled (a PING from another connection gets no answer
// within 50 ms) and when that happened; done is closed when it answers
// again for good.
func stall(t *testing.T, tg stallTarget, kind string, d time.Duration, until func() bool) (began time.Time, done <-chan struct{}) {
	t.Helper()
	ended := make(chan struct{})
	began = time.Now()
	more := func() time.Duration { // how much longer the stall lasts
		if until == nil || until() || time.Since(began) > 10*d {
			return 0
		}
		return 100 * time.Millisecond
	}
	switch kind {
	case "sigstop":
		tg.srv.Pause(t)
		go func() {
			time.Sleep(d)
			for m := more(); m > 0; m = more() {
				time.Sleep(m)
			}
			tg.srv.Resume(t)
			close(ended)
		}()
	case "debug_sleep":
		admin := redis.NewClient(&redis.Options{Addr: tg.srv.Addr, MaxRetries: -1})
		t.Cleanup(func() { admin.Close() })
		go func() {
			for s := d; s > 0; s = more() {
				if err := admin.Do(context.Background(), "DEBUG", "SLEEP", s.Seconds()).Err(); err != nil {
					t.Errorf("DEBUG SLEEP: %v", err)
				}
			}
			close(ended)
		}()
	default:
		t.Fatalf("unknown stall %q", kind)
	}
	ping := redis.NewClient(&redis.Options{Addr: tg.srv.Addr, MaxRetries: -1, ContextTimeoutEnabled: true})
	defer ping.Close()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		err := ping.Ping(ctx).Err()
		cancel()
		if err != nil {
			return began, ended
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// callRecord is one limiter call made while the test ran.
type callRecord struct {
	op       string
	start    time.Time
	took     time.Duration
	deadline time.Time // zero: none (bounded by CallTimeout)
	d        limiter.Decision
	err      error
}

// TestDeadlinesAnyClient (issue 20, finding 4): Redis stalled by SIGSTOP
// and by DEBUG SLEEP, while callers acquire with a 200 ms deadline and
// without one (CallTimeout, 500 ms, bounds them), and an operator calls
// Status, SetBudgetScale and Register, through a client built as the
// README's old snippet (redis.NewClient(&redis.Options{Addr: ...}), no
// ContextTimeoutEnabled), under each outage mode; and through a client with
// ContextTimeoutEnabled, a Ring and a ClusterClient (the stalled node is the
// master of the provider's slot). Every call returns within its deadline,
// or CallTimeout (a request coalesced behind a call in flight waits for
// that one too), plus a margin for a loaded machine; no grant was decided
// after its caller's deadline (Decision.Now, Redis or local time, against
// the deadline); the outage mode decides during the stall (local_fallback
// and fail_open: local decisions; fail_closed: ErrRedisUnavailable), also
// when every call's deadline is shorter than CallTimeout (deadlines_only:
// the old code's 0 local decisions with any client); the shared
// bucket is back after the stall; Close on a stalled Redis is bounded too.
// The figures are logged.
func TestDeadlinesAnyClient(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	const (
		deadline    = 200 * time.Millisecond
		callTimeout = 500 * time.Millisecond // the default
		stallFor    = 1500 * time.Millisecond
		margin      = 500 * time.Millisecond // scheduling on a busy 2-core machine; the logs have the real figures
	)
	clients := map[string]func(addrs []string) redis.UniversalClient{
		"plain": func(addrs []string) redis.UniversalClient {
			return redis.NewClient(&redis.Options{Addr: addrs[0]}) // the README's old snippet
		},
		"context_timeout": func(addrs []string) redis.UniversalClient {
			return redis.NewClient(&redis.Options{Addr: addrs[0], ContextTimeoutEnabled: true})
		},
		"ring": func(addrs []string) redis.UniversalClient {
			return redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"r0": addrs[0]}})
		},
		"cluster": func(addrs []string) redis.UniversalClient {
			return redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
		},
	}
	type tcase struct {
		client, stall string
		mode          limiter.OutageMode
		// Every call has the 200ms deadline and goes alone (MaxBatch 1):
		// none waits out CallTimeout, no coalesced batch is sent without
		// its caller's deadline.
		deadlinesOnly bool
	}
	var cases []tcase
	for _, s := range []string{"sigstop", "debug_sleep"} {
		for _, m := range []limiter.OutageMode{limiter.FailClosed, limiter.FailOpen, limiter.LocalFallback} {
			cases = append(cases, tcase{"plain", s, m, false})
		}
	}
	cases = append(cases, tcase{"plain", "sigstop", limiter.LocalFallback, true},
		tcase{"context_timeout", "sigstop", limiter.LocalFallback, false},
		tcase{"context_timeout", "debug_sleep", limiter.LocalFallback, true},
		tcase{"ring", "debug_sleep", limiter.LocalFallback, false},
		tcase{"cluster", "sigstop", limiter.LocalFallback, false})

	for _, tc := range cases {
		name := tc.client + "/" + tc.stall + "/" + tc.mode.String()
		if tc.deadlinesOnly {
			name += "/deadlines_only"
		}
		t.Run(name, func(t *testing.T) {
			tg := stallTarget{provider: "p"}
			var addrs []string
			if tc.client == "cluster" {
				cl := redistest.StartCluster(t, 3, 0)
				tg.provider = onMasters(t, cl, 1)[0]
				master := cl.MasterOf(t, cl.Slot(t, "{"+tg.provider+"}"))
				for _, n := range cl.Nodes {
					addrs = append(addrs, n.Addr)
					if n.Addr == master {
						tg.srv = n
					}
				}
			} else {
				tg.srv = redistest.Start(t)
				addrs = []string{tg.srv.Addr}
			}
			tg.rdb = clients[tc.client](addrs)
			t.Cleanup(func() { tg.rdb.Close() })
			o := limiter.Options{Outage: tc.mode, CallTimeout: callTimeout, RedisRetry: 100 * time.Millisecond, Heartbeat: 100 * time.Millisecond}
			long := time.Duration(0) // no deadline: CallTimeout bounds the call
			if tc.deadlinesOnly {
				o.MaxBatch, long = 1, deadline
			}
			stallUnderLoad(t, tg, tc.stall, o, deadline, long, stallFor, margin)
		})
	}
}

// stallUnderLoad runs the load of TestDeadlinesAnyClient through a limiter
// with options o on tg while its server stalls, and checks the calls: some
// with deadline, the others with long (0: none).
func stallUnderLoad(t *testing.T, tg stallTarget, stallKind string, o limiter.Options, deadline, long, stallFor, margin time.Duration) {
	mode, callTimeout := o.Outage, o.CallTimeout
	p := tg.provider
	// Setup on a starved but healthy Redis must not count as an outage:
	// the provider is registered through a client and limiter that wait.
	admin, _ := newCoord(t, tg.rdb, limiter.Options{CallTimeout: time.Minute})
	cfg := limiter.DefaultProviderConfig()
	cfg.Capacity, cfg.RefillRate = 100, 100
	if _, err := admin.Register(context.Background(), p, cfg); err != nil {
		t.Fatal(err)
	}
	c, _ := newCoord(t, tg.rdb, o) // closed below; Close again does nothing
	// The limiter must know the provider from Redis (local_fallback's
	// rate): wait for a shared grant, however long a loaded machine takes.
	waitFor(t, "a grant from Redis", func() bool {
		d, err := c.TryAcquire(context.Background(), p, 1)
		return err == nil && d.Allowed && !d.Local
	})

	var mu sync.Mutex
	var calls []callRecord
	record := func(op string, dl time.Duration, do func(ctx context.Context) (limiter.Decision, error)) {
		ctx, cancel := context.Background(), context.CancelFunc(func() {})
		var at time.Time
		if dl > 0 {
			ctx, cancel = context.WithTimeout(ctx, dl)
			at, _ = ctx.Deadline()
		}
		start := time.Now()
		d, err := do(ctx)
		took := time.Since(start)
		cancel()
		mu.Lock()
		calls = append(calls, callRecord{op, start, took, at, d, err})
		mu.Unlock()
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	pace := func(fn func()) func() { return func() { fn(); time.Sleep(5 * time.Millisecond) } }
	acquire := func(ctx context.Context) (limiter.Decision, error) { return c.TryAcquire(ctx, p, 1) }
	spin(&wg, stop, 4, pace(func() { record("acquire", deadline, acquire) }))
	spin(&wg, stop, 2, pace(func() { record("acquire", long, acquire) }))
	spin(&wg, stop, 1, pace(func() {
		record("status", deadline, func(ctx context.Context) (limiter.Decision, error) {
			_, err := c.Status(ctx, p)
			return limiter.Decision{}, err
		})
		record("set_scale", long, func(ctx context.Context) (limiter.Decision, error) {
			_, err := c.SetBudgetScale(ctx, p, 1) // the scale in force: a late write changes nothing
			return limiter.Decision{}, err
		})
		record("register", deadline, func(ctx context.Context) (limiter.Decision, error) {
			_, err := c.Register(ctx, p, cfg)
			return limiter.Decision{}, err
		})
	}))

	sched := watchLateness(stop)
	time.Sleep(100 * time.Millisecond) // some calls on the healthy Redis first
	// The stall lasts until the outage mode has decided once, if a starved
	// machine takes longer than stallFor to get there.
	sawOutage := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.ContainsFunc(calls, func(r callRecord) bool {
			return r.err == nil && r.d.Local || errors.Is(r.err, limiter.ErrRedisUnavailable)
		})
	}
	began, done := stall(t, tg, stallKind, stallFor, sawOutage)
	<-done
	thawed := time.Now()
	waitFor(t, "a grant from Redis after the stall", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.ContainsFunc(calls, func(r callRecord) bool {
			return r.start.After(thawed) && r.err == nil && r.d.Allowed && !r.d.Local
		})
	})
	back := time.Since(thawed)
	time.Sleep(100 * time.Millisecond)
	close(stop)
	wg.Wait()

	// Close while Redis is stalled again.
	_, done = stall(t, tg, stallKind, stallFor, nil)
	start := time.Now()
	c.Close()
	closing := time.Since(start)
	<-done

	// A call cannot return before the scheduler runs its goroutine, however
	// bounded it is: the margin grows by the latest a 5 ms timer of this
	// process fired while the calls ran (0-20 ms on a quiet machine, up to
	// hundreds with -race and two busy loops on two cores).
	margin += sched.Load()
	var lateGrants, overdue, local, unavailable, deadlineErrs, shared, other int
	var firstOutage time.Duration = -1
	var slowest [2]time.Duration // with a deadline, without
	var latest time.Duration     // the latest return of a grant past its deadline
	for _, r := range calls {
		// Without a deadline, CallTimeout bounds a call; a request that
		// was coalesced behind a call in flight (MaxBatch) waits for that
		// one too, which a caller's deadline may end first.
		bound, i := callTimeout+deadline, 1
		if !r.deadline.IsZero() {
			bound, i = deadline, 0
		}
		slowest[i] = max(slowest[i], r.took)
		if r.took > bound+margin {
			overdue++
			t.Errorf("%s (bound %v) took %v, from %v after the stall began", r.op, bound, r.took.Round(time.Millisecond), r.start.Sub(began).Round(time.Millisecond))
		}
		if r.err == nil && r.d.Allowed && !r.deadline.IsZero() {
			latest = max(latest, r.start.Add(r.took).Sub(r.deadline))
			if r.d.Now.After(r.deadline) {
				lateGrants++
				t.Errorf("%s granted at %v, %v after its caller's deadline", r.op, r.d.Now.Format("15:04:05.000"), r.d.Now.Sub(r.deadline).Round(time.Millisecond))
			}
		}
		inStall := r.start.After(began) && r.start.Before(thawed)
		outage := false
		switch {
		case r.err == nil && r.d.Local:
			local++
			outage = true
		case errors.Is(r.err, limiter.ErrRedisUnavailable):
			unavailable++
			outage = true
		case errors.Is(r.err, context.DeadlineExceeded):
			deadlineErrs++
		case r.err == nil && r.op == "acquire":
			shared++
		case r.err != nil:
			other++
			if inStall || r.start.After(thawed) {
				t.Logf("%s: %v", r.op, r.err)
			}
		}
		if outage && inStall && (firstOutage < 0 || r.start.Add(r.took).Sub(began) < firstOutage) {
			firstOutage = r.start.Add(r.took).Sub(began)
		}
	}
	t.Logf("%d calls around a %v stall: slowest %v with a %v deadline, %v without (CallTimeout %v); %d over bound+%v (timers up to %v late); "+
		"%d grants decided after their deadline (latest grant returned %v past its deadline); "+
		"%d local decisions, %d ErrRedisUnavailable, %d deadline errors, %d shared acquisitions, %d other errors; "+
		"outage mode from %v after the stall began; back on Redis %v after it; Close on a stalled Redis %v",
		len(calls), thawed.Sub(began).Round(time.Millisecond), slowest[0].Round(time.Millisecond), deadline, slowest[1].Round(time.Millisecond), callTimeout,
		overdue, margin.Round(time.Millisecond), sched.Load().Round(time.Millisecond), lateGrants, latest.Round(time.Millisecond), local, unavailable, deadlineErrs, shared, other,
		firstOutage.Round(time.Millisecond), back.Round(time.Millisecond), closing.Round(time.Millisecond))
	switch mode {
	case limiter.FailClosed:
		if unavailable == 0 || local != 0 {
			t.Errorf("fail_closed: %d ErrRedisUnavailable, %d local decisions; want some and none", unavailable, local)
		}
	default:
		if local == 0 {
			t.Errorf("%s: no local decision during the stall", mode)
		}
	}
	// Close waits for a heartbeat in flight (CallTimeout) and gives the
	// leave call at most a second.
	if bound := time.Second + callTimeout + margin; closing > bound { // margin includes the timers' lateness
		t.Errorf("Close took %v on a stalled Redis, want within %v", closing.Round(time.Millisecond), bound)
	}
}

// watchLateness returns the latest a 5 ms timer of this process has fired,
// so far, until stop is closed: how long the scheduler can keep a goroutine
// from running on this machine now.
func watchLateness(stop <-chan struct{}) *lateness {
	worst := &lateness{}
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			t0 := time.Now()
			time.Sleep(5 * time.Millisecond)
			if l := time.Since(t0) - 5*time.Millisecond; l > worst.Load() {
				worst.ns.Store(int64(l))
			}
		}
	}()
	return worst
}

// lateness is a duration that one goroutine writes and others read.
type lateness struct{ ns atomic.Int64 }

func (l *lateness) Load() time.Duration { return time.Duration(l.ns.Load()) }
