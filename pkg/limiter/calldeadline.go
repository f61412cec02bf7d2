package limiter

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// callDeadlines ends a Limiter's calls to Redis at their CallTimeout with
// one timer for all the calls in flight, where context.WithTimeout starts
// and stops a timer of its own per call: at one caller that timer cost a
// decision more client CPU than anything else sluice does (BENCHMARKS.md,
// "The plain path alone, lease off"). Every call's deadline is its start
// plus the same CallTimeout, so the calls in flight, in the order they
// began, are in the order of their deadlines: a list, with the timer set
// no later than its head's deadline.
type callDeadlines struct {
	timeout time.Duration

	mu         sync.Mutex
	head, tail *callCtx
	timer      *time.Timer // runs expire; nil until the first call
	armed      bool        // timer is set (always while the list is not empty)
}

// callCtx is one call's context: the caller's, with a cancel of its own
// (context.WithCancelCause: its caller's cancellation reaches it as
// WithTimeout's would), and a deadline CallTimeout after it began, at
// which callDeadlines cancels it. Its Err is then DeadlineExceeded, as
// WithTimeout's.
type callCtx struct {
	context.Context
	cancel     context.CancelCauseFunc
	deadline   time.Time
	expired    atomic.Bool // ended by its deadline
	prev, next *callCtx    // in callDeadlines' list, while listed
	listed     bool
}

// Deadline is the call's: never after the caller's (start is used only
// when the caller's deadline is later, or none).
func (c *callCtx) Deadline() (time.Time, bool) { return c.deadline, true }

// Err is DeadlineExceeded once the deadline ended the call, else the
// caller's context's error (or Canceled once the call is over).
func (c *callCtx) Err() error {
	err := c.Context.Err()
	if err != nil && c.expired.Load() {
		return context.DeadlineExceeded
	}
	return err
}

// start begins a call under parent, whose own deadline, if any, is more
// than the timeout away; finish ends it.
func (w *callDeadlines) start(parent context.Context) *callCtx {
	ctx, cancel := context.WithCancelCause(parent)
	c := &callCtx{Context: ctx, cancel: cancel}
	w.mu.Lock()
	c.deadline = time.Now().Add(w.timeout) // under mu: the list stays in deadline order
	c.prev, c.listed = w.tail, true
	if w.tail != nil {
		w.tail.next = c
	} else {
		w.head = c
	}
	w.tail = c
	if !w.armed { // the list was empty: c is the head
		w.armed = true
		if w.timer == nil {
			w.timer = time.AfterFunc(w.timeout, w.expire)
		} else {
			w.timer.Reset(w.timeout)
		}
	}
	w.mu.Unlock()
	return c
}

// finish ends call c (its context is canceled, as WithTimeout's cancel
// does).
func (w *callDeadlines) finish(c *callCtx) {
	w.mu.Lock()
	w.unlink(c)
	w.mu.Unlock()
	c.cancel(context.Canceled)
}

// expire cancels the calls whose deadline has passed and sets the timer
// for the next.
func (w *callDeadlines) expire() {
	now := time.Now()
	var over []*callCtx
	w.mu.Lock()
	for w.head != nil && !now.Before(w.head.deadline) {
		c := w.head
		w.unlink(c)
		over = append(over, c)
	}
	w.armed = w.head != nil
	if w.armed {
		w.timer.Reset(w.head.deadline.Sub(now))
	}
	w.mu.Unlock()
	for _, c := range over {
		if c.Context.Err() == nil {
			c.expired.Store(true)
			c.cancel(context.DeadlineExceeded)
		}
	}
}

// stop stops the timer when no call is in flight (Close); a call that
// begins later sets it again.
func (w *callDeadlines) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.head == nil && w.armed {
		w.timer.Stop()
		w.armed = false
	}
}

// unlink takes c off the list, if it is on it. The caller holds mu.
func (w *callDeadlines) unlink(c *callCtx) {
	if !c.listed {
		return
	}
	if c.prev != nil {
		c.prev.next = c.next
	} else {
		w.head = c.next
	}
	if c.next != nil {
		c.next.prev = c.prev
	} else {
		w.tail = c.prev
	}
	c.prev, c.next, c.listed = nil, nil, false
}
