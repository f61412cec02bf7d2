package feedback_test

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/state"
)

// sample is coordinator c's event at seq, at t after the clock's origin,
// with the queue at fill (of 1000), at the level the default watermarks
// would give on the way up.
func sample(c string, seq uint64, t time.Duration, fill float64) feedback.Event {
	l := state.OK
	switch {
	case fill >= 0.85:
		l = state.Hard
	case fill >= 0.6:
		l = state.Soft
	}
	return feedback.Event{CoordinatorID: c, QueueSize: int(math.Round(fill * 1000)), Capacity: 1000, Level: l,
		Seq: seq, TS: newClock().now.Add(t), Kind: feedback.KindSample}
}

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

// step runs p on e as the Handler does: then m.Last is e.
func step(p feedback.StatefulPolicy, m *feedback.PolicyState, e feedback.Event, scale float64) float64 {
	s := p.Control(m, e, scale)
	m.Last = e
	return s
}

// unfilteredPI is the default policy without its low pass, whose
// arithmetic the tests follow step by step.
func unfilteredPI() feedback.PIPolicy {
	p := feedback.DefaultPIPolicy
	p.Filter = 0
	return p
}

func TestPIPolicyControl(t *testing.T) {
	p := unfilteredPI()
	var m feedback.PolicyState
	// The first event changes nothing: the controller starts from the
	// scale in force, whatever the fill.
	if got := step(p, &m, sample("s", 1, 0, 0.7), 0.4); !near(got, 0.4) {
		t.Fatalf("first event: %v, want the scale in force 0.4", got)
	}
	// Then: ln scale moves by −Kp·Δfill − Ki·Δt·(fill − setpoint).
	got := step(p, &m, sample("s", 2, 250*time.Millisecond, 0.8), 0.4)
	want := 0.4 * math.Exp(-p.Kp*0.1-p.Ki*0.25*(0.8-p.SetPoint))
	if !near(got, want) {
		t.Fatalf("second event: %v, want %v", got, want)
	}
	// In proportion to the scale: the same fills move a scale of 0.1 by
	// the same factor as a scale of 0.4.
	var low feedback.PolicyState
	step(p, &low, sample("s", 1, 0, 0.7), 0.1)
	if got := step(p, &low, sample("s", 2, 250*time.Millisecond, 0.8), 0.1); !near(got/0.1, want/0.4) {
		t.Fatalf("at scale 0.1: %v, want %v", got, 0.1*want/0.4)
	}
	// The mean fill since the previous event counts, when the event has
	// one, not the instant queue size.
	var mm feedback.PolicyState
	step(p, &mm, sample("s", 1, 0, 0.7), 0.4)
	e := sample("s", 2, 250*time.Millisecond, 0.95) // an instant peak: hard
	e.Level, e.QueueMean = state.Soft, 800
	if got := step(p, &mm, e, 0.4); !near(got, want) {
		t.Fatalf("with queue_mean 800 (size 950): %v, want %v as for a fill of 0.8", got, want)
	}
	// A fill below the set point raises it; a long gap counts as MaxStep.
	var m2 feedback.PolicyState
	step(p, &m2, sample("s", 1, 0, 0.3), 0.5)
	got = step(p, &m2, sample("s", 2, time.Hour, 0.3), 0.5)
	if want := 0.5 * math.Exp(p.Ki*p.MaxStep.Seconds()*(p.SetPoint-0.3)); !near(got, want) {
		t.Fatalf("after a gap: %v, want %v", got, want)
	}
}

func TestPIPolicyHardPausesAndFreezes(t *testing.T) {
	p := feedback.DefaultPIPolicy
	var m feedback.PolicyState
	step(p, &m, sample("s", 1, 0, p.SetPoint), 0.3)
	if got := step(p, &m, sample("s", 2, 250*time.Millisecond, 0.9), 0.3); got != 0 {
		t.Fatalf("hard: %v, want 0 (a pause)", got)
	}
	// While paused (scale 0 in force) the integral waits: ten seconds of
	// an empty queue do not wind it up.
	integral := m.Integral
	for i := range 40 {
		step(p, &m, sample("s", uint64(3+i), time.Duration(i+2)*250*time.Millisecond, 0.1), 0)
	}
	if m.Integral != integral {
		t.Fatalf("the integral moved during a pause: %v -> %v", integral, m.Integral)
	}
	// Back from the pause at the set point: it asks for what it held
	// before the hard level (the filter restarts from the fill it sees).
	got := step(p, &m, sample("s", 50, 11*time.Second, p.SetPoint), 0)
	if want := math.Exp(integral); !near(got, want) {
		t.Fatalf("after the pause: %v, want %v", got, want)
	}
}

func TestPIPolicyAntiWindup(t *testing.T) {
	p := feedback.DefaultPIPolicy
	var m feedback.PolicyState
	// An empty queue for a minute while something else holds the scale at
	// 0.2 (another coordinator, the ramp): the controller asks for more,
	// but within a bounded factor of the scale in force, not without end.
	for i := range 240 {
		step(p, &m, sample("s", uint64(i+1), time.Duration(i)*250*time.Millisecond, 0), 0.2)
	}
	bound := p.Ki * p.SetPoint * p.Track.Seconds() // the tracking's equilibrium, ln units
	if excess := m.Asked - math.Log(0.2); excess > bound+1e-6 || excess < bound/2 {
		t.Fatalf("asks for %v in ln units above the scale in force, want in [%v, %v]", excess, bound/2, bound)
	}
	// The floor: however full the queue, short of hard, not below it.
	p = unfilteredPI()
	var f feedback.PolicyState
	step(p, &f, sample("s", 1, 0, 0.5), 0.01)
	if got := step(p, &f, sample("s", 2, time.Second, 0.84), 0.01); got != p.Floor {
		t.Fatalf("at 84%% fill from 0.01: %v, want the floor %v", got, p.Floor)
	}
}

// TestPIPolicyFilter: the proportional term follows the fill through a low
// pass of Filter ÷ scale: a step of the fill moves the scale by a part of
// what the unfiltered policy moves it, the more so at a lower scale (a
// slower batch ripple), and converges to the unfiltered answer; with
// Filter 0 it is the unfiltered policy.
func TestPIPolicyFilter(t *testing.T) {
	p, raw := feedback.DefaultPIPolicy, unfilteredPI()
	moved := func(p feedback.PIPolicy, scale float64, n int) float64 {
		var m feedback.PolicyState
		step(p, &m, sample("s", 1, 0, p.SetPoint), scale)
		got := scale
		for i := range n { // the fill steps up by 10 points and stays
			got = step(p, &m, sample("s", uint64(i+2), time.Duration(i+1)*250*time.Millisecond, p.SetPoint+0.1), scale)
		}
		return math.Log(scale / got) // how far down, ln units
	}
	for _, scale := range []float64{0.5, 0.1} {
		f, r := moved(p, scale, 1), moved(raw, scale, 1)
		want := p.Ki*0.25*0.1 + p.Kp*0.1*(1-math.Exp(-0.25*scale/p.Filter.Seconds()))
		if !(f < r) || !near(f, want) {
			t.Fatalf("at scale %v: moved %v (unfiltered %v), want %v", scale, f, r, want)
		}
	}
	if a, b := moved(p, 0.5, 1)/moved(raw, 0.5, 1), moved(p, 0.1, 1)/moved(raw, 0.1, 1); !(b < a) {
		t.Fatalf("the filter passes %v of a step at scale 0.5 and %v at 0.1: want less at the lower scale", a, b)
	}
	var m feedback.PolicyState
	step(p, &m, sample("s", 1, 0, p.SetPoint), 0.5)
	for i := range 40 {
		step(p, &m, sample("s", uint64(i+2), time.Duration(i+1)*250*time.Millisecond, p.SetPoint+0.1), 0.5)
	}
	if math.Abs(m.Filtered-0.1) > 1e-6 {
		t.Fatalf("after 10 s at an error of 0.1: the filtered error is %v", m.Filtered)
	}
	if bad := (feedback.PIPolicy{SetPoint: 0.5, Kp: 1, Ki: 1, Track: time.Second, Rise: 1, Floor: 0.1, MaxStep: time.Second,
		Filter: -time.Second}); bad.Validate() == nil || !strings.Contains(bad.Validate().Error(), "filter") {
		t.Fatalf("a negative filter: %v", bad.Validate())
	}
}

func TestParsePIPolicy(t *testing.T) {
	p, err := feedback.ParsePolicy("pi")
	if err != nil || p.(feedback.PIPolicy) != feedback.DefaultPIPolicy {
		t.Fatalf("pi: %+v %v", p, err)
	}
	p, err = feedback.ParsePolicy("pi:setpoint=0.4,kp=5,ki=0.2,track=3,rise=0.25,floor=0.01,filter=0.5")
	want := feedback.PIPolicy{SetPoint: 0.4, Kp: 5, Ki: 0.2, Track: 3 * time.Second, Rise: 0.25, Floor: 0.01, MaxStep: time.Second,
		Filter: 500 * time.Millisecond}
	if err != nil || p.(feedback.PIPolicy) != want {
		t.Fatalf("pi with keys: %+v %v", p, err)
	}
	for bad, field := range map[string]string{
		"pi:setpoint=1": "setpoint", "pi:setpoint=0": "setpoint", "pi:kp=-1": "kp", "pi:ki=0": "ki",
		"pi:track=0": "track", "pi:rise=0": "rise", "pi:rise=1.5": "rise", "pi:floor=0": "floor",
		"pi:floor=1": "floor", "pi:gain=2": "gain", "pi:ki=NaN": "ki", "pi:filter=-1": "filter",
		"pi:filter=61": "filter", "pi:filter=NaN": "filter",
	} {
		if _, err := feedback.ParsePolicy(bad); err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("ParsePolicy(%q) = %v, want an error naming %s", bad, err, field)
		}
	}
}

// TestStatefulPolicyRampsRises: under a StatefulPolicy the handler lowers the
// scale at once and raises it at the ramp the policy proposes
// (PIPolicy.Rise per second, no dwell): over any stretch of time by at most
// the rate times its length plus half the rate, and never by more than half
// the rate in one step.
func TestStatefulPolicyRampsRises(t *testing.T) {
	c := newClock()
	rate := newFakeRate(c.Now, "ibkr")
	h, _ := newHandler(t, rate, feedback.Options{Policy: feedback.DefaultPIPolicy, Tick: 100 * time.Millisecond})
	handle(t, h, sample("s", 1, 0, 0.5))
	handle(t, h, sample("s", 2, 0, 0.9)) // hard: a pause, at once
	if s := rate.scale("ibkr"); s != 0 {
		t.Fatalf("hard: scale %v, want 0", s)
	}
	// The queue empties: the controller asks for a lot more; the scale
	// ramps at 0.5/s, checked at every evaluation against every earlier one.
	rise := feedback.DefaultPIPolicy.Rise
	scales := []float64{0}
	seq := uint64(3)
	for i := 1; i <= 40; i++ {
		c.Add(100 * time.Millisecond)
		if i%5 == 0 {
			handle(t, h, sample("s", seq, time.Duration(i)*100*time.Millisecond, 0.05))
			seq++
		} else if err := h.Reevaluate(context.Background()); err != nil {
			t.Fatal(err)
		}
		s := rate.scale("ibkr")
		for j, before := range scales {
			window := time.Duration(len(scales)-j) * 100 * time.Millisecond
			if s-before > rise*window.Seconds()+rise/2+1e-9 {
				t.Fatalf("at %v: rose %v -> %v in %v, more than %v/s plus %v", c.now, before, s, window, rise, rise/2)
			}
		}
		if s-scales[len(scales)-1] > rise/2+1e-9 {
			t.Fatalf("at %v: one step of %v, more than half of %v/s", c.now, s-scales[len(scales)-1], rise)
		}
		scales = append(scales, s)
	}
	if s := scales[len(scales)-1]; s < 0.9 {
		t.Fatalf("after 4 s of an empty queue the scale is %v, want near 1 (no dwell)", s)
	}
	// An evaluation after a long silence rises by at most half the rate.
	c2 := newClock()
	rate2 := newFakeRate(c2.Now, "ibkr")
	h2, _ := newHandler(t, rate2, feedback.Options{Policy: feedback.DefaultPIPolicy, Tick: time.Hour})
	handle(t, h2, sample("s", 1, 0, 0.9))
	c2.Add(time.Hour)
	if err := h2.Reevaluate(context.Background()); err != nil { // forgotten: the target is 1
		t.Fatal(err)
	}
	if s := rate2.scale("ibkr"); s != 0.25 {
		t.Fatalf("one step after an hour from a pause: %v, want 0.25 (half of 0.5/s)", s)
	}
}

// TestRiseShapesEveryPolicy: Options.Rise applies whatever the policy: a
// dwell given with the PI policy holds its rises back (it was ignored
// before), and a ramp given with the step policy paces its rises.
func TestRiseShapesEveryPolicy(t *testing.T) {
	c := newClock()
	rate := newFakeRate(c.Now, "ibkr")
	h, _ := newHandler(t, rate, feedback.Options{Policy: feedback.DefaultPIPolicy, Rise: feedback.Rise{Dwell: time.Minute}})
	handle(t, h, sample("s", 1, 0, 0.9)) // hard: a pause
	for i := range 20 {
		c.Add(time.Second)
		handle(t, h, sample("s", uint64(2+i), time.Duration(1+i)*time.Second, 0.05))
	}
	if s := rate.scale("ibkr"); s != 0 {
		t.Fatalf("pi with a 1-minute dwell: the scale rose to %v within 20 s of the pause", s)
	}
	c.Add(time.Minute)
	handle(t, h, sample("s", 30, 81*time.Second, 0.05))
	if s := rate.scale("ibkr"); s <= 0 || s > feedback.DefaultPIPolicy.Rise/2+1e-9 {
		t.Fatalf("pi after the dwell: scale %v, want a first step of the ramp, in (0, %v]", s, feedback.DefaultPIPolicy.Rise/2)
	}

	c2 := newClock()
	rate2 := newFakeRate(c2.Now, "ibkr")
	h2, _ := newHandler(t, rate2, feedback.Options{Policy: feedback.DefaultStepPolicy, Rise: feedback.Rise{Dwell: 1500 * time.Millisecond, Rate: 0.2}})
	handle(t, h2, event("s", 1, state.Hard))
	handle(t, h2, event("s", 2, state.OK))
	var got []float64
	for range 6 {
		c2.Add(time.Second)
		if err := h2.Reevaluate(context.Background()); err != nil {
			t.Fatal(err)
		}
		got = append(got, rate2.scale("ibkr"))
	}
	// One step per dwell of at most half a second's worth of the ramp
	// (0.1), where the step policy alone would jump to 1.
	want := []float64{0, 0.1, 0.1, 0.2, 0.2, 0.3}
	for i := range want {
		if math.Abs(got[i]-want[i]) > 1e-9 {
			t.Fatalf("step policy with a 0.2/s ramp and a 1.5 s dwell: scales %v, want %v", got, want)
		}
	}
}

// counting is a StatefulPolicy that counts its steps.
type counting struct {
	feedback.PIPolicy
	steps int
}

func (c *counting) Control(m *feedback.PolicyState, e feedback.Event, scale float64) float64 {
	c.steps++
	return c.PIPolicy.Control(m, e, scale)
}

// TestStatefulPolicyOneStepPerEvent: the handler's ticks do not run the
// controller again: the scale moves with events only, one step each.
func TestStatefulPolicyOneStepPerEvent(t *testing.T) {
	c := newClock()
	rate := newFakeRate(c.Now, "ibkr")
	ctl := &counting{PIPolicy: feedback.DefaultPIPolicy}
	h, _ := newHandler(t, rate, feedback.Options{Policy: ctl})
	handle(t, h, sample("s", 1, 0, 0.7))
	handle(t, h, sample("s", 2, 250*time.Millisecond, 0.75))
	after := rate.scale("ibkr")
	if after >= 1 {
		t.Fatalf("a rising fill above the set point left the scale at %v", after)
	}
	for range 20 {
		c.Add(250 * time.Millisecond)
		if err := h.Reevaluate(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if s := rate.scale("ibkr"); s != after {
		t.Fatalf("ticks moved the scale %v -> %v without an event", after, s)
	}
	// A repeated event (a resync of the stored report) is no step either.
	handle(t, h, sample("s", 2, 250*time.Millisecond, 0.75))
	if s := rate.scale("ibkr"); s != after {
		t.Fatalf("a repeated event moved the scale %v -> %v", after, s)
	}
	if ctl.steps != 2 {
		t.Fatalf("%d controller steps for 2 events and 20 ticks, want 2", ctl.steps)
	}
}

// TestStatefulPolicyPerCoordinator: two coordinators' samples are followed
// apart (one's fill change is not read against the other's), the lowest
// answer wins, and one that restarts starts afresh.
func TestStatefulPolicyPerCoordinator(t *testing.T) {
	c := newClock()
	rate := newFakeRate(c.Now, "ibkr")
	h, _ := newHandler(t, rate, feedback.Options{Policy: feedback.DefaultPIPolicy, CoordinatorTTL: 5 * time.Second})
	p := feedback.DefaultPIPolicy
	// a sits at 0.8 and b at 0.2, interleaved: were they mixed, each
	// event would read a fill jump of ±0.6.
	var ma, mb feedback.PolicyState
	wa, wb, scale := 1.0, 1.0, 1.0
	for i := range 8 {
		at := time.Duration(i) * 250 * time.Millisecond
		handle(t, h, sample("a", uint64(i+1), at, 0.8))
		wa = step(p, &ma, sample("a", uint64(i+1), at, 0.8), scale)
		scale = min(wa, wb)
		handle(t, h, sample("b", uint64(i+1), at, 0.2))
		wb = step(p, &mb, sample("b", uint64(i+1), at, 0.2), scale)
		scale = min(wa, wb)
		if got := rate.scale("ibkr"); math.Abs(got-math.Round(scale*1e6)/1e6) > 2e-6 {
			t.Fatalf("event %d: scale %v, want min of the two controllers %v", i, got, scale)
		}
	}
	if scale >= 1 || wa >= wb {
		t.Fatalf("a at 80%% must hold the scale down: a %v b %v", wa, wb)
	}
	// a restarts (a lower seq after its TTL): its first event starts from
	// the scale in force, with no memory of its old samples.
	c.Add(6 * time.Second)
	before := rate.scale("ibkr")
	handle(t, h, sample("b", 20, 6*time.Second, 0.2))
	handle(t, h, sample("a", 1, 6*time.Second, 0.3))
	if got := rate.scale("ibkr"); got < before {
		t.Fatalf("a's first event after its restart lowered the scale %v -> %v", before, got)
	}
}

// TestStatefulPolicyExpiry: a coordinator that expired and counts as hard
// pauses through the policy's Scale, as under the step policy.
func TestStatefulPolicyExpiry(t *testing.T) {
	c := newClock()
	rate := newFakeRate(c.Now, "ibkr")
	h, _ := newHandler(t, rate, feedback.Options{Policy: feedback.DefaultPIPolicy, Expiry: feedback.ExpiryHard, CoordinatorTTL: time.Second})
	handle(t, h, sample("s", 1, 0, 0.5))
	c.Add(2 * time.Second)
	if err := h.Reevaluate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s, l := rate.scale("ibkr"), rate.level("ibkr"); s != 0 || l != state.Hard {
		t.Fatalf("expired as hard: scale %v level %s, want 0 hard", s, l)
	}
}

func TestDefaultPolicyIsPI(t *testing.T) {
	rate := newFakeRate(newClock().Now, "ibkr")
	h, err := feedback.NewHandler(rate, feedback.Options{Providers: []string{"ibkr"}, Logger: quiet(), Clock: rate.clock})
	if err != nil {
		t.Fatal(err)
	}
	// Soft at 65%: the step policy would halve the scale; the PI starts
	// from the scale in force, and a single report moves nothing.
	if err := h.Handle(context.Background(), event("store", 1, state.Soft)); err != nil {
		t.Fatal(err)
	}
	if s := rate.scale("ibkr"); s != 1 {
		t.Fatalf("default policy: scale %v after one soft report, want 1 (the PI's first event)", s)
	}
}
