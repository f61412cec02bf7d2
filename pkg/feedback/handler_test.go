package feedback_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/internal/promutil"
	"github.com/sluice-dev/sluice/pkg/state"
)

var errUnknown = errors.New("unknown provider")

// fakeRate is a shared rate budget as Redis holds it: the scale of each
// provider, when it last changed (by the test's clock), the level, and the
// shadow scale. It records every scale set, in order.
type fakeRate struct {
	mu        sync.Mutex
	clock     func() time.Time
	scales    map[string]float64
	changedAt map[string]time.Time
	levels    map[string]state.Level
	shadow    map[string]float64
	sets      []float64 // every scale set, in order
	calls     int       // CompareAndSetScale calls
	writes    []string  // every write ("scale 0", "pressure hard"), in order
	failLevel error     // SetPressure's error while set
}

func newFakeRate(clock func() time.Time, providers ...string) *fakeRate {
	f := &fakeRate{clock: clock, scales: map[string]float64{}, changedAt: map[string]time.Time{},
		levels: map[string]state.Level{}, shadow: map[string]float64{}}
	for _, p := range providers {
		f.scales[p], f.levels[p] = 1, state.OK
	}
	return f
}

func (f *fakeRate) known(p string) error {
	if _, ok := f.scales[p]; !ok {
		return fmt.Errorf("%w %q", errUnknown, p)
	}
	return nil
}

func (f *fakeRate) SetPressure(_ context.Context, p string, level state.Level) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.known(p); err != nil {
		return err
	}
	if f.failLevel != nil {
		return f.failLevel
	}
	f.levels[p] = level
	f.writes = append(f.writes, "pressure "+string(level))
	return nil
}

// CompareAndSetScale records a write of s when it changes the scale from
// old; a call with old == s is a read.
func (f *fakeRate) CompareAndSetScale(_ context.Context, p string, old, s float64) (float64, time.Time, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.known(p); err != nil {
		return 0, time.Time{}, err
	}
	f.calls++
	if f.scales[p] != old || old == s {
		return f.scales[p], f.changedAt[p], nil
	}
	f.changedAt[p] = f.clock()
	f.scales[p] = s
	f.sets = append(f.sets, s)
	f.writes = append(f.writes, fmt.Sprintf("scale %g", s))
	return s, f.changedAt[p], nil
}

func (f *fakeRate) SetShadowScale(_ context.Context, p string, s float64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.known(p); err != nil {
		return err
	}
	f.shadow[p] = s
	return nil
}

// set changes the shared scale behind the handlers' backs (an operator, a
// Redis that lost it).
func (f *fakeRate) set(p string, s float64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.scales[p], f.changedAt[p] = s, f.clock()
}

func (f *fakeRate) scale(p string) float64 { f.mu.Lock(); defer f.mu.Unlock(); return f.scales[p] }
func (f *fakeRate) level(p string) state.Level {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.levels[p]
}

type clock struct{ now time.Time }

func (c *clock) Now() time.Time      { return c.now }
func (c *clock) Add(d time.Duration) { c.now = c.now.Add(d) }
func newClock() *clock               { return &clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }
func quiet() *slog.Logger            { return slog.New(slog.NewTextHandler(discard{}, nil)) }

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// event builds a valid event of coordinator c.
func event(c string, seq uint64, l state.Level) feedback.Event {
	q := map[state.Level]int{state.OK: 100, state.Soft: 700, state.Hard: 950}[l]
	return feedback.Event{CoordinatorID: c, QueueSize: q, Capacity: 1000, Level: l, Seq: seq}
}

// newHandler returns a handler on rate, on rate's clock unless o has one.
func newHandler(t *testing.T, rate *fakeRate, o feedback.Options) (*feedback.Handler, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	if o.Clock == nil {
		o.Clock = rate.clock
	}
	if o.Policy == nil {
		// The seed's tests, and the handler's own, are about the seed's
		// step mapping: one setting away from the default.
		o.Policy = feedback.DefaultStepPolicy
	}
	if o.Providers == nil {
		o.Providers = []string{"ibkr"}
	}
	if o.Logger == nil {
		o.Logger = quiet()
	}
	o.Registerer = reg
	h, err := feedback.NewHandler(rate, o)
	if err != nil {
		t.Fatal(err)
	}
	return h, reg
}

func handle(t *testing.T, h *feedback.Handler, e feedback.Event) {
	t.Helper()
	if err := h.Handle(context.Background(), e); err != nil {
		t.Fatal(err)
	}
}

// The scale, which the replicas enforce, is written before the level, which
// only reports: a level change reaches them a round trip sooner. A level
// that could not be written is written at the next evaluation, and the
// scale stands meanwhile.
func TestScaleWrittenBeforeLevel(t *testing.T) {
	rate := newFakeRate(newClock().Now, "ibkr")
	h, _ := newHandler(t, rate, feedback.Options{})
	handle(t, h, event("store", 1, state.Soft))
	if want := []string{"scale 0.5", "pressure soft"}; !slices.Equal(rate.writes, want) {
		t.Fatalf("writes %q, want %q", rate.writes, want)
	}

	rate.failLevel = errors.New("redis down")
	if err := h.Handle(context.Background(), event("store", 2, state.Hard)); err == nil {
		t.Fatal("a failed level write was not reported")
	}
	if s, l := rate.scale("ibkr"), rate.level("ibkr"); s != 0 || l != state.Soft {
		t.Fatalf("after the failed level write: scale %v level %s, want 0 and the old soft", s, l)
	}
	rate.failLevel = nil
	if err := h.Reevaluate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if l := rate.level("ibkr"); l != state.Hard {
		t.Fatalf("level %s after the next evaluation, want hard", l)
	}
}

// The seed's eight FeedbackHandler tests.

func TestSeedHandleOKSetsScaleOne(t *testing.T) {
	c := newClock()
	rate := newFakeRate(c.Now, "ibkr")
	h, _ := newHandler(t, rate, feedback.Options{Rise: feedback.Rise{Dwell: time.Second}})
	handle(t, h, event("store", 1, state.Hard))
	c.Add(time.Second) // the dwell before a rise
	handle(t, h, event("store", 2, state.OK))
	if s := rate.scale("ibkr"); s != 1 {
		t.Fatalf("scale %v, want 1.0", s)
	}
}

func TestSeedHandleSoftSetsScaleHalf(t *testing.T) {
	rate := newFakeRate(newClock().Now, "ibkr")
	h, _ := newHandler(t, rate, feedback.Options{})
	handle(t, h, event("store", 1, state.Soft))
	if s := rate.scale("ibkr"); s != 0.5 {
		t.Fatalf("scale %v, want 0.5", s)
	}
}

func TestSeedHandleHardSetsScaleZero(t *testing.T) {
	rate := newFakeRate(newClock().Now, "ibkr")
	h, _ := newHandler(t, rate, feedback.Options{})
	handle(t, h, event("store", 1, state.Hard))
	if s := rate.scale("ibkr"); s != 0 {
		t.Fatalf("scale %v, want 0.0", s)
	}
}

func TestSeedHandleUpdatesPressureState(t *testing.T) {
	rate := newFakeRate(newClock().Now, "ibkr")
	h, _ := newHandler(t, rate, feedback.Options{})
	for seq, l := range []state.Level{state.Soft, state.Hard, state.OK} {
		handle(t, h, event("store", uint64(seq+1), l))
		if got := rate.level("ibkr"); got != l {
			t.Fatalf("after %s: pressure %q", l, got)
		}
	}
}

func TestSeedHandleLogsAdjustment(t *testing.T) {
	var buf bytes.Buffer
	rate := newFakeRate(newClock().Now, "ibkr")
	h, _ := newHandler(t, rate, feedback.Options{Logger: slog.New(slog.NewTextHandler(&buf, nil))})
	handle(t, h, event("store", 1, state.Soft))
	line := buf.String()
	for _, want := range []string{"feedback adjusted scale", "provider=ibkr", "level=soft", "from=1", "to=0.5"} {
		if !strings.Contains(line, want) {
			t.Fatalf("log %q lacks %q", line, want)
		}
	}
}

func TestSeedHandleWithMissingProvider(t *testing.T) {
	rate := newFakeRate(newClock().Now, "ibkr") // "ghost" is not registered
	h, reg := newHandler(t, rate, feedback.Options{Providers: []string{"ghost", "ibkr"}})
	err := h.Handle(context.Background(), event("store", 1, state.Soft))
	if !errors.Is(err, errUnknown) || !strings.Contains(err.Error(), `"ghost"`) {
		t.Fatalf("err = %v, want the unknown provider named", err)
	}
	if s := rate.scale("ibkr"); s != 0.5 {
		t.Fatalf("the known provider was not scaled: %v", s)
	}
	if n := metric(t, reg, "feedback_errors_total"); n != 1 {
		t.Fatalf("feedback_errors_total = %v, want 1", n)
	}
}

func TestSeedHandleMetricsIncremented(t *testing.T) {
	rate := newFakeRate(newClock().Now, "ibkr")
	h, reg := newHandler(t, rate, feedback.Options{})
	handle(t, h, event("store", 1, state.Soft))
	handle(t, h, event("store", 2, state.Soft))
	handle(t, h, event("store", 3, state.Hard))
	want := `
# HELP feedback_events_total Pressure events accepted by the feedback handler, by level.
# TYPE feedback_events_total counter
feedback_events_total{level="hard"} 1
feedback_events_total{level="soft"} 2
# HELP feedback_scale_adjustments_total Scale changes made by the handler, by direction (up, down).
# TYPE feedback_scale_adjustments_total counter
feedback_scale_adjustments_total{direction="down",provider="ibkr"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "feedback_events_total", "feedback_scale_adjustments_total"); err != nil {
		t.Fatal(err)
	}
}

func TestSeedCustomPolicy(t *testing.T) {
	// The seed subclassed the handler; here a Policy replaces the default.
	rate := newFakeRate(newClock().Now, "ibkr")
	policy := feedback.PolicyFunc(func(e feedback.Event) float64 { return 1 - e.Fill() })
	h, _ := newHandler(t, rate, feedback.Options{Policy: policy})
	handle(t, h, feedback.Event{CoordinatorID: "store", QueueSize: 300, Capacity: 1000, Level: state.OK, Seq: 1})
	if s := rate.scale("ibkr"); s != 0.7 {
		t.Fatalf("scale %v, want 0.7 from the custom policy", s)
	}
}

// metric reads the series name{labels...} (summed), failing if absent.
func metric(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	v, ok := promutil.Sum(reg, name, want)
	if !ok {
		t.Fatalf("metric %s%v not found", name, labels)
	}
	return v
}

// TestCompareAndSetOnePerEvaluation: the handler reads and sets the shared
// scale in one compare-and-set per provider and evaluation, on the scale it
// last saw in force. When someone else changed it meanwhile (an operator
// here), the call conflicts and writes nothing; the handler decides once
// more on the scale in force and sets that: two calls, and the operator's
// change is never overwritten unseen. A StatefulPolicy's step of that event
// is made again on the scale in force, not twice.
func TestCompareAndSetOnePerEvaluation(t *testing.T) {
	c := newClock()
	rate := newFakeRate(c.Now, "ibkr")
	h, _ := newHandler(t, rate, feedback.Options{})
	handle(t, h, event("store", 1, state.Soft))
	if s, n := rate.scale("ibkr"), rate.calls; s != 0.5 || n != 1 {
		t.Fatalf("soft: scale %v after %d calls, want 0.5 after 1", s, n)
	}
	c.Add(time.Second)
	rate.set("ibkr", 0.8) // an operator, unseen by the handler
	handle(t, h, event("store", 2, state.Soft))
	if s, n := rate.scale("ibkr"), rate.calls; s != 0.5 || n != 3 {
		t.Fatalf("soft again over an operator's 0.8: scale %v after %d calls, want 0.5 (the conflict, then the set) after 3", s, n)
	}
	if got := rate.sets; len(got) != 2 || got[1] != 0.5 {
		t.Fatalf("sets %v, want [0.5 0.5]: nothing written by the conflicting call", got)
	}
	c.Add(time.Second)
	if err := h.Reevaluate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := rate.calls; n != 4 {
		t.Fatalf("a tick with nothing to change made %d calls in all, want 4 (one read)", n)
	}

	// A StatefulPolicy: the step on the conflicting event is redone on the
	// scale in force, so it counts once.
	c2 := newClock()
	rate2 := newFakeRate(c2.Now, "ibkr")
	ctl := &counting{PIPolicy: feedback.DefaultPIPolicy}
	h2, _ := newHandler(t, rate2, feedback.Options{Policy: ctl})
	handle(t, h2, sample("s", 1, 0, 0.7))
	rate2.set("ibkr", 0.3)
	c2.Add(250 * time.Millisecond)
	handle(t, h2, sample("s", 2, 250*time.Millisecond, 0.75))
	// What the policy asks on the scale in force, 0.3, ramped: at most
	// 0.3 + 0.5/s × 250 ms.
	var m feedback.PolicyState
	step(feedback.DefaultPIPolicy, &m, sample("s", 1, 0, 0.7), 1)
	want := min(step(feedback.DefaultPIPolicy, &m, sample("s", 2, 250*time.Millisecond, 0.75), 0.3), 0.3+0.125)
	if s := rate2.scale("ibkr"); math.Abs(s-want) > 1e-6 {
		t.Fatalf("fill above the set point over an operator's 0.3: scale %v, want %v (the step made on 0.3)", s, want)
	}
	if ctl.steps != 3 || rate2.calls != 3 {
		t.Fatalf("%d steps and %d calls for 2 events (one conflicting), want 3 steps (one redone) and 3 calls", ctl.steps, rate2.calls)
	}
}
