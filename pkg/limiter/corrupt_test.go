package limiter_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/lua"
	"github.com/sluice-dev/sluice/pkg/limiter"
)

// TestCorruptScaleFailsClosed: a scale that is not a finite decimal number
// (nan, inf, hex, spaces) never widens the budget: acquire refuses with an
// error naming the key, and SetBudgetScale repairs it.
func TestCorruptScaleFailsClosed(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		rdb := b.Client(t)
		ctx := context.Background()
		c, _ := newCoord(t, rdb, limiter.Options{})
		register(t, c, "p", 10, 100)
		for _, bad := range []string{"nan", "inf", "-inf", "0x1", " 1", "1_0", "1e999"} {
			rdb.HSet(ctx, "sluice:{p}:scale", "scale", bad)
			for range 20 {
				d, err := c.TryAcquire(ctx, "p", 1)
				if !errors.Is(err, limiter.ErrCorruptState) || d.Allowed {
					t.Fatalf("scale %q: %+v, %v: want ErrCorruptState and no grant", bad, d, err)
				}
				if !strings.Contains(err.Error(), "sluice:{p}:scale scale="+bad) {
					t.Fatalf("scale %q: error %q does not name the key and field", bad, err)
				}
			}
			if _, err := c.Status(ctx, "p"); !errors.Is(err, limiter.ErrCorruptState) {
				t.Fatalf("scale %q: Status = %v, want ErrCorruptState", bad, err)
			}
		}
		if _, err := c.SetBudgetScale(ctx, "p", 0.5); err != nil {
			t.Fatalf("SetBudgetScale over a corrupt scale: %v", err)
		}
		st := mustStatus(t, c, "p")
		if st.Scale != 0.5 || st.Tokens > 10 {
			t.Fatalf("after the repair: %+v", st)
		}
		if d := try(t, c, "p", 1); !d.Allowed {
			t.Fatalf("after the repair: %+v", d)
		}
	})
}

// TestCorruptBucketRepairedEmpty: a bucket whose tokens or time are not
// numbers is repaired empty (never full): the next grant waits for refill.
func TestCorruptBucketRepairedEmpty(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		rdb := b.Client(t)
		ctx := context.Background()
		c, _ := newCoord(t, rdb, limiter.Options{})
		register(t, c, "p", 100, 0.001) // refill far below one token per test
		for _, field := range []string{"tokens", "ts"} {
			rdb.HSet(ctx, "sluice:{p}:bucket", field, "nan")
			d, err := c.TryAcquire(ctx, "p", 1)
			if err != nil || d.Allowed || d.Reason != limiter.ReasonRateLimited {
				t.Fatalf("corrupt %s: %+v, %v: want a rate-limited refusal from an empty bucket", field, d, err)
			}
			if h := rdb.HGetAll(ctx, "sluice:{p}:bucket").Val(); h["tokens"] != "0" {
				t.Fatalf("corrupt %s: bucket %v, want repaired with 0 tokens", field, h)
			}
		}
	})
}

// TestCorruptConfig: a config field that is not a number is refused with
// ErrCorruptState naming it; Register writes it again.
func TestCorruptConfig(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		rdb := b.Client(t)
		ctx := context.Background()
		c, _ := newCoord(t, rdb, limiter.Options{})
		register(t, c, "p", 10, 100)
		rdb.HSet(ctx, "sluice:{p}:config", "refill_rate", "inf")
		if _, err := c.TryAcquire(ctx, "p", 1); !errors.Is(err, limiter.ErrCorruptState) || !strings.Contains(err.Error(), "refill_rate=inf") {
			t.Fatalf("TryAcquire = %v, want ErrCorruptState naming refill_rate", err)
		}
		if _, err := c.SetBudgetScale(ctx, "p", 0.5); !errors.Is(err, limiter.ErrCorruptState) {
			t.Fatalf("SetBudgetScale = %v, want ErrCorruptState", err)
		}
		cfg := limiter.DefaultProviderConfig()
		cfg.Capacity, cfg.RefillRate = 10, 100
		if _, err := c.Register(ctx, "p", cfg); err != nil {
			t.Fatalf("Register over a corrupt config: %v", err)
		}
		if st := mustStatus(t, c, "p"); st.Tokens > 10 || st.Config.RefillRate != 100 {
			t.Fatalf("after the repair: %+v", st)
		}
	})
}

// TestStrictNumbers: the scripts take decimal numbers only: hex, spaces,
// underscores, nan and inf are refused, whoever calls them.
func TestStrictNumbers(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		rdb := b.Client(t)
		ctx := context.Background()
		keys := []string{"sluice:{q}:config", "sluice:{q}:bucket", "sluice:{q}:scale"}
		run := func(script string, keys []string, args ...any) error {
			return redis.NewScript(lua.Source(script)).Run(ctx, rdb, keys, args...).Err()
		}
		for _, bad := range []string{"0x32", " 50", "50 ", "5_0", "nan", "inf", "1e999", ""} {
			err := run("register", keys, bad, "10", "60", "3", "30", "1")
			if err == nil || !strings.Contains(err.Error(), "INVALID_ARGUMENT capacity=") {
				t.Errorf("register capacity %q: %v, want INVALID_ARGUMENT", bad, err)
			}
		}
		if err := run("register", keys, "5e1", "10", "60", "3", "30", "1"); err != nil {
			t.Fatal(err)
		}
		if got := rdb.HGet(ctx, "sluice:{q}:config", "capacity").Val(); got != "50" {
			t.Fatalf("capacity stored as %q, want 50 (as parsed)", got)
		}
		acq := append(keys, "sluice:{q}:breaker", "sluice:{q}:cooldown")
		for _, bad := range []string{"0x10", " 1", "1.5", "nan"} {
			if err := run("acquire", acq, bad); err == nil || !strings.Contains(err.Error(), "INVALID_ARGUMENT n=") {
				t.Errorf("acquire n=%q: %v, want INVALID_ARGUMENT", bad, err)
			}
		}
		for _, bad := range []string{"0x1p-1", "nan", " 0.5"} {
			if err := run("set_scale", keys, bad, "test", ""); err == nil || !strings.Contains(err.Error(), "INVALID_ARGUMENT scale=") {
				t.Errorf("set_scale %q: %v, want INVALID_ARGUMENT", bad, err)
			}
		}
	})
}

// TestStoredConfigGuarded: acquire reads the config's capacity and
// refill_rate with Lua's tonumber and a range check (lib.lua's guard), not
// the strict pattern register checks on the way in. A finite value outside
// register's range is refused as corrupt like a word; a hand-written one
// that tonumber reads (hex, spaces: 10 here) is decided on as the number it
// spells, so the budget stays within what register allows: never more than
// 10 grants from a bucket of 10 that does not refill.
func TestStoredConfigGuarded(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		rdb := b.Client(t)
		ctx := context.Background()
		c, _ := newCoord(t, rdb, limiter.Options{NoTokenLease: true, NoRefusalHold: true})
		for _, bad := range []struct{ field, value string }{
			{"capacity", "1e10"}, {"capacity", "0"}, {"capacity", "2.5"}, {"capacity", "-0x10"},
			{"refill_rate", "0"}, {"refill_rate", "-1"}, {"refill_rate", "1e10"}, {"refill_rate", "1e999"}, {"refill_rate", ""},
		} {
			register(t, c, "p", 10, 0.001)
			rdb.HSet(ctx, "sluice:{p}:config", bad.field, bad.value)
			d, err := c.TryAcquire(ctx, "p", 1)
			if !errors.Is(err, limiter.ErrCorruptState) || d.Allowed || !strings.Contains(err.Error(), bad.field+"="+bad.value+" ") {
				t.Fatalf("%s=%q: %+v, %v: want ErrCorruptState naming it", bad.field, bad.value, d, err)
			}
		}
		for _, spelled := range []string{"0x0A", " 10", "10 ", "+10", "1e1"} {
			if _, err := rdb.Del(ctx, "sluice:{p}:config", "sluice:{p}:bucket").Result(); err != nil {
				t.Fatal(err)
			}
			register(t, c, "p", 10, 0.001)
			rdb.HSet(ctx, "sluice:{p}:config", "capacity", spelled)
			granted := 0
			for range 20 {
				d, err := c.TryAcquire(ctx, "p", 1)
				if err != nil && !errors.Is(err, limiter.ErrCorruptState) {
					t.Fatalf("capacity %q: %v", spelled, err)
				}
				if d.Allowed {
					granted++
					if d.Capacity != 10 && d.Capacity != 0 { // echoed as stored: a decimal reads as 10, anything else as 0
						t.Fatalf("capacity %q: the decision says capacity %d", spelled, d.Capacity)
					}
				}
			}
			if granted > 10 {
				t.Fatalf("capacity %q: %d grants from a bucket of 10 that does not refill", spelled, granted)
			}
		}
	})
}
