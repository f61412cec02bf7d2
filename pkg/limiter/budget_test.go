package limiter

import (
	"slices"
	"testing"
	"time"
)

// TestStretch: the adapted period is the configured one until the
// replicas' calls at it would pass the budget, then calls × replicas ÷
// budget, capped; no budget leaves it alone.
func TestStretch(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		d        time.Duration
		calls    float64
		replicas int
		budget   float64
		most     time.Duration
		want     time.Duration
	}{
		{5 * ms, 2, 1, 20000, time.Second, 5 * ms},                    // one replica: 0.1 ms < 5 ms
		{5 * ms, 2, 50, 20000, time.Second, 5 * ms},                   // the edge: 2 × 50 ÷ 20000 = 5 ms
		{5 * ms, 2, 100, 20000, time.Second, 10 * ms},                 // 100 replicas renew every 10 ms: 20000 calls/s
		{5 * ms, 2, 1000, 20000, time.Second, 100 * ms},               // 1000: every 100 ms
		{5 * ms, 2, 1000, 2000, time.Second, time.Second},             // 2 × 1000 ÷ 2000 = 1 s, the cap
		{5 * ms, 2, 100000, 2000, time.Second, time.Second},           // past the cap: the budget is exceeded
		{20 * ms, 1, 1000, 2000, time.Second, 500 * ms},               // a hold: one call a period
		{2 * time.Second, 1, 1000, 200, time.Minute, 5 * time.Second}, // heartbeats
		{0, 1, 1000, 2000, time.Second, 500 * ms},                     // the spacing alone
		{5 * ms, 2, 1000, 0, time.Second, 5 * ms},                     // off
		{2 * time.Second, 2, 10, 1, time.Second, 2 * time.Second},     // never below d, even past the cap
		{5 * ms, 2, 1, 1e-10, time.Second, time.Second},               // 2e19 ns passes a Duration: still the cap
		{5 * ms, 1, 1, 0.1 * 1e-10, time.Minute, time.Minute},         // a heartbeat's tenth of a tiny budget
		{5 * ms, 2, 1 << 40, 1, time.Second, time.Second},             // a count that large, the same
	} {
		if got := stretch(tc.d, tc.calls, tc.replicas, tc.budget, tc.most); got != tc.want {
			t.Errorf("stretch(%v, %v, %d, %v, %v) = %v, want %v", tc.d, tc.calls, tc.replicas, tc.budget, tc.most, got, tc.want)
		}
	}
}

// fleetState is a provider that this limiter last counted replicas of.
func fleetState(replicas int64) *providerState {
	st := &providerState{}
	st.member.count.Store(replicas)
	return st
}

// TestAdaptedPeriods: the lease period, the hold's limit and spacing and
// the heartbeat period follow the live replica count of the last
// heartbeat, from the options' defaults; NoCallBudget keeps the options'
// values at any count.
func TestAdaptedPeriods(t *testing.T) {
	o, err := Options{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	c := &Limiter{opts: o}
	ms := time.Millisecond
	for _, tc := range []struct {
		replicas                  int64
		lease, limit, spacing, hb time.Duration
	}{
		{0, 5 * ms, 20 * ms, 0, 2 * time.Second}, // before the first heartbeat: counts as 1
		{10, 5 * ms, 20 * ms, 1250 * time.Microsecond, 2 * time.Second},
		{100, 25 * ms, 20 * ms, 12500 * time.Microsecond, 2 * time.Second},
		{1000, 250 * ms, 125 * ms, 125 * ms, 2 * time.Second}, // the lease: the feedback loop's period
		{10000, time.Second, time.Second, time.Second, 12500 * ms},
	} {
		st := fleetState(tc.replicas)
		if tc.replicas == 0 {
			tc.spacing = time.Second / DefaultCallBudget
		}
		limit, spacing := c.holdLimit(st)
		if got := c.leasePeriod(st); got != tc.lease || limit != tc.limit || spacing != tc.spacing || c.beatPeriod(st) != tc.hb {
			t.Errorf("%d replicas: lease %v, hold limit %v spacing %v, heartbeat %v; want %v, %v, %v, %v",
				tc.replicas, got, limit, spacing, c.beatPeriod(st), tc.lease, tc.limit, tc.spacing, tc.hb)
		}
	}
	o.NoCallBudget = true
	c = &Limiter{opts: o}
	st := fleetState(100000)
	if limit, spacing := c.holdLimit(st); c.leasePeriod(st) != o.TokenLease || limit != o.RefusalHold || spacing != 0 || c.beatPeriod(st) != o.Heartbeat {
		t.Errorf("NoCallBudget: lease %v, hold %v/%v, heartbeat %v", c.leasePeriod(st), limit, spacing, c.beatPeriod(st))
	}
}

// TestHoldSpacing: at fixed times, a rate limit refused to one of 1000
// replicas is held for its turn at the budget (50 ms at 20000 calls/s)
// although its tokens refill in 1 ms, and released at that turn; with no
// spacing it ends once the tokens can have refilled.
func TestHoldSpacing(t *testing.T) {
	at := time.Unix(1000, 0)
	refusal := Decision{Reason: ReasonRateLimited, RefillRate: 1000, Scale: 1, Remaining: 0, RetryAfter: time.Millisecond}
	ms := time.Millisecond
	var h refusalHold
	h.observe(refusal, 1, 0, 1000, at, 50*ms, 50*ms, 0)
	if _, held := h.refuse(1, at.Add(2*ms)); !held {
		t.Fatal("not held at 2 ms, within the 50 ms turn")
	}
	if d, held := h.refuse(1, at.Add(49*ms)); !held || d.RetryAfter != ms {
		t.Fatalf("at 49 ms: held %v, RetryAfter %v; want held, 1ms", held, d.RetryAfter)
	}
	if _, held := h.refuse(1, at.Add(50*ms)); held {
		t.Fatal("held at 50 ms, the end of the turn")
	}
	h = refusalHold{}
	h.observe(refusal, 1, 0, 1000, at, 20*ms, 0, 0)
	if _, held := h.refuse(1, at.Add(ms)); held {
		t.Fatal("no spacing: held at 1 ms, when the token can have refilled")
	}
	// The spacing never outlasts the limit.
	h = refusalHold{}
	h.observe(refusal, 1, 0, 1000, at, 20*ms, 50*ms, 0)
	if _, held := h.refuse(1, at.Add(20*ms)); held {
		t.Fatal("held past the limit")
	}
	// A pause is held for the stretched limit, less at most the jitter.
	h = refusalHold{}
	h.observe(Decision{Reason: ReasonPaused, RetryAfter: -1}, 1, 0, 1000, at, 500*ms, 50*ms, 5*ms)
	if _, held := h.refuse(1, at.Add(494*ms)); !held {
		t.Fatal("a pause not held at 494 ms of a 500 ms limit with 5 ms of jitter")
	}
	if _, held := h.refuse(1, at.Add(500*ms)); held {
		t.Fatal("a pause held at the limit")
	}
}

// TestHeartbeatPeriodGrowth: a heartbeat announces at most twice the
// period the last one announced, so that the one after it comes before
// the entry expires (three periods), however fast the count grew: 2 s,
// 4 s, then the 5 s that 1000 replicas at 2000 calls/s ask for.
func TestHeartbeatPeriodGrowth(t *testing.T) {
	o, err := Options{CallBudget: 2000}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	c := &Limiter{opts: o}
	st := fleetState(1)
	var got []time.Duration
	for _, n := range []int64{1, 1000, 1000, 1000} {
		st.member.count.Store(n)
		p := c.nextPeriod(st)
		st.member.period.Store(int64(p))
		got = append(got, p)
	}
	want := []time.Duration{2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second}
	if !slices.Equal(got, want) {
		t.Fatalf("periods %v, want %v", got, want)
	}
	st.member.count.Store(1) // the fleet shrank: back to Heartbeat at once
	if p := c.nextPeriod(st); p != 2*time.Second {
		t.Fatalf("after the fleet shrank: %v, want 2s", p)
	}
}

// TestPollAfter: an Acquire waiter polls a rate limit after its
// RetryAfter, or after its replica's turn at the call budget if later (1000
// replicas at the default: 50 ms); other refusals, and no budget, keep the
// RetryAfter.
func TestPollAfter(t *testing.T) {
	o, err := Options{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	c := &Limiter{opts: o}
	ms := time.Millisecond
	limited := Decision{Reason: ReasonRateLimited, RetryAfter: ms}
	for _, tc := range []struct {
		replicas int64
		d        Decision
		want     time.Duration
	}{
		{1, limited, ms},
		{1000, limited, 125 * ms}, // 1000 ÷ DefaultCallBudget
		{1000, Decision{Reason: ReasonRateLimited, RetryAfter: 200 * ms}, 200 * ms},
		{1000, Decision{Reason: ReasonCooldown, RetryAfter: ms}, ms},
	} {
		if got := c.pollAfter(fleetState(tc.replicas), tc.d); got != tc.want {
			t.Errorf("%d replicas, %s after %v: %v, want %v", tc.replicas, tc.d.Reason, tc.d.RetryAfter, got, tc.want)
		}
	}
	c.opts.NoCallBudget = true
	if got := c.pollAfter(fleetState(1000), limited); got != ms {
		t.Errorf("no budget: %v, want 1ms", got)
	}
}
