package limiter

import (
	"context"
	"time"

	"github.com/sluice-dev/sluice/pkg/state"
)

// FeedbackRate is what a feedback handler steers, over a Limiter: it
// satisfies feedback.Rate (structurally: this package does not import
// feedback) with every value kept in Redis. Each method is one script call;
// CompareAndSetScale is set_scale.lua's compare-and-set, so the control path
// reads and writes the scale in one round trip. When Guard is set, every
// change (not a read) is made within the context Guard returns, or not at
// all when it returns an error: a leased controller's guard lets a change
// through only while it certainly holds the lease.
type FeedbackRate struct {
	Limiter *Limiter
	Guard   func(ctx context.Context) (context.Context, context.CancelFunc, error)
}

// SetPressure is Limiter.SetPressure, guarded.
func (r FeedbackRate) SetPressure(ctx context.Context, provider string, level state.Level) error {
	return r.change(ctx, func(ctx context.Context) error { return r.Limiter.SetPressure(ctx, provider, level) })
}

// SetShadowScale is Limiter.SetShadowScale, guarded.
func (r FeedbackRate) SetShadowScale(ctx context.Context, provider string, scale float64) error {
	return r.change(ctx, func(ctx context.Context) error { return r.Limiter.SetShadowScale(ctx, provider, scale) })
}

// CompareAndSetScale is Limiter.SetBudgetScale only if the scale in force
// is still old (set_scale.lua's compare-and-set); otherwise, a conflict, it
// writes nothing. It is guarded unless it is a read (old == scale, which
// changes nothing). It returns the scale in force after the call and when
// it last changed (the zero time if never).
func (r FeedbackRate) CompareAndSetScale(ctx context.Context, provider string, old, scale float64) (float64, time.Time, error) {
	var ch ScaleChange
	var at time.Time
	set := func(ctx context.Context) (err error) {
		ch, at, err = r.Limiter.compareAndSetScale(ctx, provider, old, scale)
		return err
	}
	var err error
	if old == scale {
		err = set(ctx)
	} else {
		err = r.change(ctx, set)
	}
	return ch.New, at, err
}

// change runs fn within the guard's context.
func (r FeedbackRate) change(ctx context.Context, fn func(ctx context.Context) error) error {
	if r.Guard == nil {
		return fn(ctx)
	}
	gctx, cancel, err := r.Guard(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	return fn(gctx)
}
