package store

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// A worker takes an item from the queue, fills a batch for up to Linger,
// and writes it: again and again until the sink takes it or, with a
// DeadLetter sink, every Attempts failed writes until that sink takes it.

// work is one worker's loop, until the queue is closed and empty or the
// coordinator aborted.
func (w *WriteCoordinator[T]) work() {
	defer w.workers.Done()
	batch := make([]T, 0, w.o.BatchSize)
	for {
		item, ok := w.next()
		if !ok {
			return
		}
		batch = w.fill(append(batch[:0], item))
		w.observe()
		w.write(batch)
	}
}

// next waits for an item; false once the queue is closed and empty or the
// coordinator aborted.
func (w *WriteCoordinator[T]) next() (item T, ok bool) {
	select {
	case item, ok = <-w.q:
	case <-w.abortCtx.Done():
	}
	return item, ok
}

// fill adds queued items to batch up to BatchSize, waiting at most Linger
// for them.
func (w *WriteCoordinator[T]) fill(batch []T) []T {
	timer := time.NewTimer(w.o.Linger)
	defer timer.Stop()
	for len(batch) < w.o.BatchSize {
		select {
		case it, ok := <-w.q:
			if !ok {
				return batch
			}
			batch = append(batch, it)
		case <-timer.C:
			return batch
		}
	}
	return batch
}

// write delivers batch to the sink, retrying until it succeeds or, with a
// dead-letter sink, until Attempts writes failed and the dead-letter sink
// took it; a batch the dead-letter sink refuses too is retried again,
// never dropped. An abort abandons it (still counted in Unwritten).
func (w *WriteCoordinator[T]) write(batch []T) {
	start := time.Now()
	backoff := w.o.Backoff
	for attempt := 1; w.abortCtx.Err() == nil; attempt++ {
		err := w.try(batch)
		if err == nil {
			w.delivered(batch, attempt, start)
			return
		}
		if w.failed(batch, attempt, err) {
			return
		}
		w.pause(backoff)
		backoff = min(2*backoff, 2*time.Second)
	}
}

// try makes one call to the sink, bounded by WriteTimeout.
func (w *WriteCoordinator[T]) try(batch []T) error {
	ctx, cancel := context.WithTimeout(w.abortCtx, w.o.WriteTimeout)
	defer cancel()
	return w.sink.Write(ctx, batch)
}

// delivered counts batch as written at its attempt-th write, begun at
// start.
func (w *WriteCoordinator[T]) delivered(batch []T, attempt int, start time.Time) {
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
}

// failed counts the attempt-th failed write of batch and, when it is the
// turn of the dead-letter sink, hands batch to it. It reports whether the
// batch left (dead-lettered); else it is retried.
func (w *WriteCoordinator[T]) failed(batch []T, attempt int, err error) (left bool) {
	w.writeErrors.Add(1)
	w.m.writeErrors.Inc()
	if attempt == 1 {
		w.failing.Add(1)
		w.log.Warn("sink write failed; retrying", "items", len(batch), "err", err)
	}
	w.observe()
	if w.o.DeadLetter == nil || attempt%w.o.Attempts != 0 || !w.deadLetter(batch, err) {
		return false
	}
	w.failing.Add(-1)
	w.observe()
	return true
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

// leave counts batch as leaving the coordinator through counter.
func (w *WriteCoordinator[T]) leave(batch []T, n *atomic.Int64, c prometheus.Counter) {
	n.Add(int64(len(batch)))
	c.Add(float64(len(batch)))
	w.unwritten.Add(-int64(len(batch)))
}

// pause waits d between two writes of a batch, or less once the
// coordinator is aborted.
func (w *WriteCoordinator[T]) pause(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-w.abortCtx.Done():
	}
}
