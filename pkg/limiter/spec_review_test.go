package limiter_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/pkg/keyspace"
	"github.com/sluice-dev/sluice/pkg/limiter"
)

// newRealRuled is a Limiter that decides every request in Redis (no token
// lease, no held refusal) on a real redis-server, whose struct library
// packs the rules' state, with provider ib registered (1000, 1000) under
// rules; and a client of that server.
func newRealRuled(t *testing.T, rules ...limiter.Rule) (*limiter.Limiter, *redis.Client) {
	t.Helper()
	rdb := redistest.Start(t).Client(t)
	c, _ := newCoord(t, rdb, limiter.Options{NoTokenLease: true, NoRefusalHold: true})
	register(t, c, "ib", 1000, 1000)
	if _, err := c.SetRules(context.Background(), "ib", rules); err != nil {
		t.Fatal(err)
	}
	return c, rdb
}

// TestRulesSpecEmptiedIsCorrupt: on a real redis-server (struct packs the
// spec), a provider whose rules_rev says it has rules but whose rules_spec
// holds none (emptied, a JSON [] or a packed count of 0, written by hand)
// is refused as corrupt, never decided on the bucket alone: the window of
// 1 would otherwise let every request through.
func TestRulesSpecEmptiedIsCorrupt(t *testing.T) {
	one := limiter.Rule{Name: "one", Kind: limiter.RuleWindow, Limit: 1, Period: time.Hour}
	c, rdb := newRealRuled(t, one)
	ctx := context.Background()
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

// TestRulesTextStateTooLargeIsCorrupt: a text window state of the release
// before whose units or time do not fit the packed form (2 bytes of units,
// 7 of µs) is refused as corrupt, not packed cut down to what fits: 65 536
// units held would be packed as 0 and the window of 1 grant again.
func TestRulesTextStateTooLargeIsCorrupt(t *testing.T) {
	one := limiter.Rule{Name: "one", Kind: limiter.RuleWindow, Limit: 1, Period: time.Hour}
	c, rdb := newRealRuled(t, one)
	ctx := context.Background()
	now, err := rdb.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	us := now.UnixMicro()
	for _, state := range []string{
		fmt.Sprintf("65536 1 %d:65536", us),
		fmt.Sprintf("1 1 %d:1", int64(1)<<56+us%1000), // past 7 bytes: cut to them it is long past
	} {
		rdb.HSet(ctx, ibKeys.Rules, "one", state)
		d, err := c.TryAcquireRequest(ctx, "ib", limiter.Request{})
		if !errors.Is(err, limiter.ErrCorruptState) && (err != nil || d.Allowed) {
			t.Errorf("decision on the text state %q: %+v, %v; want ErrCorruptState or a refusal", state, d, err)
		}
	}
}

// TestRulesTextPermitTooLargeIsCorrupt: a text permit of the release before
// whose places do not fit 2 bytes is refused as corrupt, not counted and
// then packed cut down: 65 536 places recounted would be stored as 0
// held, and the next request granted through a concurrency limit of 1.
func TestRulesTextPermitTooLargeIsCorrupt(t *testing.T) {
	open := limiter.Rule{Name: "open", Kind: limiter.RuleConcurrency, Limit: 1, Lease: time.Hour}
	c, rdb := newRealRuled(t, open)
	ctx := context.Background()
	now, err := rdb.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	us := now.UnixMicro()
	// The rule's lower bound of the next lease end has passed: acquire
	// counts the permits again.
	rdb.HSet(ctx, ibKeys.Rules, "open", fmt.Sprintf("1 %d", us-1), "open#old", fmt.Sprintf("65536 %d", us+3_600_000_000))
	for i := range 2 {
		d, err := c.TryAcquireRequest(ctx, "ib", limiter.Request{})
		if !errors.Is(err, limiter.ErrCorruptState) && (err != nil || d.Allowed) {
			t.Errorf("decision %d on the text permit: %+v, %v; want ErrCorruptState or a refusal", i, d, err)
		}
	}
}

// TestRestartLanesRefusedKeepsScaleAndListing: lanes that no longer fit
// the config registered again are refused inside the MULTI (the caller
// gets the error naming the field), but the provider, registered again
// all the same, is listed again and keeps the scale this replica last saw
// (0.5 here: at 1 it would be granted twice the operator's rate).
func TestRestartLanesRefusedKeepsScaleAndListing(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	c, _ := newCoord(t, rdb, limiter.Options{NoTokenLease: true, NoRefusalHold: true})
	register(t, c, "p", 100, 100)
	if _, err := c.SetLanes(ctx, "p", []limiter.Lane{{Name: "live", Priority: 1, Burst: 50}, {Name: "backfill"}}); err != nil {
		t.Fatal(err)
	}
	register(t, c, "p", 20, 100) // the lanes' burst of 50 no longer fits
	if _, err := c.SetBudgetScale(ctx, "p", 0.5); err != nil {
		t.Fatal(err)
	}
	if d, err := c.TryAcquire(ctx, "p", 1); err != nil || d.Scale != 0.5 {
		t.Fatalf("before the loss: %+v, %v; want a decision at scale 0.5", d, err)
	}
	if err := rdb.FlushAll(ctx).Err(); err != nil { // this test's own server
		t.Fatal(err)
	}
	_, err := c.TryAcquire(ctx, "p", 1)
	if !errors.Is(err, limiter.ErrInvalidArgument) || !strings.Contains(err.Error(), "lanes.live.burst") {
		t.Fatalf("after the loss: %v; want the lanes refused, naming lanes.live.burst", err)
	}
	if s, err := rdb.HGet(ctx, ibKeysP.Scale, "scale").Result(); err != nil || s != "0.5" {
		t.Errorf("scale after the provider was registered again: %q, %v; want 0.5 restored", s, err)
	}
	if names, err := c.Providers(ctx); err != nil || len(names) != 1 || names[0] != "p" {
		t.Errorf("providers after the provider was registered again: %v, %v; want [p]", names, err)
	}
	if d, err := c.TryAcquire(ctx, "p", 1); err != nil || d.Scale != 0.5 {
		t.Errorf("next decision: %+v, %v; want scale 0.5", d, err)
	}
}

var ibKeysP = keyspace.Prefix("").Provider("p")

// TestBucketTokensOutOfRangeRepaired: a bucket whose tokens are a finite
// number below 0 (written by hand: no script writes one) is corrupt and
// repaired empty, as of now: the wait it reports is a refill's, never a
// sum no wait covers nor a reply Redis cannot make an integer of.
func TestBucketTokensOutOfRangeRepaired(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	rdb := srv.Client(t)
	c, _ := newCoord(t, rdb, limiter.Options{NoTokenLease: true, NoRefusalHold: true})
	register(t, c, "p", 10, 1)
	for _, tokens := range []string{"-1e300", "-5"} {
		now, err := rdb.Time(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		rdb.HSet(ctx, ibKeysP.Bucket, "tokens", tokens, "ts", now.UnixMicro())
		d, err := c.TryAcquire(ctx, "p", 1)
		if err != nil {
			t.Fatalf("tokens=%s: %v", tokens, err)
		}
		if d.Allowed || d.RetryAfter <= 0 || d.RetryAfter > 2*time.Second {
			t.Errorf("tokens=%s: %+v; want refused with a wait of at most a token's refill (1 s) and then some", tokens, d)
		}
	}
}

// TestPermitReleaseLeavesCorruptStateCorrupt: releasing a permit while
// its concurrency rule's state is corrupt (written by hand) leaves the
// state as it is, for acquire to refuse as corrupt; rewriting it as the
// released permit's places taken from nothing (0 held) forgot the other
// open permit, and the limit of 2 granted two more beside it.
func TestPermitReleaseLeavesCorruptStateCorrupt(t *testing.T) {
	open := limiter.Rule{Name: "open", Kind: limiter.RuleConcurrency, Limit: 2, Lease: time.Hour}
	c, rdb := newRealRuled(t, open)
	ctx := context.Background()
	var held []*limiter.Permit
	for range 2 {
		d, err := c.TryAcquireRequest(ctx, "ib", limiter.Request{})
		if err != nil || !d.Allowed || d.Permit == nil {
			t.Fatalf("a permit under the limit: %+v, %v", d, err)
		}
		held = append(held, d.Permit)
	}
	rdb.HSet(ctx, ibKeys.Rules, "open", "garbage")
	if err := held[0].Release(ctx); err != nil {
		t.Fatal(err)
	}
	granted := 0
	for range 2 {
		d, err := c.TryAcquireRequest(ctx, "ib", limiter.Request{})
		if err == nil && d.Allowed {
			granted++
		} else if err != nil && !errors.Is(err, limiter.ErrCorruptState) {
			t.Fatal(err)
		}
	}
	if granted > 1 {
		t.Fatalf("%d granted beside the open permit through a limit of 2, want at most 1", granted)
	}
}

// TestSetNoRulesTwiceIsUnchanged: on a real redis-server (struct packs the
// spec), setting no rules on a provider that has none reports no change,
// as setting the same rules again does.
func TestSetNoRulesTwiceIsUnchanged(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	c, _ := newCoord(t, srv.Client(t), limiter.Options{})
	register(t, c, "ib", 1000, 1000)
	for i := range 2 {
		if changed, err := c.SetRules(ctx, "ib", nil); err != nil || changed {
			t.Fatalf("SetRules(none) #%d on a provider without rules: changed=%v, %v; want unchanged", i, changed, err)
		}
	}
	one := []limiter.Rule{{Name: "one", Kind: limiter.RuleWindow, Limit: 1, Period: time.Hour}}
	if changed, err := c.SetRules(ctx, "ib", one); err != nil || !changed {
		t.Fatalf("SetRules(one): changed=%v, %v", changed, err)
	}
	if changed, err := c.SetRules(ctx, "ib", one); err != nil || changed {
		t.Fatalf("SetRules(one) again: changed=%v, %v; want unchanged", changed, err)
	}
}
