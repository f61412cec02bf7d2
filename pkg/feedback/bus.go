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
// Subscribe returns once deliver is subscribed, after giving it the events
// that make up the current pressure if the Subscriber keeps them
// (redisbus: every live coordinator's stored report; the Bus keeps none),
// so a caller acting after it returns misses nothing the Subscriber knows;
// ctx bounds only that setup. Deliveries go on until stop is called; after
// stop returns, no new delivery starts. stop must not be called from inside
// a delivery.
type Subscriber interface {
	Subscribe(ctx context.Context, deliver Deliver) (stop func(), err error)
}

// Bus is the in-process bus, for a monolith: Publish hands the event to
// every subscriber in turn, in the publisher's goroutine, and returns their
// errors joined. It keeps no past events: a subscriber hears the next
// Publish (a store's next level change or heartbeat). The zero value is
// ready to use; it is safe for concurrent use. A Deliver must not subscribe
// to, or publish on, the Bus that calls it.
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
