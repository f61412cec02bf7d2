package limiter

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"
)

// refusalHold is the last refusal Redis gave this process for a provider
// (Options.RefusalHold), kept so that TryAcquire callers who would be
// refused too are answered here, without a round trip, until the refusal
// can have passed. A held refusal admits nothing, so a hold never
// over-admits; it ends at its own time, at a later answer from Redis, at a
// scale change's notification, and at any change made through this
// Limiter.
type refusalHold struct {
	mu    sync.Mutex
	d     Decision  // the refusal; Reason "" when none is held
	n     int       // the tokens the refused request asked for
	at    time.Time // local time the call that took it began
	delay time.Duration
	fair  time.Duration // the process's turn: its grants since the last refusal × replicas ÷ rate, or its turn at the call budget
	until time.Time     // nothing is held at or after: at + the hold limit (RefusalHold, stretched by CallBudget) at most
	// granted counts the tokens Redis granted this process since its last
	// refusal.
	granted int64
}

// holdable reports whether a refusal from Redis is one a hold may repeat:
// it says nothing about the request's own size (unlike exceeds_capacity)
// and comes from the shared bucket, not a rule or the outage mode.
func holdable(d Decision) bool {
	switch d.Reason {
	case ReasonRateLimited, ReasonPaused, ReasonCooldown, ReasonCircuitOpen:
		return !d.Local && !d.Allowed
	}
	return false
}

// observe records decision d of Redis, taken for a request of n tokens
// by a call that began at local time at and granted this process granted
// tokens before it: a refusal the hold may repeat starts a hold, anything
// else ends the one held. The hold lasts until the refusal's RetryAfter,
// or, for a rate limit, the process's turn if later (the tokens it was
// granted since its last refusal, times replicas, at the refill rate: so
// that a process that just took a refill leaves the next ones to the
// others and shares stay fair) or spacing (the replica's turn at the call
// budget) if later, plus a random delay of up to min(jitter, that wait);
// at most limit from at. A pause, whose end nobody can foresee, is held
// for limit less a random delay.
func (h *refusalHold) observe(d Decision, n int, granted int64, replicas int, at time.Time, limit, spacing, jitter time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.granted += granted
	if !holdable(d) {
		h.d = Decision{}
		return
	}
	wait, fair := d.RetryAfter, time.Duration(0)
	if rate := d.RefillRate * d.Scale; d.Reason == ReasonRateLimited && rate > 0 {
		fair = max(time.Duration(float64(h.granted)*float64(replicas)/rate*float64(time.Second)), spacing)
		wait = max(wait, fair)
	}
	h.granted = 0
	var delay time.Duration
	if spread := min(jitter, wait); spread > 0 {
		delay = rand.N(spread)
	}
	until := at.Add(limit)
	if wait >= 0 {
		until = at.Add(min(wait+delay, limit))
	} else if jitter > 0 {
		until = until.Add(-rand.N(min(jitter, limit/2) + 1))
	}
	h.d, h.n, h.at, h.delay, h.fair, h.until = d, n, at, delay, fair, until
}

// clear ends the hold.
func (h *refusalHold) clear() {
	h.mu.Lock()
	h.d = Decision{}
	h.mu.Unlock()
}

// refuse returns the held refusal for a request of n tokens at local time
// now, if one holds: any request while a pause, cooldown or open breaker
// is held; while rate limited, a request for as many tokens as the refused
// one or more (a smaller one may pass sooner: it goes to Redis), until
// its own tokens can have refilled by the refusal's count and rate plus
// the hold's delay. Its RetryAfter is what is left of the hold for n.
func (h *refusalHold) refuse(n int, now time.Time) (Decision, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.d.Reason == "" || !now.Before(h.until) {
		return Decision{}, false
	}
	d := h.d
	end := h.until
	if d.Reason == ReasonRateLimited {
		rate := d.RefillRate * d.Scale
		if n < h.n || rate <= 0 {
			return Decision{}, false
		}
		need := time.Duration((float64(n) - d.Remaining) / rate * float64(time.Second))
		end = minTime(end, h.at.Add(max(need, h.fair)+h.delay))
		if !now.Before(end) {
			return Decision{}, false
		}
	}
	d.RetryAfter = end.Sub(now)
	if d.Reason == ReasonPaused {
		d.RetryAfter = -1
	}
	d.Now = d.Now.Add(now.Sub(h.at))
	d.Held = true
	return d, true
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// heldRefusal answers a TryAcquire of n tokens of st from the held
// refusal, if one holds (never for a provider with pacing rules, nor with
// Options.NoRefusalHold).
func (c *Limiter) heldRefusal(st *providerState, n int) (Decision, bool) {
	if c.opts.NoRefusalHold || n < 1 || st.rules.active() {
		return Decision{}, false
	}
	return st.hold.refuse(n, time.Now())
}

// observed records d, Redis's decision for n tokens of st by a call that
// began at local time start and granted this process granted tokens
// before it, for the held refusals: a refusal to hold starts watching st's
// notifications, so that a scale change ends it.
func (c *Limiter) observed(st *providerState, d Decision, n int, granted int64, start time.Time) {
	if c.opts.NoRefusalHold {
		return
	}
	limit, spacing := c.holdLimit(st)
	st.hold.observe(d, n, granted, st.member.live(), start, limit, spacing, c.opts.WakeJitter)
	if holdable(d) {
		c.watchChanges(st)
	}
}

// watchChanges starts, once per provider, a goroutine that listens to the
// provider's notifications (a scale changed, a breaker closed, a cooldown
// cleared) and ends what this process answers locally: the held refusal
// and the token lease. The notifications make those answers fresher than
// their bounds (RefusalHold, TokenLease); the bounds hold without them.
func (c *Limiter) watchChanges(st *providerState) {
	if !st.watching.CompareAndSwap(false, true) {
		return
	}
	c.background(func() {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() {
			select {
			case <-c.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		for {
			wake := c.notifier.watch(ctx, st.keys.notify)
			if wake == nil {
				return
			}
			select {
			case <-wake:
			case <-ctx.Done():
				return
			}
			st.hold.clear()
			if c.opts.leasing() {
				c.dropLease(st)
			}
		}
	})
}
