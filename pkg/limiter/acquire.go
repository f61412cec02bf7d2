package limiter

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// TryAcquire takes n tokens from provider's shared bucket if it can, and
// never waits: at most one round trip to Redis (the "Allow" of
// x/time/rate), none when the token lease holds the tokens
// (Options.TokenLease) or a refusal Redis gave another caller just before
// holds for this one too (Options.RefusalHold). A denial is not an error;
// errors are for unknown providers, bad n, and Redis outages under
// FailClosed.
func (c *Limiter) TryAcquire(ctx context.Context, provider string, n int) (Decision, error) {
	return c.acquisition(ctx, provider, n, "", false, func(ctx context.Context, st *providerState) (Decision, error) {
		if d, ok := c.heldRefusal(st, n); ok {
			return d, nil
		}
		return c.decide(ctx, st, n, "")
	})
}

// Acquire blocks until provider grants n tokens, and returns the granting
// decision with a nil error. Most callers should use Acquire. When the
// decision's Reason is ReasonProbe the call is the half-open breaker's
// single probe: report its outcome with RecordSuccess or RecordFailure.
//
// Acquire waits out rate limits, cooldowns and an open breaker, waking with
// jitter; while the provider is paused (scale 0) it waits for a notification
// that the scale changed, re-checking every PausedRecheck, without polling
// Redis. It returns at once, with the refusing decision and an error
// matching its reason's sentinel (ErrExceedsCapacity, ErrRateLimited,
// ErrCoolingDown, ErrCircuitOpen), when n exceeds the capacity or when the
// known wait would outlast ctx's deadline; when ctx ends while it waits, an
// error matching both the reason's sentinel (ErrPaused, ...) and ctx.Err().
func (c *Limiter) Acquire(ctx context.Context, provider string, n int) (Decision, error) {
	return c.acquisition(ctx, provider, n, "", true, func(ctx context.Context, st *providerState) (Decision, error) {
		return c.decide(ctx, st, n, "")
	})
}

// acquisition is one public acquisition of n units from provider, in
// lane: one decision, or (wait) decisions until one grants; its outcome
// counted.
func (c *Limiter) acquisition(ctx context.Context, provider string, n int, lane string, wait bool,
	decide func(context.Context, *providerState) (Decision, error)) (Decision, error) {
	st, err := c.state(provider)
	if err != nil {
		return Decision{}, err
	}
	if !wait {
		d, err := decide(ctx, st)
		c.count(st, lane, d, err)
		return d, err
	}
	start := time.Now()
	d, err := c.acquireWith(ctx, st, n, lane, func(ctx context.Context) (Decision, error) { return decide(ctx, st) })
	c.count(st, lane, d, err)
	if err == nil {
		st.m.waited(lane, time.Since(start))
	}
	return d, err
}

// acquireWith asks decide until it grants, waiting between refusals, in
// turn with the waiters of lane.
func (c *Limiter) acquireWith(ctx context.Context, st *providerState, n int, lane string, decide func(context.Context) (Decision, error)) (Decision, error) {
	w := &waiter{c: c, st: st, n: n, turn: st.turnOf(lane)}
	defer w.release()
	for {
		if err := ctx.Err(); err != nil { // every wait below comes back here when ctx ends
			return w.ended(err)
		}
		d, err := decide(ctx)
		w.last = d
		if err != nil || d.Allowed {
			return d, err
		}
		if err := w.wait(ctx, d); err != nil {
			return d, err
		}
	}
}

// waiter is one Acquire call between its attempts. While rate limited (or
// cooling down, or the breaker is open), the waiters of one provider and
// lane in this process take turns: only the one holding the turn polls
// Redis, the others wait for it to be granted. Redis sees about one call
// per replica and lane per grant, not one per waiter, waiters of one
// process and lane are served in order, and a lane's waiters never wait
// behind another lane's.
type waiter struct {
	c        *Limiter
	st       *providerState
	n        int
	turn     chan struct{}   // its lane's turn (st.turnOf)
	holding  bool            // holds turn
	wake     <-chan struct{} // set while paused: closed when the scale may have changed
	onPermit bool            // wake watches the releases of permits, not the scale
	last     Decision        // the last refusal, once there was one
}

// release gives the turn back, if this waiter holds it.
func (w *waiter) release() {
	if w.holding {
		<-w.turn
		w.holding = false
	}
}

// ended is Acquire's answer when ctx ended with err while it waited.
func (w *waiter) ended(err error) (Decision, error) {
	if w.last.Reason == "" {
		return Decision{}, err
	}
	return w.last, fmt.Errorf("%w: provider %q: %w", w.last.Reason.err(), w.st.name, err)
}

// wait waits after refusal d until it is time to ask again (or ctx ends);
// it returns Acquire's error at once when no wait within ctx can turn d
// into a grant.
func (w *waiter) wait(ctx context.Context, d Decision) error {
	if d.Reason == ReasonPaused {
		w.paused(ctx, d)
		return nil
	}
	if d.Reason == ReasonRuleLimited {
		return w.ruleLimited(ctx, d)
	}
	w.wake = nil
	if d.RetryAfter < 0 {
		return denied(w.st.name, w.n, d)
	}
	if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < d.RetryAfter {
		return denied(w.st.name, w.n, d)
	}
	if w.takeTurn(ctx) {
		_ = sleep(ctx, w.c.pollAfter(w.st, d)+w.c.jitter(), nil) // on ctx's end, acquire returns
	}
	return nil
}

// pollAfter is how long the waiter whose turn it is waits after refusal d
// before asking again: d's RetryAfter, and for a rate limit at least the
// replica's turn at the call budget (live replicas ÷ CallBudget, as for a
// held refusal), so that the polling waiters of many replicas stay within
// the budget too.
func (c *Limiter) pollAfter(st *providerState, d Decision) time.Duration {
	if d.Reason != ReasonRateLimited {
		return d.RetryAfter
	}
	_, spacing := c.holdLimit(st)
	return max(d.RetryAfter, spacing)
}

// ruleLimited waits after a pacing rule's refusal. Rules may be keyed, so
// the waiter does not hold the provider's turn meanwhile (a request for
// one key must not hold back the others). Refused by a concurrency rule,
// it first subscribes to the provider's releases and looks again at once
// (a release between the two is then seen or notified), then waits for a
// release, the first lease's end or the slow re-check.
func (w *waiter) ruleLimited(ctx context.Context, d Decision) error {
	w.release()
	if d.RetryAfter < 0 {
		return denied(w.st.name, w.n, d)
	}
	if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < d.RetryAfter {
		return denied(w.st.name, w.n, d)
	}
	if r, ok := w.st.rules.rule(d.Rule); ok && r.Kind == RuleConcurrency {
		if w.wake == nil || !w.onPermit {
			w.wake, w.onPermit = w.c.notifier.watch(ctx, w.st.keys.released), true
			if w.wake != nil {
				return nil
			}
		}
		_ = sleep(ctx, min(d.RetryAfter, w.c.opts.PausedRecheck)+w.c.jitter(), w.wake)
		w.wake = w.c.notifier.watch(ctx, w.st.keys.released)
		return nil
	}
	w.wake = nil
	_ = sleep(ctx, d.RetryAfter+w.c.jitter(), nil)
	return nil
}

// paused waits while the provider is paused. The first time it subscribes
// to the provider's notifications and returns at once, so that acquire
// looks again: a change between the two is then either seen by that check
// or notified.
func (w *waiter) paused(ctx context.Context, d Decision) {
	if !d.Local && (w.wake == nil || w.onPermit) {
		w.wake, w.onPermit = w.c.notifier.watch(ctx, w.st.keys.notify), false
		return
	}
	if w.c.waitPaused(ctx, w.st, d, w.wake) != nil {
		return // ctx ended
	}
	if w.wake != nil {
		w.wake = w.c.notifier.watch(ctx, w.st.keys.notify)
	}
}

// takeTurn makes this waiter the one that polls Redis for its provider
// and lane.
// It returns true when the waiter held the turn or took it at once; false
// after waiting for it, when time has passed and acquire should look again
// now, or when ctx ended.
func (w *waiter) takeTurn(ctx context.Context) bool {
	if w.holding {
		return true
	}
	select {
	case w.turn <- struct{}{}: // nobody polls: this waiter does
		w.holding = true
		return true
	default:
	}
	select {
	case w.turn <- struct{}{}: // our turn came
		w.holding = true
	case <-ctx.Done():
	}
	return false
}

// waitPaused waits while provider is paused: for wake (a notification), the
// slow re-check, or ctx; then a little jitter so resumed waiters spread out.
func (c *Limiter) waitPaused(ctx context.Context, st *providerState, d Decision, wake <-chan struct{}) error {
	recheck := c.opts.PausedRecheck
	if d.Local {
		recheck = min(recheck, c.opts.RedisRetry) // no notification comes during an outage
	}
	paused := c.m.paused.WithLabelValues(st.name)
	paused.Inc()
	err := sleep(ctx, recheck, wake)
	paused.Dec()
	if err != nil {
		return err
	}
	return sleep(ctx, c.jitter(), nil)
}

func (c *Limiter) jitter() time.Duration {
	return rand.N(c.opts.WakeJitter)
}

// sleep waits for d, for wake to be closed (nil: never), or for ctx to end.
func sleep(ctx context.Context, d time.Duration, wake <-chan struct{}) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-wake:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// decide takes one decision: from Redis, the token lease or the outage
// mode. It never returns a grant once ctx has ended (its deadline passed
// while the answer was on its way, or while the caller waited to be
// scheduled): the caller has given up, and the tokens it was granted go
// unused (under-admission, never over). lane is the request's lane ("":
// none).
func (c *Limiter) decide(ctx context.Context, st *providerState, n int, lane string) (Decision, error) {
	d, err := c.decideFor(ctx, st, n, lane)
	return inTime(ctx, st, d, err)
}

// inTime returns a decision as taken, unless it is a grant that came after
// ctx ended: the caller has gone, so its permit is released and the grant
// reported as the context's end.
func inTime(ctx context.Context, st *providerState, d Decision, err error) (Decision, error) {
	if err == nil && d.Allowed && ended(ctx) {
		d.Permit.release(context.WithoutCancel(ctx))
		return Decision{}, fmt.Errorf("%w: provider %q: granted after the caller's context ended; the tokens are not used", endCause(ctx), st.name)
	}
	return d, err
}

// decideFor is decide before the late-grant check. A request that names a
// lane is decided in one script call of its own (the lane form): a lane's
// requests are not coalesced with the provider's others (a batch is
// granted in order, so a refused backfill would hold a live request
// behind it). A provider with rules decides by the rules form, which
// carries the lane.
func (c *Limiter) decideFor(ctx context.Context, st *providerState, n int, lane string) (Decision, error) {
	if n < 1 || n > 1e9 {
		return Decision{}, &ArgumentError{"n", n, "an integer in [1, 1000000000]"}
	}
	c.joinOnce(ctx, st) // the first acquisition joins the replica registry
	if st.health.isDown() {
		return c.outage(st, n, c.opts.Now(), ErrRedisUnavailable)
	}
	if st.rules.active() {
		return c.decideRules(ctx, st, Request{Cost: n, Lane: lane})
	}
	var d Decision
	var err error
	switch {
	case lane != "":
		d, err = c.decideOne(ctx, st, n, "lane", lane)
	case c.opts.MaxBatch > 1:
		d, err = c.batchDecide(ctx, st, n)
	default:
		d, err = c.decideOne(ctx, st, n)
	}
	if err == nil { // (errors.As's target escapes: an allocation a decision otherwise)
		return d, nil
	}
	if ch := rulesChangedIn(err); ch != nil { // the provider has rules now
		st.rules.set(ch.rev, ch.rules)
		return c.decideRules(ctx, st, Request{Cost: n, Lane: lane})
	}
	return d, err
}

// decideOne takes the decision for one request in one script call; form
// is the rest of its ARGV (the lane form's), if any.
func (c *Limiter) decideOne(ctx context.Context, st *providerState, n int, form ...any) (Decision, error) {
	start, now := c.clocks()
	argv := append(acquireArgv(st.keys, 1+len(form)), n)
	res, err := c.runTrip(ctx, st, acquireTrip(st.keys, append(argv, form...)))
	if err != nil {
		if errors.Is(err, ErrRedisUnavailable) {
			c.redisDown(st, err)
			// The time of the failure, not of the call: a call that took
			// its timeout to fail must not refill the local bucket for it.
			return c.outage(st, n, c.opts.Now(), err)
		}
		return Decision{}, err
	}
	c.redisUp(st)
	d, err := parseDecision(res)
	if err != nil {
		return Decision{}, err
	}
	st.seen.remember(d, now)
	st.m.decision(d)
	if len(form) > 0 { // a lane's decision says nothing of the others' (hold.go)
		return d, nil
	}
	var granted int64
	if d.Allowed {
		granted = int64(n)
	}
	c.observed(st, d, n, granted, start)
	return d, nil
}

// acquireKeys are the KEYS of acquire.lua for a provider: shared, never
// to be written (an append copies them).
func acquireKeys(k keys) []string {
	return k.acquire
}

// acquireArgv is a new EVALSHA command of acquire.lua for the provider of
// k, its keys in place, with room for argc arguments (ARGV) to append.
func acquireArgv(k keys, argc int) []any {
	argv := make([]any, len(k.acquireCmd), len(k.acquireCmd)+argc)
	copy(argv, k.acquireCmd)
	return argv
}

// acquireTrip is the round trip of argv, an acquireArgv of k with its
// arguments appended.
func acquireTrip(k keys, argv []any) roundTrip {
	return roundTrip{script: acquireScript, keys: k.acquire, args: argv[len(k.acquireCmd):], argv: argv}
}

// count records the outcome of a public acquisition call in lane (""
// for none; a named lane is counted twice, for the provider and the
// lane): the decision's
// reason ("paused" when a paused wait ended with ctx), "canceled" when ctx
// ended another wait, "error"; a decision taken without Redis is
// "fail_open" or "fallback_<reason>".
func (c *Limiter) count(st *providerState, lane string, d Decision, err error) {
	result := string(d.Reason)
	switch {
	case !errors.Is(err, ErrPaused) && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)):
		result = "canceled"
	case err != nil && d.Reason == "":
		result = "error"
	case d.Local && c.opts.Outage == FailOpen:
		result = "fail_open"
	case d.Local:
		result = "fallback_" + result
	}
	st.m.result(result)
	if lane != "" {
		st.m.laneResult(lane, result)
	}
}
