package limiter_test

// The seed's ten RateCoordinator tests (test_set_budget_scale_* and friends),
// each on miniredis and on a real redis-server.

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/pkg/limiter"
	"github.com/sluice-dev/sluice/pkg/state"
)

func TestSeedScaleAdjustsRate(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		if b.Mini != nil {
			b.Mini.SetTime(t0) // Redis time stands still
		}
		c, _ := newCoord(t, b.Client(t), limiter.Options{})
		register(t, c, "test", 100, 100)
		if _, err := c.SetBudgetScale(context.Background(), "test", 0.5); err != nil {
			t.Fatal(err)
		}
		if s := mustStatus(t, c, "test"); s.EffectiveRate != 50 || s.Scale != 0.5 {
			t.Fatalf("effective rate %v scale %v, want 50 and 0.5", s.EffectiveRate, s.Scale)
		}
		// The rate in force is what a denial's retry-after is computed from:
		// one token at 50/s is at most 20ms away once the bucket is empty.
		// (The refusal that ended the drain: another call could come after
		// a token has refilled, on a slow machine.)
		d := drain(t, c, "test")
		if d.Allowed || d.Reason != limiter.ReasonRateLimited || d.RetryAfter <= 0 || d.RetryAfter > 20*time.Millisecond {
			t.Fatalf("after drain: %+v, want a denial with retry-after in (0, 20ms]", d)
		}
	})
}

func TestSeedScaleUnknownProvider(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		c, _ := newCoord(t, b.Client(t), limiter.Options{})
		_, err := c.SetBudgetScale(context.Background(), "nope", 0.5)
		if !errors.Is(err, limiter.ErrUnknownProvider) {
			t.Fatalf("err = %v, want ErrUnknownProvider", err)
		}
		// Nothing was created for it.
		if n, _ := b.Client(t).Exists(context.Background(), "sluice:{nope}:scale", "sluice:{nope}:bucket").Result(); n != 0 {
			t.Fatalf("%d keys created for an unknown provider", n)
		}
	})
}

func TestSeedScaleZero(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		c, _ := newCoord(t, b.Client(t), limiter.Options{})
		register(t, c, "test", 100, 100) // full bucket: 100 tokens banked
		if _, err := c.SetBudgetScale(context.Background(), "test", 0); err != nil {
			t.Fatal(err)
		}
		d := try(t, c, "test", 1)
		if d.Allowed || d.Reason != limiter.ReasonPaused || d.RetryAfter != -1 {
			t.Fatalf("at scale 0: %+v, want paused with no retry estimate, even with banked tokens", d)
		}
		if d.Remaining != 100 {
			t.Fatalf("banked tokens %v, want 100 kept (not spent, not lost)", d.Remaining)
		}
		if s := mustStatus(t, c, "test"); s.EffectiveRate != 0 {
			t.Fatalf("effective rate %v, want 0", s.EffectiveRate)
		}
	})
}

func TestSeedScaleOne(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		c, _ := newCoord(t, b.Client(t), limiter.Options{})
		register(t, c, "test", 100, 100)
		ctx := context.Background()
		for _, s := range []float64{0.25, 1} {
			if _, err := c.SetBudgetScale(ctx, "test", s); err != nil {
				t.Fatal(err)
			}
		}
		if s := mustStatus(t, c, "test"); s.EffectiveRate != 100 || s.Scale != 1 {
			t.Fatalf("effective rate %v scale %v, want the full 100 back", s.EffectiveRate, s.Scale)
		}
	})
}

func TestSeedPressureStateStored(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		c, _ := newCoord(t, b.Client(t), limiter.Options{})
		register(t, c, "test", 100, 100)
		if err := c.SetPressure(context.Background(), "test", "soft"); err != nil {
			t.Fatal(err)
		}
		// Readable by an operator with redis-cli, and by every replica.
		if lvl, _ := b.Client(t).HGet(context.Background(), "sluice:{test}:scale", "level").Result(); lvl != "soft" {
			t.Fatalf("HGET level = %q, want soft", lvl)
		}
		other, _ := newCoord(t, b.Client(t), limiter.Options{})
		if d := try(t, other, "test", 1); d.Level != "soft" {
			t.Fatalf("another replica sees level %q, want soft", d.Level)
		}
		if err := c.SetPressure(context.Background(), "test", "critical"); !errors.Is(err, limiter.ErrInvalidArgument) {
			t.Fatalf("level critical: err = %v, want ErrInvalidArgument", err)
		}
	})
}

func TestSeedScalePersistsAcrossAcquire(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		c, _ := newCoord(t, b.Client(t), limiter.Options{})
		register(t, c, "test", 100, 100)
		if _, err := c.SetBudgetScale(context.Background(), "test", 0.5); err != nil {
			t.Fatal(err)
		}
		for range 5 {
			if _, err := c.Acquire(context.Background(), "test", 1); err != nil {
				t.Fatal(err)
			}
		}
		if d := try(t, c, "test", 1); d.Scale != 0.5 {
			t.Fatalf("scale after acquisitions %v, want 0.5", d.Scale)
		}
	})
}

func TestSeedBaseRatePreserved(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		c, _ := newCoord(t, b.Client(t), limiter.Options{})
		register(t, c, "test", 100, 100)
		ctx := context.Background()
		for _, s := range []float64{0.5, 0, 0.1} {
			if _, err := c.SetBudgetScale(ctx, "test", s); err != nil {
				t.Fatal(err)
			}
		}
		if rate, _ := b.Client(t).HGet(ctx, "sluice:{test}:config", "refill_rate").Result(); rate != "100" {
			t.Fatalf("stored base rate %q, want 100", rate)
		}
		if s := mustStatus(t, c, "test"); s.Config.RefillRate != 100 || !near(s.EffectiveRate, 10, 1e-9) {
			t.Fatalf("base %v effective %v, want 100 and 10", s.Config.RefillRate, s.EffectiveRate)
		}
	})
}

func TestSeedScaleFactorMetricUpdated(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		c, reg := newCoord(t, b.Client(t), limiter.Options{})
		register(t, c, "test", 100, 100)
		if _, err := c.SetBudgetScale(context.Background(), "test", 0.5); err != nil {
			t.Fatal(err)
		}
		want := "\n# HELP rate_coordinator_scale_factor Scale factor applied to the provider's base refill rate (0 = paused).\n# TYPE rate_coordinator_scale_factor gauge\nrate_coordinator_scale_factor{provider=\"test\"} 0.5\n"
		if err := testutil.GatherAndCompare(reg, stringsReader(want), "rate_coordinator_scale_factor"); err != nil {
			t.Fatal(err)
		}
		// Another replica's gauge follows at its next decision.
		other, reg2 := newCoord(t, b.Client(t), limiter.Options{})
		try(t, other, "test", 1)
		if err := testutil.GatherAndCompare(reg2, stringsReader(want), "rate_coordinator_scale_factor"); err != nil {
			t.Fatal(err)
		}
	})
}

func TestSeedPressureStateMetricUpdated(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		c, reg := newCoord(t, b.Client(t), limiter.Options{})
		register(t, c, "test", 100, 100)
		for level, want := range map[state.Level]float64{state.Hard: 2, state.Soft: 1, state.OK: 0} {
			if err := c.SetPressure(context.Background(), "test", level); err != nil {
				t.Fatal(err)
			}
			got := gaugeValue(t, reg, "rate_coordinator_pressure_state", "test")
			if got != want {
				t.Fatalf("pressure %s: gauge %v, want %v", level, got, want)
			}
		}
	})
}

func TestSeedScaleDoesNotAffectCapacity(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		c, _ := newCoord(t, b.Client(t), limiter.Options{})
		register(t, c, "test", 100, 1000)
		if _, err := c.SetBudgetScale(context.Background(), "test", 0.5); err != nil {
			t.Fatal(err)
		}
		s := mustStatus(t, c, "test")
		if s.Config.Capacity != 100 || s.Tokens != 100 {
			t.Fatalf("capacity %d tokens %v, want 100 and 100", s.Config.Capacity, s.Tokens)
		}
		// The whole capacity can still be taken at once.
		if d := try(t, c, "test", 100); !d.Allowed || d.Capacity != 100 {
			t.Fatalf("take 100 at scale 0.5: %+v", d)
		}
	})
}
