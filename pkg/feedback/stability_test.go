package feedback_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/state"
)

// TestOscillationRisesAtMostOncePerDwell: levels flip every 50 ms for 20 s;
// the scale never rises twice within one dwell period, and never rises
// sooner than the dwell after any change.
func TestOscillationRisesAtMostOncePerDwell(t *testing.T) {
	for _, shadow := range []bool{false, true} {
		t.Run(map[bool]string{false: "shared", true: "shadow"}[shadow], func(t *testing.T) {
			c := newClock()
			const dwell = 2 * time.Second
			fr := newFakeRate(c.Now, "ibkr")
			h, _ := newHandler(t, fr, feedback.Options{Rise: feedback.Rise{Dwell: dwell}, Shadow: shadow})
			scale := func() float64 {
				if shadow {
					fr.mu.Lock()
					defer fr.mu.Unlock()
					if v, ok := fr.shadow["ibkr"]; ok {
						return v
					}
					return 1
				}
				return fr.scale("ibkr")
			}
			levels := []state.Level{state.OK, state.Soft, state.Hard, state.Soft, state.OK, state.Hard}
			var lastChange, lastRise time.Time
			rises := 0
			prev := scale()
			for i := range 400 {
				handle(t, h, event("store", uint64(i+1), levels[i%len(levels)]))
				if i%4 == 0 {
					if err := h.Reevaluate(context.Background()); err != nil {
						t.Fatal(err)
					}
				}
				if s := scale(); s != prev {
					if s > prev {
						rises++
						if !lastRise.IsZero() && c.now.Sub(lastRise) < dwell {
							t.Fatalf("rise at %v only %v after the previous rise", c.now, c.now.Sub(lastRise))
						}
						if !lastChange.IsZero() && c.now.Sub(lastChange) < dwell {
							t.Fatalf("rise at %v only %v after the previous change", c.now, c.now.Sub(lastChange))
						}
						lastRise = c.now
					}
					lastChange, prev = c.now, s
				}
				c.Add(50 * time.Millisecond)
			}
			if rises == 0 || rises > 10 {
				t.Fatalf("%d rises in 20 s with a 2 s dwell, want 1..10", rises)
			}
			t.Logf("%d rises in 20 s of oscillation", rises)
		})
	}
}

func TestOutOfOrderEventsIgnored(t *testing.T) {
	c := newClock()
	rate := newFakeRate(c.Now, "ibkr")
	h, reg := newHandler(t, rate, feedback.Options{Rise: feedback.Rise{Dwell: time.Second}})
	handle(t, h, event("store", 5, state.Hard))
	handle(t, h, event("store", 4, state.OK)) // late, older
	handle(t, h, event("store", 5, state.OK)) // duplicate seq
	if s := rate.scale("ibkr"); s != 0 {
		t.Fatalf("scale %v: an older event overrode a newer one", s)
	}
	for reason, want := range map[string]float64{"stale": 1, "duplicate": 1} {
		if got := metric(t, reg, "feedback_events_ignored_total", "reason", reason); got != want {
			t.Fatalf("ignored{%s} = %v, want %v", reason, got, want)
		}
	}
	// Another coordinator's sequence is its own.
	handle(t, h, event("other", 1, state.Soft))
	if s := rate.scale("ibkr"); s != 0 {
		t.Fatalf("scale %v: hard from store must still win", s)
	}
	c.Add(time.Second) // the dwell before a rise
	handle(t, h, event("store", 6, state.OK))
	if s := rate.scale("ibkr"); s != 0.5 {
		t.Fatalf("scale %v, want 0.5 (other is soft)", s)
	}
}

func TestCombine(t *testing.T) {
	for _, tc := range []struct {
		combine feedback.Combine
		want    float64
	}{{feedback.CombineMin, 0}, {feedback.CombineMean, 0.5}} {
		rate := newFakeRate(newClock().Now, "ibkr")
		h, _ := newHandler(t, rate, feedback.Options{Combine: tc.combine})
		handle(t, h, event("a", 1, state.OK))
		handle(t, h, event("b", 1, state.Hard))
		if s := rate.scale("ibkr"); s != tc.want {
			t.Errorf("%s: scale %v, want %v", tc.combine, s, tc.want)
		}
		if l := rate.level("ibkr"); l != "hard" {
			t.Errorf("%s: level %q, want the worst, hard", tc.combine, l)
		}
	}
}

func TestCoordinatorExpiry(t *testing.T) {
	for _, tc := range []struct {
		expiry feedback.Expiry
		scale  float64
		level  string
	}{
		{feedback.ExpiryForget, 1, "ok"},
		{feedback.ExpiryHold, 0.5, "soft"},
		{feedback.ExpiryHard, 0, "hard"},
		{feedback.ExpirySoft, 0.5, "soft"},
	} {
		t.Run(string(tc.expiry), func(t *testing.T) {
			c := newClock()
			rate := newFakeRate(c.Now, "ibkr")
			h, reg := newHandler(t, rate, feedback.Options{Expiry: tc.expiry, CoordinatorTTL: 10 * time.Second, Rise: feedback.Rise{Dwell: time.Second}})
			handle(t, h, event("store", 1, state.Soft))
			c.Add(9 * time.Second)
			if err := h.Reevaluate(context.Background()); err != nil {
				t.Fatal(err)
			}
			if s := rate.scale("ibkr"); s != 0.5 {
				t.Fatalf("before the TTL: scale %v", s)
			}
			c.Add(2 * time.Second)
			if err := h.Reevaluate(context.Background()); err != nil {
				t.Fatal(err)
			}
			if s, l := rate.scale("ibkr"), rate.level("ibkr"); s != tc.scale || string(l) != tc.level {
				t.Fatalf("after the TTL: scale %v level %s, want %v %s", s, l, tc.scale, tc.level)
			}
			live := metric(t, reg, "feedback_coordinators_live")
			if want := map[bool]float64{true: 0, false: 1}[tc.expiry == feedback.ExpiryForget]; live != want {
				t.Fatalf("live coordinators %v, want %v", live, want)
			}
			// Its stored report, read again (a Redis resync), is no news:
			// it neither revives nor refreshes the coordinator.
			c.Add(time.Second)
			handle(t, h, event("store", 1, state.Soft))
			if s, l := rate.scale("ibkr"), rate.level("ibkr"); s != tc.scale || string(l) != tc.level {
				t.Fatalf("after its old report came again: scale %v level %s, want %v %s", s, l, tc.scale, tc.level)
			}
			// It comes back: its new report counts (after the dwell).
			c.Add(time.Second)
			handle(t, h, event("store", 2, state.OK))
			if s := rate.scale("ibkr"); s != 1 {
				t.Fatalf("after it reported again: scale %v", s)
			}
		})
	}
}

func TestSoftStartRamp(t *testing.T) {
	c := newClock()
	rate := newFakeRate(c.Now, "ibkr")
	h, _ := newHandler(t, rate, feedback.Options{Rise: feedback.Rise{Dwell: time.Second, MaxStep: 0.25}})
	handle(t, h, event("store", 1, state.Hard))
	handle(t, h, event("store", 2, state.OK))
	var got []float64
	for range 12 {
		c.Add(500 * time.Millisecond)
		if err := h.Reevaluate(context.Background()); err != nil {
			t.Fatal(err)
		}
		got = append(got, rate.scale("ibkr"))
	}
	want := []float64{0, 0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1, 1, 1, 1, 1}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("ramp every 500 ms = %v, want %v", got, want)
		}
	}
}

func TestShadowMode(t *testing.T) {
	c := newClock()
	rate := newFakeRate(c.Now, "ibkr")
	h, reg := newHandler(t, rate, feedback.Options{Shadow: true})
	handle(t, h, event("store", 1, state.Hard))
	if s := rate.scale("ibkr"); s != 1 || len(rate.sets) != 0 {
		t.Fatalf("shadow mode changed the scale: %v %v", s, rate.sets)
	}
	if rate.shadow["ibkr"] != 0 || rate.level("ibkr") != state.Hard {
		t.Fatalf("shadow scale %v level %s, want 0 and hard recorded", rate.shadow["ibkr"], rate.level("ibkr"))
	}
	if v := metric(t, reg, "feedback_scale_applied", "provider", "ibkr"); v != 0 {
		t.Fatalf("feedback_scale_applied = %v, want the would-be 0", v)
	}
}

// TestSharedScaleIsReasserted: with a shared scale, another writer (a
// restarted Redis, an operator) cannot leave it wrong: the next evaluation
// sets it again; and a handler that starts late measures the dwell from
// the shared change time.
func TestSharedScaleIsReasserted(t *testing.T) {
	c := newClock()
	rate := newFakeRate(c.Now, "ibkr")
	h, _ := newHandler(t, rate, feedback.Options{Rise: feedback.Rise{Dwell: 5 * time.Second}})
	handle(t, h, event("store", 1, state.Hard))
	rate.set("ibkr", 1) // lost: Redis restarted, the provider re-registered at scale 1
	if err := h.Reevaluate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s := rate.scale("ibkr"); s != 0 {
		t.Fatalf("scale %v after a lost write, want 0 set again", s)
	}
	// A second replica's handler starts 3 s later and sees ok: it must wait
	// for the dwell since the shared change, not since its own start.
	c.Add(3 * time.Second)
	late, _ := newHandler(t, rate, feedback.Options{Rise: feedback.Rise{Dwell: 5 * time.Second}})
	handle(t, late, event("store", 2, state.OK))
	if s := rate.scale("ibkr"); s != 0 {
		t.Fatalf("late handler raised after %v < dwell: scale %v", 3*time.Second, s)
	}
	c.Add(2 * time.Second)
	if err := late.Reevaluate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s := rate.scale("ibkr"); s != 1 {
		t.Fatalf("after the dwell: scale %v, want 1", s)
	}
}

// TestNoRaiseOnStaleNews: two handlers share a scale; one hears hard and
// lowers it; the other, which has not heard it yet, must not raise it back
// on its periodic evaluation, even once the dwell has passed.
func TestNoRaiseOnStaleNews(t *testing.T) {
	c := newClock()
	rate := newFakeRate(c.Now, "ibkr")
	a, _ := newHandler(t, rate, feedback.Options{Rise: feedback.Rise{Dwell: 5 * time.Millisecond}})
	b, _ := newHandler(t, rate, feedback.Options{Rise: feedback.Rise{Dwell: 5 * time.Millisecond}})
	handle(t, a, event("store", 1, state.OK))
	handle(t, b, event("store", 1, state.OK))
	c.Add(time.Second)
	handle(t, a, event("store", 2, state.Hard))
	c.Add(10 * time.Millisecond)
	if err := b.Reevaluate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s := rate.scale("ibkr"); s != 0 {
		t.Fatalf("a handler with stale news raised the shared scale to %v", s)
	}
	handle(t, b, event("store", 2, state.Hard))
	handle(t, b, event("store", 3, state.OK)) // news after the change: b may raise
	if s := rate.scale("ibkr"); s != 1 {
		t.Fatalf("scale %v after b heard ok, want 1", s)
	}
}

func TestHandlerOptionErrors(t *testing.T) {
	rate := newFakeRate(newClock().Now, "ibkr")
	for _, o := range []feedback.Options{
		{},
		{Providers: []string{"p"}, Combine: "max"},
		{Providers: []string{"p"}, Expiry: "later"},
		{Providers: []string{"p"}, Rise: feedback.Rise{MaxStep: 2}},
		{Providers: []string{"p"}, Rise: feedback.Rise{MaxStep: -0.5}},
		{Providers: []string{"p"}, Rise: feedback.Rise{Dwell: -time.Second}},
		{Providers: []string{"p"}, CoordinatorTTL: -time.Second},
		{Providers: []string{"p"}, Tick: -time.Second},
		{Providers: []string{"p"}, Policy: feedback.StepPolicy{OK: 1, Soft: 1.5}},
	} {
		if _, err := feedback.NewHandler(rate, o); err == nil {
			t.Errorf("NewHandler(%+v) accepted", o)
		}
	}
}

// TestNewHandlerKnowsItsStart: a handler made after the shared scale was
// lowered, hearing of no coordinator at all, raises it once the dwell since
// the change has passed (its knowledge starts at its creation); one made
// before the change does not.
func TestNewHandlerKnowsItsStart(t *testing.T) {
	c := newClock()
	rate := newFakeRate(c.Now, "ibkr")
	before, _ := newHandler(t, rate, feedback.Options{Rise: feedback.Rise{Dwell: time.Second}})
	c.Add(time.Second)
	rate.set("ibkr", 0) // a store at hard, since gone, through another handler
	c.Add(time.Second)
	after, _ := newHandler(t, rate, feedback.Options{Rise: feedback.Rise{Dwell: time.Second}})
	if err := before.Reevaluate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s := rate.scale("ibkr"); s != 0 {
		t.Fatalf("a handler older than the change raised it to %v", s)
	}
	if err := after.Reevaluate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s := rate.scale("ibkr"); s != 1 {
		t.Fatalf("a handler newer than the change left it at %v, want 1", s)
	}
}

// TestBogusSeqPinsOnlyForHold (finding 10 of issue 20): an event with
// seq 2^64-1 makes the real coordinator's events stale only for the hold
// (3 s), not for CoordinatorTTL (10 s, before): once the coordinator has
// been silent for the hold, its lower seq counts again. The bogus report,
// delivered again by a Redis snapshot, is not news; neither is a repeated
// seq.
func TestBogusSeqPinsOnlyForHold(t *testing.T) {
	for _, expiry := range []feedback.Expiry{feedback.ExpiryForget, feedback.ExpiryHard} {
		t.Run(string(expiry), func(t *testing.T) {
			c := newClock()
			rate := newFakeRate(c.Now, "ibkr")
			h, reg := newHandler(t, rate, feedback.Options{Expiry: expiry, CoordinatorTTL: 10 * time.Second, Rise: feedback.Rise{Dwell: time.Second}})
			handle(t, h, event("store", 6, state.OK))
			c.Add(time.Second)
			bogus := event("store", 1<<64-1, state.Hard)
			bogus.TS = c.Now() // as the Redis bus delivers it, and again from the stored report
			handle(t, h, bogus)
			c.Add(feedback.DefaultHold - time.Millisecond)
			handle(t, h, event("store", 7, state.OK)) // stale while the bogus event holds
			if s := rate.scale("ibkr"); s != 0 {
				t.Fatalf("within the hold: scale %v, want 0 (the lower seq is stale)", s)
			}
			c.Add(time.Millisecond) // silent for the hold
			handle(t, h, event("store", 8, state.OK))
			if s := rate.scale("ibkr"); s != 1 {
				t.Fatalf("after the hold: scale %v, want 1 (the real coordinator counts again)", s)
			}
			handle(t, h, event("store", 8, state.Hard)) // a repeated seq is never news
			handle(t, h, bogus)                         // nor the bogus report, read again from Redis
			if s := rate.scale("ibkr"); s != 1 {
				t.Fatalf("a repeated seq changed the scale to %v", s)
			}
			if got := metric(t, reg, "feedback_events_ignored_total", "reason", "duplicate"); got != 2 {
				t.Fatalf("ignored{duplicate} = %v, want 2", got)
			}
		})
	}
}

// TestRestartAndReplay: a coordinator that restarts and numbers from 1
// again counts once it has been silent for the hold; before that its new
// seqs are stale. A report a Redis snapshot delivers again after samples
// moved past it is not news, however long ago it came: neither the last
// report of a coordinator that went silent, nor the stored report of the
// incarnation a restart replaced.
func TestRestartAndReplay(t *testing.T) {
	c := newClock()
	rate := newFakeRate(c.Now, "ibkr")
	h, _ := newHandler(t, rate, feedback.Options{Rise: feedback.Rise{Dwell: time.Second}})
	report := event("store", 100, state.Hard)
	report.TS = c.Now() // as the Redis bus delivers it, and again from the stored report
	handle(t, h, report)
	sample := event("store", 101, state.Soft)
	sample.Kind = feedback.KindSample
	handle(t, h, sample)
	c.Add(feedback.DefaultHold) // it goes silent: dead, or restarting
	handle(t, h, report)
	if l := rate.level("ibkr"); l != "soft" {
		t.Fatalf("the last report read again after the hold: level %s, want soft (the later sample's)", l)
	}
	handle(t, h, event("store", 1, state.OK)) // restarted, numbering from 1
	c.Add(time.Second)
	handle(t, h, event("store", 2, state.OK))
	if s, l := rate.scale("ibkr"), rate.level("ibkr"); s != 1 || l != "ok" {
		t.Fatalf("after the restart: scale %v level %s, want 1 ok", s, l)
	}
	c.Add(feedback.DefaultHold)
	handle(t, h, report) // the old incarnation's report, still stored
	if l := rate.level("ibkr"); l != "ok" {
		t.Fatalf("the replaced incarnation's report counted again: level %s", l)
	}
	// The new incarnation's own seq 100, later, is news.
	for seq := uint64(3); seq <= 100; seq++ {
		handle(t, h, event("store", seq, map[bool]state.Level{false: state.OK, true: state.Soft}[seq == 100]))
	}
	if l := rate.level("ibkr"); l != "soft" {
		t.Fatalf("the new incarnation's event 100: level %s, want soft", l)
	}
	// Within the hold a lower seq is stale: a reordered post.
	handle(t, h, event("store", 1, state.Hard))
	if l := rate.level("ibkr"); l != "soft" {
		t.Fatalf("a lower seq within the hold counted: level %s", l)
	}
}

func TestHoldOption(t *testing.T) {
	rate := newFakeRate(newClock().Now, "ibkr")
	for _, o := range []feedback.Options{
		{Providers: []string{"p"}, Hold: -time.Second},
		{Providers: []string{"p"}, Hold: 11 * time.Second},
		{Providers: []string{"p"}, Hold: 2 * time.Second, CoordinatorTTL: time.Second},
	} {
		if _, err := feedback.NewHandler(rate, o); err == nil || !strings.Contains(err.Error(), "hold=") {
			t.Errorf("NewHandler(%+v): %v, want an error naming hold", o, err)
		}
	}
	// The default is the CoordinatorTTL when that is shorter than 3 s.
	c := newClock()
	rate = newFakeRate(c.Now, "ibkr")
	h, _ := newHandler(t, rate, feedback.Options{CoordinatorTTL: time.Second, Expiry: feedback.ExpiryHold})
	handle(t, h, event("store", 9, state.Hard))
	c.Add(time.Second)
	handle(t, h, event("store", 1, state.OK))
	if l := rate.level("ibkr"); l != "ok" {
		t.Fatalf("with a 1 s TTL a lower seq after 1 s: level %s, want ok", l)
	}
	// With every option zero the hold is DefaultHold, taken from the
	// CoordinatorTTL's default (10 s), not from the zero it was before.
	c = newClock()
	rate = newFakeRate(c.Now, "ibkr")
	h, _ = newHandler(t, rate, feedback.Options{Expiry: feedback.ExpiryHold})
	handle(t, h, event("store", 9, state.Hard))
	c.Add(feedback.DefaultHold - time.Millisecond)
	handle(t, h, event("store", 1, state.OK))
	if l := rate.level("ibkr"); l != "hard" {
		t.Fatalf("defaults: a lower seq within 3 s counted: level %s, want hard", l)
	}
	c.Add(time.Millisecond)
	handle(t, h, event("store", 1, state.OK))
	if l := rate.level("ibkr"); l != "ok" {
		t.Fatalf("defaults: a lower seq after 3 s: level %s, want ok", l)
	}
}

// TestHoldFor: the one rule for a hold, applied after the TTL's default.
func TestHoldFor(t *testing.T) {
	for _, c := range []struct {
		hold, ttl, want time.Duration
		err             string
	}{
		{0, 10 * time.Second, feedback.DefaultHold, ""},
		{0, time.Second, time.Second, ""},
		{2 * time.Second, 10 * time.Second, 2 * time.Second, ""},
		{10 * time.Second, 10 * time.Second, 10 * time.Second, ""},
		{-time.Second, 10 * time.Second, 0, "hold=-1s: must be positive (0 takes the default, 3s or ttl if shorter)"},
		{11 * time.Second, 10 * time.Second, 0, "hold=11s: must be at most ttl=10s"},
	} {
		got, err := feedback.HoldFor(c.hold, c.ttl, "ttl")
		if got != c.want || (err == nil) != (c.err == "") || (err != nil && err.Error() != c.err) {
			t.Errorf("HoldFor(%v, %v) = %v, %v; want %v, %q", c.hold, c.ttl, got, err, c.want, c.err)
		}
	}
}

// TestAppliedGaugeFollowsSharedScale: a handler whose neighbour set the
// shared scale reports that scale as applied, not its own stale one.
func TestAppliedGaugeFollowsSharedScale(t *testing.T) {
	c := newClock()
	rate := newFakeRate(c.Now, "ibkr")
	a, _ := newHandler(t, rate, feedback.Options{Rise: feedback.Rise{Dwell: time.Second}})
	b, regB := newHandler(t, rate, feedback.Options{Rise: feedback.Rise{Dwell: time.Second}})
	if err := b.Reevaluate(context.Background()); err != nil { // b has applied 1
		t.Fatal(err)
	}
	c.Add(time.Second)
	handle(t, a, event("store", 1, state.Hard)) // a pauses the shared budget
	c.Add(time.Second)
	if err := b.Reevaluate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := metric(t, regB, "feedback_scale_applied"); got != 0 {
		t.Fatalf("b's feedback_scale_applied = %v, want the shared 0", got)
	}
}
