// Package store is the write side of sluice: a WriteCoordinator queues items
// for the user's store, writes them in batches with retries, measures its
// queue against watermarks, and publishes the resulting pressure level (ok,
// soft, hard) through a feedback.Publisher so that the pipeline upstream
// slows down. It never imports the limiter.
package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/internal/opts"
	"github.com/sluice-dev/sluice/pkg/keyspace"
	"github.com/sluice-dev/sluice/pkg/state"
)

// Sink writes a batch to the user's store. A returned error means nothing of
// the batch should be assumed written: the batch is retried whole.
type Sink[T any] interface {
	Write(ctx context.Context, batch []T) error
}

// SinkFunc adapts a function to Sink.
type SinkFunc[T any] func(ctx context.Context, batch []T) error

// Write calls f.
func (f SinkFunc[T]) Write(ctx context.Context, batch []T) error { return f(ctx, batch) }

// ErrClosed is returned by Submit after Close.
var ErrClosed = errors.New("store: write coordinator closed")

// Options configure a WriteCoordinator. Only ID is required: every other
// zero field takes the default its comment gives (nil Publisher: publish
// nothing; nil Registerer: no metrics).
type Options[T any] struct {
	// ID names the coordinator in events, metrics and Redis keys: 1 to 64 of
	// [A-Za-z0-9_.-]. Required.
	ID string
	// Capacity is the queue's size; default 10000.
	Capacity int
	// Workers write batches concurrently; default 4.
	Workers int
	// BatchSize is the most items per write; default 100.
	BatchSize int
	// Linger is how long a worker waits to fill a batch before writing a
	// smaller one; default 50ms.
	Linger time.Duration
	// Watermarks set the pressure levels; default DefaultWatermarks.
	Watermarks Watermarks
	// Publisher receives a report at every level change and every
	// Heartbeat, and a fill sample every Sample between them; nil
	// publishes nothing.
	Publisher feedback.Publisher
	// Heartbeat is the period of reports while the level stays; default
	// 2s. Keep it well under the feedback handler's coordinator TTL.
	Heartbeat time.Duration
	// Backoff is the wait before the first retry of a failed batch, doubled
	// at each further retry up to 2s; default 50ms. Without DeadLetter a
	// batch is retried until the sink takes it: nothing is given up.
	Backoff time.Duration
	// WriteTimeout bounds each call to the sink; default 30s.
	WriteTimeout time.Duration
	// HardAfter is how long the sink may go without a successful write,
	// while a batch is failing, before the level is hard: a store that
	// cannot write is a store under pressure. While any batch is failing
	// (retried, not yet written nor dead-lettered) the level is at least
	// soft; one batch the sink always refuses keeps it soft, not hard, as
	// long as other writes succeed. Default 1s.
	HardAfter time.Duration
	// DeadLetter, when set, receives the batches that still fail after
	// Attempts writes (an explicit choice: they are counted, and leave the
	// queue); nil (the default) retries every batch until it is written. A
	// batch the dead-letter sink refuses stays: it gets Attempts more writes,
	// then goes to the dead-letter sink again.
	DeadLetter Sink[T]
	// Attempts is how many writes a batch gets before it goes to DeadLetter;
	// default 4. Ignored without DeadLetter.
	Attempts int
	// Backlog, when set, returns how many items wait for this coordinator
	// outside its queue (a stream consumer's group lag). The watermarks
	// measure the queue plus the backlog; it is read at every re-evaluation
	// (every queue change and every Sample), so it must be cheap.
	Backlog func() int
	// Sample is how often the level is re-evaluated when the queue does not
	// change (the backlog moved, the sink keeps failing), and a fill sample
	// (an event of kind feedback.KindSample) is published when no report
	// was; default 250ms. The samples are the signal a controlling policy
	// (feedback.PIPolicy) follows between level changes.
	Sample time.Duration
	// Registerer receives the metrics; nil registers none.
	Registerer prometheus.Registerer
	// Logger receives failed writes and publications; default slog.Default().
	Logger *slog.Logger
}

// Validate returns the error New would return for these options (naming
// the field and its range), without starting anything.
func (o Options[T]) Validate() error { return o.setDefaults() }

func (o *Options[T]) setDefaults() error {
	if !keyspace.ValidName(o.ID) {
		return fmt.Errorf("store: id=%q: must be %s", o.ID, keyspace.NameRule)
	}
	if err := opts.Check(
		opts.Positive("capacity", &o.Capacity, 10000),
		opts.Positive("workers", &o.Workers, 4),
		opts.Positive("batch_size", &o.BatchSize, 100),
		opts.Positive("attempts", &o.Attempts, 4),
		opts.Positive("linger", &o.Linger, 50*time.Millisecond),
		opts.Positive("heartbeat", &o.Heartbeat, 2*time.Second),
		opts.Positive("backoff", &o.Backoff, 50*time.Millisecond),
		opts.Positive("write_timeout", &o.WriteTimeout, 30*time.Second),
		opts.Positive("hard_after", &o.HardAfter, time.Second),
		opts.Positive("sample", &o.Sample, 250*time.Millisecond),
	); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	switch {
	case o.Capacity > 1e9:
		return fmt.Errorf("store: capacity=%d: must be in [1, 1000000000]", o.Capacity)
	case o.Workers > 1024:
		return fmt.Errorf("store: workers=%d: must be in [1, 1024]", o.Workers)
	}
	if o.Watermarks == (Watermarks{}) {
		o.Watermarks = DefaultWatermarks
	}
	if err := o.Watermarks.Validate(); err != nil {
		return err
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return nil
}

// WriteCoordinator is a bounded queue in front of a Sink, written by
// Workers in batches. It never drops an item silently: Submit blocks while
// the queue is full (bounded by its context); a failed write is retried with
// backoff until the sink takes it, or, only when a DeadLetter sink is set,
// handed to it after Attempts writes and counted; Close drains the queue.
// Its pressure level follows the queue's fill (plus the Backlog) through the
// watermarks, and is at least soft while the sink fails and hard once it has
// failed for HardAfter; it is published at every change and every heartbeat.
// Safe for concurrent use.
type WriteCoordinator[T any] struct {
	sink Sink[T]
	o    Options[T]
	log  *slog.Logger
	m    *metrics

	mu      sync.RWMutex // Submit holds it shared while sending; Close exclusively to close q
	closed  bool
	closing chan struct{} // closed first by Close: releases Submits blocked on a full queue
	q       chan T

	levelMu    sync.Mutex
	queueLevel state.Level   // the watermarks' level (their hysteresis needs it alone)
	level      state.Level   // the published level: queueLevel raised by a failing sink
	depth      int           // queue plus backlog at the last re-evaluation
	changed    chan struct{} // a level change for the monitor to publish (capacity 1)
	// The depth's integral since the last event (item-seconds) and when
	// the depth last changed and the last event went: an event's QueueMean.
	area             float64
	depthAt, eventAt time.Time

	lastWrite atomic.Int64 // UnixNano of the last successful sink write (or of New)
	failing   atomic.Int64 // batches that failed and have not left yet (written or dead-lettered)
	unwritten atomic.Int64 // submitted, neither written nor dead-lettered: queued or in a batch

	seq                             atomic.Uint64
	maxDepth                        atomic.Int64
	written, deadLettered, blocked  atomic.Int64
	transitions, submitted, dlFails atomic.Int64
	writeErrors                     atomic.Int64

	closeOnce sync.Once
	done      chan struct{} // closed when Close has drained and published the last event
	workers   sync.WaitGroup
	stop      chan struct{}
	monitor   chan struct{} // closed when the monitor has published its last event

	abortCtx context.Context // canceled by Abort: ends sink calls, retries, the monitor
	abort    context.CancelFunc
}

// New starts a WriteCoordinator writing to sink.
func New[T any](sink Sink[T], o Options[T]) (*WriteCoordinator[T], error) {
	if sink == nil {
		return nil, errors.New("store: a Sink is required")
	}
	if err := o.setDefaults(); err != nil {
		return nil, err
	}
	m, err := newMetrics(o.Registerer, o.ID)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	w := &WriteCoordinator[T]{
		sink: sink, o: o, m: m, depthAt: now, eventAt: now,
		log:        o.Logger.With("component", "store", "coordinator", o.ID),
		q:          make(chan T, o.Capacity),
		queueLevel: state.OK,
		level:      state.OK,
		changed:    make(chan struct{}, 1),
		stop:       make(chan struct{}),
		monitor:    make(chan struct{}),
		closing:    make(chan struct{}),
		done:       make(chan struct{}),
	}
	w.abortCtx, w.abort = context.WithCancel(context.Background())
	// Sequence numbers keep increasing across restarts: they start at the
	// start time in microseconds.
	w.seq.Store(uint64(time.Now().UnixMicro()))
	w.lastWrite.Store(time.Now().UnixNano())
	m.setLevel(state.OK)
	for range o.Workers {
		w.workers.Add(1)
		go w.work()
	}
	go w.run()
	return w, nil
}

// Submit queues item. While the queue is full it blocks until there is room
// or ctx ends (then it returns ctx.Err() and the item is not queued). After
// Close, or when Close begins while it waits, it returns ErrClosed (the item
// is not queued).
func (w *WriteCoordinator[T]) Submit(ctx context.Context, item T) error {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.closed {
		return ErrClosed
	}
	w.unwritten.Add(1)
	select {
	case w.q <- item:
	default:
		w.blocked.Add(1)
		w.m.blocked.Inc()
		select {
		case w.q <- item:
		case <-ctx.Done():
			w.unwritten.Add(-1)
			return ctx.Err()
		case <-w.closing:
			w.unwritten.Add(-1)
			return ErrClosed
		}
	}
	w.submitted.Add(1)
	w.observe()
	return nil
}

// observe re-evaluates the level. The depth is read under the lock: every
// change of the queue is followed by an observe, so the last observe to take
// the lock sees the latest depth, and a stale read can never leave the level
// (or the gauges) behind the queue.
func (w *WriteCoordinator[T]) observe() {
	w.levelMu.Lock()
	queued := len(w.q)
	depth := queued
	if w.o.Backlog != nil {
		depth += max(0, w.o.Backlog())
	}
	now := time.Now()
	w.area += float64(w.depth) * now.Sub(w.depthAt).Seconds()
	w.depth, w.depthAt = depth, now
	if int64(depth) > w.maxDepth.Load() {
		w.maxDepth.Store(int64(depth))
	}
	w.m.depth.Set(float64(queued)) // the queue alone: a backlog is shared, and exported by its owner
	w.queueLevel = w.o.Watermarks.Next(w.queueLevel, float64(depth)/float64(w.o.Capacity))
	next := w.queueLevel
	if w.failing.Load() > 0 {
		sinkLevel := state.Soft
		if time.Since(time.Unix(0, w.lastWrite.Load())) >= w.o.HardAfter {
			sinkLevel = state.Hard
		}
		if sinkLevel.Rank() > next.Rank() {
			next = sinkLevel
		}
	}
	prev := w.level
	w.level = next
	if next != prev {
		w.transitions.Add(1)
		w.m.transition(prev, next)
	}
	w.levelMu.Unlock()
	if next == prev {
		return
	}
	select {
	case w.changed <- struct{}{}:
	default: // the monitor will publish the latest state anyway
	}
}

func (w *WriteCoordinator[T]) work() {
	defer w.workers.Done()
	batch := make([]T, 0, w.o.BatchSize)
	for {
		var item T
		var ok bool
		select {
		case item, ok = <-w.q:
		case <-w.abortCtx.Done():
			return
		}
		if !ok {
			return
		}
		batch = append(batch[:0], item)
		timer := time.NewTimer(w.o.Linger)
	fill:
		for len(batch) < w.o.BatchSize {
			select {
			case it, ok := <-w.q:
				if !ok {
					break fill
				}
				batch = append(batch, it)
			case <-timer.C:
				break fill
			}
		}
		timer.Stop()
		w.observe()
		w.write(batch)
	}
}

// write delivers batch to the sink, retrying until it succeeds or, with a
// dead-letter sink, until Attempts writes failed and the dead-letter sink
// took it; a batch the dead-letter sink refuses too is retried again,
// never dropped.
func (w *WriteCoordinator[T]) write(batch []T) {
	start := time.Now()
	backoff := w.o.Backoff
	for attempt := 1; ; attempt++ {
		if w.abortCtx.Err() != nil {
			return // abandoned: still counted in Unwritten
		}
		ctx, cancel := context.WithTimeout(w.abortCtx, w.o.WriteTimeout)
		err := w.sink.Write(ctx, batch)
		cancel()
		if err == nil {
			w.lastWrite.Store(time.Now().UnixNano())
			if attempt > 1 {
				w.failing.Add(-1)
				w.log.Info("a failed batch is written", "attempt", attempt)
			}
			w.leave(batch, &w.written, w.m.written)
			w.m.batch.Observe(time.Since(start).Seconds())
			// The write can lower the level only while the sink counts as
			// failing; otherwise the queue's own observes suffice.
			if attempt > 1 || w.failing.Load() > 0 {
				w.observe()
			}
			return
		}
		w.writeErrors.Add(1)
		w.m.writeErrors.Inc()
		if attempt == 1 {
			w.failing.Add(1)
			w.log.Warn("sink write failed; retrying", "items", len(batch), "err", err)
		}
		w.observe()
		if w.o.DeadLetter != nil && attempt%w.o.Attempts == 0 && w.deadLetter(batch, err) {
			w.failing.Add(-1)
			w.observe()
			return
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-w.abortCtx.Done():
			t.Stop()
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// leave counts batch as leaving the coordinator through counter.
func (w *WriteCoordinator[T]) leave(batch []T, n *atomic.Int64, c prometheus.Counter) {
	n.Add(int64(len(batch)))
	c.Add(float64(len(batch)))
	w.unwritten.Add(-int64(len(batch)))
}

// deadLetter hands batch to the dead-letter sink; false when it refused
// (the batch stays, and is retried).
func (w *WriteCoordinator[T]) deadLetter(batch []T, cause error) bool {
	ctx, cancel := context.WithTimeout(w.abortCtx, w.o.WriteTimeout)
	defer cancel()
	if err := w.o.DeadLetter.Write(ctx, batch); err != nil {
		w.dlFails.Add(int64(len(batch)))
		w.log.Error("dead-letter sink failed too; the batch stays and is retried", "items", len(batch), "err", err, "cause", cause)
		return false
	}
	w.leave(batch, &w.deadLettered, w.m.deadLettered)
	w.log.Warn("batch dead-lettered after retries", "items", len(batch), "attempts", w.o.Attempts, "err", cause)
	return true
}

// run publishes a report at the start, at every level change, every
// heartbeat and when the coordinator closes; every Sample it re-evaluates
// the level and publishes a fill sample, unless a report went out since the
// last sample.
func (w *WriteCoordinator[T]) run() {
	defer close(w.monitor)
	beat := time.NewTicker(w.o.Heartbeat)
	defer beat.Stop()
	sample := time.NewTicker(w.o.Sample)
	defer sample.Stop()
	w.publish(feedback.KindReport)
	reported := true // since the last sample
	for {
		select {
		case <-sample.C:
			w.observe()
			if reported {
				reported = false
				continue
			}
			if len(w.changed) > 0 {
				continue // a report is due: it says the same, and is kept
			}
			w.publish(feedback.KindSample)
			continue
		case <-w.changed:
		case <-beat.C:
		case <-w.stop:
			w.publish(feedback.KindReport)
			return
		case <-w.abortCtx.Done():
			return
		}
		w.publish(feedback.KindReport)
		reported = true
	}
}

// event returns the coordinator's current state as a pressure event of
// kind, with the next sequence number. Its queue size is the measured depth
// (queue plus backlog) and its queue mean that depth's time-weighted mean
// since the previous event, both capped at the capacity.
func (w *WriteCoordinator[T]) event(kind string) feedback.Event {
	w.levelMu.Lock()
	now := time.Now()
	level, depth := w.level, w.depth
	area := w.area + float64(depth)*now.Sub(w.depthAt).Seconds()
	mean := float64(depth)
	if span := now.Sub(w.eventAt).Seconds(); span > 0 {
		mean = area / span
	}
	w.area, w.depthAt, w.eventAt = 0, now, now
	w.levelMu.Unlock()
	return feedback.Event{
		CoordinatorID: w.o.ID, QueueSize: min(depth, w.o.Capacity), Capacity: w.o.Capacity,
		Level: level, Seq: w.seq.Add(1), TS: now, Kind: kind,
		QueueMean: min(math.Round(mean*10)/10, float64(w.o.Capacity)),
	}
}

func (w *WriteCoordinator[T]) publish(kind string) {
	if w.o.Publisher == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), w.o.Heartbeat)
	defer cancel()
	e := w.event(kind)
	if err := w.o.Publisher.Publish(ctx, e); err != nil {
		w.m.publishErrors.Inc()
		w.log.Warn("publishing pressure failed", "level", e.Level, "err", err)
	}
}

// Close stops accepting items, waits until every queued item is written (or
// dead-lettered), publishes a last event and returns. If ctx ends first it
// returns an error saying how many items were not written yet (queued, or
// in a batch being written or retried); the workers go on in the
// background until they are done or Abort is called. Close may be called
// again (after a timeout, say): every call waits for the same drain.
func (w *WriteCoordinator[T]) Close(ctx context.Context) error {
	w.closeOnce.Do(func() {
		close(w.closing)
		w.mu.Lock() // waits for Submits in flight
		w.closed = true
		close(w.q)
		w.mu.Unlock()
		go func() {
			w.workers.Wait()
			w.observe()
			close(w.stop)
			<-w.monitor
			close(w.done)
		}()
	})
	select {
	case <-w.done:
		return nil
	case <-ctx.Done():
		n, queued := w.unwritten.Load(), len(w.q)
		return fmt.Errorf("store: close: %d items not written yet (%d queued, %d in batches being written): %w",
			n, queued, n-int64(queued), ctx.Err())
	}
}

// Abort abandons what Close could not drain: sink calls in flight are
// canceled, nothing is retried any more, the workers and the monitor stop
// (no more events). The items left are counted in Stats.Unwritten: an
// in-memory caller has lost them (Close's error said how many); a stream
// consumer's stay pending in Redis. Use it after Close timed out; Abort
// before Close also closes. Calls after the first do nothing.
func (w *WriteCoordinator[T]) Abort() {
	w.abort()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = w.Close(ctx) // stops intake; returns at once
}

// Stats is a snapshot of a coordinator's counters.
type Stats struct {
	Capacity       int
	Depth          int // queue plus backlog at the last re-evaluation
	MaxDepth       int
	Level          state.Level
	Submitted      int64
	Written        int64
	Unwritten      int64 // submitted, not yet written nor dead-lettered
	DeadLettered   int64 // items the dead-letter sink took
	DeadLetterErrs int64 // items the dead-letter sink refused (each refusal counted; they stay and are retried)
	WriteErrors    int64 // failed sink writes, each retry counted
	SubmitsBlocked int64 // Submit calls that found the queue full
	Transitions    int64 // level changes
}

// Stats returns the counters so far.
func (w *WriteCoordinator[T]) Stats() Stats {
	w.levelMu.Lock()
	level, depth := w.level, w.depth
	w.levelMu.Unlock()
	return Stats{
		Capacity: w.o.Capacity, Depth: depth, MaxDepth: int(w.maxDepth.Load()), Level: level,
		Submitted: w.submitted.Load(), Written: w.written.Load(), Unwritten: w.unwritten.Load(),
		DeadLettered: w.deadLettered.Load(), DeadLetterErrs: w.dlFails.Load(), WriteErrors: w.writeErrors.Load(),
		SubmitsBlocked: w.blocked.Load(), Transitions: w.transitions.Load(),
	}
}
