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
	lease tokenLease // tokens taken ahead (Options.TokenLease); empty when off
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
// other callers of this process, or from the process's token lease.
func (c *Limiter) batchDecide(ctx context.Context, st *providerState, n int) (Decision, error) {
	b := &st.batch
	b.mu.Lock()
	if c.opts.leasing() {
		if d, ok := b.lease.take(n, time.Now()); ok {
			b.mu.Unlock()
			return d, nil
		}
	}
	if !b.busy {
		b.busy = true
		b.mu.Unlock()
		d, err := c.decideInline(ctx, st, n)
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

// decideInline sends the request of a caller that found no call in flight,
// under its own context, with a lease request behind it when one is due.
func (c *Limiter) decideInline(ctx context.Context, st *providerState, n int) (Decision, error) {
	want := c.leaseWant(st, int64(n))
	if want == 0 {
		return c.decideOne(ctx, st, n)
	}
	r := &request{n: n, done: make(chan outcome, 1)}
	c.decideBatch(ctx, st, []*request{r}, want) // one request is always decided
	o := <-r.done
	return o.d, o.err
}

// afterCall ends a call: with requests queued, the worker takes over.
func (c *Limiter) afterCall(st *providerState) {
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
func (c *Limiter) drain(st *providerState) {
	b := &st.batch
	for {
		batch, tokens := b.next(c.opts.MaxBatch)
		if len(batch) == 0 {
			return
		}
		b.requeue(c.decideBatch(context.Background(), st, batch, c.leaseWant(st, tokens)))
	}
}

// next takes the next batch, at most max requests and the tokens they ask
// for, off the queue: requests whose callers gave up are dropped, and those
// the lease, renewed while they waited, holds tokens for are answered from
// it. When none is left to send, the call in flight is over
// (busy ends).
func (b *batcher) next(max int) ([]*request, int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	var batch []*request
	var tokens int64
	for len(b.queue) > 0 && len(batch) < max {
		r := b.queue[0]
		b.queue = b.queue[1:]
		if r.canceled.Load() {
			continue
		}
		if d, ok := b.lease.take(r.n, now); ok {
			r.done <- outcome{d: d}
			continue
		}
		batch = append(batch, r)
		tokens += int64(r.n)
	}
	if len(batch) == 0 {
		b.busy = false
		b.queue = nil
	}
	return batch, tokens
}

// requeue puts the requests a call left undecided back at the head of the
// queue.
func (b *batcher) requeue(undecided []*request) {
	if len(undecided) == 0 {
		return
	}
	b.mu.Lock()
	b.queue = append(undecided, b.queue...)
	b.mu.Unlock()
}

// decideBatch runs one script call for batch, with a request for want
// tokens more behind it for the lease (0: none), and answers each request;
// it returns the requests the script left undecided (behind a probe or a
// request larger than the capacity), to be sent again. The lease request,
// last, is granted only when every request of the batch was.
func (c *Limiter) decideBatch(ctx context.Context, st *providerState, batch []*request, want int64) []*request {
	if len(batch) == 1 && want == 0 {
		d, err := c.decideOne(ctx, st, batch[0].n)
		batch[0].done <- outcome{d, err}
		return nil
	}
	start, now := c.clocks()
	// A batch that waited behind a call which found Redis unable to serve
	// st goes to the outage mode at once, as a new call would.
	if st.health.isDown() {
		c.failBatch(st, batch, ErrRedisUnavailable)
		return nil
	}
	granted, d, err := c.callBatch(ctx, st, batch, want)
	if err != nil {
		if errors.Is(err, ErrRedisUnavailable) {
			c.redisDown(st, err)
		}
		c.failBatch(st, batch, err)
		return nil
	}
	c.redisUp(st)
	st.seen.remember(d, now)
	st.m.decision(d)
	var tokens int64
	for _, r := range batch[:min(granted, len(batch))] {
		tokens += int64(r.n)
	}
	if granted < len(batch) {
		c.observed(st, d, batch[granted].n, tokens, start)
	} else {
		c.observed(st, d, 0, tokens, start)
	}
	if granted > len(batch) { // the lease request too (sent only when want > 0)
		granted = len(batch)
		c.renewLease(st, want, start, d)
	}
	grant(batch[:granted], d)
	return refuse(batch[granted:], d)
}

// callBatch runs acquire.lua for the requests of batch, in order, and a
// request for want more tokens behind them (0: none); it returns how many
// were granted and the decision of the first refused (see parseBatch).
func (c *Limiter) callBatch(ctx context.Context, st *providerState, batch []*request, want int64) (int, Decision, error) {
	argv := acquireArgv(st.keys, len(batch)+1)
	for _, r := range batch {
		argv = append(argv, r.n)
	}
	if want > 0 && len(batch) < maxRequests {
		argv = append(argv, want)
	}
	res, err := c.runTrip(ctx, st, acquireTrip(st.keys, argv))
	if err != nil {
		return 0, Decision{}, err
	}
	return parseBatch(res)
}

// failBatch answers every request of batch after err: by the outage mode
// when Redis could not serve st, else with err.
func (c *Limiter) failBatch(st *providerState, batch []*request, err error) {
	outage := errors.Is(err, ErrRedisUnavailable)
	for _, r := range batch {
		o := outcome{err: err}
		if outage {
			o.d, o.err = c.outage(st, r.n, c.opts.Now(), err)
		}
		r.done <- o
	}
}

// grant answers the granted requests of a batch from d, the decision of
// the last one: the half-open breaker's probe, if d is one, is the first.
func grant(granted []*request, d Decision) {
	ok := d
	ok.Allowed, ok.RetryAfter = true, 0
	for i, r := range granted {
		o := ok
		if i > 0 || d.Reason != ReasonProbe {
			o.Reason = ReasonOK
		}
		r.done <- outcome{d: o}
	}
}

// refuse answers the requests of a batch from the first refused one on,
// from d, that one's decision, and returns those to send again: all of them
// behind a probe, all but the first behind a request larger than the
// capacity. Any other reason holds for all of them; rate limited, each
// waits for the tokens of those before it too.
func refuse(rest []*request, d Decision) []*request {
	switch {
	case len(rest) == 0:
		return nil
	case d.Reason == ReasonProbe:
		return rest
	case d.Reason == ReasonExceedsCapacity:
		rest[0].done <- outcome{d: d}
		return rest[1:]
	}
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
