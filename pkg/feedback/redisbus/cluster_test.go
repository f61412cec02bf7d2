package redisbus_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/feedback/redisbus"
	"github.com/sluice-dev/sluice/pkg/state"
)

// TestRedisBusCluster: on a Redis Cluster, with the pressure hashes of
// three coordinators on three different masters (and the level sets and
// the index wherever their names hash): events published through one
// ClusterClient reach a subscriber on another (pub/sub crosses the
// cluster), the hashes and the sets KEDA counts are right, a late
// subscriber's snapshot reads every node, a withdrawal and a reap clear
// the sets.
func TestRedisBusCluster(t *testing.T) {
	cl := redistest.StartCluster(t, 3, 0)
	ctx := context.Background()
	masters := cl.Masters(t)
	ids := make([]string, len(masters))
	for i, n := 0, 0; n < len(masters); i++ {
		id := fmt.Sprintf("store-%d", i)
		if j := slices.Index(masters, cl.MasterOf(t, cl.Slot(t, "sluice:pressure:{"+id+"}"))); ids[j] == "" {
			ids[j] = id
			n++
		}
	}
	rdb := cl.Client(t)
	pub := publisher(t, cl.Client(t), 10*time.Second)
	col := subscribe(t, cl.Client(t), time.Hour)
	levels := []state.Level{state.Hard, state.Soft, state.OK}
	for i, id := range ids {
		if err := pub.Publish(ctx, event(id, 5, levels[i])); err != nil {
			t.Fatalf("publish %s: %v", id, err)
		}
	}
	for i, id := range ids {
		col.waitFor(t, id+"'s event", func(e feedback.Event) bool { return e.CoordinatorID == id && e.Level == levels[i] })
	}
	if hard, soft := rdb.SCard(ctx, "sluice:pressure:hard").Val(), rdb.SCard(ctx, "sluice:pressure:soft").Val(); hard != 1 || soft != 1 {
		t.Fatalf("level sets: hard %d, soft %d; want 1 and 1", hard, soft)
	}
	p, err := redisbus.Read(ctx, rdb, "")
	if err != nil || len(p.Live) != 3 {
		t.Fatalf("read: %+v %v", p, err)
	}
	late := subscribe(t, cl.Client(t), time.Hour)
	if got := late.all(); len(got) != 3 {
		t.Fatalf("a late subscriber's snapshot delivered %+v, want the 3 coordinators", got)
	}
	if err := pub.Withdraw(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	if n := rdb.SCard(ctx, "sluice:pressure:hard").Val(); n != 0 {
		t.Fatalf("hard set after the withdrawal: %d members", n)
	}
	// A coordinator that dies: its hash expires, a reap clears the sets.
	short := publisher(t, cl.Client(t), 100*time.Millisecond)
	if err := short.Publish(ctx, event(ids[0], 6, state.Hard)); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); rdb.Exists(ctx, "sluice:pressure:{"+ids[0]+"}").Val() == 1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a hash with a 100ms TTL still there after 30s")
		}
	}
	p, err = redisbus.Reap(ctx, rdb, "")
	if err != nil || !slices.Equal(p.Expired, ids[:1]) || len(p.Live) != 2 {
		t.Fatalf("reap: %+v %v", p, err)
	}
	if n := rdb.SCard(ctx, "sluice:pressure:hard").Val(); n != 0 {
		t.Fatalf("hard set after the reap: %d members", n)
	}
}
