package store_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/internal/promutil"
	"github.com/sluice-dev/sluice/pkg/state"
	"github.com/sluice-dev/sluice/pkg/store"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestWatermarksHysteresis(t *testing.T) {
	w := store.DefaultWatermarks // soft 0.6/0.4, hard 0.85/0.7
	ok, soft, hard := state.OK, state.Soft, state.Hard
	for _, tc := range []struct {
		cur  state.Level
		fill float64
		want state.Level
	}{
		{ok, 0.59, ok}, {ok, 0.6, soft}, {ok, 0.85, hard}, {ok, 1, hard},
		{soft, 0.5, soft}, {soft, 0.4, soft}, {soft, 0.39, ok}, {soft, 0.84, soft}, {soft, 0.85, hard},
		{hard, 0.7, hard}, {hard, 0.69, soft}, {hard, 0.4, soft}, {hard, 0.39, ok}, {hard, 0, ok},
	} {
		if got := w.Next(tc.cur, tc.fill); got != tc.want {
			t.Errorf("Next(%s, %v) = %s, want %s", tc.cur, tc.fill, got, tc.want)
		}
	}
	for _, bad := range []store.Watermarks{
		{SoftHigh: 0.4, SoftLow: 0.6, HardHigh: 0.9, HardLow: 0.8},
		{SoftHigh: 0.6, SoftLow: 0.4, HardHigh: 0.5, HardLow: 0.45},
		{SoftHigh: 0.6, SoftLow: 0.4, HardHigh: 1.2, HardLow: 0.8},
	} {
		if bad.Validate() == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

// recordingSink records every item written; it can be gated and made to fail.
type recordingSink struct {
	mu      sync.Mutex
	items   map[int]int // item -> times written
	batches []int       // batch sizes
	gate    chan struct{}
	fail    atomic.Int32 // fail this many more writes
	delay   time.Duration
	open    func()
	once    sync.Once
}

func newSink() *recordingSink { return &recordingSink{items: map[int]int{}} }

// gated makes Write wait until open is called. newCoordinator's cleanup
// opens it before closing the coordinator, so a failing test does not hang.
func (s *recordingSink) gated() (open func()) {
	s.gate = make(chan struct{})
	s.open = func() { s.once.Do(func() { close(s.gate) }) }
	return s.open
}

func (s *recordingSink) Write(ctx context.Context, batch []int) error {
	if s.gate != nil {
		select {
		case <-s.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	time.Sleep(s.delay)
	if s.fail.Add(-1) >= 0 {
		return errors.New("store unavailable")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, it := range batch {
		s.items[it]++
	}
	s.batches = append(s.batches, len(batch))
	return nil
}

func newCoordinator(t *testing.T, sink store.Sink[int], o store.Options[int]) *store.WriteCoordinator[int] {
	t.Helper()
	if o.ID == "" {
		o.ID = "test"
	}
	o.Logger = quiet
	w, err := store.New(sink, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if rs, ok := sink.(*recordingSink); ok && rs.open != nil {
			rs.open()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = w.Close(ctx)
	})
	return w
}

func TestEveryItemWrittenOnce(t *testing.T) {
	sink := newSink()
	w := newCoordinator(t, sink, store.Options[int]{Capacity: 100, Workers: 3, BatchSize: 16, Linger: 5 * time.Millisecond})
	var wg sync.WaitGroup
	for p := range 4 {
		wg.Go(func() {
			for i := range 1000 {
				if err := w.Submit(context.Background(), p*1000+i); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(sink.items) != 4000 {
		t.Fatalf("%d distinct items written, want 4000", len(sink.items))
	}
	for it, n := range sink.items {
		if n != 1 {
			t.Fatalf("item %d written %d times", it, n)
		}
	}
	for _, b := range sink.batches {
		if b > 16 {
			t.Fatalf("batch of %d > BatchSize 16", b)
		}
	}
	if st := w.Stats(); st.Written != 4000 || st.Submitted != 4000 || st.Unwritten != 0 || st.Depth != 0 {
		t.Fatalf("stats %+v", st)
	}
	if err := w.Submit(context.Background(), 1); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("Submit after Close: %v", err)
	}
}

func TestSubmitBlocksWhenFull(t *testing.T) {
	sink := newSink()
	open := sink.gated()
	w := newCoordinator(t, sink, store.Options[int]{Capacity: 4, Workers: 1, BatchSize: 1, Linger: time.Millisecond})
	// One item is taken by the worker (stuck at the gate), four fill the queue.
	if err := w.Submit(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return w.Stats().Depth == 0 })
	for i := 1; i < 5; i++ {
		if err := w.Submit(context.Background(), i); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := w.Submit(ctx, 99); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Submit on a full queue: %v, want DeadlineExceeded", err)
	}
	if st := w.Stats(); st.SubmitsBlocked != 1 || st.Submitted != 5 || st.MaxDepth != 4 || st.Level != state.Hard {
		t.Fatalf("stats %+v", st)
	}
	// A Submit waiting when Close begins is released with ErrClosed.
	errc := make(chan error)
	go func() { errc <- w.Submit(context.Background(), 100) }()
	waitFor(t, func() bool { return w.Stats().SubmitsBlocked == 2 }) // it waits for room
	closed := make(chan error)
	go func() { closed <- w.Close(context.Background()) }()
	if err := <-errc; !errors.Is(err, store.ErrClosed) {
		t.Fatalf("blocked Submit during Close: %v", err)
	}
	open()
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if len(sink.items) != 5 || sink.items[99] != 0 || sink.items[100] != 0 {
		t.Fatalf("written %v, want exactly the 5 accepted items", sink.items)
	}
}

func TestRetriesAndDeadLetter(t *testing.T) {
	t.Run("retried", func(t *testing.T) {
		sink := newSink()
		sink.fail.Store(2)
		reg := prometheus.NewRegistry()
		w := newCoordinator(t, sink, store.Options[int]{BatchSize: 10, Backoff: time.Millisecond, Registerer: reg})
		for i := range 10 {
			_ = w.Submit(context.Background(), i)
		}
		if err := w.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		if st := w.Stats(); st.Written != 10 || st.DeadLettered != 0 {
			t.Fatalf("stats %+v", st)
		}
		if n := counter(t, reg, "coordinator_write_errors_total"); n != 2 {
			t.Fatalf("write errors %v, want 2", n)
		}
	})
	t.Run("dead-lettered", func(t *testing.T) {
		sink := newSink()
		sink.fail.Store(1 << 30)
		dl := newSink()
		w := newCoordinator(t, sink, store.Options[int]{BatchSize: 5, Attempts: 3, Backoff: time.Millisecond, DeadLetter: dl})
		for i := range 12 {
			_ = w.Submit(context.Background(), i)
		}
		if err := w.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		if st := w.Stats(); st.DeadLettered != 12 || st.DeadLetterErrs != 0 || len(dl.items) != 12 {
			t.Fatalf("stats %+v, dead-letter got %d", st, len(dl.items))
		}
	})
	t.Run("dead-letter sink fails too", func(t *testing.T) {
		// Nothing is dropped: the batch stays, and after Attempts more
		// failed writes goes to the dead-letter sink again.
		sink := newSink()
		sink.fail.Store(1 << 30)
		dl := newSink()
		dl.fail.Store(1)
		w := newCoordinator(t, sink, store.Options[int]{Attempts: 2, Backoff: time.Millisecond, DeadLetter: dl})
		_ = w.Submit(context.Background(), 1)
		if err := w.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
		if st := w.Stats(); st.DeadLetterErrs != 1 || st.DeadLettered != 1 || st.Unwritten != 0 || dl.items[1] != 1 {
			t.Fatalf("stats %+v: the refused item must be retried, then dead-lettered", st)
		}
		if n := sink.fail.Load(); n != 1<<30-4 {
			t.Fatalf("%d writes, want 2 attempts, twice", 1<<30-n)
		}
	})
	t.Run("one attempt", func(t *testing.T) {
		sink := newSink()
		sink.fail.Store(1)
		dl := newSink()
		w := newCoordinator(t, sink, store.Options[int]{Attempts: 1, DeadLetter: dl})
		_ = w.Submit(context.Background(), 1)
		_ = w.Close(context.Background())
		if st := w.Stats(); st.DeadLettered != 1 || st.Written != 0 || sink.fail.Load() != 0 || dl.items[1] != 1 {
			t.Fatalf("stats %+v: with 1 attempt the failed batch is not retried", st)
		}
	})
}

// TestFailingSinkIsPressure: without a dead-letter sink nothing is given
// up: a sink that keeps failing makes the level soft at once and hard after
// HardAfter, and when it writes again every item is written exactly once
// and the level falls back.
func TestFailingSinkIsPressure(t *testing.T) {
	sink := newSink()
	sink.fail.Store(1 << 30)
	w := newCoordinator(t, sink, store.Options[int]{
		Capacity: 1000, BatchSize: 10, Backoff: time.Millisecond, HardAfter: 50 * time.Millisecond, Sample: 5 * time.Millisecond,
	})
	for i := range 100 {
		if err := w.Submit(context.Background(), i); err != nil {
			t.Fatal(err)
		}
	}
	waitLevel(t, w, state.Soft, state.Hard) // a 10% full queue: only the failing sink can raise it
	waitLevel(t, w, state.Hard)
	if st := w.Stats(); st.Written != 0 || st.Unwritten != 100 || st.WriteErrors == 0 {
		t.Fatalf("while failing: %+v", st)
	}
	sink.fail.Store(0)
	waitLevel(t, w, state.OK)
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := w.Stats()
	if st.Written != 100 || st.DeadLettered != 0 || st.Unwritten != 0 {
		t.Fatalf("after recovery: %+v, want all 100 written", st)
	}
	for i := range 100 {
		if sink.items[i] != 1 {
			t.Fatalf("item %d written %d times", i, sink.items[i])
		}
	}
}

// TestDeadLetterEndsSinkPressure: once the failing batches left through
// the dead-letter sink, the sink no longer holds the level up (else a
// paused pipeline would never send the batch that proves the store is
// back).
func TestDeadLetterEndsSinkPressure(t *testing.T) {
	sink := newSink()
	sink.fail.Store(1 << 30)
	dl := newSink()
	w := newCoordinator(t, sink, store.Options[int]{
		BatchSize: 1, Attempts: 3, Backoff: 20 * time.Millisecond, HardAfter: 10 * time.Millisecond,
		Sample: 5 * time.Millisecond, DeadLetter: dl,
	})
	_ = w.Submit(context.Background(), 1)
	waitLevel(t, w, state.Hard)
	waitLevel(t, w, state.OK)
	if st := w.Stats(); st.DeadLettered != 1 || st.Unwritten != 0 || dl.items[1] != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestPoisonBatchIsSoftNotHard: one batch the sink always refuses keeps
// the level soft (visible) but not hard while other writes succeed: the
// fleet is not paused by one bad item.
func TestPoisonBatchIsSoftNotHard(t *testing.T) {
	poisoned := store.SinkFunc[int](func(_ context.Context, batch []int) error {
		for _, it := range batch {
			if it == 7 {
				return errors.New("constraint violation")
			}
		}
		return nil
	})
	w, err := store.New(poisoned, store.Options[int]{ID: "p", BatchSize: 1, Backoff: time.Millisecond,
		HardAfter: 200 * time.Millisecond, Sample: 5 * time.Millisecond, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		defer cancel()
		if err := w.Close(ctx); err == nil { // the poison batch never leaves
			t.Error("Close drained a poison batch")
		}
		w.Abort()
		if st := w.Stats(); st.Unwritten != 1 {
			t.Errorf("after Abort: %+v, want the poison item counted unwritten", st)
		}
	}()
	for i := range 10 {
		_ = w.Submit(context.Background(), i)
	}
	waitLevel(t, w, state.Soft)
	deadline := time.Now().Add(time.Second) // several HardAfter periods
	for time.Now().Before(deadline) {
		_ = w.Submit(context.Background(), 100) // other writes keep succeeding
		if st := w.Stats(); st.Level == state.Hard {
			t.Fatalf("one poison batch made the level hard: %+v", st)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestAbortStopsEverything: after a Close that timed out, Abort ends the
// retries, the sink call in flight and the events; the rest is counted.
func TestAbortStopsEverything(t *testing.T) {
	var events atomic.Int64
	var bus feedback.Bus
	_, _ = bus.Subscribe(context.Background(), func(context.Context, feedback.Event) error { events.Add(1); return nil })
	stuck := store.SinkFunc[int](func(ctx context.Context, _ []int) error { <-ctx.Done(); return ctx.Err() })
	w, err := store.New(stuck, store.Options[int]{ID: "a", Workers: 2, BatchSize: 1, Heartbeat: 5 * time.Millisecond,
		Publisher: &bus, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		_ = w.Submit(context.Background(), i)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := w.Close(ctx); err == nil {
		t.Fatal("Close drained a stuck sink")
	}
	w.Abort()
	if err := w.Close(context.Background()); err != nil { // now it ends at once
		t.Fatalf("Close after Abort: %v", err)
	}
	n := events.Load()
	time.Sleep(50 * time.Millisecond) // ten heartbeats
	if events.Load() != n {
		t.Fatal("events published after Abort")
	}
	if st := w.Stats(); st.Unwritten != 5 || st.Written != 0 {
		t.Fatalf("after Abort: %+v", st)
	}
}

// waitLevel waits (up to 10 s) until the coordinator's level is one of want.
func waitLevel(t *testing.T, w *store.WriteCoordinator[int], want ...state.Level) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := w.Stats()
		for _, l := range want {
			if st.Level == l {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("level %s, want one of %v: %+v", st.Level, want, st)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestCloseTimesOutWithCount(t *testing.T) {
	sink := newSink()
	open := sink.gated()
	w := newCoordinator(t, sink, store.Options[int]{Capacity: 10, Workers: 1, BatchSize: 1})
	for i := range 6 {
		_ = w.Submit(context.Background(), i)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	err := w.Close(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "6 items not written yet (5 queued, 1 in batches being written)") {
		t.Fatalf("Close = %v", err)
	}
	open()
	// Closing again waits for the same drain: when it returns, all is written.
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := w.Stats(); st.Written != 6 || st.Depth != 0 {
		t.Fatalf("after the second Close: %+v, want all 6 written", st)
	}
}

// eventLog records the events published on a Bus.
type eventLog struct {
	mu     sync.Mutex
	events []feedback.Event
}

func recordEvents(bus *feedback.Bus) *eventLog {
	l := &eventLog{}
	_, _ = bus.Subscribe(context.Background(), func(_ context.Context, e feedback.Event) error {
		l.mu.Lock()
		l.events = append(l.events, e)
		l.mu.Unlock()
		return nil
	})
	return l
}

// all returns the events so far.
func (l *eventLog) all() []feedback.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]feedback.Event(nil), l.events...)
}

// TestEventsAndMetrics: an event at every level change and heartbeat, with
// increasing seq; the seed's metric names.
func TestEventsAndMetrics(t *testing.T) {
	var bus feedback.Bus
	rec := recordEvents(&bus)
	sink := newSink()
	open := sink.gated()
	reg := prometheus.NewRegistry()
	w := newCoordinator(t, sink, store.Options[int]{ID: "store-0", Capacity: 10, Workers: 1, BatchSize: 1, Linger: time.Millisecond,
		Publisher: &bus, Heartbeat: 50 * time.Millisecond, Registerer: reg})
	for i := range 10 { // 1 in the worker, 9 queued: 90% -> hard
		_ = w.Submit(context.Background(), i)
	}
	waitFor(t, func() bool {
		events := rec.all()
		return len(events) > 0 && events[len(events)-1].Level == state.Hard
	})
	// Hard may be reported before the worker takes its item (10 queued):
	// wait for the worker to hold one.
	waitFor(t, func() bool { return counter(t, reg, "coordinator_queue_depth") == 9 })
	want := `
# HELP coordinator_backpressure_hard 1 while the coordinator's backpressure level is hard.
# TYPE coordinator_backpressure_hard gauge
coordinator_backpressure_hard{coordinator_id="store-0"} 1
# HELP coordinator_backpressure_ok 1 while the coordinator's backpressure level is ok.
# TYPE coordinator_backpressure_ok gauge
coordinator_backpressure_ok{coordinator_id="store-0"} 0
# HELP coordinator_backpressure_soft 1 while the coordinator's backpressure level is soft.
# TYPE coordinator_backpressure_soft gauge
coordinator_backpressure_soft{coordinator_id="store-0"} 0
# HELP coordinator_queue_depth Items waiting in the write coordinator's own queue (a stream's lag is coordinator_stream_lag).
# TYPE coordinator_queue_depth gauge
coordinator_queue_depth{coordinator_id="store-0"} 9
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "coordinator_queue_depth",
		"coordinator_backpressure_ok", "coordinator_backpressure_soft", "coordinator_backpressure_hard"); err != nil {
		t.Fatal(err)
	}
	open() // drains: back to ok
	okAt := 0
	waitFor(t, func() bool {
		events := rec.all()
		okAt = len(events)
		return events[len(events)-1].Level == state.OK && events[len(events)-1].QueueSize == 0
	})
	waitFor(t, func() bool { return len(rec.all()) >= okAt+2 }) // two more events (heartbeats, samples) while ok
	events := rec.all()
	seen := map[state.Level]bool{}
	for i, e := range events {
		seen[e.Level] = true
		if e.CoordinatorID != "store-0" || e.Capacity != 10 || e.Validate() != nil {
			t.Fatalf("event %+v", e)
		}
		if i > 0 && e.Seq <= events[i-1].Seq {
			t.Fatalf("seq not increasing: %d then %d", events[i-1].Seq, e.Seq)
		}
	}
	if !seen[state.OK] || !seen[state.Hard] || len(events) < 4 {
		t.Fatalf("events %+v, want ok, hard, and heartbeats", events)
	}
	if n := counter(t, reg, "coordinator_level_transitions_total"); n < 2 {
		t.Fatalf("transitions %v", n)
	}
}

// TestFillSamples: between reports (the start, level changes,
// heartbeats), the coordinator publishes a fill sample every Sample, with
// the queue's depth now, so a policy sees the queue move while the level
// stays; reports and samples share one increasing seq.
func TestFillSamples(t *testing.T) {
	var bus feedback.Bus
	rec := recordEvents(&bus)
	snapshot := rec.all
	sink := newSink()
	open := sink.gated()
	w := newCoordinator(t, sink, store.Options[int]{ID: "store-0", Capacity: 100, Workers: 1, BatchSize: 1, Linger: time.Millisecond,
		Publisher: &bus, Heartbeat: time.Hour, Sample: 10 * time.Millisecond})
	// 1 in the worker, 30 queued: 30%, still ok; only samples show it.
	for i := range 31 {
		_ = w.Submit(context.Background(), i)
	}
	waitFor(t, func() bool {
		ev := snapshot()
		return len(ev) > 1 && ev[len(ev)-1].IsSample() && ev[len(ev)-1].QueueSize == 30 && ev[len(ev)-2].QueueSize == 30
	})
	// The queue held 30 from one event to the next: their mean is 30.
	if ev := snapshot(); ev[len(ev)-1].QueueMean != 30 {
		t.Fatalf("sample %+v after a steady 30: queue_mean %v, want 30", ev[len(ev)-1], ev[len(ev)-1].QueueMean)
	}
	for i := 31; i < 71; i++ { // 70%: soft, a report
		_ = w.Submit(context.Background(), i)
	}
	waitFor(t, func() bool {
		ev := snapshot()
		return len(ev) > 0 && ev[len(ev)-1].IsSample() && ev[len(ev)-1].Level == state.Soft
	})
	open()
	ev := snapshot()
	if ev[0].Kind != feedback.KindReport {
		t.Fatalf("first event %+v, want the start's report", ev[0])
	}
	reports := 0
	for i, e := range ev {
		if e.Kind != feedback.KindReport && e.Kind != feedback.KindSample {
			t.Fatalf("event %+v: kind %q", e, e.Kind)
		}
		if e.Kind == feedback.KindReport {
			reports++
			if i > 0 && e.Level == ev[i-1].Level {
				t.Fatalf("a report without a level change (heartbeat 1h): %+v after %+v", e, ev[i-1])
			}
		}
		if i > 0 && e.Seq <= ev[i-1].Seq {
			t.Fatalf("seq not increasing: %d then %d", ev[i-1].Seq, e.Seq)
		}
	}
	if reports != 2 || len(ev) < 4 {
		t.Fatalf("%d events, %d reports: want the start's and the soft change's, and samples around them", len(ev), reports)
	}
}

func TestOptionErrors(t *testing.T) {
	for _, o := range []store.Options[int]{
		{},
		{ID: "a b"},
		{ID: "x", Capacity: -1},
		{ID: "x", Workers: -2},
		{ID: "x", Attempts: -1},
		{ID: "x", Linger: -time.Second},
		{ID: "x", Heartbeat: -time.Second},
		{ID: "x", Watermarks: store.Watermarks{SoftHigh: 0.9, SoftLow: 0.1, HardHigh: 0.5, HardLow: 0.2}},
	} {
		if _, err := store.New[int](newSink(), o); err == nil {
			t.Errorf("New(%+v) accepted", o)
		}
	}
}

func waitFor(t *testing.T, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		if ok() {
			return
		}
	}
	t.Fatal("condition not reached within 30s")
}

// counter sums every series of a counter family, failing if absent.
func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	v, ok := promutil.Sum(reg, name, nil)
	if !ok {
		t.Fatalf("metric %s not found", name)
	}
	return v
}

// TestLevelFollowsDepthUnderConcurrency: submitters and workers observe the
// queue at once; whatever the interleaving, once the queue is still the
// level and the gauges match its final depth (a stale depth read must never
// win and leave the level behind the queue).
func TestLevelFollowsDepthUnderConcurrency(t *testing.T) {
	for i := range 200 {
		sink := newSink()
		open := sink.gated()
		reg := prometheus.NewRegistry()
		w := newCoordinator(t, sink, store.Options[int]{ID: "c", Capacity: 20, Workers: 4, BatchSize: 1, Linger: time.Millisecond, Registerer: reg})
		var wg sync.WaitGroup
		for g := range 8 { // 21 items: 4 held by the gated workers, 17 queued (85%: hard)
			wg.Go(func() {
				for j := g; j < 21; j += 8 {
					_ = w.Submit(context.Background(), j)
				}
			})
		}
		wg.Wait()
		waitFor(t, func() bool { return w.Stats().Depth == 17 })
		st := w.Stats()
		if st.Level != state.Hard || counter(t, reg, "coordinator_backpressure_hard") != 1 || counter(t, reg, "coordinator_queue_depth") != 17 {
			t.Fatalf("iteration %d: depth %d but level %s (hard gauge %v, depth gauge %v)", i, st.Depth, st.Level,
				counter(t, reg, "coordinator_backpressure_hard"), counter(t, reg, "coordinator_queue_depth"))
		}
		open()
	}
}
