package feedback

import (
	"context"
	"errors"
	"sync"
)

// Publisher sends pressure events on their way. A write coordinator publishes
// through one; Bus, RedisPublisher, HTTPClient and Handler are Publishers.
type Publisher interface {
	Publish(ctx context.Context, e Event) error
}

// Deliver is a subscriber's function: it receives each event.
type Deliver func(ctx context.Context, e Event) error

// Bus is the in-process bus, for a monolith: Publish hands the event to
// every subscriber in turn, in the publisher's goroutine, and returns their
// errors joined. The zero value is ready to use.
type Bus struct {
	mu   sync.RWMutex
	subs map[int]Deliver
	next int
}

// Subscribe adds fn; the returned function removes it.
func (b *Bus) Subscribe(fn Deliver) (unsubscribe func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.subs == nil {
		b.subs = map[int]Deliver{}
	}
	id := b.next
	b.next++
	b.subs[id] = fn
	return func() {
		b.mu.Lock()
		delete(b.subs, id)
		b.mu.Unlock()
	}
}

// Publish validates e and delivers it to every subscriber, even when one fails.
func (b *Bus) Publish(ctx context.Context, e Event) error {
	if err := e.Validate(); err != nil {
		return err
	}
	b.mu.RLock()
	subs := make([]Deliver, 0, len(b.subs))
	for _, fn := range b.subs {
		subs = append(subs, fn)
	}
	b.mu.RUnlock()
	var errs []error
	for _, fn := range subs {
		errs = append(errs, fn(ctx, e))
	}
	return errors.Join(errs...)
}
