package limiter_test

import (
	"context"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/pkg/internal/promutil"
	"github.com/sluice-dev/sluice/pkg/limiter"
)

// faultHook makes the commands that name a key of one provider fail with
// an error (a given number of them, or all), as a cluster answers
// when that provider's slot is in motion or its node is down; the other
// providers' commands go through.
type faultHook struct {
	tag     string // "{provider}"
	err     atomic.Pointer[error]
	left    atomic.Int64
	faulted atomic.Int64 // commands failed
	scripts atomic.Int64 // of which script calls (the others: the probe's EXISTS)
}

// set makes the next times commands fail with err (every one when times
// < 0; none when err is nil).
func (h *faultHook) set(err error, times int64) {
	h.left.Store(times)
	if err == nil {
		h.err.Store(nil)
		return
	}
	h.err.Store(&err)
}

func (h *faultHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *faultHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		e := h.err.Load()
		if e == nil || !slices.ContainsFunc(cmd.Args(), func(a any) bool { s, _ := a.(string); return strings.Contains(s, h.tag) }) {
			return next(ctx, cmd)
		}
		if h.left.Load() > 0 && h.left.Add(-1) == 0 { // the last of a limited number
			h.err.Store(nil)
		}
		h.faulted.Add(1)
		if n := cmd.Name(); n == "evalsha" || n == "eval" {
			h.scripts.Add(1)
		}
		cmd.SetErr(*e)
		return *e
	}
}

func (h *faultHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// replyError returns the error go-redis makes of the error reply msg, as a
// cluster would send it.
func replyError(t *testing.T, rdb *redis.Client, msg string) error {
	t.Helper()
	err := rdb.Eval(context.Background(), "return redis.error_reply(ARGV[1])", nil, msg).Err()
	if err == nil || err.Error() != msg {
		t.Fatalf("reply %q: %v", msg, err)
	}
	return err
}

func redisUpGauge(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	v, ok := promutil.Sum(reg, "rate_coordinator_redis_up", nil)
	if !ok {
		t.Fatal("rate_coordinator_redis_up not found")
	}
	return v
}

// TestSlotInMotionRetried: answers that say the provider's slot is moving
// (TRYAGAIN, ASK, MOVED, CLUSTERDOWN) are tried again with backoff within
// CallTimeout: a few of them cost a few milliseconds, not an outage.
func TestSlotInMotionRetried(t *testing.T) {
	_, rdb := redistest.Mini(t)
	for _, msg := range []string{
		"TRYAGAIN Multiple keys request during rehashing of slot",
		"ASK 1234 127.0.0.1:7001", "MOVED 1234 127.0.0.1:7001", "CLUSTERDOWN The cluster is down",
	} {
		t.Run(strings.Fields(msg)[0], func(t *testing.T) {
			hook := &faultHook{tag: "{a}"}
			rdb.AddHook(hook)
			c, reg := newCoord(t, rdb, limiter.Options{CallTimeout: defaultCallTimeout, Prefix: strings.ToLower(strings.Fields(msg)[0])})
			register(t, c, "a", 100, 100)
			hook.set(replyError(t, rdb, msg), 3)
			d := try(t, c, "a", 1)
			if !d.Allowed || d.Local {
				t.Fatalf("%+v, want a grant from Redis after the retries", d)
			}
			if hook.faulted.Load() != 3 {
				t.Fatalf("%d calls met %q, want 3 then a success", hook.faulted.Load(), msg)
			}
			if up := redisUpGauge(t, reg); up != 1 {
				t.Fatalf("rate_coordinator_redis_up %v after retries that succeeded, want 1", up)
			}
			hook.set(nil, 0)
		})
	}
}

// TestProviderOutageIsolated: a provider whose calls fail (its slot never
// settles, or its node is unreachable) goes to the outage mode alone: its
// callers get ErrRedisUnavailable without the raw Redis reply, within
// CallTimeout; the other provider keeps deciding on Redis; only the failed
// provider's probe touches its keys until it is served again (no
// acquisition, no heartbeat); then it is back by itself.
func TestProviderOutageIsolated(t *testing.T) {
	_, rdb := redistest.Mini(t)
	for name, fault := range map[string]error{
		"slot_never_settles": replyError(t, rdb, "ASK 1234 127.0.0.1:7001"),
		"node_unreachable":   &net.OpError{Op: "dial", Net: "tcp", Err: io.ErrUnexpectedEOF},
	} {
		t.Run(name, func(t *testing.T) {
			hook := &faultHook{tag: "{a}"}
			client := redis.NewClient(rdb.Options())
			t.Cleanup(func() { client.Close() })
			client.AddHook(hook)
			c, reg := newCoord(t, client, limiter.Options{CallTimeout: 100 * time.Millisecond, RedisRetry: 20 * time.Millisecond, Heartbeat: 20 * time.Millisecond})
			register(t, c, "a", 100, 100)
			register(t, c, "b", 100, 100)
			try(t, c, "a", 1)
			hook.set(fault, -1)
			start := time.Now()
			_, err := c.TryAcquire(context.Background(), "a", 1)
			took := time.Since(start)
			var rerr redis.Error
			if !errors.Is(err, limiter.ErrRedisUnavailable) || errors.As(err, &rerr) || !strings.Contains(err.Error(), `"a"`) {
				t.Fatalf("a: %v; want ErrRedisUnavailable naming the provider, without the raw reply in the chain", err)
			}
			t.Logf("a: %v after %v", err, took)
			if d := try(t, c, "b", 1); !d.Allowed || d.Local {
				t.Fatalf("b while a is out: %+v, want a grant from Redis", d)
			}
			if up := redisUpGauge(t, reg); up != 0 {
				t.Fatalf("rate_coordinator_redis_up %v while a is out, want 0", up)
			}
			// a's calls go straight to the outage mode, and its heartbeat
			// pauses: only its prober meets the fault, once per RedisRetry.
			probes := func() int64 { return hook.faulted.Load() - hook.scripts.Load() }
			waitFor(t, "10 probes", func() bool { return probes() >= 10 }) // 10 RedisRetry: a heartbeat under way at the fault has ended
			scripts, before := hook.scripts.Load(), probes()
			for range 50 {
				if _, err := c.TryAcquire(context.Background(), "a", 1); !errors.Is(err, limiter.ErrRedisUnavailable) {
					t.Fatalf("a during its outage: %v", err)
				}
			}
			waitFor(t, "5 more probes and heartbeat periods", func() bool { return probes() >= before+5 })
			// At most the last try of a heartbeat descheduled past its end;
			// a heartbeat of a every 20 ms would make about 2 per period.
			if n := hook.scripts.Load() - scripts; n > 1 {
				t.Fatalf("a in outage mode: %d script calls (acquisitions or heartbeats) reached Redis, want only probes", n)
			}
			hook.set(nil, 0)
			waitFor(t, "a back on Redis", func() bool {
				d, err := c.TryAcquire(context.Background(), "a", 1)
				return err == nil && !d.Local
			})
			if up := redisUpGauge(t, reg); up != 1 {
				t.Fatalf("rate_coordinator_redis_up %v after a came back, want 1", up)
			}
		})
	}
}
