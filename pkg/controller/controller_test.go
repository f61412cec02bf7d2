package controller_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/lua"
	"github.com/sluice-dev/sluice/pkg/controller"
	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/feedback/redisbus"
	"github.com/sluice-dev/sluice/pkg/limiter"
	"github.com/sluice-dev/sluice/pkg/state"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

const (
	leaseKey = "sluice:controller:lease"
	scaleKey = "sluice:{ibkr}:scale"
	// patience bounds every wait for a condition: generous, so that a
	// loaded machine under -race passes; a healthy run takes a fraction.
	patience = 20 * time.Second
)

// options are a fast controller's: a short lease, frequent reaps, a small
// dwell and tick, registering and steering ibkr.
func options(id string) controller.Options {
	return controller.Options{
		ID:        id,
		LeaseTTL:  500 * time.Millisecond,
		Reap:      50 * time.Millisecond,
		Providers: map[string]limiter.ProviderConfig{"ibkr": limiter.DefaultProviderConfig()},
		// CoordinatorTTL: a coordinator that published once stays live for
		// the handler throughout a test, however slow the machine.
		Feedback: &feedback.Options{Providers: []string{"ibkr"},
			Tick: 50 * time.Millisecond, CoordinatorTTL: time.Minute},
		Logger: quiet,
	}
}

// running is a controller whose Run runs in a goroutine.
type running struct {
	*controller.Controller
	id     string
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// start makes a controller on rdb and runs it until stop (or the test's end).
func start(t *testing.T, rdb redis.UniversalClient, o controller.Options) *running {
	t.Helper()
	c, err := controller.New(rdb, o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Controller: c, id: o.ID, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- c.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop cancels Run and waits until it returns; calls after the first do
// nothing.
func (r *running) stop(t *testing.T) {
	t.Helper()
	r.once.Do(func() {
		r.cancel()
		select {
		case err := <-r.done:
			if err != nil {
				t.Errorf("Run returned %v, want nil", err)
			}
		case <-time.After(patience):
			t.Errorf("Run did not return within %v of its context's end", patience)
		}
	})
}

// eventually polls cond until it holds, failing the test after patience.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(patience); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, patience)
		}
	}
}

// steady checks, for the whole of window, that cond holds.
func steady(t *testing.T, window time.Duration, what string, cond func() error) {
	t.Helper()
	for end := time.Now().Add(window); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if err := cond(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
}

// leaders returns the controllers of cs that say they lead.
func leaders(cs ...*running) []*running {
	var out []*running
	for _, c := range cs {
		if c.Leader() {
			out = append(out, c)
		}
	}
	return out
}

// reader returns a limiter that only reads ibkr's status.
func reader(t *testing.T, rdb redis.UniversalClient) *limiter.Limiter {
	t.Helper()
	lim, err := limiter.New(rdb, limiter.Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lim.Close() })
	return lim
}

func status(t *testing.T, lim *limiter.Limiter) limiter.Status {
	t.Helper()
	st, err := lim.Status(context.Background(), "ibkr")
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func publisher(t *testing.T, rdb redis.UniversalClient, ttl time.Duration) *redisbus.Publisher {
	t.Helper()
	pub, err := redisbus.NewPublisher(rdb, redisbus.Options{TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

func publish(t *testing.T, pub *redisbus.Publisher, coordinator string, seq uint64, l state.Level) {
	t.Helper()
	qs := map[state.Level]int{state.OK: 100, state.Soft: 650, state.Hard: 900}[l]
	e := feedback.Event{CoordinatorID: coordinator, QueueSize: qs, Capacity: 1000, Level: l, Seq: seq}
	if err := pub.Publish(context.Background(), e); err != nil {
		t.Fatal(err)
	}
}

// TestOneWriter: of three controllers exactly one leads at a time; it
// steers the scale; when it stops, it releases the lease and another takes
// over and steers on.
func TestOneWriter(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	lim := reader(t, rdb)
	cs := []*running{
		start(t, srv.Client(t), options("ctl-a")),
		start(t, srv.Client(t), options("ctl-b")),
		start(t, srv.Client(t), options("ctl-c")),
	}

	// A monitor samples Leader() of all three until the leader is stopped.
	var (
		most    atomic.Int32
		monitor sync.WaitGroup
	)
	stopMonitor := make(chan struct{})
	monitor.Go(func() {
		for {
			select {
			case <-stopMonitor:
				return
			default:
			}
			if n := int32(len(leaders(cs...))); n > most.Load() {
				most.Store(n)
			}
			time.Sleep(100 * time.Microsecond)
		}
	})
	var first *running
	eventually(t, "one of three controllers leads", func() bool {
		l := leaders(cs...)
		if len(l) == 1 {
			first = l[0]
		}
		return len(l) == 1
	})

	pub := publisher(t, srv.Client(t), time.Minute)
	publish(t, pub, "c1", 1, state.Hard)
	eventually(t, "the leader pauses ibkr on hard pressure and records the level", func() bool {
		st := status(t, lim)
		return st.Scale == 0 && st.Source == "controller/"+first.id && st.Level == state.Hard
	})
	close(stopMonitor)
	monitor.Wait()
	if n := most.Load(); n > 1 {
		t.Fatalf("%d controllers said they led at once", n)
	}

	// The leader stops: it releases the lease, so the next one needs no
	// wait for it to run out.
	first.stop(t)
	if first.Leader() {
		t.Fatal("a stopped controller still says it leads")
	}
	holder, err := rdb.Get(context.Background(), leaseKey).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		t.Fatal(err)
	}
	if holder == first.id {
		t.Fatalf("the lease is still held by %q after its Run returned", holder)
	}
	rest := make([]*running, 0, 2)
	for _, c := range cs {
		if c != first {
			rest = append(rest, c)
		}
	}
	var next *running
	eventually(t, "another controller leads", func() bool {
		l := leaders(rest...)
		if len(l) == 1 {
			next = l[0]
		}
		return len(l) == 1
	})
	// The new leader's handler read the stored pressure: still hard.
	if st := status(t, lim); st.Scale != 0 {
		t.Fatalf("after the handover, with c1 still at hard: scale %v, want 0", st.Scale)
	}
	before := status(t, lim).Seq
	publish(t, pub, "c1", 2, state.OK)
	eventually(t, "the new leader raises ibkr once c1 is ok", func() bool {
		st := status(t, lim)
		return st.Scale == 1 && st.Source == "controller/"+next.id && st.Seq > before
	})
}

// TestLeaseLost: a leader whose lease another holder took steps down at its
// next renewal and from then on writes nothing.
func TestLeaseLost(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	lim := reader(t, rdb)
	ctx := context.Background()
	a := start(t, srv.Client(t), options("ctl-a"))
	eventually(t, "the only controller leads", a.Leader)
	pub := publisher(t, srv.Client(t), time.Minute)
	publish(t, pub, "c1", 1, state.Hard)
	eventually(t, "the leader pauses ibkr", func() bool { return status(t, lim).Scale == 0 })

	if err := rdb.Do(ctx, "SET", leaseKey, "intruder", "PX", 60000).Err(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the controller steps down", func() bool { return !a.Leader() })
	want, err := rdb.HGetAll(ctx, scaleKey).Result()
	if err != nil {
		t.Fatal(err)
	}
	seq := status(t, lim).Seq

	// A handler still running would raise the scale after the dwell (ok),
	// or record the level (soft).
	publish(t, pub, "c1", 2, state.OK)
	publish(t, pub, "c2", 1, state.Soft)
	steady(t, 1500*time.Millisecond, "the scale hash after the step-down", func() error {
		got, err := rdb.HGetAll(ctx, scaleKey).Result()
		if err != nil {
			return err
		}
		if !maps.Equal(got, want) {
			return fmt.Errorf("changed: %s, was %s", fmtHash(got), fmtHash(want))
		}
		if a.Leader() {
			return errors.New("the controller leads again while another holds the lease")
		}
		return nil
	})
	if st := status(t, lim); st.Seq != seq {
		t.Fatalf("seq %d, was %d", st.Seq, seq)
	}
	if holder, err := rdb.Get(ctx, leaseKey).Result(); err != nil || holder != "intruder" {
		t.Fatalf("lease held by %q (%v), want the intruder still", holder, err)
	}
	if err := a.Ready(); err != nil {
		t.Fatalf("Ready: %v; Redis answers", err)
	}
}

func fmtHash(h map[string]string) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(h)) {
		b.WriteString(k + "=" + h[k] + " ")
	}
	return strings.TrimSpace(b.String())
}

// TestReap: the leader takes a coordinator whose report expired out of the
// pressure sets, and leaves a live one in.
func TestReap(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	o := options("ctl-a")
	o.Feedback = nil // no handler: its subscriber's snapshots repair the sets too
	o.Registerer = reg
	a := start(t, srv.Client(t), o)
	eventually(t, "the controller leads", a.Leader)

	publish(t, publisher(t, srv.Client(t), time.Minute), "c2", 1, state.Soft)
	publish(t, publisher(t, srv.Client(t), time.Second), "c1", 1, state.Hard)
	if ok, err := rdb.SIsMember(ctx, "sluice:pressure:hard", "c1").Result(); err != nil || !ok {
		t.Fatalf("c1 in sluice:pressure:hard: %v %v, want true", ok, err)
	}
	eventually(t, "c1, silent past its TTL, leaves sluice:pressure:hard", func() bool {
		ok, err := rdb.SIsMember(ctx, "sluice:pressure:hard", "c1").Result()
		if err != nil {
			t.Fatal(err)
		}
		return !ok
	})
	if n, err := rdb.Exists(ctx, "sluice:pressure:{c1}").Result(); err != nil || n != 0 {
		t.Fatalf("c1's pressure hash: exists=%d %v, want expired", n, err)
	}
	if ok, err := rdb.SIsMember(ctx, "sluice:pressure:coordinators", "c1").Result(); err != nil || ok {
		t.Fatalf("c1 in the index: %v %v, want reaped", ok, err)
	}
	p, err := redisbus.Read(ctx, rdb, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Live) != 1 || p.Live[0].CoordinatorID != "c2" || len(p.Expired) != 0 {
		t.Fatalf("stored pressure %+v, want only c2 live and nothing expired", p)
	}
	if ok, err := rdb.SIsMember(ctx, "sluice:pressure:soft", "c2").Result(); err != nil || !ok {
		t.Fatalf("live c2 in sluice:pressure:soft: %v %v, want true", ok, err)
	}
	want := `
# HELP controller_reaped_coordinators_total Coordinators whose report expired, taken out of the pressure sets.
# TYPE controller_reaped_coordinators_total counter
controller_reaped_coordinators_total{controller_id="ctl-a"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "controller_reaped_coordinators_total"); err != nil {
		t.Fatal(err)
	}
}

// TestFeedbackOff: without feedback the leader registers the providers and
// leaves the scale alone.
func TestFeedbackOff(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	lim := reader(t, rdb)
	o := options("ctl-a")
	o.Feedback = nil
	a := start(t, srv.Client(t), o)
	eventually(t, "the controller leads", a.Leader)
	eventually(t, "ibkr is registered", func() bool {
		_, err := lim.Status(context.Background(), "ibkr")
		if err != nil && !errors.Is(err, limiter.ErrUnknownProvider) {
			t.Fatal(err)
		}
		return err == nil
	})
	if st := status(t, lim); st.Config.Capacity != 60 || st.Config.RefillRate != 60 {
		t.Fatalf("registered config %+v, want the defaults", st.Config)
	}
	publish(t, publisher(t, srv.Client(t), time.Minute), "c1", 1, state.Hard)
	steady(t, time.Second, "ibkr's scale with feedback off", func() error {
		if st := status(t, lim); st.Scale != 1 || st.Seq != 0 || st.Level != state.OK {
			return fmt.Errorf("scale hash changed: scale %v level %s seq %d source %q", st.Scale, st.Level, st.Seq, st.Source)
		}
		return nil
	})
}

// TestRedisGone: a controller that cannot reach Redis is not ready and
// stops leading; once Redis is back it leads again and registers the
// providers again (the restarted Redis is empty).
func TestRedisGone(t *testing.T) {
	srv := redistest.Start(t)
	a := start(t, srv.Client(t), options("ctl-a"))
	eventually(t, "the controller leads", func() bool { return a.Leader() && a.Ready() == nil })

	srv.Stop()
	eventually(t, "the controller reports Redis gone and stops leading", func() bool {
		return a.Ready() != nil && !a.Leader()
	})

	srv.Restart(t)
	eventually(t, "the controller leads again", func() bool { return a.Leader() && a.Ready() == nil })
	rdb := srv.Client(t)
	lim := reader(t, rdb)
	eventually(t, "ibkr is registered again", func() bool {
		_, err := lim.Status(context.Background(), "ibkr")
		return err == nil
	})
	publish(t, publisher(t, rdb, time.Minute), "c1", 1, state.Hard)
	eventually(t, "the controller steers again", func() bool {
		st := status(t, lim)
		return st.Scale == 0 && st.Source == "controller/ctl-a"
	})
}

// TestBadOptions: a bad option is an error that names it.
func TestBadOptions(t *testing.T) {
	_, rdb := redistest.Mini(t)
	for _, tc := range []struct {
		name  string
		edit  func(o *controller.Options)
		field string
	}{
		{"empty id", func(o *controller.Options) { o.ID = "" }, "id="},
		{"id with a space", func(o *controller.Options) { o.ID = "ctl a" }, "id="},
		{"id too long", func(o *controller.Options) { o.ID = strings.Repeat("x", 65) }, "id="},
		{"negative lease", func(o *controller.Options) { o.LeaseTTL = -time.Second }, "lease_ttl="},
		{"lease below 100ms", func(o *controller.Options) { o.LeaseTTL = 50 * time.Millisecond }, "lease_ttl="},
		{"lease above 1h", func(o *controller.Options) { o.LeaseTTL = 2 * time.Hour }, "lease_ttl="},
		{"negative reap", func(o *controller.Options) { o.Reap = -time.Second }, "reap="},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := options("ctl-a")
			tc.edit(&o)
			c, err := controller.New(rdb, o)
			if err == nil {
				t.Fatalf("New accepted %+v", o)
			}
			if c != nil {
				t.Fatal("New returned a controller with its error")
			}
			if !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("error %q does not name %s", err, strings.TrimSuffix(tc.field, "="))
			}
		})
	}
	// Zero values take the defaults.
	if _, err := controller.New(rdb, controller.Options{ID: "pod-1.x_y-2"}); err != nil {
		t.Fatalf("New with only an id: %v", err)
	}
}

// TestLeaseScript: the lease is held by one id at a time; only its holder
// renews or releases it.
func TestLeaseScript(t *testing.T) {
	m, rdb := redistest.Mini(t)
	ctx := context.Background()
	lease := redis.NewScript(lua.Source("lease"))
	run := func(op, id string, ttl ...any) (int, error) {
		return lease.Run(ctx, rdb, []string{leaseKey}, append([]any{op, id}, ttl...)...).Int()
	}
	for _, step := range []struct {
		op, id string
		want   int
	}{
		{"renew", "a", 0},   // nobody holds it
		{"release", "a", 0}, // nor releases it
		{"acquire", "a", 1},
		{"acquire", "b", 0},
		{"renew", "b", 0},
		{"release", "b", 0},
		{"acquire", "a", 1}, // the holder restarted under the same id
		{"renew", "a", 1},
		{"release", "a", 1},
		{"acquire", "b", 1}, // free again
	} {
		got, err := run(step.op, step.id, 5000)
		if err != nil || got != step.want {
			t.Fatalf("%s by %s: %d %v, want %d", step.op, step.id, got, err, step.want)
		}
	}
	if got := m.TTL(leaseKey); got <= 0 || got > 5*time.Second {
		t.Fatalf("lease TTL %v, want in (0, 5s]", got)
	}
	if got, _ := m.Get(leaseKey); got != "b" {
		t.Fatalf("lease held by %q, want b", got)
	}
	m.FastForward(5 * time.Second) // the holder died: the lease runs out
	if got, err := run("acquire", "a", 5000); err != nil || got != 1 {
		t.Fatalf("acquire after the lease ran out: %d %v", got, err)
	}
	for _, bad := range []struct {
		args  []any
		field string
	}{
		{[]any{"steal", "a", 5000}, "op="},
		{[]any{"acquire", "", 5000}, "holder="},
		{[]any{"acquire", "a", 0}, "ttl_ms="},
		{[]any{"renew", "a", 3600001}, "ttl_ms="},
		{[]any{"acquire", "a", "1.5"}, "ttl_ms="},
		{[]any{"acquire", "a"}, "ttl_ms="},
	} {
		err := lease.Run(ctx, rdb, []string{leaseKey}, bad.args...).Err()
		if err == nil || !strings.Contains(err.Error(), "INVALID_ARGUMENT "+bad.field) {
			t.Fatalf("lease %v: %v, want INVALID_ARGUMENT %s", bad.args, err, bad.field)
		}
	}
}

// TestOnMiniredis: the controller's whole round on an embedded Redis (so
// -short runs it): it takes the lease, registers ibkr, steers its scale,
// and releases the lease when Run ends.
func TestOnMiniredis(t *testing.T) {
	m, rdb := redistest.Mini(t)
	newClient := func() *redis.Client {
		c := redis.NewClient(&redis.Options{Addr: m.Addr()})
		t.Cleanup(func() { c.Close() })
		return c
	}
	lim := reader(t, rdb)
	a := start(t, newClient(), options("ctl-a"))
	b := start(t, newClient(), options("ctl-b"))
	var leader, standby *running
	eventually(t, "one controller leads", func() bool {
		l := leaders(a, b)
		if len(l) == 1 {
			leader, standby = a, b
			if l[0] == b {
				leader, standby = b, a
			}
		}
		return len(l) == 1
	})
	eventually(t, "ibkr is registered", func() bool {
		_, err := lim.Status(context.Background(), "ibkr")
		return err == nil
	})
	publish(t, publisher(t, rdb, time.Minute), "c1", 1, state.Hard)
	eventually(t, "the leader pauses ibkr", func() bool {
		st := status(t, lim)
		return st.Scale == 0 && st.Source == "controller/"+leader.id
	})

	leader.stop(t)
	if got, _ := m.Get(leaseKey); got == leader.id {
		t.Fatalf("the stopped leader %q still holds the lease", got)
	}
	eventually(t, "the standby leads", standby.Leader)
	if err := standby.Ready(); err != nil {
		t.Fatal(err)
	}
}

// TestUnconfiguredProvider: a provider to steer that nobody configured or
// registered is not made up: the leader is not ready and says why, and
// steers once the provider is registered. A name the limiter refuses is a
// readiness failure too. A standby is ready.
func TestUnconfiguredProvider(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	o := options("ctl-a")
	o.Providers = nil
	o.Feedback.Providers = []string{"nosuch"}
	a := start(t, srv.Client(t), o)
	var err error
	eventually(t, "the leader is not ready", func() bool {
		err = a.Ready()
		return a.Leader() && err != nil
	})
	if !errors.Is(err, controller.ErrNoConfig) || !strings.Contains(err.Error(), `"nosuch"`) {
		t.Fatalf("Ready: %v; want ErrNoConfig naming nosuch", err)
	}
	b := start(t, srv.Client(t), func() controller.Options { o := o; o.ID = "ctl-b"; return o }())
	steady(t, 300*time.Millisecond, "nothing made up; the standby ready", func() error {
		if n := rdb.Exists(ctx, "sluice:{nosuch}:config", "sluice:{nosuch}:scale").Val(); n != 0 {
			return fmt.Errorf("%d keys of nosuch exist", n)
		}
		if b.Leader() || b.Ready() != nil || a.Ready() == nil {
			return fmt.Errorf("standby leads %v, ready %v; leader ready %v", b.Leader(), b.Ready(), a.Ready())
		}
		return nil
	})

	lim := reader(t, rdb)
	cfg := limiter.DefaultProviderConfig()
	cfg.RefillRate = 5
	if _, err := lim.Register(ctx, "nosuch", cfg); err != nil {
		t.Fatal(err)
	}
	eventually(t, "ready once registered", func() bool { return a.Ready() == nil })
	publish(t, publisher(t, srv.Client(t), time.Minute), "c1", 1, state.Hard)
	eventually(t, "it steers", func() bool {
		st, err := lim.Status(ctx, "nosuch")
		return err == nil && st.Scale == 0 && st.Source == "controller/ctl-a" && st.Config.RefillRate == 5
	})

	o.ID, o.Feedback.Providers = "ctl-c", []string{"a{b}"}
	a.stop(t)
	b.stop(t)
	c := start(t, srv.Client(t), o)
	eventually(t, "a refused name: not ready", func() bool {
		err = c.Ready()
		return c.Leader() && err != nil
	})
	if !errors.Is(err, limiter.ErrInvalidArgument) || !strings.Contains(err.Error(), "a{b}") {
		t.Fatalf("Ready with provider a{b}: %v; want an invalid argument naming it", err)
	}
}
