package limiter

import (
	"context"
	"time"

	"github.com/sluice-dev/sluice/pkg/state"
)

// ScaleChange is what SetBudgetScale did.
type ScaleChange struct {
	Old, New float64   // scale before and after
	Changed  bool      // false when New was already in force (nothing written)
	Seq      int64     // the scale hash's seq after the call (+1 per change)
	Tokens   float64   // the bucket at the instant of the change, settled at the old scale
	At       time.Time // Redis time of the call
}

// SetBudgetScale sets provider's scale factor for every replica: the rate in
// force becomes base rate × scale. The bucket is first settled at the old
// scale up to now (Redis time), so the change is never retroactive, as
// x/time/rate's SetLimitAt; capacity and the base rate are not changed. Scale
// 0 pauses the provider; paused waiters are notified when it rises. scale
// must be finite and in [0, max_scale] (max_scale is 1 unless the provider
// was registered with a higher MaxScale); anything else is a *ArgumentError
// and changes nothing. The scale hash records Options.Source as who set it.
func (c *Limiter) SetBudgetScale(ctx context.Context, provider string, scale float64) (ScaleChange, error) {
	ch, _, err := c.setScale(ctx, provider, scale, "", true)
	return ch, err
}

// compareAndSetScale is SetBudgetScale only if the scale in force is
// still old: otherwise (a conflict: someone else changed it) it writes
// nothing and returns the scale in force as Old and New, Changed false. It
// also returns when the scale in force last changed (the zero time if
// never). One script call; compareAndSetScale(ctx, p, s, s) changes
// nothing and is the cheapest read of the scale in force. FeedbackRate
// offers it.
func (c *Limiter) compareAndSetScale(ctx context.Context, provider string, old, scale float64) (ScaleChange, time.Time, error) {
	if !finite(old) {
		return ScaleChange{}, time.Time{}, &ArgumentError{"old", old, "a finite number (the scale in force to compare with)"}
	}
	return c.setScale(ctx, provider, scale, formatFloat(old), old != scale)
}

// setScale runs set_scale.lua; expect is its compare-and-set argument ("":
// none); mayChange is false for a read (scale = expect). It returns the
// change and when the scale in force after it last changed.
func (c *Limiter) setScale(ctx context.Context, provider string, scale float64, expect string, mayChange bool) (ScaleChange, time.Time, error) {
	if err := validScale(scale); err != nil {
		return ScaleChange{}, time.Time{}, err
	}
	st, err := c.state(provider)
	if err != nil {
		return ScaleChange{}, time.Time{}, err
	}
	if mayChange {
		defer c.leaseAside(st)() // tokens taken at the old scale are not handed out at the new one
	}
	k := st.keys
	res, err := c.run(ctx, st, setScaleScript, []string{k.config, k.bucket, k.scale}, formatFloat(scale), c.opts.Source, k.notify, expect)
	if err != nil {
		return ScaleChange{}, time.Time{}, err
	}
	r, err := replyArray(res, 7)
	if err != nil {
		return ScaleChange{}, time.Time{}, err
	}
	ch := ScaleChange{Old: r.float(0), New: r.float(1), Changed: r.int(2) == 1, Seq: r.int(3), Tokens: r.float(4), At: time.UnixMicro(r.int(5))}
	var updated time.Time
	if us := r.int(6); us > 0 {
		updated = time.UnixMicro(us)
	}
	c.m.scale.WithLabelValues(provider).Set(ch.New)
	if ch.Changed {
		c.log.Info("budget scale changed", "provider", provider, "old", ch.Old, "new", ch.New, "source", c.opts.Source)
	}
	return ch, updated, nil
}

// SetShadowScale records, beside the scale in force, the scale a feedback
// handler in shadow mode would have set (fields shadow_scale, shadow_source,
// shadow_updated_at of the scale hash), under the same rules as
// SetBudgetScale. The rate does not change.
func (c *Limiter) SetShadowScale(ctx context.Context, provider string, scale float64) error {
	if err := validScale(scale); err != nil {
		return err
	}
	return c.annotate(ctx, provider, "shadow", formatFloat(scale))
}

// SetPressure records the pressure level that applies to provider, in the
// scale hash (level, level_source, level_updated_at) and the pressure metric,
// for operators and every replica's decisions. It does not change the rate;
// SetBudgetScale does. A level other than ok, soft or hard is a
// *ArgumentError.
func (c *Limiter) SetPressure(ctx context.Context, provider string, level state.Level) error {
	if level.Rank() < 0 {
		return &ArgumentError{"level", string(level), "one of ok, soft, hard"}
	}
	if err := c.annotate(ctx, provider, "level", string(level)); err != nil {
		return err
	}
	c.m.pressure.WithLabelValues(provider).Set(float64(level.Rank()))
	return nil
}

func (c *Limiter) annotate(ctx context.Context, provider, kind, value string) error {
	st, err := c.state(provider)
	if err != nil {
		return err
	}
	defer st.hold.clear() // a change through this Limiter applies to its next call
	_, err = c.run(ctx, st, annotateScript, []string{st.keys.config, st.keys.scale}, kind, value, c.opts.Source)
	return err
}

// BreakerStatus is the shared circuit breaker of a provider.
type BreakerStatus struct {
	State      state.Breaker
	Failures   int           // consecutive failures counted
	RetryAfter time.Duration // while open: time until a probe may go; else 0
}

// RecordFailure counts a failed call to provider towards the shared breaker:
// at BreakerThreshold consecutive failures it opens for every replica, for
// BreakerTimeout; a failed half-open probe opens it again.
func (c *Limiter) RecordFailure(ctx context.Context, provider string) error {
	return c.breakerOp(ctx, provider, "failure")
}

// RecordSuccess reports a successful call: it resets the failure count, and
// closes a half-open breaker (the probe succeeded). One round trip; it writes
// nothing when there is nothing to reset.
func (c *Limiter) RecordSuccess(ctx context.Context, provider string) error {
	return c.breakerOp(ctx, provider, "success")
}

// ResetBreaker closes provider's breaker whatever its state (operator
// override); waiters are told at once.
func (c *Limiter) ResetBreaker(ctx context.Context, provider string) error {
	return c.breakerOp(ctx, provider, "reset")
}

func (c *Limiter) breakerOp(ctx context.Context, provider, op string) error {
	st, err := c.state(provider)
	if err != nil {
		return err
	}
	defer st.hold.clear() // a change through this Limiter applies to its next call
	if op == "failure" {  // a failing upstream: no more tokens from here until Redis says so
		defer c.leaseAside(st)()
	}
	k := st.keys
	res, err := c.run(ctx, st, breakerScript, []string{k.config, k.breaker}, op, k.notify)
	if err != nil {
		return err
	}
	r, err := replyArray(res, 3)
	if err != nil {
		return err
	}
	b := state.Breaker(r.str(0))
	c.m.breaker.WithLabelValues(provider).Set(float64(b.Rank()))
	if op == "failure" && b == state.BreakerOpen {
		c.log.Debug("breaker open", "provider", provider, "failures", r.int(1), "retry_after", micros(r.int(2)))
	}
	return nil
}

// TriggerCooldown stops every replica of provider for d, in [0, 24h] (0:
// the provider's configured Cooldown), recording scope (what tripped it,
// e.g. "pacing") and reason (free text). A cooldown already running that
// ends later is kept. It returns when the cooldown in force ends; the zero
// time when there is none (d and the configured Cooldown are both 0).
func (c *Limiter) TriggerCooldown(ctx context.Context, provider, scope, reason string, d time.Duration) (time.Time, error) {
	if d < 0 || d > maxDuration {
		return time.Time{}, &ArgumentError{"duration", d, "a duration in [0, 24h]"}
	}
	dur := ""
	if d > 0 {
		dur = formatFloat(float64(d.Milliseconds()))
	}
	until, err := c.cooldownOp(ctx, provider, "set", scope, reason, dur)
	if err == nil && !until.IsZero() {
		c.log.Info("cooldown triggered", "provider", provider, "scope", scope, "reason", reason, "until", until)
	}
	return until, err
}

// ClearCooldown ends provider's cooldown now (operator override); waiters
// are told at once.
func (c *Limiter) ClearCooldown(ctx context.Context, provider string) error {
	_, err := c.cooldownOp(ctx, provider, "clear", "", "", "")
	return err
}

func (c *Limiter) cooldownOp(ctx context.Context, provider, op, scope, reason, dur string) (time.Time, error) {
	st, err := c.state(provider)
	if err != nil {
		return time.Time{}, err
	}
	defer st.hold.clear() // a change through this Limiter applies to its next call
	if op == "set" {
		defer c.leaseAside(st)()
	}
	k := st.keys
	res, err := c.run(ctx, st, cooldownScript, []string{k.config, k.cooldown}, op, scope, reason, dur, k.notify)
	if err != nil {
		return time.Time{}, err
	}
	r, err := replyArray(res, 2)
	if err != nil || r.int(0) == 0 {
		return time.Time{}, err
	}
	return time.UnixMilli(r.int(0)), nil
}
