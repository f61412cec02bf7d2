package feedback

import (
	"context"
	"errors"
	"sync"
)

// Publisher sends pressure events on their way. A write coordinator publishes
// through one: Bus, redisbus.Publisher and httpbus.Client are Publishers.
type Publisher interface {
	Publish(ctx context.Context, e Event) error
}

// Deliver receives one event: a Handler's Handle, or a Publisher's Publish
// to pass it on.
type Deliver func(ctx context.Context, e Event) error

// Subscriber is a source of pressure events: Bus, or redisbus.Subscriber.
// Subscribe returns once deliver is subscribed and has been given the events
// that make up the current pressure (for Redis, a snapshot of every live
// coordinator), so a caller acting after it returns misses nothing; ctx
// bounds only that setup. Deliveries go on until stop is called; after stop
// returns, no new delivery starts.
type Subscriber interface {
	Subscribe(ctx context.Context, deliver Deliver) (stop func(), err error)
}

// Bus is the in-process bus, for a monolith: Publish hands the event to
// every subscriber in turn, in the publisher's goroutine, and returns their
// errors joined. The zero value is ready to use; it is safe for concurrent
// use. A Deliver must not subscribe to the Bus that calls it.
type Bus struct {
	mu   sync.RWMutex
	subs map[int]Deliver
	next int
}

// Subscribe adds deliver; stop removes it. The Bus keeps no past events, so
// the subscriber starts from the next Publish. It never fails.
func (b *Bus) Subscribe(_ context.Context, deliver Deliver) (stop func(), err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.subs == nil {
		b.subs = map[int]Deliver{}
	}
	id := b.next
	b.next++
	b.subs[id] = deliver
	return func() {
		b.mu.Lock()
		delete(b.subs, id)
		b.mu.Unlock()
	}, nil
}

// Publish validates e and delivers it to every subscriber, even when one
// fails. Subscribers are called under a read lock, so stop waits for a
// delivery under way.
func (b *Bus) Publish(ctx context.Context, e Event) error {
	if err := e.Validate(); err != nil {
		return err
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	var errs []error
	for _, deliver := range b.subs {
		errs = append(errs, deliver(ctx, e))
	}
	return errors.Join(errs...)
}
