package sim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"time"

	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/state"
	"github.com/sluice-dev/sluice/pkg/store"
)

// This file is the deterministic simulator: the loop on a simulated clock,
// one millisecond at a time, in process, with no goroutine and no Redis, so
// that a minute of the loop runs in milliseconds and every run of a case
// gives the same numbers. The feedback side is the real one (a
// feedback.Handler with its policy, on the simulated clock, fed the events
// a write coordinator publishes, through Event.Encode and DecodeEvent); the
// store side models store.WriteCoordinator (its queue, workers, batches,
// linger, paced sink, watermarks through store.Watermarks, events at level
// changes, heartbeats and fill samples) and the limiter models the shared
// token bucket (refilled at base rate × scale, a change applying from then
// on). What the model leaves out, the process-level run (sluice up) has.

// Scenario is one case of the matrix. Zero fields take the defaults given.
type Scenario struct {
	Name string
	// Duration of the run; default 60s.
	Duration time.Duration
	// Base is the provider's base rate, tokens/s; default 600. Burst is the
	// bucket's capacity; default 20.
	Base, Burst float64
	// Demand is what the replicas want, items/s, at t since the start;
	// nil: as much as the budget allows.
	Demand func(t time.Duration) float64
	// Stores are the write coordinators; every admitted item goes to each
	// (a fan-out: a database and an archive, say). At least one.
	Stores []StoreSpec
	// Steps are the changes of a sink rate or of the demand during the run;
	// the settle time is measured after each, and after the start.
	Steps []Step
}

// Step is a change during a run.
type Step struct {
	At   time.Duration
	What string // "sink 300 -> 100/s", say
	// Sink is true for a change of a sink rate: the settle target (within
	// 10% of the new sink rate in 3 s) applies to it.
	Sink bool
}

// StoreSpec is one simulated write coordinator. Zero fields take the
// defaults given (those of the coordinator process that sluice up runs).
type StoreSpec struct {
	ID string
	// SinkRate is how many items/s the sink writes at t; required.
	SinkRate func(t time.Duration) float64
	// Capacity of the queue; default 1000. Workers, BatchSize, Linger:
	// default 4, 100, 50ms.
	Capacity, Workers, BatchSize int
	Linger                       time.Duration
	// Watermarks; default store.DefaultWatermarks.
	Watermarks store.Watermarks
	// Sample and Heartbeat: the intervals of fill samples and heartbeats;
	// default 250ms and 2s.
	Sample, Heartbeat time.Duration
}

// Loop is the feedback side of a run. Zero fields take the defaults given:
// those of the handler the controller runs.
type Loop struct {
	// Policy, and Dwell and MaxRise as feedback.Options.Rise's Dwell and
	// MaxStep (defaults: the handler's: its default policy, that policy's
	// rise shaping).
	Policy  feedback.Policy
	Dwell   time.Duration
	MaxRise float64
	// Tick of the handler; default 1s (the controller's).
	Tick time.Duration
	// Delay from a coordinator's publication to the handler; default 2ms.
	Delay time.Duration
	// Open runs without a handler: the scale stays 1.
	Open bool
	// DropEvery, when above 0, loses every DropEvery-th event on its way
	// (a lost pub/sub message).
	DropEvery int
}

// Point is the state of a simulated run at one instant (every 100 ms).
type Point struct {
	T        time.Duration
	Admitted float64 // items/s over the last second
	Scale    float64
	Sink     float64   // the bottleneck store's sink rate now
	Fill     []float64 // per store: queue ÷ capacity
	Level    []state.Level
}

// Outcome sums up a simulated run.
type Outcome struct {
	Scenario Scenario
	Admitted int64   // items admitted by the budget
	Written  []int64 // per store, after the final drain
	Lost     int64   // admitted, not written by every store
	MaxFill  []float64
	HardMark []float64 // per store: its hard watermark (the fill it must stay below)
	// SinkUse is the bottleneck store's sink busy fraction from 10 s on.
	SinkUse float64
	// LevelChanges of every store; per minute of run.
	LevelChanges   int64
	LevelChangesPM float64
	// Settle is, for the start and each step, how long after it the
	// admitted rate (over a second) came within 10% of the bottleneck's
	// new sink rate (or of the demand, when that is lower) and stayed there
	// until the next step (or the end); -1 when it never did.
	Settle []time.Duration
	// MaxRise is the largest single rise of the scale; JumpFromPause is
	// true when the scale ever went from 0 to 1 in one step.
	MaxRise       float64
	JumpFromPause bool
	Points        []Point
}

// ErrScenario is returned for a scenario or loop that cannot run.
var ErrScenario = errors.New("sim: bad scenario")

const tick = time.Millisecond

// Simulate runs sc under loop on a simulated clock.
func Simulate(sc Scenario, loop Loop) (Outcome, error) {
	if sc.Duration == 0 {
		sc.Duration = time.Minute
	}
	if sc.Base == 0 {
		sc.Base = 600
	}
	if sc.Burst == 0 {
		sc.Burst = 20
	}
	if len(sc.Stores) == 0 {
		return Outcome{}, fmt.Errorf("%w: %q needs at least one store", ErrScenario, sc.Name)
	}
	if loop.Tick == 0 {
		loop.Tick = time.Second
	}
	if loop.Delay == 0 {
		loop.Delay = 2 * time.Millisecond
	}
	m := &model{sc: sc, loop: loop, now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), scale: 1, tokens: sc.Burst}
	m.start = m.now
	for i, spec := range sc.Stores {
		s, err := newSimStore(i, spec)
		if err != nil {
			return Outcome{}, fmt.Errorf("%w: %q: %v", ErrScenario, sc.Name, err)
		}
		m.stores = append(m.stores, s)
	}
	if !loop.Open {
		h, err := feedback.NewHandler(m, feedback.Options{
			Providers: []string{"p"}, Policy: loop.Policy, Rise: feedback.Rise{Dwell: loop.Dwell, MaxStep: loop.MaxRise},
			Tick: loop.Tick, CoordinatorTTL: 10 * time.Second, Clock: func() time.Time { return m.now },
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
		if err != nil {
			return Outcome{}, fmt.Errorf("%w: %q: %v", ErrScenario, sc.Name, err)
		}
		m.h = h
		if err := h.Reevaluate(context.Background()); err != nil {
			return Outcome{}, err
		}
	}
	return m.run()
}

// model is the state of one simulated run. It is the handler's
// feedback.Rate: the shared scale of the one provider "p".
type model struct {
	sc     Scenario
	loop   Loop
	h      *feedback.Handler
	start  time.Time
	now    time.Time
	stores []*simStore

	scale     float64
	changedAt time.Time
	tokens    float64 // the bucket
	owed      float64 // demand not yet served (finite demand)
	admitted  int64
	inbox     []delivery // events on their way to the handler
	published int

	maxRise  float64
	jump     bool
	window   []int64 // admitted per ms over the last second (a ring)
	points   []Point
	sinkBusy time.Duration // the bottleneck's, from 10 s on
}

type delivery struct {
	at time.Time
	e  feedback.Event
}

func (m *model) t() time.Duration { return m.now.Sub(m.start) }

func (m *model) SetPressure(context.Context, string, state.Level) error { return nil }
func (m *model) SetShadowScale(context.Context, string, float64) error  { return nil }
func (m *model) CompareAndSetScale(_ context.Context, _ string, old, s float64) (float64, time.Time, error) {
	if old != m.scale {
		return m.scale, m.changedAt, nil
	}
	if s > m.scale {
		m.maxRise = max(m.maxRise, s-m.scale)
		m.jump = m.jump || m.scale == 0 && s == 1
	}
	if s != m.scale {
		m.scale, m.changedAt = s, m.now
	}
	return m.scale, m.changedAt, nil
}

func (m *model) run() (Outcome, error) {
	ctx := context.Background()
	end := m.start.Add(m.sc.Duration)
	m.window = make([]int64, 1000)
	nextTick := m.start.Add(m.loop.Tick)
	bottleneck := m.bottleneck()
	for i := 0; m.now.Before(end); i++ {
		t := m.t()
		m.admit(t)
		for _, s := range m.stores {
			s.step(m, t)
		}
		if t >= 10*time.Second && m.stores[bottleneck].sinkBusy() {
			m.sinkBusy += tick
		}
		if err := m.deliver(ctx); err != nil {
			return Outcome{}, err
		}
		if m.h != nil && !m.now.Before(nextTick) {
			if err := m.h.Reevaluate(ctx); err != nil {
				return Outcome{}, err
			}
			nextTick = nextTick.Add(m.loop.Tick)
		}
		if i%100 == 99 {
			m.record(t, bottleneck)
		}
		m.now = m.now.Add(tick)
	}
	runEnd := m.t()
	// Stop producing and drain every store: whatever is then not written
	// is lost.
	for deadline := m.now.Add(10 * time.Minute); m.now.Before(deadline); m.now = m.now.Add(tick) {
		busy := false
		for _, s := range m.stores {
			s.step(m, m.t())
			busy = busy || s.unwritten() > 0
		}
		if !busy {
			break
		}
	}
	return m.outcome(runEnd, bottleneck), nil
}

// bottleneck is the store with the slowest sink on average.
func (m *model) bottleneck() int {
	best, bestRate := 0, math.Inf(1)
	for i, s := range m.stores {
		sum := 0.0
		for t := time.Duration(0); t < m.sc.Duration; t += 100 * time.Millisecond {
			sum += s.spec.SinkRate(t)
		}
		if sum < bestRate {
			best, bestRate = i, sum
		}
	}
	return best
}

// admit takes whole tokens for the demand; producers blocked on a full
// queue (an item they could not submit) take none.
func (m *model) admit(t time.Duration) {
	m.tokens = min(m.sc.Burst, m.tokens+m.scale*m.sc.Base*tick.Seconds())
	want := math.Inf(1)
	if m.sc.Demand != nil {
		m.owed = min(m.owed+m.sc.Demand(t)*tick.Seconds(), m.sc.Burst) // a replica that was held back does not bank demand
		want = m.owed
	}
	for _, s := range m.stores {
		if s.held > 0 {
			want = 0
		}
	}
	n := int64(math.Floor(min(m.tokens, want)))
	m.window[int(t/tick)%len(m.window)] = n
	if n <= 0 {
		return
	}
	m.tokens -= float64(n)
	if m.sc.Demand != nil {
		m.owed -= float64(n)
	}
	m.admitted += n
	for _, s := range m.stores {
		s.held += int(n)
	}
}

// deliver hands the events due to the handler, through their JSON form.
func (m *model) deliver(ctx context.Context) error {
	for len(m.inbox) > 0 && !m.inbox[0].at.After(m.now) {
		e := m.inbox[0].e
		m.inbox = m.inbox[1:]
		if m.h == nil {
			continue
		}
		wire, err := feedback.DecodeEvent(bytesReader(e.Encode()))
		if err != nil {
			return fmt.Errorf("sim: an event does not survive its JSON form: %w", err)
		}
		if err := m.h.Handle(ctx, wire); err != nil {
			return err
		}
	}
	return nil
}

func (m *model) publish(e feedback.Event) {
	m.published++
	if m.loop.DropEvery > 0 && m.published%m.loop.DropEvery == 0 {
		return
	}
	m.inbox = append(m.inbox, delivery{m.now.Add(m.loop.Delay), e})
}

func (m *model) record(t time.Duration, bottleneck int) {
	var sum int64
	for _, n := range m.window {
		sum += n
	}
	p := Point{T: t + tick, Admitted: float64(sum), Scale: m.scale, Sink: m.stores[bottleneck].spec.SinkRate(t)}
	for _, s := range m.stores {
		p.Fill = append(p.Fill, float64(s.q)/float64(s.spec.Capacity))
		p.Level = append(p.Level, s.level)
	}
	m.points = append(m.points, p)
}

func (m *model) outcome(runEnd time.Duration, bottleneck int) Outcome {
	o := Outcome{Scenario: m.sc, Admitted: m.admitted, MaxRise: m.maxRise, JumpFromPause: m.jump, Points: m.points}
	for _, s := range m.stores {
		o.Written = append(o.Written, s.written)
		o.Lost = max(o.Lost, m.admitted-s.written)
		o.MaxFill = append(o.MaxFill, float64(s.maxQ)/float64(s.spec.Capacity))
		o.HardMark = append(o.HardMark, s.spec.Watermarks.HardHigh)
		o.LevelChanges += s.transitions
	}
	o.LevelChangesPM = float64(o.LevelChanges) / runEnd.Minutes()
	if runEnd > 10*time.Second {
		o.SinkUse = m.sinkBusy.Seconds() / (runEnd - 10*time.Second).Seconds()
	}
	at := []time.Duration{0}
	for _, st := range m.sc.Steps {
		at = append(at, st.At)
	}
	o.Settle = Settle(m.points, at, runEnd, m.sc.Demand)
	return o
}

// Settle measures, after each instant of steps, when the admitted rate of
// points came within 10% of the rate it should follow (the point's Sink
// rate, or demand's when that is lower; nil demand: no limit) and stayed
// there until the next step or end; -1 when it did not.
func Settle(points []Point, steps []time.Duration, end time.Duration, demand func(time.Duration) float64) []time.Duration {
	out := make([]time.Duration, len(steps))
	for i, from := range steps {
		to := end
		if i+1 < len(steps) {
			to = steps[i+1]
		}
		out[i] = -1
		var last time.Duration = -1 // the last point out of the band
		inside := false
		for _, p := range points {
			if p.T <= from || p.T > to {
				continue
			}
			goal := p.Sink
			if demand != nil {
				goal = min(goal, demand(p.T-time.Millisecond))
			}
			if math.Abs(p.Admitted-goal) > 0.1*goal {
				last, inside = p.T, false
			} else {
				inside = true
			}
		}
		if inside {
			if last < 0 {
				last = from
			}
			out[i] = last - from
		}
	}
	return out
}

// simStore models a store.WriteCoordinator in front of a paced sink.
type simStore struct {
	spec  StoreSpec
	id    string
	q     int // queued
	held  int // admitted items whose producer waits for room in the queue
	maxQ  int
	level state.Level

	workers []simWorker
	fifo    []int   // worker indexes whose batch waits for the sink, head first
	done    float64 // items of the head batch the sink has written

	written     int64
	transitions int64
	seq         uint64
	reported    bool    // a report went out since the last sample
	area        float64 // ∫ depth dt since the last event, item·ms
	since       time.Duration
	nextSample  time.Duration
	nextBeat    time.Duration
}

type simWorker struct {
	batch    int
	lingerTo time.Duration // collecting until then (0: not collecting)
	writing  bool          // handed to the sink
}

func newSimStore(i int, spec StoreSpec) (*simStore, error) {
	if spec.SinkRate == nil {
		return nil, errors.New("a store needs a SinkRate")
	}
	if spec.ID == "" {
		spec.ID = fmt.Sprintf("store-%d", i)
	}
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&spec.Capacity, 1000)
	def(&spec.Workers, 4)
	def(&spec.BatchSize, 100)
	if spec.Linger == 0 {
		spec.Linger = 50 * time.Millisecond
	}
	if spec.Watermarks == (store.Watermarks{}) {
		spec.Watermarks = store.DefaultWatermarks
	}
	if err := spec.Watermarks.Validate(); err != nil {
		return nil, err
	}
	if spec.Sample == 0 {
		spec.Sample = 250 * time.Millisecond
	}
	if spec.Heartbeat == 0 {
		spec.Heartbeat = 2 * time.Second
	}
	return &simStore{spec: spec, id: spec.ID, level: state.OK, workers: make([]simWorker, spec.Workers),
		seq: 1, nextSample: spec.Sample, nextBeat: spec.Heartbeat}, nil
}

func (s *simStore) sinkBusy() bool { return len(s.fifo) > 0 }

func (s *simStore) unwritten() int {
	n := s.q + s.held
	for _, w := range s.workers {
		n += w.batch
	}
	return n
}

// step advances the store by one tick: submits, workers, the sink, the
// level and its events.
func (s *simStore) step(m *model, t time.Duration) {
	if room := s.spec.Capacity - s.q; s.held > 0 && room > 0 {
		n := min(room, s.held)
		s.q += n
		s.held -= n
	}
	s.maxQ = max(s.maxQ, s.q)
	for i := range s.workers {
		w := &s.workers[i]
		if w.writing {
			continue
		}
		if w.batch == 0 && s.q > 0 { // a worker takes the first item and lingers for the rest
			w.lingerTo = t + s.spec.Linger
		}
		if take := min(s.q, s.spec.BatchSize-w.batch); take > 0 {
			w.batch += take
			s.q -= take
		}
		if w.batch > 0 && (w.batch == s.spec.BatchSize || t >= w.lingerTo) {
			w.writing = true
			s.fifo = append(s.fifo, i)
		}
	}
	// The sink writes the head batch at its rate; the next starts when it is done.
	budget := s.spec.SinkRate(t) * tick.Seconds()
	for budget > 0 && len(s.fifo) > 0 {
		w := &s.workers[s.fifo[0]]
		need := float64(w.batch) - s.done
		if budget < need {
			s.done += budget
			break
		}
		budget -= need
		s.written += int64(w.batch)
		*w = simWorker{}
		s.fifo, s.done = s.fifo[1:], 0
	}
	if m == nil || m.sc.Duration < t { // draining after the run: no events
		return
	}
	s.area += float64(s.q)
	next := s.spec.Watermarks.Next(s.level, float64(s.q)/float64(s.spec.Capacity))
	changed := next != s.level
	if changed {
		s.level = next
		s.transitions++
	}
	// As WriteCoordinator.run: a report at a change and every heartbeat;
	// a sample every Sample, unless a report went out since the last.
	kind := ""
	switch {
	case changed:
		kind = feedback.KindReport
	case t >= s.nextBeat:
		kind = feedback.KindReport
		s.nextBeat += s.spec.Heartbeat
	case t >= s.nextSample && !s.reported:
		kind = feedback.KindSample
	}
	if kind == feedback.KindReport {
		s.reported = true
	}
	if t >= s.nextSample {
		s.nextSample += s.spec.Sample
		s.reported = kind == feedback.KindReport && changed // a report at the sample's instant takes its place
	}
	if kind == "" {
		return
	}
	s.seq++
	mean := float64(s.q) // as WriteCoordinator.event: the depth's mean since the last event
	if t > s.since {
		mean = s.area / float64((t-s.since)/tick)
	}
	s.area, s.since = 0, t
	m.publish(feedback.Event{CoordinatorID: s.id, QueueSize: min(s.q, s.spec.Capacity), Capacity: s.spec.Capacity,
		Level: s.level, Seq: s.seq, TS: m.now, Kind: kind, QueueMean: min(math.Round(mean*10)/10, float64(s.spec.Capacity))})
}

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }
