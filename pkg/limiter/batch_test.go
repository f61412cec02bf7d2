package limiter

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/redistest"
)

// batchCoord returns a Limiter on b with provider "p" registered at
// capacity 10 and a refill so slow (0.001/s) that the bucket does not move
// during a test on a real server; on miniredis the time is fixed.
func batchCoord(t *testing.T, b redistest.Backend, provider string) (*Limiter, *providerState) {
	t.Helper()
	if b.Mini != nil {
		b.Mini.SetTime(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	}
	// A minute, not the default 500 ms: a starved CI machine can take longer
	// than that to run a script on a healthy Redis (seen at load 28), which
	// the limiter rightly takes for an outage; these tests are not about one.
	c, err := New(b.Client(t), Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), CallTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	cfg := DefaultProviderConfig()
	cfg.Capacity, cfg.RefillRate = 10, 0.001
	if _, err := c.Register(context.Background(), provider, cfg); err != nil {
		t.Fatal(err)
	}
	st, err := c.state(provider)
	if err != nil {
		t.Fatal(err)
	}
	return c, st
}

// sendBatch runs one coalesced script call for requests of ns tokens and
// returns each request's outcome (nil when the script left it undecided).
func sendBatch(c *Limiter, st *providerState, ns ...int) []*outcome {
	batch := make([]*request, len(ns))
	for i, n := range ns {
		batch[i] = &request{n: n, done: make(chan outcome, 1)}
	}
	c.decideBatch(context.Background(), st, batch, 0)
	out := make([]*outcome, len(ns))
	for i, r := range batch {
		select {
		case o := <-r.done:
			out[i] = &o
		default:
		}
	}
	return out
}

type want struct {
	allowed bool
	reason  Reason
	retry   time.Duration // checked within 1% (the real server's refill moves it a little)
}

func checkOutcomes(t *testing.T, got []*outcome, wants []*want) {
	t.Helper()
	for i, w := range wants {
		o := got[i]
		switch {
		case w == nil && o == nil:
		case w == nil:
			t.Errorf("request %d: decided %+v, want left undecided", i, o.d)
		case o == nil:
			t.Errorf("request %d: undecided, want %+v", i, *w)
		case o.err != nil:
			t.Errorf("request %d: %v", i, o.err)
		case o.d.Allowed != w.allowed || o.d.Reason != w.reason:
			t.Errorf("request %d: allowed=%v %s, want %v %s", i, o.d.Allowed, o.d.Reason, w.allowed, w.reason)
		case math.Abs(float64(o.d.RetryAfter-w.retry)) > 0.01*math.Abs(float64(w.retry)):
			t.Errorf("request %d: retry %v, want %v", i, o.d.RetryAfter, w.retry)
		}
	}
}

// One script call decides a whole batch: granted in order while the tokens
// last, the rest refused with the wait for their own tokens after those of
// the requests before them; behind a request larger than the capacity or a
// probe, the rest are left undecided for the next call.
func TestBatchDecisions(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		ok := &want{true, ReasonOK, 0}
		limited := func(tokens float64) *want {
			return &want{false, ReasonRateLimited, time.Duration(tokens / 0.001 * float64(time.Second))}
		}
		c, st := batchCoord(t, b, "p")
		// 10 tokens: three of 3 granted (1 left); the fourth waits for 2 more
		// tokens, the fifth for 3 + 2.
		checkOutcomes(t, sendBatch(c, st, 3, 3, 3, 3, 3), []*want{ok, ok, ok, limited(2), limited(5)})
		// A request larger than the capacity ends the batch; what follows it
		// is asked again.
		checkOutcomes(t, sendBatch(c, st, 1, 11, 1), []*want{ok, {false, ReasonExceedsCapacity, -1}, nil})
		// Nothing left: all refused, each waiting for those before it too.
		checkOutcomes(t, sendBatch(c, st, 1, 1), []*want{limited(1), limited(2)})

		// Paused: every request refused, no estimate.
		if _, err := c.SetBudgetScale(context.Background(), "p", 0); err != nil {
			t.Fatal(err)
		}
		paused := &want{false, ReasonPaused, -1}
		checkOutcomes(t, sendBatch(c, st, 1, 2), []*want{paused, paused})

		// A probe goes alone: the breaker lets one request through after its
		// timeout, the others wait for the next call (which refuses them).
		c2, st2 := batchCoord(t, b, "q")
		ctx := context.Background()
		cfg := DefaultProviderConfig()
		cfg.Capacity, cfg.RefillRate, cfg.BreakerThreshold, cfg.BreakerTimeout = 10, 0.001, 1, time.Second
		if _, err := c2.Register(ctx, "q", cfg); err != nil {
			t.Fatal(err)
		}
		if err := c2.RecordFailure(ctx, "q"); err != nil {
			t.Fatal(err)
		}
		if b.Mini != nil {
			b.Mini.SetTime(time.Date(2026, 1, 2, 3, 4, 7, 0, time.UTC))
		} else {
			time.Sleep(1100 * time.Millisecond) // the breaker's timeout, on Redis's clock
		}
		checkOutcomes(t, sendBatch(c2, st2, 1, 1), []*want{{true, ReasonProbe, 0}, nil})
		got := sendBatch(c2, st2, 1)
		if got[0] == nil || got[0].d.Allowed || got[0].d.Reason != ReasonCircuitOpen {
			t.Errorf("after the probe: %+v, want circuit_open", got[0])
		}
	})
}

// Every batch argument is checked: a bad one refuses the whole call, and
// nothing is taken.
func TestBatchScriptArguments(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	c, st := batchCoord(t, redistest.Backend{Client: srv.Client}, "p")
	k := st.keys
	keys := []string{k.config, k.bucket, k.scale, k.breaker, k.cooldown}
	ctx := context.Background()
	many := make([]any, 1001)
	for i := range many {
		many[i] = 1
	}
	for _, args := range [][]any{{1, 0}, {1, "0x2"}, {1, "nan"}, {2, 1.5}, many, {}} {
		_, err := acquireScript.Run(ctx, rdb, keys, args...).Result()
		if err == nil {
			t.Errorf("acquire %v: accepted", args[:min(len(args), 3)])
			continue
		}
		if got := c.mapErr("p", err); !isArgumentError(got) {
			t.Errorf("acquire %v: %v, want INVALID_ARGUMENT", args[:min(len(args), 3)], err)
		}
	}
	if s := mustTokens(t, c); s < 9.99 {
		t.Errorf("refused calls took tokens: %v left of 10", s)
	}
}

func isArgumentError(err error) bool {
	_, ok := err.(*ArgumentError)
	return ok
}

func mustTokens(t *testing.T, c *Limiter) float64 {
	t.Helper()
	s, err := c.Status(context.Background(), "p")
	if err != nil {
		t.Fatal(err)
	}
	return s.Tokens
}

// A caller whose request waits behind a call in flight returns when its
// context ends, even while Redis is stalled, and its request is not sent.
func TestBatchCallerDeadline(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	srv := redistest.Start(t)
	c, st := batchCoord(t, redistest.Backend{Client: srv.Client}, "p")
	c.opts.CallTimeout = 5 * time.Second
	ctx := context.Background()
	if _, err := c.TryAcquire(ctx, "p", 1); err != nil { // joins the registry now, not during the stall
		t.Fatal(err)
	}

	srv.Pause(t)
	inflight := make(chan error, 1)
	go func() {
		_, err := c.TryAcquire(ctx, "p", 1) // in flight until Redis resumes
		inflight <- err
	}()
	for busy := false; !busy; time.Sleep(time.Millisecond) {
		st.batch.mu.Lock()
		busy = st.batch.busy
		st.batch.mu.Unlock()
	}
	qctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	_, err := c.TryAcquire(qctx, "p", 1)
	waited := time.Since(t0)
	srv.Resume(t)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("queued caller: %v, want its deadline", err)
	}
	if waited > time.Second {
		t.Errorf("the queued caller returned %v after a 100ms deadline", waited)
	}
	if err := <-inflight; err != nil {
		t.Fatal(err)
	}
	// Once the call in flight is done, the queue is drained and empty.
	for busy := true; busy; time.Sleep(time.Millisecond) {
		st.batch.mu.Lock()
		busy = st.batch.busy
		st.batch.mu.Unlock()
	}
	// 10 tokens: one taken before the stall, one by the call in flight;
	// the canceled request took none.
	if s := mustTokens(t, c); s < 7.99 || s > 8.01 {
		t.Fatalf("%.3f tokens left, want 8: the canceled request took tokens", s)
	}
}

// A lease request rides behind a batch only while the call stays within
// acquire's 1000 requests: a full batch goes without it, and is granted.
func TestLeaseRequestWithFullBatch(t *testing.T) {
	srv := redistest.Start(t)
	c, err := New(srv.Client(t), Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), MaxBatch: 1000, TokenLease: time.Second, CallTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cfg := DefaultProviderConfig()
	cfg.Capacity, cfg.RefillRate = 10_000, 0.001
	if _, err := c.Register(context.Background(), "p", cfg); err != nil {
		t.Fatal(err)
	}
	st, err := c.state("p")
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{1000, 999} {
		batch := make([]*request, size)
		for i := range batch {
			batch[i] = &request{n: 1, done: make(chan outcome, 1)}
		}
		c.decideBatch(context.Background(), st, batch, 10)
		for i, r := range batch {
			if o := <-r.done; o.err != nil || !o.d.Allowed {
				t.Fatalf("batch of %d, request %d: %+v %v", size, i, o.d, o.err)
			}
		}
		st.batch.mu.Lock()
		left := st.batch.lease.left
		st.batch.mu.Unlock()
		if want := map[int]int64{1000: 0, 999: 10}[size]; left != want {
			t.Errorf("batch of %d: lease holds %d, want %d", size, left, want)
		}
	}
}
