package store

import (
	"sync"
	"time"

	"github.com/sluice-dev/sluice/pkg/state"
)

// pressure is a coordinator's measured depth (queue plus backlog) and its
// levels, and the depth's time integral since the last event. Its mutex
// also orders the re-evaluations (see observe); every method but snapshot
// and take is called with it held.
type pressure struct {
	mu         sync.Mutex
	queueLevel state.Level // the watermarks' level (their hysteresis needs it alone)
	level      state.Level // the published level: queueLevel raised by a failing sink
	depth      int         // queue plus backlog at the last re-evaluation
	maxDepth   int         // the highest depth re-evaluated
	// The depth's integral since the last event (item-seconds) and when
	// the depth last changed and the last event went: an event's QueueMean.
	area             float64
	depthAt, eventAt time.Time
}

// newPressure returns the pressure of a coordinator started at now: ok,
// nothing queued.
func newPressure(now time.Time) pressure {
	return pressure{queueLevel: state.OK, level: state.OK, depthAt: now, eventAt: now}
}

// setDepth records that the depth is depth from now on.
func (p *pressure) setDepth(depth int, now time.Time) {
	p.area += float64(p.depth) * now.Sub(p.depthAt).Seconds()
	p.depth, p.depthAt = depth, now
	p.maxDepth = max(p.maxDepth, depth)
}

// next re-evaluates the levels at fill (depth over capacity): the
// watermarks' level, raised to floor when floor is higher. It returns the
// published level.
func (p *pressure) next(wm Watermarks, fill float64, floor state.Level) state.Level {
	p.queueLevel = wm.Next(p.queueLevel, fill)
	p.level = p.queueLevel
	if floor.Rank() > p.level.Rank() {
		p.level = floor
	}
	return p.level
}

// snapshot returns the level, the depth and the highest depth.
func (p *pressure) snapshot() (level state.Level, depth, maxDepth int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.level, p.depth, p.maxDepth
}

// take returns the level and the depth at now, and the depth's
// time-weighted mean since the previous take (the depth itself when no
// time has passed), and starts the next period at now.
func (p *pressure) take(now time.Time) (level state.Level, depth int, mean float64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.setDepth(p.depth, now)
	mean = float64(p.depth)
	if span := now.Sub(p.eventAt).Seconds(); span > 0 {
		mean = p.area / span
	}
	p.area, p.eventAt = 0, now
	return p.level, p.depth, mean
}

// observe re-evaluates the level. The depth is read under the lock: every
// change of the queue is followed by an observe, so the last observe to take
// the lock sees the latest depth, and a stale read can never leave the level
// (or the gauges) behind the queue.
func (w *WriteCoordinator[T]) observe() {
	w.p.mu.Lock()
	queued, depth := w.measure()
	w.p.setDepth(depth, time.Now())
	w.m.depth.Set(float64(queued)) // the queue alone: a backlog is shared, and exported by its owner
	prev := w.p.level
	next := w.p.next(w.o.Watermarks, float64(depth)/float64(w.o.Capacity), w.sinkLevel())
	if next != prev {
		w.transitions.Add(1)
		w.m.transition(prev, next)
	}
	w.p.mu.Unlock()
	if next != prev {
		w.notify()
	}
}

// measure returns the queue's length and the depth: the queue plus the
// Backlog.
func (w *WriteCoordinator[T]) measure() (queued, depth int) {
	queued = len(w.q)
	if w.o.Backlog == nil {
		return queued, queued
	}
	return queued, queued + max(0, w.o.Backlog())
}

// sinkLevel is the least level the sink imposes: ok while no batch is
// failing, soft while one is, hard once the sink has gone HardAfter
// without a successful write.
func (w *WriteCoordinator[T]) sinkLevel() state.Level {
	switch {
	case w.failing.Load() == 0:
		return state.OK
	case time.Since(time.Unix(0, w.lastWrite.Load())) >= w.o.HardAfter:
		return state.Hard
	}
	return state.Soft
}

// notify tells the monitor that the level changed.
func (w *WriteCoordinator[T]) notify() {
	select {
	case w.changed <- struct{}{}:
	default: // the monitor will publish the latest state anyway
	}
}
