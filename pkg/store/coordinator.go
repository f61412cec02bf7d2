package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-dev/sluice/pkg/state"
)

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

	p       pressure      // depth and level, re-evaluated by observe
	changed chan struct{} // a level change for the monitor to publish (capacity 1)

	lastWrite atomic.Int64 // UnixNano of the last successful sink write (or of New)
	failing   atomic.Int64 // batches that failed and have not left yet (written or dead-lettered)
	unwritten atomic.Int64 // submitted, neither written nor dead-lettered: queued or in a batch

	seq                             atomic.Uint64
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
	w := &WriteCoordinator[T]{
		sink: sink, o: o, m: m,
		log:     o.Logger.With("component", "store", "coordinator", o.ID),
		q:       make(chan T, o.Capacity),
		p:       newPressure(time.Now()),
		changed: make(chan struct{}, 1),
		stop:    make(chan struct{}),
		monitor: make(chan struct{}),
		closing: make(chan struct{}),
		done:    make(chan struct{}),
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
	if err := w.enqueue(ctx, item); err != nil {
		w.unwritten.Add(-1)
		return err
	}
	w.submitted.Add(1)
	w.observe()
	return nil
}

// enqueue sends item to the queue; while the queue is full it waits, and
// counts the wait, until there is room, ctx ends or Close begins.
func (w *WriteCoordinator[T]) enqueue(ctx context.Context, item T) error {
	select {
	case w.q <- item:
		return nil
	default:
	}
	w.blocked.Add(1)
	w.m.blocked.Inc()
	select {
	case w.q <- item:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-w.closing:
		return ErrClosed
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
	level, depth, maxDepth := w.p.snapshot()
	return Stats{
		Capacity: w.o.Capacity, Depth: depth, MaxDepth: maxDepth, Level: level,
		Submitted: w.submitted.Load(), Written: w.written.Load(), Unwritten: w.unwritten.Load(),
		DeadLettered: w.deadLettered.Load(), DeadLetterErrs: w.dlFails.Load(), WriteErrors: w.writeErrors.Load(),
		SubmitsBlocked: w.blocked.Load(), Transitions: w.transitions.Load(),
	}
}
