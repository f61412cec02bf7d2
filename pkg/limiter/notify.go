package limiter

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/pkg/internal/pubsub"
)

// notifier wakes paused waiters when a provider's notify channel says its
// scale (or breaker, or cooldown) changed. One subscription per Limiter
// serves every waiter; a waiter costs Redis nothing while it waits. The
// subscription is a pubsub.Sub, which starts over when Redis refuses a
// resubscription or a PING goes unanswered; every confirmation after the
// first wakes every waiter to look again, since notifications may have been
// lost meanwhile.
type notifier struct {
	rdb         redis.UniversalClient
	log         *slog.Logger
	healthCheck time.Duration

	mu     sync.Mutex
	sub    *pubsub.Sub
	subs   map[string]*subscription
	closed bool
}

type subscription struct {
	ready     chan struct{} // closed once Redis confirmed the subscription
	confirmed bool
	gen       chan struct{} // closed and replaced at every notification
}

func newNotifier(rdb redis.UniversalClient, log *slog.Logger, healthCheck time.Duration) *notifier {
	return &notifier{rdb: rdb, log: log, healthCheck: healthCheck, subs: map[string]*subscription{}}
}

// watch returns a channel that is closed at the next notification on
// channel. It subscribes on first use and waits (up to a second, or ctx,
// however long the subscription itself takes) for Redis to confirm, so
// that a check made after watch returns cannot miss a change. If Redis
// cannot confirm, the waiter still has its slow re-check.
func (n *notifier) watch(ctx context.Context, channel string) <-chan struct{} {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	s := n.subs[channel]
	subscribe := s == nil
	if subscribe {
		s = &subscription{ready: make(chan struct{}), gen: make(chan struct{})}
		n.subs[channel] = s
		if n.sub == nil {
			n.sub = pubsub.New(n.rdb, newPubSub(n.rdb, channel), n.healthCheck, func(err error) {
				n.log.Debug("notification subscription lost; subscribing again", "err", err)
			})
			go n.loop(n.sub)
		}
	}
	sub, gen, ready := n.sub, s.gen, s.ready
	n.mu.Unlock()

	if subscribe {
		// On its own: a new connection's handshake may wait on a stalled
		// Redis (with any client) longer than watch does.
		go func() {
			if err := sub.Subscribe(context.WithoutCancel(ctx), channel); err != nil {
				n.log.Debug("subscribe failed; paused waiters rely on their re-check timer", "channel", channel, "err", err)
			}
		}()
	}
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case <-ready:
	case <-t.C:
	case <-ctx.Done():
	}
	return gen
}

// loop reads sub until it is closed.
func (n *notifier) loop(sub *pubsub.Sub) {
	for {
		msg, err := sub.Next(context.Background(), n.healthCheck)
		if err != nil {
			return
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" {
				n.fire(m.Channel, true)
			}
		case *redis.Message:
			n.fire(m.Channel, false)
		}
	}
}

func (n *notifier) fire(channel string, subscribed bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := n.subs[channel]
	if s == nil {
		return
	}
	if subscribed && !s.confirmed {
		s.confirmed = true
		close(s.ready)
		return
	}
	close(s.gen)
	s.gen = make(chan struct{})
}

// close ends the subscription, waiting at most wait for it: a
// subscription whose connection is still being made to a stalled Redis
// holds its lock until the dial gives up, and Close must not wait for that.
func (n *notifier) close(wait time.Duration) {
	n.mu.Lock()
	n.closed = true
	sub := n.sub
	n.mu.Unlock()
	if sub == nil {
		return
	}
	done := make(chan struct{})
	go func() {
		sub.Close()
		close(done)
	}()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		n.log.Debug("notification subscription still closing in the background (Redis does not answer)")
	}
}

// newPubSub is a PubSub of rdb subscribed to nothing yet, except for a
// Ring: go-redis picks a Ring's shard by the first channel and refuses
// (panics) without one, so it is subscribed to channel at once.
func newPubSub(rdb redis.UniversalClient, channel string) *redis.PubSub {
	if _, ring := rdb.(*redis.Ring); ring {
		return rdb.Subscribe(context.Background(), channel)
	}
	return rdb.Subscribe(context.Background())
}
