package limiter_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/pkg/limiter"
)

// TestPausedWaitersSurvivePubSubCut: the connection that carries the wake-up
// notifications is killed (CLIENT KILL TYPE pubsub) and kept from coming
// back (an ACL takes SUBSCRIBE away) while the scale rises, so that
// notification is lost for sure. Once SUBSCRIBE is allowed again the
// waiters resume within seconds, not at their slow re-check (30 s here):
// the subscription comes back by itself, and coming back wakes every waiter
// to look again.
func TestPausedWaitersSurvivePubSubCut(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	const waiters = 4
	srv := redistest.Start(t)
	admin := srv.Client(t)
	ctx := context.Background()
	c, reg := newCoord(t, srv.Client(t), limiter.Options{PausedRecheck: 30 * time.Second})
	register(t, c, "p", 100, 100)
	if _, err := c.SetBudgetScale(ctx, "p", 0); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	resumed := make(chan time.Time, waiters)
	var wg sync.WaitGroup
	for range waiters {
		wg.Go(func() {
			if _, err := c.Acquire(wctx, "p", 1); err != nil {
				t.Error(err)
				return
			}
			resumed <- time.Now()
		})
	}
	waitFor(t, "paused waiters", func() bool { return pausedWaiters(reg, "p") == waiters })

	killed, allowSubscribe := redistest.CutPubSub(t, admin)
	if killed != 1 {
		t.Fatalf("CLIENT KILL TYPE pubsub killed %d, want the limiter's one subscription", killed)
	}
	if _, err := c.SetBudgetScale(ctx, "p", 1); err != nil { // the notification goes nowhere
		t.Fatal(err)
	}
	if n := admin.PubSubNumSub(ctx, "sluice:{p}:notify").Val()["sluice:{p}:notify"]; n != 0 {
		t.Fatalf("%d subscribers while SUBSCRIBE is denied", n)
	}
	time.Sleep(300 * time.Millisecond) // the lost notification, and a failed resubscription or two
	if len(resumed) != 0 {
		t.Fatal("a waiter resumed without a notification or its re-check")
	}
	allowed := time.Now()
	allowSubscribe()
	wg.Wait()
	close(resumed)
	var slowest time.Duration
	for at := range resumed {
		slowest = max(slowest, at.Sub(allowed))
	}
	t.Logf("every waiter resumed within %v of SUBSCRIBE being allowed again", slowest)
	if slowest > 5*time.Second {
		t.Fatalf("waiters resumed %v after the subscription could come back: they waited for the slow re-check", slowest)
	}
	waitFor(t, "the notification subscription back", func() bool {
		return admin.PubSubNumSub(ctx, "sluice:{p}:notify").Val()["sluice:{p}:notify"] == 1
	})
}

// TestNotificationsOnARing: a limiter on a redis.Ring subscribes to its
// notifications (go-redis refuses a Ring's subscription without a channel:
// it picks the shard by it): a refusal it holds and a paused Acquire both
// watch them, and the Acquire wakes when another replica raises the scale,
// long before its slow re-check.
func TestNotificationsOnARing(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	ring := redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": srv.Addr}})
	t.Cleanup(func() { ring.Close() })
	c, reg := newCoord(t, ring, limiter.Options{PausedRecheck: time.Hour})
	admin, _ := newCoord(t, srv.Client(t), limiter.Options{})
	register(t, admin, "p", 1, 0.001)
	try(t, c, "p", 1)
	if d := try(t, c, "p", 1); d.Allowed { // refused by Redis: held, watching the notifications
		t.Fatalf("second call granted: %+v", d)
	}
	if _, err := admin.SetBudgetScale(ctx, "p", 0); err != nil {
		t.Fatal(err)
	}
	woke := make(chan error, 1)
	go func() {
		_, err := c.Acquire(ctx, "p", 1)
		woke <- err
	}()
	waitFor(t, "the waiter paused", func() bool { return pausedWaiters(reg, "p") == 1 })
	register(t, admin, "p", 1, 1000) // refills at once
	if _, err := admin.SetBudgetScale(ctx, "p", 1); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-woke:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the paused Acquire on a Ring was not woken by the scale change")
	}
}
