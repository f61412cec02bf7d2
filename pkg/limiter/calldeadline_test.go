package limiter

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// TestCallDeadlinesExpire: with one timer for all, every call not finished
// ends at its own deadline (never before it), in the order they began,
// with DeadlineExceeded as context.WithTimeout's would; finished calls end
// with Canceled and never expire; the timer is set again for calls that
// begin after the list was empty and after stop.
func TestCallDeadlinesExpire(t *testing.T) {
	w := &callDeadlines{timeout: 30 * time.Millisecond}
	for round := range 3 {
		var calls []*callCtx
		for i := range 6 {
			c := w.start(context.Background())
			if dl, ok := c.Deadline(); !ok || dl.IsZero() {
				t.Fatalf("round %d call %d: no deadline", round, i)
			}
			calls = append(calls, c)
			time.Sleep(time.Millisecond) // deadlines apart
		}
		w.finish(calls[1])
		w.finish(calls[4])
		for i, c := range calls {
			<-c.Done() // every call ends, expired or finished
			dl, _ := c.Deadline()
			switch err := c.Err(); {
			case i == 1 || i == 4:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("round %d: finished call %d: Err %v, want Canceled", round, i, err)
				}
			case !errors.Is(err, context.DeadlineExceeded):
				t.Errorf("round %d: call %d: Err %v, want DeadlineExceeded", round, i, err)
			case time.Now().Before(dl):
				t.Errorf("round %d: call %d ended before its deadline", round, i)
			case !errors.Is(context.Cause(c), context.DeadlineExceeded):
				t.Errorf("round %d: call %d: Cause %v", round, i, context.Cause(c))
			}
			w.finish(c) // as call does after an expiry: nothing changes
			if i != 1 && i != 4 && !errors.Is(c.Err(), context.DeadlineExceeded) {
				t.Errorf("round %d: call %d: Err %v after finish, want DeadlineExceeded still", round, i, c.Err())
			}
		}
		w.mu.Lock()
		if w.head != nil || w.tail != nil {
			t.Errorf("round %d: calls left listed", round)
		}
		w.mu.Unlock()
		if round == 1 {
			w.stop()
		}
	}
}

// TestCallDeadlinesCaller: the caller's cancellation reaches the call at
// once (Canceled, not DeadlineExceeded), its values are the call's, and
// the call's deadline is CallTimeout after its start.
func TestCallDeadlinesCaller(t *testing.T) {
	w := &callDeadlines{timeout: time.Hour}
	type key struct{}
	parent, cancel := context.WithCancel(context.WithValue(context.Background(), key{}, "v"))
	before := time.Now()
	c := w.start(parent)
	if c.Value(key{}) != "v" {
		t.Error("the caller's values are lost")
	}
	if dl, _ := c.Deadline(); dl.Before(before.Add(time.Hour)) || dl.After(time.Now().Add(time.Hour)) {
		t.Errorf("deadline %v, want CallTimeout after the start", dl)
	}
	cancel()
	<-c.Done()
	if !errors.Is(c.Err(), context.Canceled) {
		t.Errorf("Err %v after the caller's cancel, want Canceled", c.Err())
	}
	w.finish(c)
	w.stop()
	if w.armed {
		t.Error("stop left the timer set with no call in flight")
	}
}

// TestCallDeadlinesConcurrent: calls that begin and finish from many
// goroutines while others expire leave the list empty and every call
// ended (run with -race).
func TestCallDeadlinesConcurrent(t *testing.T) {
	w := &callDeadlines{timeout: 2 * time.Millisecond}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 300 {
				c := w.start(context.Background())
				if (g+i)%3 == 0 {
					<-c.Done() // let it expire
				}
				w.finish(c)
				if c.Err() == nil {
					t.Error("a finished call is not ended")
					return
				}
			}
		})
	}
	wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.head != nil || w.tail != nil {
		t.Error("calls left listed")
	}
}
