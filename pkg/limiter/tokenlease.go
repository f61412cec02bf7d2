package limiter

import (
	"context"
	"time"

	"github.com/sluice-dev/sluice/pkg/state"
)

// tokenLease is tokens this process took from a provider's shared bucket
// ahead of its callers (Options.TokenLease), handed out locally until it
// runs out or expires. The tokens left the shared bucket before anyone
// uses them, so a lease never over-admits; what is left at expiry goes back
// to the bucket (refund.lua). Guarded by the provider's batcher mutex.
type tokenLease struct {
	left    int64     // tokens not yet handed out
	used    int64     // handed out since the lease was last renewed
	renewed time.Time // local time of the call that last renewed it
	expires time.Time // renewed + the lease period: nothing is handed out after
	d       Decision  // the decision of that call: scale, level, config, breaker
	dropped time.Time // local time of the last dropLease
	timer   *time.Timer
}

// take hands out n leased tokens, if the lease holds them and has not
// expired at now.
func (l *tokenLease) take(n int, now time.Time) (Decision, bool) {
	if l.left < int64(n) || !now.Before(l.expires) {
		return Decision{}, false
	}
	l.left -= int64(n)
	l.used += int64(n)
	d := l.d
	d.Allowed, d.Reason, d.RetryAfter, d.Leased = true, ReasonOK, 0, true
	d.Now = d.Now.Add(now.Sub(l.renewed))
	return d, true
}

// leaseWant is how many tokens the next call for st should take ahead, on
// top of the batch's own (tokens): none when leasing is off, after Close, or
// when the last decision did not find the provider open (not ok, paused,
// breaker not closed). Otherwise twice what the lease handed out since it
// was last renewed (at least the batch's tokens), but never more than
// refills during one lease period (leasePeriod: TokenLease, stretched by
// CallBudget) at the scale in force (so leased tokens widen no window by
// more than that), nor more than half of what the bucket held after the
// batch at the process's last call: a lease is taken from plenty, so while
// tokens are scarce processes ask only for what their callers want, and
// shares stay fair.
func (c *Limiter) leaseWant(st *providerState, tokens int64) int64 {
	if !c.opts.leasing() {
		return 0
	}
	closed := c.isClosed()
	st.batch.mu.Lock()
	used := st.batch.lease.used
	st.batch.mu.Unlock()
	last, known := st.seen.get()
	if closed || !known || !leasable(last) {
		return 0
	}
	want := max(2*used, tokens)
	want = min(want, int64(last.RefillRate*last.Scale*c.leasePeriod(st).Seconds()))
	return max(0, min(want, int64(last.Remaining-float64(tokens))/2))
}

// leasable reports whether d, a decision from Redis, found the provider
// open: granted at a scale above 0 with the breaker closed.
func leasable(d Decision) bool {
	return !d.Local && d.Reason == ReasonOK && d.Scale > 0 && (d.Breaker == "" || d.Breaker == state.BreakerClosed)
}

// renewLease adds want tokens, just taken by a call that started at start
// and took decision d, to st's lease, and makes it last one lease period
// (leasePeriod) from start. Tokens still left from before stay, unless
// that lease had expired: they too were taken by a call that saw the
// shared state open, and this one saw it open again. The tokens go back
// instead when the lease was dropped while the call was in flight (a
// change through this Limiter, or Close), or when the call took so long
// that the lease would be over on arrival.
func (c *Limiter) renewLease(st *providerState, want int64, start time.Time, d Decision) {
	closed := c.isClosed()
	b := &st.batch
	b.mu.Lock()
	l := &b.lease
	period := c.leasePeriod(st)
	now, expires := time.Now(), start.Add(period)
	if closed || !l.dropped.Before(start) || !now.Before(expires) {
		b.mu.Unlock()
		c.refund(st, want)
		return
	}
	var stale int64
	if !now.Before(l.expires) { // what is left of an expired lease goes back
		stale, l.left = l.left, 0
	}
	l.left += want
	l.used = 0
	l.renewed, l.expires, l.d = start, expires, d
	if l.timer == nil {
		l.timer = time.AfterFunc(period, func() { c.expireLease(st) })
	} else {
		l.timer.Reset(expires.Sub(now))
	}
	b.mu.Unlock()
	c.watchChanges(st)
	c.refund(st, stale)
}

// expireLease runs when st's lease may have expired: if it has, what is
// left goes back to the bucket.
func (c *Limiter) expireLease(st *providerState) {
	b := &st.batch
	b.mu.Lock()
	if wait := time.Until(b.lease.expires); wait > 0 { // renewed meanwhile
		b.lease.timer.Reset(wait)
		b.mu.Unlock()
		return
	}
	left := b.lease.left
	b.lease.left = 0
	b.mu.Unlock()
	c.refund(st, left)
}

// dropLease ends st's lease now and gives back what is left of it: the
// process changes or reports shared state (a failure, a cooldown, a scale)
// and tokens taken before must not outlive that here, or it closes. A call
// in flight does not renew the lease after this (renewLease).
func (c *Limiter) dropLease(st *providerState) {
	b := &st.batch
	b.mu.Lock()
	left := b.lease.left
	b.lease.left, b.lease.expires, b.lease.dropped = 0, time.Time{}, time.Now()
	if b.lease.timer != nil {
		b.lease.timer.Stop()
	}
	b.mu.Unlock()
	c.refund(st, left)
}

// leaseAside gives st's lease back before this process changes or reports
// shared state (a scale, a failure, a cooldown): tokens taken before must
// not outlive the change here. The function it returns gives back what a
// call in flight meanwhile leased, from the state before the change: defer
// it, so that it runs when the change is done.
func (c *Limiter) leaseAside(st *providerState) (after func()) {
	st.hold.clear()
	c.dropLease(st)
	return func() { st.hold.clear(); c.dropLease(st) }
}

// refund puts n unused tokens back into st's bucket. It may fail (Redis
// gone): the tokens are then lost to everyone until the bucket refills,
// which under-admits but never over-admits.
func (c *Limiter) refund(st *providerState, n int64) {
	if n <= 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.CallTimeout)
	defer cancel()
	k := st.keys
	if _, err := c.script(ctx, st, refundScript, []string{k.config, k.bucket, k.scale}, n); err != nil {
		c.log.Warn("unused leased tokens not returned", "provider", st.name, "tokens", n, "err", err)
	}
}
