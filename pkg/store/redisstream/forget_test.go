package redisstream

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/internal/redistest"
)

// TestForgetKeepsPending: lua/forget.lua (with the prelude, as loaded)
// removes a consumer only when it has nothing pending and has been idle for
// longer than the threshold; one that holds a pending entry stays, however
// long it has been idle; a threshold that is not an integer >= -1 is
// refused, and nothing is removed.
func TestForgetKeepsPending(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	ctx := context.Background()
	const key, group = "sluice:stream:{f}", "coordinators"
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(rdb.XGroupCreateMkStream(ctx, key, group, "0").Err())
	for range 2 {
		must(rdb.XAdd(ctx, &redis.XAddArgs{Stream: key, Values: []any{"data", "x"}}).Err())
	}
	read := func(name string) string {
		res, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: group, Consumer: name, Streams: []string{key, ">"}, Count: 1, Block: -1}).Result()
		must(err)
		return res[0].Messages[0].ID
	}
	read("holds")                                       // one entry pending
	must(rdb.XAck(ctx, key, group, read("done")).Err()) // read and acknowledged
	must(rdb.XGroupCreateConsumer(ctx, key, group, "never-read").Err())
	forget := func(idle int64, names ...any) []string {
		t.Helper()
		gone, err := forgetScript.Run(ctx, rdb, []string{key}, append([]any{group, idle}, names...)...).StringSlice()
		must(err)
		slices.Sort(gone)
		return gone
	}
	left := func() []string {
		cs, err := rdb.XInfoConsumers(ctx, key, group).Result()
		must(err)
		var names []string
		for _, c := range cs {
			names = append(names, c.Name)
		}
		slices.Sort(names)
		return names
	}
	for _, bad := range []any{"-2", "1.5", "soon", ""} {
		err := forgetScript.Run(ctx, rdb, []string{key}, group, bad).Err()
		if err == nil || !strings.HasPrefix(err.Error(), fmt.Sprintf("INVALID_ARGUMENT idle_ms=%s must be", bad)) {
			t.Errorf("idle_ms=%q: %v, want INVALID_ARGUMENT idle_ms=%s", bad, err, bad)
		}
	}
	if l := left(); len(l) != 3 {
		t.Fatalf("group has %v after refused calls, want all three", l)
	}
	if gone := forget(time.Hour.Milliseconds()); len(gone) != 0 {
		t.Fatalf("removed %v, idle for less than an hour", gone)
	}
	time.Sleep(20 * time.Millisecond)
	if gone := forget(10); !slices.Equal(gone, []string{"done", "never-read"}) {
		t.Fatalf("removed %v, want done and never-read", gone)
	}
	if gone := forget(-1, "holds"); len(gone) != 0 {
		t.Fatalf("removed %v, which holds a pending entry", gone)
	}
	if l := left(); !slices.Equal(l, []string{"holds"}) {
		t.Fatalf("group has %v, want holds", l)
	}
	p, err := rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: key, Group: group, Start: "-", End: "+", Count: 10}).Result()
	must(err)
	must(rdb.XAck(ctx, key, group, p[0].ID).Err())
	if gone := forget(-1, "holds"); !slices.Equal(gone, []string{"holds"}) {
		t.Fatalf("removed %v, want holds once it has nothing pending", gone)
	}
}
