package limiter_test

// Time-dependent script behaviour at fixed Redis instants: miniredis's
// SetTime fixes what TIME returns inside the scripts, so these tests step
// through time instead of sleeping.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/pkg/limiter"
	"github.com/sluice-dev/sluice/pkg/state"
)

// step is one action at a fixed offset from t0, with what it must give.
type step struct {
	at      time.Duration
	do      string  // "take" n tokens, "scale" to x, "fail", "success", "cooldown" for x seconds
	n       int     // tokens for take
	x       float64 // scale, or cooldown seconds
	allowed bool
	reason  limiter.Reason
	left    float64       // tokens left after a take (checked when reason is set)
	retry   time.Duration // retry-after of a take (checked when reason is set)
}

func runSteps(t *testing.T, cfg limiter.ProviderConfig, steps []step) {
	t.Helper()
	m, rdb := redistest.Mini(t)
	m.SetTime(t0)
	// Redis time stands still here, the machine's does not: with the
	// default CallTimeout (500 ms) a script that a loaded machine ran
	// slower than that was an outage, and the step failed with
	// ErrRedisUnavailable (TestStepsCooldown in a cold make test, load 14;
	// any of these with the test's CPU starved). These steps test the
	// scripts, not outages: no answer is too late. Nor are they answered
	// locally: Redis's clock jumps, the process's does not, so every step
	// is a round trip (no token lease, no held refusal).
	c, _ := newCoord(t, rdb, limiter.Options{CallTimeout: time.Hour, NoTokenLease: true, NoRefusalHold: true})
	ctx := context.Background()
	if _, err := c.Register(ctx, "p", cfg); err != nil {
		t.Fatal(err)
	}
	for i, s := range steps {
		m.SetTime(t0.Add(s.at))
		where := fmt.Sprintf("step %d (%s at %v)", i, s.do, s.at)
		var err error
		switch s.do {
		case "take":
			d, err := c.TryAcquire(ctx, "p", s.n)
			if err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			if d.Allowed != s.allowed || d.Reason != s.reason {
				t.Fatalf("%s: allowed=%v reason=%s, want %v %s", where, d.Allowed, d.Reason, s.allowed, s.reason)
			}
			if !near(d.Remaining, s.left, 1e-6) || d.RetryAfter != s.retry {
				t.Fatalf("%s: left=%v retry=%v, want %v %v", where, d.Remaining, d.RetryAfter, s.left, s.retry)
			}
			if !d.Now.Equal(t0.Add(s.at)) {
				t.Fatalf("%s: decision time %v, want Redis time %v", where, d.Now, t0.Add(s.at))
			}
		case "scale":
			_, err = c.SetBudgetScale(ctx, "p", s.x)
		case "fail":
			err = c.RecordFailure(ctx, "p")
		case "success":
			err = c.RecordSuccess(ctx, "p")
		case "cooldown":
			_, err = c.TriggerCooldown(ctx, "p", "pacing", "test", time.Duration(s.x*float64(time.Second)))
		default:
			t.Fatalf("%s: unknown step", where)
		}
		if err != nil {
			t.Fatalf("%s: %v", where, err)
		}
	}
}

func cfg(capacity int64, rate float64) limiter.ProviderConfig {
	c := limiter.DefaultProviderConfig()
	c.Capacity, c.RefillRate = capacity, rate
	return c
}

const ms = time.Millisecond

func TestStepsRefill(t *testing.T) {
	runSteps(t, cfg(10, 10), []step{
		{at: 0, do: "take", n: 10, allowed: true, reason: "ok", left: 0},
		{at: 0, do: "take", n: 1, reason: "rate_limited", retry: 100 * ms},
		{at: 0, do: "take", n: 10, reason: "rate_limited", retry: time.Second}, // n > 1 waits for all n
		{at: 50 * ms, do: "take", n: 1, reason: "rate_limited", left: 0.5, retry: 50 * ms},
		{at: 100 * ms, do: "take", n: 1, allowed: true, reason: "ok", left: 0},
		{at: 10 * time.Second, do: "take", n: 1, allowed: true, reason: "ok", left: 9}, // capped at capacity
		{at: 10 * time.Second, do: "take", n: 11, reason: "exceeds_capacity", left: 9, retry: -1},
	})
}

func TestStepsRescaleIsNotRetroactive(t *testing.T) {
	// As x/time/rate's SetLimitAt: tokens accrued before the change count at
	// the old rate, after it at the new one.
	runSteps(t, cfg(100, 10), []step{
		{at: 0, do: "take", n: 100, allowed: true, reason: "ok", left: 0},
		{at: time.Second, do: "scale", x: 0.5}, // 10 tokens accrued at 10/s
		{at: 2 * time.Second, do: "take", n: 16, reason: "rate_limited", left: 15, retry: 200 * ms},
		{at: 2 * time.Second, do: "take", n: 15, allowed: true, reason: "ok", left: 0}, // 10 + 1 s × 5/s
		{at: 2 * time.Second, do: "scale", x: 1},
		{at: 2500 * ms, do: "take", n: 5, allowed: true, reason: "ok", left: 0},
	})
}

func TestStepsPauseIsTrue(t *testing.T) {
	runSteps(t, cfg(10, 10), []step{
		{at: 0, do: "take", n: 5, allowed: true, reason: "ok", left: 5},
		{at: 0, do: "scale", x: 0},
		{at: 0, do: "take", n: 1, reason: "paused", left: 5, retry: -1}, // banked tokens are not spent
		{at: time.Hour, do: "take", n: 1, reason: "paused", left: 5, retry: -1},
		{at: time.Hour, do: "scale", x: 1}, // nothing accrued while paused
		{at: time.Hour, do: "take", n: 5, allowed: true, reason: "ok", left: 0},
		{at: time.Hour, do: "take", n: 1, reason: "rate_limited", retry: 100 * ms},
	})
}

func TestStepsCooldown(t *testing.T) {
	c := cfg(10, 10)
	c.Cooldown = 30 * time.Second
	runSteps(t, c, []step{
		{at: 0, do: "cooldown", x: 2},
		{at: 0, do: "take", n: 1, reason: "cooldown", left: 10, retry: 2 * time.Second},
		{at: 1500 * ms, do: "take", n: 1, reason: "cooldown", left: 10, retry: 500 * ms},
		{at: 1500 * ms, do: "cooldown", x: 0.1}, // a shorter one does not shorten it
		{at: 1999 * ms, do: "take", n: 1, reason: "cooldown", left: 10, retry: ms},
		{at: 2 * time.Second, do: "take", n: 1, allowed: true, reason: "ok", left: 9},
	})
}

func TestStepsBreaker(t *testing.T) {
	c := cfg(10, 10)
	c.BreakerThreshold, c.BreakerTimeout = 3, 10*time.Second
	runSteps(t, c, []step{
		{at: 0, do: "fail"},
		{at: 0, do: "fail"},
		{at: 0, do: "success"}, // failures are consecutive
		{at: 0, do: "fail"},
		{at: 0, do: "fail"},
		{at: 0, do: "take", n: 1, allowed: true, reason: "ok", left: 9},
		{at: 0, do: "fail"}, // third in a row: open
		{at: 0, do: "take", n: 1, reason: "circuit_open", left: 9, retry: 10 * time.Second},
		{at: 9 * time.Second, do: "take", n: 1, reason: "circuit_open", left: 10, retry: time.Second},
		{at: 10 * time.Second, do: "take", n: 1, allowed: true, reason: "probe", left: 9},
		{at: 10 * time.Second, do: "take", n: 1, reason: "circuit_open", left: 9, retry: 10 * time.Second}, // probe in flight
		{at: 11 * time.Second, do: "fail"}, // probe failed: open again from now
		{at: 20 * time.Second, do: "take", n: 1, reason: "circuit_open", left: 10, retry: time.Second},
		{at: 21 * time.Second, do: "take", n: 1, allowed: true, reason: "probe", left: 9},
		{at: 21 * time.Second, do: "success"}, // probe succeeded: closed
		{at: 21 * time.Second, do: "take", n: 1, allowed: true, reason: "ok", left: 8},
	})
}

func TestStepsBreakerProbeLeaseExpires(t *testing.T) {
	// A probe whose outcome is never reported (the replica died) does not
	// block the provider forever: after another timeout, another probe goes.
	c := cfg(10, 10)
	c.BreakerThreshold, c.BreakerTimeout = 1, 5*time.Second
	runSteps(t, c, []step{
		{at: 0, do: "fail"},
		{at: 5 * time.Second, do: "take", n: 1, allowed: true, reason: "probe", left: 9},
		{at: 9 * time.Second, do: "take", n: 1, reason: "circuit_open", left: 10, retry: time.Second},
		{at: 10 * time.Second, do: "take", n: 1, allowed: true, reason: "probe", left: 9},
	})
}

func TestStepsBreakerDisabled(t *testing.T) {
	c := cfg(10, 10)
	c.BreakerThreshold = 0
	runSteps(t, c, []step{
		{at: 0, do: "fail"}, {at: 0, do: "fail"}, {at: 0, do: "fail"},
		{at: 0, do: "take", n: 1, allowed: true, reason: "ok", left: 9},
	})
}

func TestStepsClockGoesBackwards(t *testing.T) {
	// After a failover to a Redis whose clock is behind, no tokens are minted
	// from negative elapsed time.
	runSteps(t, cfg(10, 10), []step{
		{at: time.Minute, do: "take", n: 10, allowed: true, reason: "ok", left: 0},
		{at: 0, do: "take", n: 1, reason: "rate_limited", retry: 100 * ms},
		{at: 100 * ms, do: "take", n: 1, allowed: true, reason: "ok", left: 0},
	})
}

func TestScaleValidation(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		c, _ := newCoord(t, b.Client(t), limiter.Options{})
		register(t, c, "p", 10, 10)
		ctx := context.Background()
		if _, err := c.SetBudgetScale(ctx, "p", 0.25); err != nil {
			t.Fatal(err)
		}
		for _, s := range []float64{math.NaN(), math.Inf(1), math.Inf(-1), -0.1, 1.0001, 2} {
			_, err := c.SetBudgetScale(ctx, "p", s)
			var ae *limiter.ArgumentError
			if !errors.As(err, &ae) || ae.Field != "scale" || !errors.Is(err, limiter.ErrInvalidArgument) {
				t.Fatalf("scale %v: err = %v, want an ArgumentError on field scale", s, err)
			}
		}
		if st := mustStatus(t, c, "p"); st.Scale != 0.25 || st.Seq != 1 {
			t.Fatalf("after refused scales: scale %v seq %d, want 0.25 and 1 (nothing applied)", st.Scale, st.Seq)
		}
		// A provider registered with MaxScale 2 may run above its base rate.
		conf := cfg(10, 10)
		conf.MaxScale = 2
		if _, err := c.Register(ctx, "fast", conf); err != nil {
			t.Fatal(err)
		}
		if _, err := c.SetBudgetScale(ctx, "fast", 2); err != nil {
			t.Fatal(err)
		}
		if _, err := c.SetBudgetScale(ctx, "fast", 2.5); !errors.Is(err, limiter.ErrInvalidArgument) {
			t.Fatalf("scale 2.5 > max_scale 2: err = %v", err)
		}
		if st := mustStatus(t, c, "fast"); st.EffectiveRate != 20 {
			t.Fatalf("effective rate %v, want 20", st.EffectiveRate)
		}
	})
}

func TestSetScaleReportsChange(t *testing.T) {
	m, rdb := redistest.Mini(t)
	m.SetTime(t0)
	c, _ := newCoord(t, rdb, limiter.Options{Source: "feedback:c1"})
	register(t, c, "p", 10, 10)
	ctx := context.Background()
	drain(t, c, "p")
	m.SetTime(t0.Add(300 * ms))
	ch, err := c.SetBudgetScale(ctx, "p", 0.5)
	if err != nil {
		t.Fatal(err)
	}
	if !ch.At.Equal(t0.Add(300 * ms)) {
		t.Fatalf("change at %v, want the Redis time %v", ch.At, t0.Add(300*ms))
	}
	ch.At = time.Time{}
	if ch != (limiter.ScaleChange{Old: 1, New: 0.5, Changed: true, Seq: 1, Tokens: 3}) {
		t.Fatalf("change = %+v", ch)
	}
	ch, _ = c.SetBudgetScale(ctx, "p", 0.5)
	if ch.Changed || ch.Seq != 1 {
		t.Fatalf("same scale again: %+v, want unchanged with seq 1", ch)
	}
	h := rdb.HGetAll(ctx, "sluice:{p}:scale").Val()
	if h["scale"] != "0.5" || h["source"] != "feedback:c1" || h["seq"] != "1" || h["updated_at"] != fmt.Sprint(t0.Add(300*ms).UnixMicro()) {
		t.Fatalf("scale hash = %v", h)
	}
}

func TestRegister(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		c, _ := newCoord(t, b.Client(t), limiter.Options{})
		ctx := context.Background()
		conf := cfg(10, 10)
		for i, want := range []limiter.RegisterResult{limiter.Created, limiter.Unchanged, limiter.Unchanged} {
			got, err := c.Register(ctx, "p", conf)
			if err != nil || got != want {
				t.Fatalf("register #%d: %v %v, want %v", i, got, err, want)
			}
		}
		if _, err := c.SetBudgetScale(ctx, "p", 0.5); err != nil {
			t.Fatal(err)
		}
		try(t, c, "p", 4)
		conf.Capacity = 5
		if got, err := c.Register(ctx, "p", conf); err != nil || got != limiter.Updated {
			t.Fatalf("register new capacity: %v %v", got, err)
		}
		s := mustStatus(t, c, "p")
		if s.Config.Capacity != 5 || s.Tokens > 5 || s.Scale != 0.5 {
			t.Fatalf("after update: capacity %d tokens %v scale %v; want 5, <= 5, scale kept", s.Config.Capacity, s.Tokens, s.Scale)
		}
		names, err := c.Providers(ctx)
		if err != nil || len(names) != 1 || names[0] != "p" {
			t.Fatalf("providers = %v %v", names, err)
		}
	})
}

func TestRegisterValidation(t *testing.T) {
	_, rdb := redistest.Mini(t)
	c, _ := newCoord(t, rdb, limiter.Options{})
	for _, tc := range []struct {
		field string
		edit  func(*limiter.ProviderConfig)
	}{
		{"capacity", func(p *limiter.ProviderConfig) { p.Capacity = 0 }},
		{"capacity", func(p *limiter.ProviderConfig) { p.Capacity = 2e9 }},
		{"refill_rate", func(p *limiter.ProviderConfig) { p.RefillRate = 0 }},
		{"refill_rate", func(p *limiter.ProviderConfig) { p.RefillRate = math.NaN() }},
		{"refill_rate", func(p *limiter.ProviderConfig) { p.RefillRate = math.Inf(1) }},
		{"cooldown", func(p *limiter.ProviderConfig) { p.Cooldown = -time.Second }},
		{"cooldown", func(p *limiter.ProviderConfig) { p.Cooldown = 25 * time.Hour }},
		{"breaker_threshold", func(p *limiter.ProviderConfig) { p.BreakerThreshold = -1 }},
		{"breaker_timeout", func(p *limiter.ProviderConfig) { p.BreakerTimeout = 0 }},
		{"max_scale", func(p *limiter.ProviderConfig) { p.MaxScale = 0.5 }},
		{"max_scale", func(p *limiter.ProviderConfig) { p.MaxScale = math.NaN() }},
	} {
		conf := limiter.DefaultProviderConfig()
		tc.edit(&conf)
		_, err := c.Register(context.Background(), "p", conf)
		var ae *limiter.ArgumentError
		if !errors.As(err, &ae) || ae.Field != tc.field || ae.Range == "" {
			t.Fatalf("%s: err = %v, want an ArgumentError naming %s and its range", tc.field, err, tc.field)
		}
	}
	if n := rdb.Exists(context.Background(), "sluice:{p}:config").Val(); n != 0 {
		t.Fatal("a refused config was stored")
	}
	for _, name := range []string{"", "a b", "x{y}", "a:b", string(make([]byte, 65))} {
		_, err := c.Register(context.Background(), name, limiter.DefaultProviderConfig())
		var ae *limiter.ArgumentError
		if !errors.As(err, &ae) || ae.Field != "provider" {
			t.Fatalf("provider %q: err = %v, want an ArgumentError on provider", name, err)
		}
	}
}

func TestScriptValidatesArgumentsToo(t *testing.T) {
	// The scripts are a contract for clients in other languages: they refuse
	// bad arguments themselves, with the field and range in the error.
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		rdb := b.Client(t)
		ctx := context.Background()
		keys := []string{"sluice:{p}:config", "sluice:{p}:bucket", "sluice:{p}:scale"}
		err := limiter.RegisterScriptForTest.Run(ctx, rdb, keys, 0, 10, 1, 1, 1, 1).Err()
		if err == nil || err.Error() != "INVALID_ARGUMENT capacity=0 must be an integer in [1, 1000000000]" {
			t.Fatalf("register capacity 0: %v", err)
		}
		if err := limiter.RegisterScriptForTest.Run(ctx, rdb, keys, 10, 10, 1, 1, 1, 1).Err(); err != nil {
			t.Fatal(err)
		}
		err = limiter.SetScaleScriptForTest.Run(ctx, rdb, keys, "nan", "x", "").Err()
		if err == nil || err.Error() != "INVALID_ARGUMENT scale=nan must be a finite number in [0, 1] (max_scale)" {
			t.Fatalf("set_scale nan: %v", err)
		}
	})
}

func TestInvalidN(t *testing.T) {
	_, rdb := redistest.Mini(t)
	c, _ := newCoord(t, rdb, limiter.Options{})
	register(t, c, "p", 10, 10)
	for _, n := range []int{0, -1, 2e9} {
		if _, err := c.TryAcquire(context.Background(), "p", n); !errors.Is(err, limiter.ErrInvalidArgument) {
			t.Fatalf("n=%d: err = %v", n, err)
		}
	}
	d, err := c.Acquire(context.Background(), "p", 11)
	if !errors.Is(err, limiter.ErrExceedsCapacity) || d.Reason != limiter.ReasonExceedsCapacity || d.Capacity != 10 {
		t.Fatalf("Acquire n=11 > capacity 10: err = %v, want an immediate ErrExceedsCapacity", err)
	}
	if _, err := c.TryAcquire(context.Background(), "nope", 1); !errors.Is(err, limiter.ErrUnknownProvider) {
		t.Fatalf("unknown provider: %v", err)
	}
}

func TestStatusScaleAndShadow(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		c, _ := newCoord(t, b.Client(t), limiter.Options{Source: "feedback:pod-1"})
		ctx := context.Background()
		if _, err := c.Status(ctx, "p"); !errors.Is(err, limiter.ErrUnknownProvider) {
			t.Fatalf("unknown provider: %v", err)
		}
		register(t, c, "p", 10, 10)
		if s := mustStatus(t, c, "p"); s.Scale != 1 || s.Seq != 0 || s.Source != "register" || s.Level != state.OK {
			t.Fatalf("a new provider: %+v, want scale 1 from register, never changed, level ok", s)
		}
		ch, err := c.SetBudgetScale(ctx, "p", 0.5)
		if err != nil {
			t.Fatal(err)
		}
		if s := mustStatus(t, c, "p"); s.Scale != 0.5 || !s.UpdatedAt.Equal(ch.At) || s.Source != "feedback:pod-1" || s.Seq != 1 {
			t.Fatalf("status %+v, want 0.5 set by feedback:pod-1 at %v", s, ch.At)
		}
		if err := c.SetShadowScale(ctx, "p", 0.25); err != nil {
			t.Fatal(err)
		}
		h := b.Client(t).HGetAll(ctx, "sluice:{p}:scale").Val()
		if h["shadow_scale"] != "0.25" || h["shadow_source"] != "feedback:pod-1" || h["scale"] != "0.5" {
			t.Fatalf("scale hash after shadow: %v", h)
		}
		if s := mustStatus(t, c, "p"); s.ShadowScale != 0.25 || s.ShadowSource != "feedback:pod-1" {
			t.Fatalf("status shadow %v from %q", s.ShadowScale, s.ShadowSource)
		}
		if err := c.SetShadowScale(ctx, "p", 3); !errors.Is(err, limiter.ErrInvalidArgument) {
			t.Fatalf("shadow 3 > max_scale: %v", err)
		}
		if d := try(t, c, "p", 1); d.Scale != 0.5 {
			t.Fatalf("shadow changed the rate: %+v", d)
		}
	})
}

// TestOnlyAcquiringProcessesAreReplicas: registering, inspecting and
// rescaling (an operator's CLI) do not make a process a replica; the first
// acquisition does, and Close leaves.
func TestOnlyAcquiringProcessesAreReplicas(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		ctx := context.Background()
		op, _ := newCoord(t, b.Client(t), limiter.Options{})
		register(t, op, "p", 10, 10)
		if _, err := op.SetBudgetScale(ctx, "p", 0.5); err != nil {
			t.Fatal(err)
		}
		if s := mustStatus(t, op, "p"); len(s.Replicas) != 0 {
			t.Fatalf("replicas %v after operator calls, want none", s.Replicas)
		}
		r, err := limiter.New(b.Client(t), limiter.Options{Logger: quiet, ReplicaID: "pod-a", CallTimeout: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		try(t, r, "p", 1)
		if s := mustStatus(t, op, "p"); len(s.Replicas) != 1 || s.Replicas[0] != "pod-a" {
			t.Fatalf("replicas %v, want pod-a", s.Replicas)
		}
		r.Close()
		if s := mustStatus(t, op, "p"); len(s.Replicas) != 0 {
			t.Fatalf("replicas %v after Close, want none", s.Replicas)
		}
	})
}
