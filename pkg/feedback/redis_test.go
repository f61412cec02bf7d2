package feedback_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/pkg/feedback"
)

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

// waitFor waits until some delivered event satisfies ok.
func (c *collector) waitFor(t *testing.T, what string, ok func(feedback.Event) bool) feedback.Event {
	t.Helper()
	deadline := time.After(5 * time.Second)
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
			t.Fatalf("no %s delivered within 5s; got %+v", what, c.events)
		}
	}
}

func subscribe(t *testing.T, rdb *redis.Client, resync time.Duration) *collector {
	t.Helper()
	col := newCollector()
	sub := feedback.NewRedisSubscriber(rdb, feedback.RedisKeys{}, resync, quiet())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = sub.Run(ctx, col.deliver); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return col
}

func TestRedisBus(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		ctx := context.Background()
		rdb := b.Client(t)
		pub := feedback.NewRedisPublisher(b.Client(t), feedback.RedisKeys{}, 10*time.Second)
		col := subscribe(t, b.Client(t), time.Hour)
		time.Sleep(100 * time.Millisecond) // let the subscription start
		e := event("store-0", 10, feedback.Hard)
		if err := pub.Publish(ctx, e); err != nil {
			t.Fatal(err)
		}
		got := col.waitFor(t, "the hard event", func(g feedback.Event) bool { return g.Seq == 10 })
		if got.Level != feedback.Hard || got.QueueSize != 950 || got.TS.IsZero() {
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
		if err := pub.Publish(ctx, event("store-0", 9, feedback.OK)); err != nil {
			t.Fatal(err)
		}
		if l := rdb.HGet(ctx, "sluice:pressure:{store-0}", "level").Val(); l != "hard" {
			t.Fatalf("older event overwrote the hash: level %s", l)
		}
		if err := pub.Publish(ctx, event("store-0", 11, feedback.Soft)); err != nil {
			t.Fatal(err)
		}
		col.waitFor(t, "the soft event", func(g feedback.Event) bool { return g.Seq == 11 })
		if hard, soft := rdb.SCard(ctx, "sluice:pressure:hard").Val(), rdb.SCard(ctx, "sluice:pressure:soft").Val(); hard != 0 || soft != 1 {
			t.Fatalf("sets after soft: hard %d soft %d", hard, soft)
		}
		for _, got := range col.events {
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

// TestRedisLateSubscriberConverges: a replica that subscribes after the last
// event still gets it, from the keys.
func TestRedisLateSubscriberConverges(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		pub := feedback.NewRedisPublisher(b.Client(t), feedback.RedisKeys{}, 10*time.Second)
		for i, l := range []feedback.Level{feedback.OK, feedback.Soft, feedback.Hard} {
			if err := pub.Publish(context.Background(), event("store-0", uint64(i+1), l)); err != nil {
				t.Fatal(err)
			}
		}
		col := subscribe(t, b.Client(t), time.Hour)
		got := col.waitFor(t, "a snapshot", func(feedback.Event) bool { return true })
		if got.Seq != 3 || got.Level != feedback.Hard {
			t.Fatalf("late subscriber got %+v, want the latest (seq 3, hard)", got)
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
		pub := feedback.NewRedisPublisher(b.Client(t), feedback.RedisKeys{}, 10*time.Second)
		if err := pub.Publish(ctx, event("dead", 1, feedback.Hard)); err != nil {
			t.Fatal(err)
		}
		if err := pub.Publish(ctx, event("alive", 1, feedback.Soft)); err != nil {
			t.Fatal(err)
		}
		rdb.Del(ctx, "sluice:pressure:{dead}") // as its TTL would
		rdb.SAdd(ctx, "sluice:pressure:coordinators", "garbled")
		rdb.HSet(ctx, "sluice:pressure:{garbled}", "level", "panic")
		p, err := feedback.ReadPressure(ctx, rdb, feedback.RedisKeys{})
		if err != nil || len(p.Live) != 1 || len(p.Expired) != 1 || p.Expired[0] != "dead" || p.Malformed["garbled"] == nil {
			t.Fatalf("ReadPressure = %+v %v", p, err)
		}
		sub := feedback.NewRedisSubscriber(rdb, feedback.RedisKeys{}, time.Hour, quiet())
		events, err := sub.Snapshot(ctx)
		if err != nil || len(events) != 1 || events[0].CoordinatorID != "alive" {
			t.Fatalf("snapshot = %+v %v, want only alive", events, err)
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
	col := subscribe(t, srv.Client(t), 200*time.Millisecond)
	pub := feedback.NewRedisPublisher(srv.Client(t), feedback.RedisKeys{}, 10*time.Second)
	time.Sleep(100 * time.Millisecond)
	if err := pub.Publish(context.Background(), event("s", 1, feedback.Soft)); err != nil {
		t.Fatal(err)
	}
	col.waitFor(t, "seq 1", func(e feedback.Event) bool { return e.Seq == 1 })
	srv.Restart(t)
	deadline := time.Now().Add(5 * time.Second)
	for seq := uint64(2); ; seq++ { // publish until the resubscribed side hears one
		_ = pub.Publish(context.Background(), event("s", seq, feedback.Hard))
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
