// Package pipeline composes one pipeline replica's side of sluice: a
// limiter.Limiter on the shared budget and, with feedback on, a
// feedback.Handler that follows the store's pressure (from Redis by
// default) and steers that budget for every replica. The sluice services,
// its demo, its tests and library users all build a replica with New.
package pipeline

import (
	"context"
	"fmt"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/feedback/redisbus"
	"github.com/sluice-dev/sluice/pkg/limiter"
)

// Options configure a Replica. The zero value runs a limiter with its
// defaults and no feedback.
type Options struct {
	// Limiter configures the replica's limiter.Limiter. With Feedback
	// set and Limiter.Source empty, every change made through the limiter
	// (the handler's, and any other call on Replica.Limiter) is recorded as
	// made by "feedback".
	Limiter limiter.Options
	// Feedback, when set, runs a feedback.Handler on these options that
	// sets the pressure level and the scale of Feedback.Providers from the
	// events of Events. Nil runs none: the replica only acquires, and the
	// scale is someone else's (the controller, an operator, nobody).
	Feedback *feedback.Options
	// Events is where the handler's pressure events come from; default a
	// redisbus.Subscriber on the replica's Redis and key prefix. A monolith
	// passes its in-process *feedback.Bus.
	Events feedback.Subscriber
	// Guard, when set, is asked before every change the handler makes
	// (pressure level, scale, shadow scale): the change is made within the
	// context Guard returns, or not at all when it returns an error. The
	// controller's lease is one: a controller that may have lost its lease
	// changes nothing.
	Guard func(ctx context.Context) (context.Context, context.CancelFunc, error)
}

// Replica is one pipeline replica: its limiter and, with feedback on, the
// feedback loop on it, started by New and stopped by Close. It is safe for
// concurrent use.
type Replica struct {
	lim  *limiter.Limiter
	loop *Loop // nil without feedback
	once sync.Once
}

// New starts a replica on rdb (a Client, ClusterClient or Ring; one with
// ContextTimeoutEnabled is the cheaper for the limiter, whose calls keep
// their deadlines with any: see limiter.New). With
// feedback on, it returns once the handler is subscribed and has acted on
// the pressure the subscriber holds now (Redis: every live coordinator's
// stored report), so the replica starts at the right scale, within the
// dwell; ctx bounds that wait. It fails, starting nothing, on a bad option
// (the error names it), when the subscription cannot be made, or when the
// handler cannot set a provider (not registered, Redis gone).
func New(ctx context.Context, rdb redis.UniversalClient, o Options) (*Replica, error) {
	if o.Feedback != nil && o.Limiter.Source == "" {
		o.Limiter.Source = "feedback"
	}
	lim, err := limiter.New(rdb, o.Limiter)
	if err != nil {
		return nil, err
	}
	r := &Replica{lim: lim}
	if o.Feedback == nil {
		return r, nil
	}
	if r.loop, err = StartLoop(ctx, rdb, limiter.FeedbackRate{Limiter: lim, Guard: o.Guard}, *o.Feedback, o.Events, o.Limiter.Prefix); err != nil {
		lim.Close()
		return nil, err
	}
	return r, nil
}

// Limiter returns the replica's limiter: acquire through it. Close it
// through the Replica, not directly.
func (r *Replica) Limiter() *limiter.Limiter { return r.lim }

// Handler returns the replica's feedback handler, nil without feedback.
func (r *Replica) Handler() *feedback.Handler {
	if r.loop == nil {
		return nil
	}
	return r.loop.Handler()
}

// Close stops the feedback loop, then closes the limiter (which leaves the
// replica registry). It does not close the Redis client. Calls after the
// first do nothing.
func (r *Replica) Close() error {
	r.once.Do(func() {
		if r.loop != nil {
			r.loop.Stop()
		}
	})
	return r.lim.Close()
}

// Loop is a running feedback loop: a feedback.Handler steering a Rate,
// subscribed to its pressure events, with its Run going. A Replica with
// feedback on runs one on its limiter; the controller runs one on the
// limiter it registers the providers through.
type Loop struct {
	handler *feedback.Handler
	stopSub func()
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	once    sync.Once
}

// StartLoop makes a handler on rate with options o, subscribes it to
// events (nil: a redisbus.Subscriber on rdb and the key prefix), lets it act
// once on the pressure the subscriber holds (with no live coordinator, on
// that) and starts its Run. It returns once the handler has acted; ctx
// bounds that. On an error nothing of it is left running.
func StartLoop(ctx context.Context, rdb redis.UniversalClient, rate feedback.Rate, o feedback.Options, events feedback.Subscriber, prefix string) (*Loop, error) {
	h, err := feedback.NewHandler(rate, o)
	if err != nil {
		return nil, err
	}
	if events == nil {
		if events, err = redisbus.NewSubscriber(rdb, redisbus.Options{Prefix: prefix, Logger: o.Logger}); err != nil {
			return nil, err
		}
	}
	stop, err := events.Subscribe(ctx, h.Handle)
	if err != nil {
		return nil, fmt.Errorf("pipeline: %w", err)
	}
	if err := h.Reevaluate(ctx); err != nil {
		stop()
		return nil, fmt.Errorf("pipeline: %w", err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	l := &Loop{handler: h, stopSub: stop, cancel: cancel}
	l.wg.Go(func() { _ = h.Run(runCtx) })
	return l, nil
}

// Handler returns the loop's handler.
func (l *Loop) Handler() *feedback.Handler { return l.handler }

// Stop ends the subscription and the handler's Run, and returns when they
// have ended. Calls after the first do nothing.
func (l *Loop) Stop() {
	l.once.Do(func() {
		l.stopSub()
		l.cancel()
		l.wg.Wait()
	})
}

var _ feedback.Rate = limiter.FeedbackRate{}
