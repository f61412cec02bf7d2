package limiter

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// notifier wakes paused waiters when a provider's notify channel says its
// scale (or breaker, or cooldown) changed. One subscription per Coordinator
// serves every waiter; a waiter costs Redis nothing while it waits.
//
// It reads the subscription itself rather than through go-redis's channel,
// which swallows errors: a connection that came back but whose
// resubscription Redis refused (LOADING after a restart, an ACL) would
// stay up subscribed to nothing, for good. Here a refusal, or a PING left
// unanswered for a health-check interval, replaces the subscription with a
// new one (after 0.1 s, doubling up to 5 s while Redis keeps refusing);
// every confirmation after the first wakes every waiter to look
// again, since notifications may have been lost meanwhile.
type notifier struct {
	rdb         redis.UniversalClient
	log         *slog.Logger
	healthCheck time.Duration

	mu      sync.Mutex
	ps      *redis.PubSub
	subs    map[string]*subscription
	closed  bool
	backoff time.Duration // before the next renewal; reset by a confirmation
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
// channel. It subscribes on first use and waits (up to a second, or ctx) for
// Redis to confirm, so that a check made after watch returns cannot miss a
// change. If Redis cannot confirm, the waiter still has its slow re-check.
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
		if n.ps == nil {
			n.ps = n.rdb.Subscribe(context.Background())
			go n.loop(n.ps)
		}
	}
	ps, gen, ready := n.ps, s.gen, s.ready
	n.mu.Unlock()

	if subscribe {
		if err := ps.Subscribe(ctx, channel); err != nil {
			n.log.Debug("subscribe failed; paused waiters rely on their re-check timer", "channel", channel, "err", err)
		}
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

// loop reads ps until it is closed (by close, or by renew replacing it).
func (n *notifier) loop(ps *redis.PubSub) {
	ctx := context.Background()
	pinged := false // a PING is out and unanswered
	for {
		msg, err := ps.ReceiveTimeout(ctx, n.healthCheck)
		var rerr redis.Error
		switch {
		case err == nil:
			pinged = false
			switch m := msg.(type) {
			case *redis.Subscription:
				if m.Kind == "subscribe" {
					n.fire(m.Channel, true)
				}
				n.mu.Lock()
				n.backoff = 0
				n.mu.Unlock()
			case *redis.Message:
				n.fire(m.Channel, false)
			}
		case errors.Is(err, redis.ErrClosed) || n.isClosed():
			return
		case isTimeout(err) && !pinged:
			pinged = true
			_ = ps.Ping(ctx) // its PONG comes through ReceiveTimeout
		case isTimeout(err) || errors.As(err, &rerr):
			// No PONG within a health check, or Redis refused a
			// (re)subscription: start over on a new connection.
			n.log.Debug("notification subscription lost; subscribing again", "err", err)
			n.mu.Lock()
			n.backoff = min(max(2*n.backoff, 100*time.Millisecond), 5*time.Second)
			wait := n.backoff
			n.mu.Unlock()
			n.sleep(wait)
			n.renew(ps)
			return
		default:
			// The connection failed: go-redis reconnects and subscribes
			// again at the next receive. Not in a tight loop while Redis
			// is down.
			n.sleep(100 * time.Millisecond)
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// renew replaces old with a new subscription to every channel.
func (n *notifier) renew(old *redis.PubSub) {
	n.mu.Lock()
	defer n.mu.Unlock()
	_ = old.Close()
	if n.closed || n.ps != old {
		return
	}
	channels := make([]string, 0, len(n.subs))
	for ch := range n.subs {
		channels = append(channels, ch)
	}
	n.ps = n.rdb.Subscribe(context.Background(), channels...)
	go n.loop(n.ps)
}

func (n *notifier) isClosed() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.closed
}

// sleep waits d, or less once the notifier is closed.
func (n *notifier) sleep(d time.Duration) {
	for end := time.Now().Add(d); time.Now().Before(end) && !n.isClosed(); {
		time.Sleep(10 * time.Millisecond)
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

func (n *notifier) close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.closed = true
	if n.ps != nil {
		_ = n.ps.Close()
	}
}
