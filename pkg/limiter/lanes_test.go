package limiter_test

// Lanes (docs/lanes.md): the hand-out of the refill at fixed Redis
// instants on miniredis; shares and the bound under concurrent replicas on
// a real redis-server.

import (
	"context"
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/pkg/internal/promutil"
	"github.com/sluice-dev/sluice/pkg/limiter"
)

var (
	liveLane     = limiter.Lane{Name: "live", Priority: 1, Burst: 10}
	backfillLane = limiter.Lane{Name: "backfill"}
)

// laned is a limiter on miniredis at Redis time t0 with provider "ib"
// (capacity 20, 100/s) and lanes set.
func laned(t *testing.T, lanes ...limiter.Lane) (*ruled, context.Context) {
	t.Helper()
	m, rdb := redistest.Mini(t)
	m.SetTime(t0)
	c, reg := newCoord(t, rdb, limiter.Options{MaxBatch: 1})
	register(t, c, "ib", 20, 100)
	ctx := context.Background()
	if _, err := c.SetLanes(ctx, "ib", lanes); err != nil {
		t.Fatal(err)
	}
	return &ruled{t: t, m: m, rdb: rdb, c: c, reg: reg}, ctx
}

// takeAll takes 1 token at a time in lane until refused: how many it got.
func takeAll(t *testing.T, c *limiter.Limiter, lane string) int {
	t.Helper()
	for i := 0; ; i++ {
		d, err := c.TryAcquireRequest(context.Background(), "ib", limiter.Request{Lane: lane})
		if err != nil {
			t.Fatal(err)
		}
		if !d.Allowed {
			return i
		}
		if i > 1000 {
			t.Fatal("never refused")
		}
	}
}

func TestLanesPriorityTakesTheRefillFirst(t *testing.T) {
	r, _ := laned(t, backfillLane, liveLane)
	// A new bucket is full: live 10, the backfill the other 10. The
	// backfill cannot take live's tokens; live can take the backfill's.
	if got := takeAll(t, r.c, "backfill"); got != 10 {
		t.Fatalf("backfill took %d of a full bucket, want its 10", got)
	}
	if got := takeAll(t, r.c, "live"); got != 10 {
		t.Fatalf("live took %d, want its 10", got)
	}
	// 50 ms: 5 tokens, all to live (its bucket is not full).
	r.at(50 * time.Millisecond)
	if got := takeAll(t, r.c, "backfill"); got != 0 {
		t.Fatalf("backfill took %d while live was filling", got)
	}
	if got := takeAll(t, r.c, "live"); got != 5 {
		t.Fatalf("live took %d after 50 ms, want 5", got)
	}
	// 250 ms more: 25 tokens; live fills to 10, the backfill gets 10 (its
	// burst), 5 are lost to the full buckets.
	r.at(300 * time.Millisecond)
	if got := takeAll(t, r.c, "backfill"); got != 10 {
		t.Fatalf("backfill took %d once live was full, want 10", got)
	}
	// Live still has its 10, and may take from the backfill's (empty now).
	if got := takeAll(t, r.c, "live"); got != 10 {
		t.Fatalf("live took %d, want 10", got)
	}
	// A refused backfill request waits on its own share: the whole rate
	// (it is alone at its priority), 10 ms for one token.
	d, err := r.c.TryAcquireRequest(context.Background(), "ib", limiter.Request{Lane: "backfill"})
	if err != nil || d.Allowed || d.RetryAfter != 10*time.Millisecond {
		t.Fatalf("refusal %+v %v, want a 10 ms wait", d, err)
	}
}

func TestLanesIdleLaneGivesItsRefillAway(t *testing.T) {
	r, _ := laned(t, backfillLane, liveLane)
	takeAll(t, r.c, "backfill")
	// Live idle and full: the whole refill goes to the backfill.
	for i := 1; i <= 5; i++ {
		r.at(time.Duration(i) * 100 * time.Millisecond)
		if got := takeAll(t, r.c, "backfill"); got != 10 {
			t.Fatalf("round %d: backfill took %d in 100 ms with live idle, want 10 (the whole rate)", i, got)
		}
	}
}

func TestLanesWeights(t *testing.T) {
	r, _ := laned(t, limiter.Lane{Name: "a", Weight: 3}, limiter.Lane{Name: "b", Weight: 1})
	// Bursts: 15 and 5, a weight's share of the capacity.
	if a, b := takeAll(t, r.c, "a"), takeAll(t, r.c, "b"); a != 15 || b != 5 {
		t.Fatalf("full bucket: a %d, b %d, want 15 and 5", a, b)
	}
	var a, b int
	for i := 1; i <= 10; i++ {
		r.at(time.Duration(i) * 40 * time.Millisecond) // 4 tokens each time
		a += takeAll(t, r.c, "a")
		b += takeAll(t, r.c, "b")
	}
	if a != 30 || b != 10 {
		t.Fatalf("both backlogged over 400 ms: a %d, b %d, want 30 and 10", a, b)
	}
}

func TestLanesScaleCutFallsOnTheLowestFirst(t *testing.T) {
	r, ctx := laned(t, backfillLane, liveLane)
	takeAll(t, r.c, "backfill") // live keeps its full bucket
	if _, err := r.c.SetBudgetScale(ctx, "ib", 0.5); err != nil {
		t.Fatal(err)
	}
	// At 50/s, live asking 20/s gets all it asks; the backfill the rest.
	var live, backfill int
	for i := 1; i <= 10; i++ {
		r.at(time.Duration(i) * 100 * time.Millisecond) // 5 tokens
		if d, _ := r.c.TryAcquireRequest(ctx, "ib", limiter.Request{Lane: "live", Cost: 2}); d.Allowed {
			live += 2
		}
		backfill += takeAll(t, r.c, "backfill")
	}
	// The backfill: 5 in the first step (live was full), then the 3 that
	// live's 2 leave.
	if live != 20 || backfill != 5+9*3 {
		t.Fatalf("at scale 0.5 over 1 s: live %d (asked 20), backfill %d, want 20 and 32", live, backfill)
	}
}

func TestLanesFloorAtPause(t *testing.T) {
	r, ctx := laned(t, backfillLane, limiter.Lane{Name: "live", Priority: 1, Burst: 10, Floor: 0.1})
	takeAll(t, r.c, "live")
	takeAll(t, r.c, "backfill")
	if _, err := r.c.SetBudgetScale(ctx, "ib", 0); err != nil {
		t.Fatal(err)
	}
	r.at(time.Second)
	d, err := r.c.TryAcquireRequest(ctx, "ib", limiter.Request{Lane: "backfill"})
	if err != nil || d.Reason != limiter.ReasonPaused {
		t.Fatalf("backfill at scale 0: %+v %v, want paused", d, err)
	}
	if got := takeAll(t, r.c, "live"); got != 10 {
		t.Fatalf("live with floor 0.1 took %d in 1 s at scale 0, want 10 (0.1 × 100/s)", got)
	}
}

func TestLanesGuarantee(t *testing.T) {
	r, _ := laned(t, limiter.Lane{Name: "backfill", Guarantee: 30}, limiter.Lane{Name: "live", Priority: 1, Burst: 10})
	takeAll(t, r.c, "backfill")
	takeAll(t, r.c, "live")
	var live, backfill int
	for i := 1; i <= 10; i++ {
		r.at(time.Duration(i) * 100 * time.Millisecond)
		live += takeAll(t, r.c, "live") // a live lane that wants everything
		backfill += takeAll(t, r.c, "backfill")
	}
	if backfill != 30 || live != 70 {
		t.Fatalf("1 s with live backlogged: backfill %d (guaranteed 30/s), live %d; want 30 and 70", backfill, live)
	}
}

func TestLanesDefaultAndUnknown(t *testing.T) {
	r, ctx := laned(t, backfillLane, liveLane)
	// No lane: the last (lowest) lane, through the plain form too.
	if got := takeAll(t, r.c, ""); got != 10 {
		t.Fatalf("a request with no lane took %d, want the backfill's 10", got)
	}
	if d := try(t, r.c, "ib", 1); d.Allowed {
		t.Fatalf("TryAcquire took from live's bucket: %+v", d)
	}
	_, err := r.c.TryAcquireRequest(ctx, "ib", limiter.Request{Lane: "bulk"})
	var ae *limiter.ArgumentError
	if !errors.As(err, &ae) || ae.Field != "lane" {
		t.Fatalf("unknown lane: %v, want an ArgumentError on lane", err)
	}
	// A provider without lanes ignores a lane's name.
	register(t, r.c, "plain", 5, 1)
	d, err := r.c.TryAcquireRequest(ctx, "plain", limiter.Request{Lane: "live"})
	if err != nil || !d.Allowed {
		t.Fatalf("a lane named to a provider without lanes: %+v %v", d, err)
	}
}

func TestLanesBadInput(t *testing.T) {
	r, ctx := laned(t)
	for _, tc := range []struct {
		lanes []limiter.Lane
		field string
	}{
		{[]limiter.Lane{{Name: ""}}, "lanes[1].name"},
		{[]limiter.Lane{{Name: "a b"}}, "lanes[1].name"},
		{[]limiter.Lane{{Name: "a"}, {Name: "a"}}, "lanes.a.name"},
		{[]limiter.Lane{{Name: "a", Priority: -1}}, "lanes.a.priority"},
		{[]limiter.Lane{{Name: "a", Priority: 1001}}, "lanes.a.priority"},
		{[]limiter.Lane{{Name: "a", Weight: -1}}, "lanes.a.weight"},
		{[]limiter.Lane{{Name: "a", Weight: math.NaN()}}, "lanes.a.weight"},
		{[]limiter.Lane{{Name: "a", Weight: math.Inf(1)}}, "lanes.a.weight"},
		{[]limiter.Lane{{Name: "a", Burst: -1}}, "lanes.a.burst"},
		{[]limiter.Lane{{Name: "a", Guarantee: math.NaN()}}, "lanes.a.guarantee"},
		{[]limiter.Lane{{Name: "a", Floor: 1.5}}, "lanes.a.floor"},
		{[]limiter.Lane{{Name: "a", Floor: math.NaN()}}, "lanes.a.floor"},
		// Checked in Redis, against the provider's config (capacity 20, 100/s).
		{[]limiter.Lane{{Name: "a", Burst: 21}}, "lanes.a.burst"},
		{[]limiter.Lane{{Name: "a", Burst: 20}, {Name: "b"}}, "lanes.burst"},
		{[]limiter.Lane{{Name: "a", Guarantee: 60}, {Name: "b", Guarantee: 60}}, "lanes.guarantee"},
	} {
		_, err := r.c.SetLanes(ctx, "ib", tc.lanes)
		var ae *limiter.ArgumentError
		if !errors.As(err, &ae) || ae.Field != tc.field {
			t.Errorf("%+v: %v, want an ArgumentError on %s", tc.lanes, err, tc.field)
		}
	}
	if l, err := r.c.Lanes(ctx, "ib"); err != nil || l != nil {
		t.Fatalf("after bad sets, lanes %+v %v, want none", l, err)
	}
	if _, err := r.c.SetLanes(ctx, "nobody", []limiter.Lane{backfillLane}); !errors.Is(err, limiter.ErrUnknownProvider) {
		t.Fatalf("unknown provider: %v", err)
	}
}

func TestLanesStoredSortedAndRemoved(t *testing.T) {
	r, ctx := laned(t, backfillLane, liveLane)
	l, err := r.c.Lanes(ctx, "ib")
	if err != nil || len(l) != 2 || l[0].Name != "live" || l[1].Name != "backfill" || l[1].Weight != 1 {
		t.Fatalf("stored %+v %v, want live then backfill (weight 1)", l, err)
	}
	if changed, err := r.c.SetLanes(ctx, "ib", []limiter.Lane{backfillLane, liveLane}); err != nil || changed {
		t.Fatalf("the same set again: changed %v %v", changed, err)
	}
	for range 5 {
		if d, err := r.c.TryAcquireRequest(ctx, "ib", limiter.Request{Lane: "live"}); err != nil || !d.Allowed {
			t.Fatal(d, err)
		}
	}
	// Removed: the provider is one bucket again, with the 15 left.
	if changed, err := r.c.SetLanes(ctx, "ib", nil); err != nil || !changed {
		t.Fatalf("removing: %v %v", changed, err)
	}
	keys := ibKeys
	if n, _ := r.rdb.HExists(ctx, keys.Bucket, "lane:live").Result(); n {
		t.Fatal("lane:live left in the bucket after the lanes were removed")
	}
	if got := takeAll(t, r.c, ""); got != 15 {
		t.Fatalf("after removing the lanes: took %d, want the 15 left", got)
	}
}

func TestLanesCorruptStoredSet(t *testing.T) {
	r, ctx := laned(t, backfillLane, liveLane)
	keys := ibKeys
	r.rdb.HSet(ctx, keys.Config, "lanes", `[{"name":"live"}]`)
	_, err := r.c.TryAcquireRequest(ctx, "ib", limiter.Request{Lane: "live"})
	if !errors.Is(err, limiter.ErrCorruptState) {
		t.Fatalf("a hand-edited lane set: %v, want ErrCorruptState", err)
	}
}

// TestLanesSharedByReplicas: replicas (each its own client) keep live
// and backfill callers backlogged on a real redis-server: two lanes of
// equal priority weighted 3:1 share within ±5%, and the provider's total
// never passes capacity + rate × elapsed.
func TestLanesSharedByReplicas(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	admin, _ := newCoord(t, srv.Client(t), limiter.Options{})
	const capacity, rate = 20, 1000.0
	register(t, admin, "ib", capacity, rate)
	if _, err := admin.SetLanes(ctx, "ib", []limiter.Lane{{Name: "a", Weight: 3}, {Name: "b", Weight: 1}}); err != nil {
		t.Fatal(err)
	}
	var granted [2]atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	start := time.Now()
	for replica := range 3 {
		c, _ := newCoord(t, srv.Client(t), limiter.Options{})
		for i, lane := range []string{"a", "b"} {
			spin(&wg, stop, 2, func() {
				d, err := c.TryAcquireRequest(ctx, "ib", limiter.Request{Lane: lane})
				if err != nil {
					t.Error(replica, err)
					return
				}
				if d.Allowed {
					granted[i].Add(1)
				} else if d.RetryAfter > 0 {
					time.Sleep(d.RetryAfter)
				}
			})
		}
	}
	// Until 2000 grants, however slow the machine.
	waitFor(t, "2000 grants", func() bool { return granted[0].Load()+granted[1].Load() >= 2000 })
	close(stop)
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	a, b := float64(granted[0].Load()), float64(granted[1].Load())
	t.Logf("3 replicas, weights 3:1: a %v, b %v (share %.3f) in %.2f s", a, b, a/(a+b), elapsed)
	if share := a / (a + b); math.Abs(share-0.75) > 0.05 {
		t.Errorf("weights 3:1: a %v, b %v, share %.3f, want 0.75 ± 0.05", a, b, share)
	}
	if bound := capacity + rate*elapsed; a+b > bound {
		t.Errorf("granted %v in %.2f s, above the bound %v", a+b, elapsed, bound)
	}
}

func TestParseLanes(t *testing.T) {
	lanes, err := limiter.ParseLanes(" live:priority=1:burst=16 , backfill:weight=2:guarantee=5:floor=0.1")
	if err != nil || len(lanes) != 2 || lanes[0] != (limiter.Lane{Name: "live", Priority: 1, Burst: 16}) ||
		lanes[1] != (limiter.Lane{Name: "backfill", Weight: 2, Guarantee: 5, Floor: 0.1}) {
		t.Fatalf("%+v %v", lanes, err)
	}
	if s := limiter.FormatLanes(lanes); s != "live:priority=1:burst=16,backfill:weight=2:guarantee=5:floor=0.1" {
		t.Fatalf("FormatLanes: %s", s)
	}
	if l, err := limiter.ParseLanes("none"); l != nil || err != nil || limiter.FormatLanes(nil) != "none" {
		t.Fatalf("none: %v %v", l, err)
	}
	for in, field := range map[string]string{
		"live:priority":      "lanes",
		"live:priority=high": "lanes.live.priority",
		"live:speed=1":       "lanes.live.speed",
		"live:weight=NaN":    "lanes.live.weight",
		"live:floor=2":       "lanes.live.floor",
		"a,a":                "lanes.a.name",
		"a b":                "lanes[1].name",
	} {
		_, err := limiter.ParseLanes(in)
		var ae *limiter.ArgumentError
		if !errors.As(err, &ae) || ae.Field != field {
			t.Errorf("%q: %v, want an ArgumentError on %s", in, err, field)
		}
	}
}

func TestLanesMetrics(t *testing.T) {
	r, ctx := laned(t, backfillLane, liveLane)
	takeAll(t, r.c, "live") // 20 granted (its 10 and the backfill's), 1 refused
	// At scale 0.001 the next token is 10 s away: an Acquire whose deadline
	// comes sooner (a second: time for a round trip on a loaded machine) is
	// refused at once.
	if _, err := r.c.SetBudgetScale(ctx, "ib", 0.001); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if _, err := r.c.AcquireRequest(short, "ib", limiter.Request{Lane: "live"}); !errors.Is(err, limiter.ErrRateLimited) {
		t.Fatalf("acquire with a 1 s deadline, the refill 10 s away: %v, want ErrRateLimited", err)
	}
	count := func(result string) float64 {
		v, _ := promutil.Sum(r.reg, "rate_coordinator_lane_acquisitions_total", map[string]string{"provider": "ib", "lane": "live", "result": result})
		return v
	}
	if ok, limited := count("ok"), count("rate_limited"); ok != 20 || limited != 2 {
		t.Fatalf("lane live: ok %v, rate_limited %v; want 20 and 2", ok, limited)
	}
	if all, _ := promutil.Sum(r.reg, "rate_coordinator_acquisitions_total", map[string]string{"provider": "ib", "result": "ok"}); all != 20 {
		t.Fatalf("the provider's series: ok %v, want the lane's 20 there too", all)
	}
}
