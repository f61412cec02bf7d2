package limiter

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// SourceAPI is the scale hash's source when SetBudgetScale is called without one.
const SourceAPI = "api"

// ScaleChange is what SetBudgetScaleFrom did.
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
// and changes nothing.
func (c *Coordinator) SetBudgetScale(ctx context.Context, provider string, scale float64) error {
	_, err := c.Rescale(ctx, provider, scale, SourceAPI)
	return err
}

// SetBudgetScaleFrom is SetBudgetScale recording who asked (source, stored
// in the scale hash for operators).
func (c *Coordinator) SetBudgetScaleFrom(ctx context.Context, provider string, scale float64, source string) error {
	_, err := c.Rescale(ctx, provider, scale, source)
	return err
}

// Rescale is SetBudgetScaleFrom reporting what changed.
func (c *Coordinator) Rescale(ctx context.Context, provider string, scale float64, source string) (ScaleChange, error) {
	if err := validScale(scale); err != nil {
		return ScaleChange{}, err
	}
	st, err := c.state(provider)
	if err != nil {
		return ScaleChange{}, err
	}
	k := st.keys
	res, err := c.run(ctx, st, setScaleScript, []string{k.config, k.bucket, k.scale}, formatFloat(scale), source, k.notify)
	if err != nil {
		return ScaleChange{}, err
	}
	r, err := replyArray(res, 6)
	if err != nil {
		return ScaleChange{}, err
	}
	ch := ScaleChange{Old: r.float(0), New: r.float(1), Changed: r.int(2) == 1, Seq: r.int(3), Tokens: r.float(4), At: time.UnixMicro(r.int(5))}
	c.m.scale.WithLabelValues(provider).Set(ch.New)
	if ch.Changed {
		c.log.Info("budget scale changed", "provider", provider, "old", ch.Old, "new", ch.New, "source", source)
	}
	return ch, nil
}

// CurrentScale returns provider's scale in force and the Redis time it was
// last changed (zero if never), in one read. A feedback handler uses it so
// that its dwell time is measured from the same instant on every replica.
func (c *Coordinator) CurrentScale(ctx context.Context, provider string) (float64, time.Time, error) {
	st, err := c.state(provider)
	if err != nil {
		return 0, time.Time{}, err
	}
	var fields *redis.SliceCmd
	var exists *redis.IntCmd
	_, err = c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		exists = p.Exists(ctx, st.keys.config)
		fields = p.HMGet(ctx, st.keys.scale, "scale", "updated_at")
		return nil
	})
	if err != nil {
		return 0, time.Time{}, c.mapErr(provider, err)
	}
	if exists.Val() == 0 {
		return 0, time.Time{}, fmt.Errorf("%w %q", ErrUnknownProvider, provider)
	}
	v := fields.Val()
	scale, since := 1.0, time.Time{}
	if s, ok := v[0].(string); ok {
		scale = parseFloat(s)
	}
	if s, ok := v[1].(string); ok {
		since = time.UnixMicro(int64(parseFloat(s)))
	}
	return scale, since, nil
}

// SetShadowScale records, beside the scale in force, the scale a feedback
// handler in shadow mode would have set (fields shadow_scale, shadow_source,
// shadow_updated_at of the scale hash). The rate does not change.
func (c *Coordinator) SetShadowScale(ctx context.Context, provider string, scale float64, source string) error {
	if err := validScale(scale); err != nil {
		return err
	}
	return c.annotate(ctx, provider, "shadow", formatFloat(scale), source)
}

// SetGlobalPressure records the pressure level (ok, soft or hard) that
// applies to provider, in the scale hash and the pressure metric. It does not
// change the rate; SetBudgetScale does.
func (c *Coordinator) SetGlobalPressure(ctx context.Context, provider string, level string) error {
	return c.SetGlobalPressureFrom(ctx, provider, level, SourceAPI)
}

// SetGlobalPressureFrom is SetGlobalPressure recording who reported it.
func (c *Coordinator) SetGlobalPressureFrom(ctx context.Context, provider, level, source string) error {
	if levelValue(level) < 0 {
		return &ArgumentError{"level", level, "one of ok, soft, hard"}
	}
	if err := c.annotate(ctx, provider, "level", level, source); err != nil {
		return err
	}
	c.m.pressure.WithLabelValues(provider).Set(levelValue(level))
	return nil
}

func (c *Coordinator) annotate(ctx context.Context, provider, kind, value, source string) error {
	st, err := c.state(provider)
	if err != nil {
		return err
	}
	_, err = c.run(ctx, st, annotateScript, []string{st.keys.config, st.keys.scale}, kind, value, source)
	return err
}

// BreakerStatus is the shared circuit breaker of a provider.
type BreakerStatus struct {
	State      string        // closed, open or half_open
	Failures   int           // consecutive failures counted
	RetryAfter time.Duration // while open: time until a probe may go; else 0
}

// RecordFailure counts a failed call to provider towards the shared breaker:
// at BreakerThreshold consecutive failures it opens for every replica, for
// BreakerTimeout; a failed half-open probe opens it again.
func (c *Coordinator) RecordFailure(ctx context.Context, provider string) (BreakerStatus, error) {
	return c.breakerOp(ctx, provider, "failure")
}

// RecordSuccess reports a successful call: it resets the failure count, and
// closes a half-open breaker (the probe succeeded). One round trip; it writes
// nothing when there is nothing to reset.
func (c *Coordinator) RecordSuccess(ctx context.Context, provider string) (BreakerStatus, error) {
	return c.breakerOp(ctx, provider, "success")
}

// ResetBreaker closes provider's breaker whatever its state (operator override).
func (c *Coordinator) ResetBreaker(ctx context.Context, provider string) (BreakerStatus, error) {
	return c.breakerOp(ctx, provider, "reset")
}

func (c *Coordinator) breakerOp(ctx context.Context, provider, op string) (BreakerStatus, error) {
	st, err := c.state(provider)
	if err != nil {
		return BreakerStatus{}, err
	}
	k := st.keys
	res, err := c.run(ctx, st, breakerScript, []string{k.config, k.breaker}, op, k.notify)
	if err != nil {
		return BreakerStatus{}, err
	}
	r, err := replyArray(res, 3)
	if err != nil {
		return BreakerStatus{}, err
	}
	b := BreakerStatus{State: r.str(0), Failures: int(r.int(1)), RetryAfter: micros(r.int(2))}
	c.m.breaker.WithLabelValues(provider).Set(breakerValue(b.State))
	if op == "failure" && b.State == "open" && b.Failures >= 1 {
		c.log.Debug("breaker open", "provider", provider, "failures", b.Failures, "retry_after", b.RetryAfter)
	}
	return b, nil
}

// TriggerCooldown stops every replica of provider for its configured
// Cooldown, recording scope (what tripped it, e.g. "pacing"). A cooldown
// already running that ends later is kept.
func (c *Coordinator) TriggerCooldown(ctx context.Context, provider, scope string) (time.Time, error) {
	return c.TriggerCooldownFor(ctx, provider, scope, "", 0)
}

// TriggerCooldownFor is TriggerCooldown with a reason and an explicit
// duration d in [0, 24h] (0: the provider's configured Cooldown). It returns
// when the cooldown in force ends (zero time: none).
func (c *Coordinator) TriggerCooldownFor(ctx context.Context, provider, scope, reason string, d time.Duration) (time.Time, error) {
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

// ClearCooldown ends provider's cooldown now (operator override).
func (c *Coordinator) ClearCooldown(ctx context.Context, provider string) error {
	_, err := c.cooldownOp(ctx, provider, "clear", "", "", "")
	return err
}

func (c *Coordinator) cooldownOp(ctx context.Context, provider, op, scope, reason, dur string) (time.Time, error) {
	st, err := c.state(provider)
	if err != nil {
		return time.Time{}, err
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
