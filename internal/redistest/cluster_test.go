package redistest_test

import (
	"context"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/redistest"
)

// TestCluster: a cluster starts and settles; a slot migrates to another
// master with its keys; a failover promotes a replica.
func TestCluster(t *testing.T) {
	start := time.Now()
	cl := redistest.StartCluster(t, 3, 1)
	t.Logf("cluster of 6 settled in %v", time.Since(start))
	rdb := cl.Client(t)
	ctx := context.Background()
	if err := rdb.Set(ctx, "{a}x", "1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	slot := cl.Slot(t, "{a}x")
	from := cl.MasterOf(t, slot)
	var to string
	for _, m := range cl.Masters(t) {
		if m != from {
			to = m
			break
		}
	}
	if len(cl.Masters(t)) != 3 {
		t.Fatalf("masters %v", cl.Masters(t))
	}
	start = time.Now()
	cl.MigrateSlot(t, slot, to, 200*time.Millisecond)
	t.Logf("migrated in %v", time.Since(start))
	if got := cl.MasterOf(t, slot); got != to {
		t.Fatalf("slot %d on %s after migrating to %s", slot, got, to)
	}
	if v := rdb.Get(ctx, "{a}x").Val(); v != "1" {
		t.Fatalf("key after migration: %q", v)
	}
	start = time.Now()
	promoted := cl.Failover(t, to)
	t.Logf("failover in %v", time.Since(start))
	if got := cl.MasterOf(t, slot); got != promoted || promoted == to {
		t.Fatalf("slot %d on %s after failover of %s to %s", slot, got, to, promoted)
	}
	if v := rdb.Get(ctx, "{a}x").Val(); v != "1" {
		t.Fatalf("key after failover: %q", v)
	}
}
