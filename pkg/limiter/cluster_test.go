package limiter_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/pkg/limiter"
)

// onMasters returns one provider name per master of cl (n of them), each
// on a different master, in the order of cl.Masters.
func onMasters(t *testing.T, cl *redistest.Cluster, n int) []string {
	t.Helper()
	masters := cl.Masters(t)
	if len(masters) < n {
		t.Fatalf("%d masters, want %d", len(masters), n)
	}
	names := make([]string, n)
	found := 0
	for i := 0; found < n && i < 1000; i++ {
		name := fmt.Sprintf("p%d", i)
		m := cl.MasterOf(t, cl.Slot(t, "{"+name+"}"))
		for j := range n {
			if masters[j] == m && names[j] == "" {
				names[j] = name
				found++
			}
		}
	}
	if found < n {
		t.Fatalf("no provider name found for every master: %v", names)
	}
	return names
}

// tally counts what the acquisitions of one provider through one
// Limiter ended with.
type tally struct {
	shared, local atomic.Int64 // grants by the shared bucket, by the outage mode
	refused       atomic.Int64 // refusals and callers' deadlines (normal under load)
	unavailable   atomic.Int64 // errors wrapping ErrRedisUnavailable
	raw           atomic.Int64 // errors carrying a raw Redis error reply (ASK, MOVED, TRYAGAIN...)
	other         atomic.Int64 // any other error
	lastShared    atomic.Int64 // unix ns of the last shared grant
	overshoot     atomic.Int64 // the longest a call outlasted its deadline, ns
	firstOut      atomic.Int64 // unix ns of the first decision by the outage mode (local or unavailable)
	lastOut       atomic.Int64 // and of the last

	mu       sync.Mutex
	examples []string // the first errors of kinds raw and other
}

func (tl *tally) String() string {
	window := time.Duration(0)
	if first := tl.firstOut.Load(); first > 0 {
		window = time.Duration(tl.lastOut.Load() - first)
	}
	return fmt.Sprintf("shared %d, local %d, refused %d, unavailable %d, raw %d, other %d; outage mode for %v; deadline overshoot %v",
		tl.shared.Load(), tl.local.Load(), tl.refused.Load(), tl.unavailable.Load(), tl.raw.Load(), tl.other.Load(),
		window.Round(time.Millisecond), time.Duration(tl.overshoot.Load()).Round(time.Millisecond))
}

func (tl *tally) record(d limiter.Decision, err error) {
	var rerr redis.Error
	if now := time.Now().UnixNano(); d.Local || errors.Is(err, limiter.ErrRedisUnavailable) {
		tl.firstOut.CompareAndSwap(0, now)
		tl.lastOut.Store(now)
	}
	switch {
	case err == nil && d.Local:
		tl.local.Add(1)
	case err == nil:
		tl.shared.Add(1)
		tl.lastShared.Store(time.Now().UnixNano())
	case errors.As(err, &rerr):
		tl.raw.Add(1)
		tl.example(err)
	case errors.Is(err, limiter.ErrRedisUnavailable):
		tl.unavailable.Add(1)
	case errors.Is(err, limiter.ErrRateLimited), errors.Is(err, context.DeadlineExceeded):
		tl.refused.Add(1)
	default:
		tl.other.Add(1)
		tl.example(err)
	}
}

func (tl *tally) example(err error) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	if len(tl.examples) < 5 {
		tl.examples = append(tl.examples, err.Error())
	}
}

// load runs workers goroutines that Acquire one token of provider at a
// time (each with a 200 ms deadline) until ctx ends, counting into tl.
func load(ctx context.Context, wg *sync.WaitGroup, c *limiter.Limiter, provider string, workers int, tl *tally) {
	for range workers {
		wg.Go(func() {
			for ctx.Err() == nil {
				deadline := time.Now().Add(200 * time.Millisecond)
				cctx, cancel := context.WithDeadline(ctx, deadline)
				d, err := c.Acquire(cctx, provider, 1)
				cancel()
				if ctx.Err() != nil {
					return
				}
				for over := int64(time.Since(deadline)); ; {
					if old := tl.overshoot.Load(); over <= old || tl.overshoot.CompareAndSwap(old, over) {
						break
					}
				}
				tl.record(d, err)
				if err != nil {
					time.Sleep(5 * time.Millisecond) // a refusal at once must not spin
				}
			}
		})
	}
}

// Figures of the cluster fault tests: a provider of capacity 20 refilled
// at 200/s, 3 goroutines per replica and provider.
const clusterCapacity, clusterRate, clusterWorkers = 20, 200.0, 3

// clusterReplicas starts the replicas the cluster fault tests use, two
// Coordinators with their own ClusterClients, local_fallback on the first
// and fail_closed on the second, probing every 100 ms; registers names and
// makes both replicas of each, known to each other.
func clusterReplicas(t *testing.T, cl *redistest.Cluster, names []string) []*limiter.Limiter {
	var cs []*limiter.Limiter
	var regs []*prometheus.Registry
	for _, mode := range []limiter.OutageMode{limiter.LocalFallback, limiter.FailClosed} {
		c, reg := newCoord(t, cl.Client(t), limiter.Options{CallTimeout: defaultCallTimeout, Outage: mode, RedisRetry: 100 * time.Millisecond, Heartbeat: 100 * time.Millisecond})
		cs, regs = append(cs, c), append(regs, reg)
	}
	for _, p := range names {
		register(t, cs[0], p, clusterCapacity, clusterRate)
		for _, c := range cs {
			try(t, c, p, 1) // joins the replica registry
		}
	}
	for _, p := range names {
		for i, reg := range regs {
			waitFor(t, fmt.Sprintf("replica %d to see 2 live replicas of %s", i, p), func() bool { return liveReplicas(t, reg, p) == 2 })
			try(t, cs[i], p, 1) // a decision from Redis that knows there are 2: the local bucket's share
		}
	}
	return cs
}

// faultRun is what faultUnderLoad saw.
type faultRun struct {
	tallies  map[string][]*tally // per provider, one per replica
	took     time.Duration       // the fault, from its start until the cluster settled
	recovery time.Duration       // from then until every replica's next shared grant of the hit provider
	elapsed  time.Duration       // the whole load
}

// faultUnderLoad acquires every provider of names through every replica of
// cs until each replica has had a shared grant of each, runs fault, waits
// until each replica has a shared grant of each again, and stops. It checks
// that no caller saw a raw Redis reply or an unexpected error, and, unless
// othersHit, that the providers other than hit saw shared grants only.
func faultUnderLoad(t *testing.T, cs []*limiter.Limiter, names []string, hit string, othersHit bool, fault func()) faultRun {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	r := faultRun{tallies: map[string][]*tally{}}
	start := time.Now()
	for _, p := range names {
		for _, c := range cs {
			tl := &tally{}
			r.tallies[p] = append(r.tallies[p], tl)
			load(ctx, &wg, c, p, clusterWorkers, tl)
		}
	}
	since := func(at time.Time) bool {
		for _, p := range names {
			if slices.ContainsFunc(r.tallies[p], func(tl *tally) bool { return tl.lastShared.Load() <= at.UnixNano() }) {
				return false
			}
		}
		return true
	}
	waitFor(t, "shared grants before the fault", func() bool { return since(start) })
	faulted := time.Now()
	fault()
	done := time.Now()
	r.took = done.Sub(faulted)
	waitFor(t, "every replica back on every shared bucket", func() bool { return since(done) })
	for _, tl := range r.tallies[hit] {
		r.recovery = max(r.recovery, time.Unix(0, tl.lastShared.Load()).Sub(done))
	}
	cancel()
	wg.Wait()
	r.elapsed = time.Since(start)
	for _, p := range names {
		for i, tl := range r.tallies[p] {
			t.Logf("%s replica %d (%s): %v", p, i, map[bool]string{true: "hit", false: "other master"}[p == hit], tl)
			if tl.raw.Load()+tl.other.Load() > 0 {
				t.Errorf("%s replica %d: raw or unexpected errors: %s", p, i, strings.Join(tl.examples, "; "))
			}
			if p != hit && !othersHit && tl.local.Load()+tl.unavailable.Load() > 0 {
				t.Errorf("%s (another master) replica %d: %v; want shared grants only", p, i, tl)
			}
		}
	}
	t.Logf("fault took %v; replicas back on the shared bucket %v after it", r.took.Round(time.Millisecond), r.recovery.Round(time.Millisecond))
	return r
}

// admitted returns the grants of p across replicas, and its shared budget
// over the run: capacity + rate × elapsed (+1: the grant under way at the
// edges).
func (r faultRun) admitted(p string) (n int64, budget float64) {
	for _, tl := range r.tallies[p] {
		n += tl.shared.Load() + tl.local.Load()
	}
	return n, clusterCapacity + clusterRate*r.elapsed.Seconds() + 1
}

// TestClusterSlotMigration: one provider's slot is held MIGRATING for 1.5 s
// (TRYAGAIN for its scripts, then ASK) while two replicas with their own
// ClusterClients acquire from it and from two providers on the other
// masters. The other providers see no error and no outage; the migrating
// provider's callers see no raw redirect, only ErrRedisUnavailable under
// fail_closed; local_fallback keeps deciding; across both replicas the
// migrating provider admits no more than its budget plus the fallback's
// slack; both replicas are back on its shared bucket once the slot has
// moved.
func TestClusterSlotMigration(t *testing.T) {
	cl := redistest.StartCluster(t, 3, 0)
	names := onMasters(t, cl, 3)
	moving := names[0]
	cs := clusterReplicas(t, cl, names)
	r := faultUnderLoad(t, cs, names, moving, false, func() {
		cl.MigrateSlot(t, cl.Slot(t, "{"+moving+"}"), cl.Masters(t)[2], 1500*time.Millisecond)
	})
	if tl := r.tallies[moving][0]; tl.unavailable.Load() > 0 {
		t.Errorf("%s under local_fallback: %d ErrRedisUnavailable, want local decisions", moving, tl.unavailable.Load())
	}
	// The local fallback adds at most what the shared bucket banked while
	// its slot was frozen, which its capacity caps: the fallback's own
	// slack, however long the migration.
	n, budget := r.admitted(moving)
	t.Logf("%s admitted %d in %v across both replicas: shared budget %.0f, bound with the fallback's slack %.0f", moving, n, r.elapsed.Round(time.Millisecond), budget, budget+clusterCapacity)
	if float64(n) > budget+clusterCapacity {
		t.Errorf("%s admitted %d, more than %.0f", moving, n, budget+clusterCapacity)
	}
}

// TestClusterFailover: CLUSTER FAILOVER promotes the replica of one
// provider's master while two replicas acquire from it and from a provider
// on another master. The other provider sees nothing; the failed-over
// provider's callers see no raw redirect, a short outage mode at most, and
// admit no more than capacity + rate × elapsed; both replicas are back on
// its shared bucket after the promotion.
func TestClusterFailover(t *testing.T) {
	cl := redistest.StartCluster(t, 3, 1)
	names := onMasters(t, cl, 2)
	hit := names[0]
	cs := clusterReplicas(t, cl, names)
	master := cl.MasterOf(t, cl.Slot(t, "{"+hit+"}"))
	var promoted string
	r := faultUnderLoad(t, cs, names, hit, false, func() { promoted = cl.Failover(t, master) })
	if got := cl.MasterOf(t, cl.Slot(t, "{"+hit+"}")); got != promoted {
		t.Fatalf("slot on %s after the failover, want %s", got, promoted)
	}
	n, budget := r.admitted(hit)
	t.Logf("%s admitted %d in %v across both replicas, budget %.0f", hit, n, r.elapsed.Round(time.Millisecond), budget)
	if float64(n) > budget {
		t.Errorf("%s admitted %d, more than %.0f", hit, n, budget)
	}
}

// TestClusterLimiter: acquire, scale, pause and its notification, breaker,
// cooldown, status and the provider list work on a cluster, for providers
// on three different masters, through two replicas with their own
// ClusterClients.
func TestClusterLimiter(t *testing.T) {
	cl := redistest.StartCluster(t, 3, 0)
	ctx := context.Background()
	names := onMasters(t, cl, 3)
	var cs []*limiter.Limiter
	for range 2 {
		c, _ := newCoord(t, cl.Client(t), limiter.Options{PausedRecheck: time.Hour}) // only a notification wakes a paused waiter
		cs = append(cs, c)
	}
	a, b := cs[0], cs[1]
	for _, p := range names {
		conf := limiter.DefaultProviderConfig()
		conf.Capacity, conf.RefillRate, conf.BreakerThreshold, conf.BreakerTimeout = 5, 0.001, 2, time.Hour
		if res, err := a.Register(ctx, p, conf); err != nil || res != limiter.Created {
			t.Fatalf("register %s: %v %v", p, res, err)
		}
		// The bucket is shared: 5 tokens between both replicas.
		granted := 0
		for i := range 10 {
			if try(t, cs[i%2], p, 1).Allowed {
				granted++
			}
		}
		if granted != 5 {
			t.Fatalf("%s: %d granted by 2 replicas from a bucket of 5", p, granted)
		}
		if d := try(t, b, p, 1); d.Reason != limiter.ReasonRateLimited || d.RetryAfter <= 0 {
			t.Fatalf("%s empty: %+v", p, d)
		}
	}
	if got, err := b.Providers(ctx); err != nil || !slices.Equal(got, slices.Sorted(slices.Values(names))) {
		t.Fatalf("providers %v %v, want %v", got, err, names)
	}

	p := names[1]
	// A paused waiter on one replica is woken by the other's scale change
	// (the notification crosses the cluster).
	if _, err := a.SetBudgetScale(ctx, p, 0); err != nil {
		t.Fatal(err)
	}
	conf := limiter.DefaultProviderConfig()
	conf.Capacity, conf.RefillRate, conf.BreakerThreshold, conf.BreakerTimeout = 5, 1000, 2, time.Hour
	if _, err := a.Register(ctx, p, conf); err != nil {
		t.Fatal(err)
	}
	woke := make(chan error, 1)
	go func() {
		_, err := b.Acquire(ctx, p, 1)
		woke <- err
	}()
	waitFor(t, "the waiter paused", func() bool {
		d := try(t, a, p, 1)
		return d.Reason == limiter.ReasonPaused
	})
	time.Sleep(50 * time.Millisecond)
	if _, err := a.SetBudgetScale(ctx, p, 0.5); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-woke:
		if err != nil {
			t.Fatalf("paused Acquire: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the paused Acquire was not woken by the scale change on another replica")
	}
	if d := try(t, b, p, 1); d.Scale != 0.5 {
		t.Fatalf("scale after the change: %+v", d)
	}

	// Breaker and cooldown, shared.
	for range 2 {
		if err := a.RecordFailure(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	// b may answer from a refusal it holds (Options.RefusalHold) until
	// the hold ends: a change made elsewhere reaches it within the hold.
	waitFor(t, "circuit_open on the other replica", func() bool {
		return try(t, b, p, 1).Reason == limiter.ReasonCircuitOpen
	})
	if err := b.ResetBreaker(ctx, p); err != nil {
		t.Fatal(err)
	}
	until, err := b.TriggerCooldown(ctx, p, "pacing", "test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if d := try(t, a, p, 1); d.Reason != limiter.ReasonCooldown {
		t.Fatalf("during the cooldown: %+v", d)
	}
	s := mustStatus(t, a, p)
	if s.Scale != 0.5 || s.Cooldown == nil || !s.Cooldown.Until.Equal(until) || s.Breaker.State != "closed" || len(s.Replicas) != 2 {
		t.Fatalf("status %+v", s)
	}
	if err := a.ClearCooldown(ctx, p); err != nil {
		t.Fatal(err)
	}
	if d := try(t, a, p, 1); !d.Allowed {
		t.Fatalf("after the cooldown: %+v", d)
	}
}

// TestClusterMasterKilled: kill -9 of one provider's master while two
// replicas acquire from it and from providers on the other masters; its
// replica is elected after cluster-node-timeout (3 s here). The killed
// master's provider goes to its outage mode until the promotion: its
// probe reloads the client's slot map (go-redis would otherwise keep the
// dead master for up to 60 s, since a dead node sends no redirect). With
// cluster-require-full-coverage yes (the default), every node refuses
// every slot (CLUSTERDOWN) from the moment the master is marked failed
// until the promotion, so the other providers go to their outage mode for
// that window. Every provider comes back by itself, no caller sees a raw
// error, and the killed master's provider admits no more than its budget
// plus the fallback's slack.
func TestClusterMasterKilled(t *testing.T) {
	cl := redistest.StartCluster(t, 3, 1)
	names := onMasters(t, cl, 3)
	hit := names[0]
	cs := clusterReplicas(t, cl, names)
	master := cl.MasterOf(t, cl.Slot(t, "{"+hit+"}"))
	r := faultUnderLoad(t, cs, names, hit, true, func() { cl.Kill(t, master) })
	n, budget := r.admitted(hit)
	t.Logf("%s admitted %d in %v across both replicas: shared budget %.0f, bound with the fallback's slack %.0f", hit, n, r.elapsed.Round(time.Millisecond), budget, budget+clusterCapacity)
	if float64(n) > budget+clusterCapacity {
		t.Errorf("%s admitted %d, more than %.0f", hit, n, budget+clusterCapacity)
	}
}
