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
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/feedback/redisbus"
	"github.com/sluice-dev/sluice/pkg/limiter"
	"github.com/sluice-dev/sluice/pkg/state"
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
// handler and its event subscription, started by New and stopped by Close.
// It is safe for concurrent use.
type Replica struct {
	lim     *limiter.Limiter
	handler *feedback.Handler // nil without feedback
	stopSub func()
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	once    sync.Once
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
	if err := r.startFeedback(ctx, rdb, o); err != nil {
		lim.Close()
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	r.wg.Go(func() { _ = r.handler.Run(runCtx) })
	return r, nil
}

// startFeedback makes the handler, subscribes it and lets it act once; on
// an error nothing of it is left running.
func (r *Replica) startFeedback(ctx context.Context, rdb redis.UniversalClient, o Options) error {
	var err error
	if r.handler, err = feedback.NewHandler(rate{r.lim, o.Guard}, *o.Feedback); err != nil {
		return err
	}
	events := o.Events
	if events == nil {
		if events, err = redisbus.NewSubscriber(rdb, redisbus.Options{Prefix: o.Limiter.Prefix, Logger: o.Feedback.Logger}); err != nil {
			return err
		}
	}
	stop, err := events.Subscribe(ctx, r.handler.Handle)
	if err != nil {
		return fmt.Errorf("pipeline: %w", err)
	}
	// With no event to act on (no live coordinator), act on that.
	if err := r.handler.Reevaluate(ctx); err != nil {
		stop()
		return fmt.Errorf("pipeline: %w", err)
	}
	r.stopSub = stop
	return nil
}

// Limiter returns the replica's limiter: acquire through it. Close it
// through the Replica, not directly.
func (r *Replica) Limiter() *limiter.Limiter { return r.lim }

// Handler returns the replica's feedback handler, nil without feedback.
func (r *Replica) Handler() *feedback.Handler { return r.handler }

// Close stops the event subscription and the handler, then closes the
// limiter (which leaves the replica registry). It does not close the Redis
// client. Calls after the first do nothing.
func (r *Replica) Close() error {
	r.once.Do(func() {
		if r.stopSub != nil {
			r.stopSub()
			r.cancel()
			r.wg.Wait()
		}
	})
	return r.lim.Close()
}

// rate is the feedback.Rate of a limiter: the shared scale in Redis,
// changed only as guard allows.
type rate struct {
	c     *limiter.Limiter
	guard func(ctx context.Context) (context.Context, context.CancelFunc, error)
}

// change runs fn within the guard's context.
func (r rate) change(ctx context.Context, fn func(ctx context.Context) error) error {
	if r.guard == nil {
		return fn(ctx)
	}
	gctx, cancel, err := r.guard(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	return fn(gctx)
}

func (r rate) SetPressure(ctx context.Context, provider string, level state.Level) error {
	return r.change(ctx, func(ctx context.Context) error { return r.c.SetPressure(ctx, provider, level) })
}

func (r rate) SetBudgetScale(ctx context.Context, provider string, scale float64) error {
	return r.change(ctx, func(ctx context.Context) error {
		_, err := r.c.SetBudgetScale(ctx, provider, scale)
		return err
	})
}

func (r rate) SetShadowScale(ctx context.Context, provider string, scale float64) error {
	return r.change(ctx, func(ctx context.Context) error { return r.c.SetShadowScale(ctx, provider, scale) })
}

func (r rate) BudgetScale(ctx context.Context, provider string) (float64, time.Time, error) {
	st, err := r.c.Status(ctx, provider)
	return st.Scale, st.UpdatedAt, err
}

var _ feedback.Rate = rate{}
