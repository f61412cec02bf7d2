package redisbus_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/lua"
	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/feedback/redisbus"
	"github.com/sluice-dev/sluice/pkg/state"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// event builds a valid event of coordinator c.
func event(c string, seq uint64, l state.Level) feedback.Event {
	q := map[state.Level]int{state.OK: 100, state.Soft: 700, state.Hard: 950}[l]
	return feedback.Event{CoordinatorID: c, QueueSize: q, Capacity: 1000, Level: l, Seq: seq}
}

func publisher(t testing.TB, rdb redis.UniversalClient, ttl time.Duration) *redisbus.Publisher {
	t.Helper()
	pub, err := redisbus.NewPublisher(rdb, redisbus.Options{TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// collector records delivered events.
type collector struct {
	mu     sync.Mutex
	events []feedback.Event
	seen   chan struct{}
}

func newCollector() *collector { return &collector{seen: make(chan struct{}, 1000)} }

func (c *collector) deliver(_ context.Context, e feedback.Event) error {
	c.mu.Lock()
	c.events = append(c.events, e)
	c.mu.Unlock()
	c.seen <- struct{}{}
	return nil
}

// all returns the events delivered so far.
func (c *collector) all() []feedback.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]feedback.Event(nil), c.events...)
}

// waitFor waits until some delivered event satisfies ok.
func (c *collector) waitFor(t *testing.T, what string, ok func(feedback.Event) bool) feedback.Event {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		c.mu.Lock()
		for _, e := range c.events {
			if ok(e) {
				c.mu.Unlock()
				return e
			}
		}
		c.mu.Unlock()
		select {
		case <-c.seen:
		case <-deadline:
			t.Fatalf("no %s delivered within 30s; got %+v", what, c.events)
		}
	}
}

// subscribe subscribes a collector; when it returns, the subscription is
// confirmed and the snapshot delivered.
func subscribe(t *testing.T, rdb redis.UniversalClient, resync time.Duration) *collector {
	t.Helper()
	return subscribeLogged(t, rdb, resync, quiet)
}

// subscribeLogged is subscribe with the subscriber logging to log.
func subscribeLogged(t *testing.T, rdb redis.UniversalClient, resync time.Duration, log *slog.Logger) *collector {
	t.Helper()
	col := newCollector()
	sub, err := redisbus.NewSubscriber(rdb, redisbus.Options{Resync: resync, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	stop, err := sub.Subscribe(context.Background(), col.deliver)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return col
}

func TestRedisBus(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		ctx := context.Background()
		rdb := b.Client(t)
		pub := publisher(t, b.Client(t), 10*time.Second)
		col := subscribe(t, b.Client(t), time.Hour)
		e := event("store-0", 10, state.Hard)
		if err := pub.Publish(ctx, e); err != nil {
			t.Fatal(err)
		}
		got := col.waitFor(t, "the hard event", func(g feedback.Event) bool { return g.Seq == 10 })
		if got.Level != state.Hard || got.QueueSize != 950 || got.TS.IsZero() {
			t.Fatalf("delivered %+v", got)
		}
		// What redis-cli and KEDA see.
		h := rdb.HGetAll(ctx, "sluice:pressure:{store-0}").Val()
		if h["level"] != "hard" || h["seq"] != "10" || h["queue_size"] != "950" || h["capacity"] != "1000" {
			t.Fatalf("pressure hash %v", h)
		}
		if ttl := rdb.PTTL(ctx, "sluice:pressure:{store-0}").Val(); ttl <= 0 || ttl > 10*time.Second {
			t.Fatalf("pressure hash TTL %v", ttl)
		}
		if n := rdb.SCard(ctx, "sluice:pressure:hard").Val(); n != 1 {
			t.Fatalf("SCARD hard = %d, want 1", n)
		}
		// An older report is refused by the script: nothing stored, nothing published.
		if err := pub.Publish(ctx, event("store-0", 9, state.OK)); err != nil {
			t.Fatal(err)
		}
		if l := rdb.HGet(ctx, "sluice:pressure:{store-0}", "level").Val(); l != "hard" {
			t.Fatalf("older event overwrote the hash: level %s", l)
		}
		if err := pub.Publish(ctx, event("store-0", 11, state.Soft)); err != nil {
			t.Fatal(err)
		}
		col.waitFor(t, "the soft event", func(g feedback.Event) bool { return g.Seq == 11 })
		if hard, soft := rdb.SCard(ctx, "sluice:pressure:hard").Val(), rdb.SCard(ctx, "sluice:pressure:soft").Val(); hard != 0 || soft != 1 {
			t.Fatalf("sets after soft: hard %d soft %d", hard, soft)
		}
		for _, got := range col.all() {
			if got.Seq == 9 {
				t.Fatal("the older event was published")
			}
		}
		if err := pub.Withdraw(ctx, "store-0"); err != nil {
			t.Fatal(err)
		}
		if n := rdb.Exists(ctx, "sluice:pressure:{store-0}").Val() + rdb.SCard(ctx, "sluice:pressure:soft").Val(); n != 0 {
			t.Fatal("withdraw left keys behind")
		}
	})
}

// TestRedisSamples: a fill sample is published, in seq order with the
// reports, and not stored: the hash, its TTL and the level sets stay the
// last report's, so a sample costs one PUBLISH.
func TestRedisSamples(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		ctx := context.Background()
		rdb := b.Client(t)
		pub := publisher(t, b.Client(t), 10*time.Second)
		col := subscribe(t, b.Client(t), time.Hour)
		if err := pub.Publish(ctx, event("store-0", 1, state.Soft)); err != nil {
			t.Fatal(err)
		}
		ttl := rdb.PTTL(ctx, "sluice:pressure:{store-0}").Val()
		s := event("store-0", 2, state.Hard)
		s.Kind, s.QueueSize = feedback.KindSample, 990
		if err := pub.Publish(ctx, s); err != nil {
			t.Fatal(err)
		}
		got := col.waitFor(t, "the sample", func(g feedback.Event) bool { return g.Seq == 2 })
		if !got.IsSample() || got.QueueSize != 990 || got.TS.IsZero() {
			t.Fatalf("delivered %+v, want the sample with a ts", got)
		}
		h := rdb.HGetAll(ctx, "sluice:pressure:{store-0}").Val()
		if h["seq"] != "1" || h["level"] != "soft" || h["queue_size"] != "700" {
			t.Fatalf("a sample was stored: %v", h)
		}
		if now := rdb.PTTL(ctx, "sluice:pressure:{store-0}").Val(); now > ttl {
			t.Fatalf("a sample refreshed the hash's TTL: %v -> %v", ttl, now)
		}
		if hard := rdb.SCard(ctx, "sluice:pressure:hard").Val(); hard != 0 {
			t.Fatal("a sample changed the level sets")
		}
		// The next report is stored over it, seq order kept.
		if err := pub.Publish(ctx, event("store-0", 3, state.OK)); err != nil {
			t.Fatal(err)
		}
		if h := rdb.HGet(ctx, "sluice:pressure:{store-0}", "seq").Val(); h != "3" {
			t.Fatalf("report after a sample: stored seq %s, want 3", h)
		}
		// An invalid sample is refused like any event.
		s.QueueSize = 2000
		var fe *feedback.FieldError
		if err := pub.Publish(ctx, s); !errors.As(err, &fe) || fe.Field != "queue_size" {
			t.Fatalf("invalid sample: %v", err)
		}
	})
}

// TestRedisLateSubscriberConverges: a replica that subscribes after the last
// event still gets it, from the keys.
func TestRedisLateSubscriberConverges(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		pub := publisher(t, b.Client(t), 10*time.Second)
		for i, l := range []state.Level{state.OK, state.Soft, state.Hard} {
			if err := pub.Publish(context.Background(), event("store-0", uint64(i+1), l)); err != nil {
				t.Fatal(err)
			}
		}
		col := subscribe(t, b.Client(t), time.Hour)
		// Subscribe returned after the snapshot: no waiting.
		if got := col.all(); len(got) != 1 || got[0].Seq != 3 || got[0].Level != state.Hard {
			t.Fatalf("late subscriber got %+v, want only the latest (seq 3, hard)", got)
		}
	})
}

// TestRedisSnapshotReapsExpired: a coordinator whose hash expired (it died
// at hard) leaves the level sets at the next snapshot, so KEDA stops
// counting it.
func TestRedisSnapshotReapsExpired(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		ctx := context.Background()
		rdb := b.Client(t)
		pub := publisher(t, b.Client(t), 10*time.Second)
		if err := pub.Publish(ctx, event("dead", 1, state.Hard)); err != nil {
			t.Fatal(err)
		}
		if err := pub.Publish(ctx, event("alive", 1, state.Soft)); err != nil {
			t.Fatal(err)
		}
		rdb.Del(ctx, "sluice:pressure:{dead}") // as its TTL would
		rdb.SAdd(ctx, "sluice:pressure:coordinators", "garbled")
		rdb.HSet(ctx, "sluice:pressure:{garbled}", "level", "panic")
		p, err := redisbus.Read(ctx, rdb, "")
		if err != nil || len(p.Live) != 1 || len(p.Expired) != 1 || p.Expired[0] != "dead" || p.Malformed["garbled"] == nil {
			t.Fatalf("Read = %+v %v", p, err)
		}
		if n := rdb.SCard(ctx, "sluice:pressure:hard").Val(); n != 1 {
			t.Fatalf("SCARD hard = %d: Read must not repair anything", n)
		}
		// Subscribe returns once the snapshot is delivered and the sets repaired.
		col := subscribe(t, rdb, time.Hour)
		if events := col.all(); len(events) != 1 || events[0].CoordinatorID != "alive" {
			t.Fatalf("snapshot = %+v, want only alive", events)
		}
		if n := rdb.SCard(ctx, "sluice:pressure:hard").Val(); n != 0 {
			t.Fatalf("SCARD hard = %d after reaping", n)
		}
		// The expired one left the index; the malformed one is reported, not deleted.
		if ok, _ := rdb.SIsMember(ctx, "sluice:pressure:coordinators", "dead").Result(); ok {
			t.Fatal("the expired coordinator is still in the index")
		}
		if n := rdb.SCard(ctx, "sluice:pressure:coordinators").Val(); n != 2 {
			t.Fatalf("index has %d members, want alive and garbled", n)
		}
	})
}

// TestRedisSubscriberSurvivesRestart: the subscriber reconnects by itself
// after a Redis restart and delivers what is published afterwards.
func TestRedisSubscriberSurvivesRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	srv := redistest.Start(t)
	// No periodic resync within the test: only the snapshot taken when it
	// subscribes again, or pub/sub, can deliver what follows the restart.
	col := subscribe(t, srv.Client(t), time.Hour)
	pub := publisher(t, srv.Client(t), 10*time.Second)
	if err := pub.Publish(context.Background(), event("s", 1, state.Soft)); err != nil {
		t.Fatal(err)
	}
	col.waitFor(t, "seq 1", func(e feedback.Event) bool { return e.Seq == 1 })
	srv.Restart(t)
	deadline := time.Now().Add(30 * time.Second)
	for seq := uint64(2); ; seq++ { // publish until the resubscribed side hears one
		_ = pub.Publish(context.Background(), event("s", seq, state.Hard))
		col.mu.Lock()
		n := len(col.events)
		last := col.events[n-1]
		col.mu.Unlock()
		if last.Seq >= 2 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing delivered after the restart; last %+v", last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestSubscribeFails: Subscribe reports what stops it from starting right:
// a snapshot the deliverer refused, and a Redis that accepts the connection
// and never answers (the context has no deadline: cancelling it is enough).
func TestSubscribeFails(t *testing.T) {
	_, rdb := redistest.Mini(t)
	if err := publisher(t, rdb, 10*time.Second).Publish(context.Background(), event("store-0", 1, state.Hard)); err != nil {
		t.Fatal(err)
	}
	sub, err := redisbus.NewSubscriber(rdb, redisbus.Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	refuse := errors.New("provider not registered")
	if _, err := sub.Subscribe(context.Background(), func(context.Context, feedback.Event) error { return refuse }); !errors.Is(err, refuse) {
		t.Fatalf("Subscribe with a refused snapshot: %v, want the refusal", err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conns []net.Conn
	var connsMu sync.Mutex
	defer func() { // ends the handshake the cancelled Subscribe left behind
		connsMu.Lock()
		defer connsMu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	}()
	go func() { // accept, read, never answer
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			connsMu.Lock()
			conns = append(conns, c)
			connsMu.Unlock()
			go func() { _, _ = io.Copy(io.Discard, c) }()
		}
	}()
	mute := redis.NewClient(&redis.Options{Addr: ln.Addr().String(), MaxRetries: -1})
	defer mute.Close()
	sub, err = redisbus.NewSubscriber(mute, redisbus.Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := sub.Subscribe(ctx, func(context.Context, feedback.Event) error { return nil })
		done <- err
	}()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Subscribe to a mute Redis after cancel: %v, want context.Canceled", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Subscribe to a mute Redis ignored the cancelled context")
	}
	if _, err := redisbus.NewSubscriber(rdb, redisbus.Options{Resync: -time.Second}); err == nil || !strings.Contains(err.Error(), "redisbus: resync=-1s") {
		t.Fatalf("negative resync: %v", err)
	}
}

// TestRedisHold (finding 10 of issue 20): the stored report holds against a
// lower seq for Hold (3 s by default), by Redis's clock, not for the whole
// TTL: a coordinator restarted at seq 1, or the real one after a bogus seq
// 2^64-1, is stored again once the stored report is that old. The test
// ages the stored report by moving its updated_at back, so it does not sleep
// and runs the same on miniredis and redis-server.
func TestRedisHold(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		ctx := context.Background()
		rdb := b.Client(t)
		pub := publisher(t, b.Client(t), 10*time.Second)
		col := subscribe(t, b.Client(t), time.Hour)
		key := "sluice:pressure:{store-0}"
		stored := func() string { return rdb.HGet(ctx, key, "seq").Val() + " " + rdb.HGet(ctx, key, "level").Val() }
		age := func(d time.Duration) { // the stored report is d older
			at, err := rdb.HGet(ctx, key, "updated_at").Int64()
			if err != nil {
				t.Fatalf("updated_at: %v", err)
			}
			rdb.HSet(ctx, key, "updated_at", at-d.Microseconds())
		}
		publish := func(seq uint64, l state.Level) {
			t.Helper()
			if err := pub.Publish(ctx, event("store-0", seq, l)); err != nil {
				t.Fatal(err)
			}
		}

		publish(100, state.Hard)
		if at, err := rdb.HGet(ctx, key, "updated_at").Int64(); err != nil || time.Since(time.UnixMicro(at)).Abs() > time.Minute {
			t.Fatalf("updated_at %d (%v): want the Redis time of the store in µs", at, err)
		}
		publish(100, state.OK) // a duplicate
		publish(1, state.OK)   // restarted, within the hold: stale (a reordered post looks the same)
		age(feedback.DefaultHold - time.Second)
		publish(1, state.OK)
		if s := stored(); s != "100 hard" {
			t.Fatalf("stored %q within the hold, want 100 hard", s)
		}
		age(time.Second) // silent for the hold
		publish(1, state.OK)
		if s := stored(); s != "1 ok" {
			t.Fatalf("stored %q after the hold, want the restart's 1 ok", s)
		}
		col.waitFor(t, "the restart's event", func(g feedback.Event) bool { return g.Seq == 1 })

		// A bogus seq holds for the hold only, and the real coordinator's
		// next report is stored after it.
		publish(1<<64-1, state.Hard)
		publish(2, state.OK)
		if s := stored(); s != "18446744073709551615 hard" {
			t.Fatalf("stored %q, want the bogus seq within the hold", s)
		}
		age(feedback.DefaultHold)
		publish(3, state.OK)
		if s := stored(); s != "3 ok" {
			t.Fatalf("stored %q, want the real coordinator's 3 ok after the hold", s)
		}
		for _, got := range col.all() {
			if got.Seq == 2 || got.Level == state.OK && got.Seq == 100 {
				t.Fatalf("a stale report was published: %+v", got)
			}
		}
	})
}

// TestPressureScriptHold: pressure.lua's hold_ms (ARGV[7]) is optional —
// without it (the Python client before it passed one) a stored report holds
// as long as the hash lives, as before — and checked when given.
func TestPressureScriptHold(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		ctx := context.Background()
		rdb := b.Client(t)
		script := redis.NewScript(lua.Source("pressure"))
		key := "sluice:pressure:{py}"
		run := func(seq string, extra ...any) (int, error) {
			args := append([]any{"soft", 1, 10, seq, "2026-12-01T00:00:00Z", 10000}, extra...)
			return script.Run(ctx, rdb, []string{key}, args...).Int()
		}
		if n, err := run("50"); n != 1 || err != nil {
			t.Fatalf("first report: %d %v", n, err)
		}
		at, _ := rdb.HGet(ctx, key, "updated_at").Int64()
		rdb.HSet(ctx, key, "updated_at", at-9_000_000) // 9 s old, under the 10 s TTL
		if n, err := run("1"); n != 0 || err != nil {
			t.Fatalf("a lower seq without hold_ms, 9 s after: %d %v, want 0 (held while the hash lives)", n, err)
		}
		if n, err := run("1", 5000); n != 1 || err != nil {
			t.Fatalf("a lower seq with hold_ms 5000, 9 s after: %d %v, want 1", n, err)
		}
		for _, bad := range []any{-1, "x", 10001, 1.5, ""} {
			if _, err := run("2", bad); err == nil || !strings.Contains(err.Error(), "INVALID_ARGUMENT hold_ms=") {
				t.Errorf("hold_ms=%v: %v, want INVALID_ARGUMENT hold_ms", bad, err)
			}
		}
	})
}

func TestHoldOption(t *testing.T) {
	_, rdb := redistest.Mini(t)
	for _, o := range []redisbus.Options{{Hold: -time.Second}, {Hold: 11 * time.Second}, {TTL: time.Second, Hold: 2 * time.Second}} {
		if _, err := redisbus.NewPublisher(rdb, o); err == nil || !strings.Contains(err.Error(), "redisbus: hold=") {
			t.Errorf("NewPublisher(%+v): %v, want an error naming hold", o, err)
		}
	}
	if _, err := redisbus.NewPublisher(rdb, redisbus.Options{TTL: time.Second}); err != nil {
		t.Errorf("a TTL under the default hold: %v, want the hold cut to the TTL", err)
	}
}
