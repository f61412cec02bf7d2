package limiter

import (
	"context"
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// batcher coalesces the concurrent acquisitions of one provider in this
// process (group commit): at most one acquire script is in flight per
// provider; requests that arrive meanwhile queue, and the next call carries
// all of them (up to Options.MaxBatch) and hands each its own decision. The
// script takes the tokens of every granted request from the shared bucket
// before anyone uses them, so coalescing never over-admits, and a process
// asks for no more requests than it has callers, so it takes no more than
// its share.
//
// A caller that finds no call in flight sends its own request at once, in
// its own goroutine and under its own context: one caller pays nothing for
// coalescing. When that call returns with requests queued behind it, a
// worker goroutine drains the queue, batch after batch, and exits when it
// is empty.
type batcher struct {
	mu    sync.Mutex
	busy  bool       // a call is in flight (inline or the worker's)
	queue []*request // waiting for the next call, in arrival order
}

// request is one caller's acquisition waiting in the queue.
type request struct {
	n        int
	done     chan outcome // receives the decision; buffered
	canceled atomic.Bool  // the caller gave up: leave it out of the next batch
}

type outcome struct {
	d   Decision
	err error
}

// batchDecide takes the decision for n tokens of st, coalesced with the
// other callers of this process.
func (c *Coordinator) batchDecide(ctx context.Context, st *providerState, n int) (Decision, error) {
	b := &st.batch
	b.mu.Lock()
	if !b.busy {
		b.busy = true
		b.mu.Unlock()
		d, err := c.decideOne(ctx, st, n)
		c.afterCall(st)
		return d, err
	}
	r := &request{n: n, done: make(chan outcome, 1)}
	b.queue = append(b.queue, r)
	b.mu.Unlock()
	select {
	case o := <-r.done:
		return o.d, o.err
	case <-ctx.Done():
		// If the request is already in flight and granted, its tokens are
		// spent unused: under-admission, never over.
		r.canceled.Store(true)
		return Decision{}, ctx.Err()
	}
}

// afterCall ends a call: with requests queued, the worker takes over.
func (c *Coordinator) afterCall(st *providerState) {
	b := &st.batch
	b.mu.Lock()
	if len(b.queue) == 0 {
		b.busy = false
		b.mu.Unlock()
		return
	}
	b.mu.Unlock()
	go c.drain(st)
}

// drain sends the queued requests, MaxBatch at a time, until none is left.
func (c *Coordinator) drain(st *providerState) {
	b := &st.batch
	for {
		b.mu.Lock()
		var batch []*request
		for len(b.queue) > 0 && len(batch) < c.opts.MaxBatch {
			r := b.queue[0]
			b.queue = b.queue[1:]
			if !r.canceled.Load() {
				batch = append(batch, r)
			}
		}
		if len(batch) == 0 {
			b.busy = false
			b.queue = nil
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		undecided := c.decideBatch(st, batch)
		if len(undecided) > 0 {
			b.mu.Lock()
			b.queue = append(undecided, b.queue...)
			b.mu.Unlock()
		}
	}
}

// decideBatch runs one script call for batch and answers each request; it
// returns the requests the script left undecided (behind a probe or a
// request larger than the capacity), to be sent again.
func (c *Coordinator) decideBatch(st *providerState, batch []*request) []*request {
	if len(batch) == 1 {
		d, err := c.decideOne(context.Background(), st, batch[0].n)
		batch[0].done <- outcome{d, err}
		return nil
	}
	now := c.opts.Now()
	args := make([]any, len(batch))
	for i, r := range batch {
		args[i] = r.n
	}
	k := st.keys
	res, err := c.run(context.Background(), st, acquireScript, []string{k.config, k.bucket, k.scale, k.breaker, k.cooldown}, args...)
	var granted int
	var d Decision
	if err == nil {
		granted, d, err = parseBatch(res)
	}
	if err != nil {
		for _, r := range batch {
			o := outcome{err: err}
			if errors.Is(err, ErrRedisUnavailable) {
				c.redisDown(st, err)
				o.d, o.err = c.outage(st, r.n, c.opts.Now(), err)
			}
			r.done <- o
		}
		return nil
	}
	c.redisUp(st)
	st.remember(d, now)
	st.m.decision(d)

	ok := d
	ok.Allowed, ok.RetryAfter = true, 0
	for i := range granted {
		o := ok
		if i > 0 || d.Reason != ReasonProbe {
			o.Reason = ReasonOK
		}
		batch[i].done <- outcome{d: o}
	}
	rest := batch[granted:]
	if len(rest) == 0 {
		return nil
	}
	if d.Reason == ReasonProbe || d.Reason == ReasonExceedsCapacity {
		if d.Reason == ReasonExceedsCapacity {
			rest[0].done <- outcome{d: d}
			rest = rest[1:]
		}
		return rest
	}
	// Refused for a reason that holds for all of them; rate limited, each
	// waits for the tokens of those before it too.
	need := -d.Remaining
	for _, r := range rest {
		o := d
		need += float64(r.n)
		if d.Reason == ReasonRateLimited && d.RefillRate*d.Scale > 0 {
			o.RetryAfter = time.Duration(math.Ceil(need*1e6/(d.RefillRate*d.Scale))) * time.Microsecond
		}
		r.done <- outcome{d: o}
	}
	return nil
}

// parseBatch reads acquire's reply to a batch: how many requests were
// granted, and the decision for the first one that was not (Allowed false;
// the decision of the last granted one when all were).
func parseBatch(res any) (int, Decision, error) {
	d, err := parseDecision(res)
	if err != nil {
		return 0, d, err
	}
	granted, _ := res.([]any)[0].(int64)
	d.Allowed = false
	if d.Reason == ReasonOK || d.Reason == ReasonProbe {
		d.Allowed = true
	}
	return int(granted), d, nil
}
