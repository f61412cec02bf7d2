package lua_test

import (
	"context"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/lua"
)

// TestSetScaleCompareAndSet runs set_scale.lua on a real redis-server: with
// ARGV[4] (expect) it sets the scale only if the scale in force is expect;
// on a conflict it writes nothing and replies the scale in force and when it
// last changed; scale = expect is a read; without ARGV[4] (the old callers,
// the Python client) it sets as before.
func TestSetScaleCompareAndSet(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	ctx := context.Background()
	keys := []string{"t:{p}:config", "t:{p}:bucket", "t:{p}:scale"}
	if err := rdb.HSet(ctx, keys[0], "capacity", 10, "refill_rate", 5).Err(); err != nil {
		t.Fatal(err)
	}
	script := redis.NewScript(lua.Source("set_scale"))
	run := func(args ...any) []any {
		t.Helper()
		res, err := script.Run(ctx, rdb, keys, args...).Slice()
		if err != nil {
			t.Fatalf("set_scale %v: %v", args, err)
		}
		if len(res) != 7 {
			t.Fatalf("set_scale %v: reply %v, want 7 elements", args, res)
		}
		return res
	}
	stored := func() map[string]string { return rdb.HGetAll(ctx, keys[2]).Val() }

	// Never set: a read (expect 1 = scale 1) writes nothing, updated_at 0.
	if r := run("1", "a", "", "1"); r[0] != "1" || r[1] != "1" || r[2] != int64(0) || r[6] != "0" {
		t.Fatalf("read of a fresh scale: %v", r)
	}
	if len(stored()) != 0 {
		t.Fatalf("a read wrote the scale hash: %v", stored())
	}
	// expect matches: set, updated_at = now.
	r := run("0.5", "a", "", "1")
	if r[1] != "0.5" || r[2] != int64(1) || r[6] != strings.TrimSpace(stored()["updated_at"]) || r[6] == "0" {
		t.Fatalf("compare-and-set from 1: %v, stored %v", r, stored())
	}
	at := r[6]
	// Conflict: someone else set 0.5 (the handler expected 1): nothing
	// written, the reply is the scale in force and its updated_at.
	before := stored()
	r = run("0.8", "b", "", "1")
	if r[0] != "0.5" || r[1] != "0.5" || r[2] != int64(0) || r[6] != at {
		t.Fatalf("conflict: reply %v, want old = new = 0.5, changed 0, updated_at %v", r, at)
	}
	if after := stored(); after["scale"] != "0.5" || after["seq"] != before["seq"] || after["source"] != "a" {
		t.Fatalf("a conflict wrote: %v -> %v", before, after)
	}
	// A read of the scale in force (scale = expect) changes nothing.
	if r = run("0.5", "b", "", "0.5"); r[1] != "0.5" || r[2] != int64(0) || r[6] != at {
		t.Fatalf("read: %v", r)
	}
	// Without expect (3 ARGV, as the Python client calls it): always set.
	if r = run("0.25", "py", ""); r[0] != "0.5" || r[1] != "0.25" || r[2] != int64(1) {
		t.Fatalf("unconditional set: %v", r)
	}
	if r = run("1", "py", "", ""); r[1] != "1" || r[2] != int64(1) {
		t.Fatalf("expect \"\": %v", r)
	}
	// A malformed expect is refused, naming it.
	if _, err := script.Run(ctx, rdb, keys, "1", "a", "", "nan").Result(); err == nil || !strings.Contains(err.Error(), "expect") {
		t.Fatalf("expect=nan: %v, want an INVALID_ARGUMENT naming expect", err)
	}
}
