package store

import (
	"context"
	"math"
	"time"

	"github.com/sluice-dev/sluice/pkg/feedback"
)

// The monitor is the one goroutine that publishes a coordinator's events:
// reports (feedback.KindReport) at the start, at every level change, every
// Heartbeat and at the close; fill samples (feedback.KindSample) every
// Sample between them.

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
			w.sample(reported)
			reported = false
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

// sample re-evaluates the level and publishes a fill sample, unless a
// report went out since the last sample or one is due.
func (w *WriteCoordinator[T]) sample(reported bool) {
	w.observe()
	if reported || len(w.changed) > 0 {
		return // a due report says the same, and is kept
	}
	w.publish(feedback.KindSample)
}

// event returns the coordinator's current state as a pressure event of
// kind, with the next sequence number. Its queue size is the measured depth
// (queue plus backlog) and its queue mean that depth's time-weighted mean
// since the previous event, both capped at the capacity.
func (w *WriteCoordinator[T]) event(kind string) feedback.Event {
	now := time.Now()
	level, depth, mean := w.p.take(now)
	return feedback.Event{
		CoordinatorID: w.o.ID, QueueSize: min(depth, w.o.Capacity), Capacity: w.o.Capacity,
		Level: level, Seq: w.seq.Add(1), TS: now, Kind: kind,
		QueueMean: min(math.Round(mean*10)/10, float64(w.o.Capacity)),
	}
}

// publish sends an event of kind to the Publisher, bounded by Heartbeat;
// a failure is counted and logged.
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
