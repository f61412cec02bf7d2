package pipeline_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/limiter"
	"github.com/sluice-dev/sluice/pkg/pipeline"
	"github.com/sluice-dev/sluice/pkg/state"
)

// commandStats returns the calls of every command redis-server counted
// (commands run by scripts included), from INFO commandstats.
func commandStats(t *testing.T, rdb *redis.Client) map[string]int {
	t.Helper()
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":calls=")
		if !ok {
			continue
		}
		n, _ := strconv.Atoi(strings.SplitN(rest, ",", 2)[0])
		out[strings.TrimPrefix(name, "cmdstat_")] = n
	}
	return out
}

// TestControlPathCommands counts what the handler asks of a real
// redis-server per event on the control path (samples at one level, so no
// pressure-level write): one set_scale script call by compare-and-set, which
// reads the scale hash with HGET/HMGET only; no status.lua (four HGETALLs, a
// ZRANGEBYSCORE, a settle) as before, which this test refuses.
func TestControlPathCommands(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	register(t, rdb)
	ctx := context.Background()
	var bus feedback.Bus
	r, err := pipeline.New(ctx, rdb, pipeline.Options{
		Limiter:  limiter.Options{ReplicaID: "pod-1", Logger: quiet},
		Feedback: &feedback.Options{Providers: []string{"ibkr"}, Tick: time.Hour, Logger: quiet},
		Events:   &bus,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	const events = 20
	ts := time.Now()
	publish := func(seq uint64, queue int) {
		e := feedback.Event{CoordinatorID: "store-0", QueueSize: queue, Capacity: 1000, Level: state.OK, Seq: seq,
			TS: ts.Add(time.Duration(seq) * 100 * time.Millisecond), Kind: feedback.KindSample}
		if err := bus.Publish(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	publish(1, 500) // the first: the level is written once
	if err := rdb.ConfigResetStat(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	for i := range events {
		publish(uint64(2+i), 500+10*i) // a fill rising above the set point: the scale moves
	}
	stats := commandStats(t, rdb)
	delete(stats, "info")
	delete(stats, "config|resetstat")
	total := 0
	for _, n := range stats {
		total += n
	}
	t.Logf("%d events: %v (%.1f commands per event)", events, stats, float64(total)/events)
	if scripts := stats["evalsha"] + stats["eval"]; scripts != events {
		t.Errorf("%d script calls for %d events, want one each: %v", scripts, events, stats)
	}
	for _, heavy := range []string{"hgetall", "zrangebyscore"} {
		if stats[heavy] > 0 {
			t.Errorf("the control path ran %s %d times (the status read): %v", heavy, stats[heavy], stats)
		}
	}
	if s := status(t, r); s.Scale >= 1 {
		t.Errorf("the scale did not move under a fill above the set point: %v", s.Scale)
	}
}
