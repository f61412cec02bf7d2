// Package pubsub keeps a Redis pub/sub subscription alive for the one
// goroutine that reads it: the limiter's wake-up notifications and the
// feedback bus's events both read through it.
//
// go-redis's own channel (PubSub.Channel) swallows errors: a connection that
// came back but whose resubscription Redis refused (LOADING after a
// restart, an ACL) stays up subscribed to nothing, for good. A Sub instead
// starts over on a new connection when Redis refuses a (re)subscription or
// a PING goes unanswered for a health check, after 0.1 s, doubling up to
// 5 s while Redis keeps refusing.
package pubsub

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Sub is a subscription read by one goroutine through Next; Subscribe and
// Close are safe from any goroutine.
type Sub struct {
	rdb   redis.UniversalClient
	check time.Duration
	lost  func(err error) // told before each start-over; may be nil
	done  chan struct{}   // closed by Close

	mu       sync.Mutex
	ps       *redis.PubSub
	channels map[string]bool // every channel subscribed, for a new connection
	closed   bool

	// The reader's own state.
	pingedAt time.Time // when the unanswered PING went out; zero: none
	backoff  time.Duration
}

// New reads ps, subscribed to channels (ps may be subscribed to nothing
// yet: Subscribe adds channels). After check without a message it sends a
// PING; without an answer for another check it starts over, and calls lost
// (when not nil) with the reason first, so the owner can log it.
func New(rdb redis.UniversalClient, ps *redis.PubSub, check time.Duration, lost func(err error), channels ...string) *Sub {
	s := &Sub{rdb: rdb, check: check, lost: lost, done: make(chan struct{}), ps: ps, channels: map[string]bool{}}
	for _, ch := range channels {
		s.channels[ch] = true
	}
	return s
}

// Subscribe adds channel, and keeps it on every new connection.
func (s *Sub) Subscribe(ctx context.Context, channel string) error {
	s.mu.Lock()
	s.channels[channel] = true
	ps := s.ps
	s.mu.Unlock()
	return ps.Subscribe(ctx, channel)
}

// Close ends the subscription: Next returns redis.ErrClosed.
func (s *Sub) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		close(s.done)
		_ = s.ps.Close()
	}
}

// Next returns the next *redis.Subscription or *redis.Message, or nil when
// wait passed without one (or while it mends the connection: call it
// again). It returns redis.ErrClosed once the Sub is closed, ctx's error
// once ctx ends.
func (s *Sub) Next(ctx context.Context, wait time.Duration) (any, error) {
	s.mu.Lock()
	ps, closed := s.ps, s.closed
	s.mu.Unlock()
	if closed {
		return nil, redis.ErrClosed
	}
	msg, err := ps.ReceiveTimeout(ctx, wait)
	if err != nil {
		return nil, s.failed(ctx, ps, err)
	}
	return s.received(msg), nil
}

// received returns what Next hands out for msg: a subscription or a
// message, nil for a PONG. Any of them answers the PING in flight, and a
// subscription Redis accepted ends the backoff.
func (s *Sub) received(msg any) any {
	s.pingedAt = time.Time{}
	switch m := msg.(type) {
	case *redis.Subscription:
		if m.Kind == "subscribe" {
			s.backoff = 0
		}
		return m
	case *redis.Message:
		return m
	}
	return nil // a PONG
}

// failed handles the error of a receive on ps and returns the error Next
// returns: ctx's, redis.ErrClosed, or nil after it has pinged, started over
// or paused.
func (s *Sub) failed(ctx context.Context, ps *redis.PubSub, err error) error {
	var rerr redis.Error
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case errors.Is(err, redis.ErrClosed) || s.isClosed():
		return redis.ErrClosed
	case isTimeout(err):
		s.timedOut(ctx, ps, err)
	case errors.As(err, &rerr):
		// Redis refused a (re)subscription.
		s.startOver(ps, err)
	default:
		// The connection failed: go-redis reconnects and subscribes again
		// at the next receive. Not in a tight loop while Redis is down.
		s.sleep(100 * time.Millisecond)
	}
	return nil
}

// timedOut follows a receive that got nothing within its wait: the first
// sends a PING (its PONG comes through ReceiveTimeout); once the PING has
// gone unanswered for a health check, it starts over.
func (s *Sub) timedOut(ctx context.Context, ps *redis.PubSub, err error) {
	switch {
	case s.pingedAt.IsZero():
		s.pingedAt = time.Now()
		_ = ps.Ping(ctx)
	case time.Since(s.pingedAt) >= s.check:
		s.startOver(ps, err)
	}
}

// startOver tells lost why, waits the backoff (0.1 s, doubling up to 5 s)
// and replaces ps with a new connection.
func (s *Sub) startOver(ps *redis.PubSub, err error) {
	if s.lost != nil {
		s.lost(err)
	}
	s.backoff = min(max(2*s.backoff, 100*time.Millisecond), 5*time.Second)
	s.sleep(s.backoff)
	s.renew(ps)
}

func (s *Sub) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// sleep waits d, or less once the Sub is closed.
func (s *Sub) sleep(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.done:
	}
}

// renew replaces old with a new connection subscribed to every channel.
func (s *Sub) renew(old *redis.PubSub) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.ps != old {
		return
	}
	_ = old.Close()
	channels := make([]string, 0, len(s.channels))
	for ch := range s.channels {
		channels = append(channels, ch)
	}
	s.ps = s.rdb.Subscribe(context.Background(), channels...)
	s.pingedAt = time.Time{}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
