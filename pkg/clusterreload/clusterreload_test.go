package clusterreload_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/internal/leaktest"
	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/pkg/clusterreload"
)

func TestMain(m *testing.M) {
	redis.SetLogger(silent{}) // the dead master's dial failures are expected
	leaktest.VerifyTestMain(m)
}

type silent struct{}

func (silent) Printf(context.Context, string, ...any) {}

// reply returns the error a server answers with the given text (a Lua
// error_reply is sent as a plain error reply, as a cluster node sends
// CLUSTERDOWN).
func reply(t *testing.T, rdb *redis.Client, text string) error {
	t.Helper()
	err := rdb.Eval(context.Background(), "return redis.error_reply(ARGV[1])", nil, text).Err()
	var re redis.Error
	if !errors.As(err, &re) || err.Error() != text {
		t.Fatalf("reply %q: got %v", text, err)
	}
	return err
}

// TestStale: which outcomes of a call ask for a new slot map.
func TestStale(t *testing.T) {
	_, rdb := redistest.Mini(t)
	ctx := context.Background()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nobody listens there now: connection refused
	dead := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	refused := dead.Ping(ctx).Err()
	dead.Close()
	closed := dead.Ping(ctx).Err()
	for _, tc := range []struct {
		name  string
		err   error
		stale bool
	}{
		{"success", nil, false},
		{"a missing key", rdb.Get(ctx, "missing").Err(), false},
		{"the caller canceled", context.Canceled, false},
		{"wrong type", reply(t, rdb, "WRONGTYPE Operation against a key holding the wrong kind of value"), false},
		{"no script", redis.ErrNoScript, false},
		{"no permission", reply(t, rdb, "NOPERM this user has no permissions to run the 'xadd' command"), false},
		{"an error of the script", reply(t, rdb, "INVALID_ARGUMENT ttl_ms=0"), false},
		{"timeout", context.DeadlineExceeded, true},
		{"connection refused", refused, true},
		{"client closed", closed, true},
		{"cluster down", reply(t, rdb, "CLUSTERDOWN The cluster is down"), true},
		{"try again", reply(t, rdb, "TRYAGAIN Multiple keys request during rehashing of slot"), true},
		{"master down", reply(t, rdb, "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'."), true},
		{"loading", reply(t, rdb, "LOADING Redis is loading the dataset in memory"), true},
		{"read only", reply(t, rdb, "READONLY You can't write against a read only replica."), true},
	} {
		if got := clusterreload.Stale(tc.err); got != tc.stale {
			t.Errorf("%s (%v): Stale %v, want %v", tc.name, tc.err, got, tc.stale)
		}
	}
	if refused == nil || closed == nil {
		t.Fatalf("the dead client's errors: %v, %v", refused, closed)
	}
}

// counter is a Reloader that counts.
type counter struct {
	mu sync.Mutex
	n  int
}

func (c *counter) ReloadState(context.Context) { c.mu.Lock(); c.n++; c.mu.Unlock() }
func (c *counter) count() int                  { c.mu.Lock(); defer c.mu.Unlock(); return c.n }

// TestDebounce: one reload per MinInterval however many calls fail, none
// after a success or a plain reply; a pipeline reloads when any of its
// commands failed.
func TestDebounce(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1_700_000_000, 0)
	r := &counter{}
	h := clusterreload.New(r, func() time.Time { return now })
	var outcome error
	call := h.ProcessHook(func(context.Context, redis.Cmder) error { return outcome })
	pipe := h.ProcessPipelineHook(func(context.Context, []redis.Cmder) error { return nil })
	cmd := redis.NewStatusCmd(ctx, "ping")
	for _, step := range []struct {
		advance time.Duration
		outcome error
		calls   int
		want    int // reloads so far
	}{
		{0, nil, 5, 0},
		{0, redis.Nil, 5, 0},
		{0, context.DeadlineExceeded, 10, 1}, // a burst of failures: one reload
		{clusterreload.MinInterval - time.Millisecond, context.DeadlineExceeded, 3, 1},
		{time.Millisecond, context.DeadlineExceeded, 3, 2},
		{time.Hour, nil, 1, 2},
		{0, context.DeadlineExceeded, 1, 3},
	} {
		now = now.Add(step.advance)
		outcome = step.outcome
		for range step.calls {
			if err := call(ctx, cmd); err != step.outcome {
				t.Fatalf("the hook changed the error: %v, want %v", err, step.outcome)
			}
		}
		if got := r.count(); got != step.want {
			t.Fatalf("after %d calls failing with %v: %d reloads, want %d", step.calls, step.outcome, got, step.want)
		}
	}
	now = now.Add(time.Hour)
	ok, failed := redis.NewStatusCmd(ctx, "ping"), redis.NewStatusCmd(ctx, "ping")
	if err := pipe(ctx, []redis.Cmder{ok}); err != nil || r.count() != 3 {
		t.Fatalf("a pipeline that succeeded: %v, %d reloads, want 3", err, r.count())
	}
	failed.SetErr(errors.New("read tcp: i/o timeout"))
	if err := pipe(ctx, []redis.Cmder{ok, failed}); err != nil || r.count() != 4 {
		t.Fatalf("a pipeline with a timed-out command: %v, %d reloads, want 4", err, r.count())
	}
}

// TestMasterKilled: kill -9 of the master of a key on a real cluster. A
// client with the hook writes the key again soon after the promotion; one
// without it keeps the dead master in its slot map (it would for up to
// ClusterStateReloadInterval, 60 s). The times are logged; the test fails
// if the hooked client is not back within 10 s of every node agreeing on
// the new master (it is back within a fraction of a second, sometimes
// before the last node agrees).
func TestMasterKilled(t *testing.T) {
	cl := redistest.StartCluster(t, 3, 1)
	const key = "sluice:controller:lease"
	master := cl.MasterOf(t, cl.Slot(t, key))
	hooked, plain := cl.Client(t), cl.Client(t)
	clusterreload.Install(hooked)
	type result struct {
		name string
		back time.Time // first success after the kill; zero if none
	}
	stop := make(chan struct{})
	results := make(chan result, 2)
	var killed time.Time
	var mu sync.Mutex
	write := func(name string, rdb *redis.ClusterClient) {
		res := result{name: name}
		defer func() { results <- res }()
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 250*time.Millisecond)
			err := rdb.Set(ctx, key, name, 0).Err()
			cancel()
			mu.Lock()
			after := !killed.IsZero()
			mu.Unlock()
			if err == nil && after {
				res.back = time.Now()
				return
			}
		}
	}
	for _, c := range []struct {
		name string
		rdb  *redis.ClusterClient
	}{{"hooked", hooked}, {"plain", plain}} {
		if err := c.rdb.Set(context.Background(), key, "x", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	killed = time.Now()
	mu.Unlock()
	go write("hooked", hooked)
	go write("plain", plain)
	cl.Kill(t, master) // returns once every live node agrees on the new master
	agreed := time.Now()
	var got []result
	deadline := time.After(10 * time.Second)
	for len(got) < 1 {
		select {
		case r := <-results:
			got = append(got, r)
		case <-deadline:
			close(stop)
			<-results
			<-results
			t.Fatalf("the hooked client did not write %s within 10s of the promotion (%v after the kill)", key, agreed.Sub(killed))
		}
	}
	// Give the plain client as long again as the hooked one took, and a second, then stop it.
	extra := time.After(max(got[0].back.Sub(agreed), 0) + time.Second)
	select {
	case r := <-results:
		got = append(got, r)
	case <-extra:
	}
	close(stop)
	for len(got) < 2 {
		got = append(got, <-results)
	}
	var lines []string
	hookedBack := false
	for _, r := range got {
		line := r.name + ": still failing when stopped"
		if !r.back.IsZero() {
			line = fmt.Sprintf("%s: back %v after the kill (%+v from the agreement)", r.name,
				r.back.Sub(killed).Round(time.Millisecond), r.back.Sub(agreed).Round(time.Millisecond))
			hookedBack = hookedBack || r.name == "hooked"
		}
		lines = append(lines, line)
	}
	t.Logf("master %s killed; new master agreed on by every node %v after the kill; %v", master, agreed.Sub(killed).Round(time.Millisecond), lines)
	if !hookedBack {
		t.Fatal("the hooked client did not come back")
	}
}
