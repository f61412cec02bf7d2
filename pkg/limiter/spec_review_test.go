package limiter_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/pkg/limiter"
)

// TestRulesSpecEmptiedIsCorrupt: on a real redis-server (struct packs the
// spec), a provider whose rules_rev says it has rules but whose rules_spec
// holds none (emptied, a JSON [] or a packed count of 0, written by hand)
// is refused as corrupt, never decided on the bucket alone: the window of
// 1 would otherwise let every request through.
func TestRulesSpecEmptiedIsCorrupt(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	rdb := srv.Client(t)
	c, _ := newCoord(t, rdb, limiter.Options{NoTokenLease: true, NoRefusalHold: true})
	register(t, c, "ib", 1000, 1000)
	one := limiter.Rule{Name: "one", Kind: limiter.RuleWindow, Limit: 1, Period: 3_600_000_000_000}
	if _, err := c.SetRules(ctx, "ib", []limiter.Rule{one}); err != nil {
		t.Fatal(err)
	}
	if d, err := c.TryAcquireRequest(ctx, "ib", limiter.Request{}); err != nil || !d.Allowed {
		t.Fatalf("first request: %+v, %v; want granted", d, err)
	}
	if d, err := c.TryAcquireRequest(ctx, "ib", limiter.Request{}); err != nil || d.Allowed {
		t.Fatalf("second request through a window of 1: %+v, %v; want refused", d, err)
	}
	packed, err := rdb.HGet(ctx, ibKeys.Config, "rules_spec").Result()
	if err != nil || len(packed) < 2 || packed[0] != 1 {
		t.Fatalf("stored spec %q, %v: want struct's packing, count 1", packed, err)
	}
	zero := "\x00" + packed[1:strings.IndexByte(packed[1:], 0)+2] // the count 0 and the rules key
	for spec, what := range map[string]string{
		"":   "an empty spec",
		"[]": "a JSON spec of no rules",
		zero: "a packed spec of no rules",
	} {
		rdb.HSet(ctx, ibKeys.Config, "rules_spec", spec)
		d, err := c.TryAcquireRequest(ctx, "ib", limiter.Request{})
		if !errors.Is(err, limiter.ErrCorruptState) || !strings.Contains(err.Error(), "rules_spec=") {
			t.Errorf("decision on %s while rules_rev is set: %+v, %v; want ErrCorruptState naming rules_spec", what, d, err)
		}
	}
}
