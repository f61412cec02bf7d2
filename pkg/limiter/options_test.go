package limiter_test

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/pkg/limiter"
)

func TestOptionsValidation(t *testing.T) {
	_, rdb := redistest.Mini(t)
	for _, tc := range []struct {
		o    limiter.Options
		want string
	}{
		{limiter.Options{Prefix: "a:b"}, "prefix"},
		{limiter.Options{ReplicaID: "pod 1"}, "replica_id"},
		{limiter.Options{Source: "x\ny"}, "source"},
		{limiter.Options{Outage: 7}, "outage_mode"},
		{limiter.Options{Heartbeat: -time.Second}, "heartbeat=-1s"},
		{limiter.Options{PausedRecheck: -1}, "paused_recheck"},
		{limiter.Options{RedisRetry: -time.Second}, "redis_retry"},
		{limiter.Options{TokenLease: -time.Millisecond}, "token_lease=-1ms"},
		{limiter.Options{TokenLease: 2 * time.Second}, "token_lease=2s"},
		{limiter.Options{TokenLease: time.Millisecond, MaxBatch: 1}, "max_batch is 1"},
		{limiter.Options{CallBudget: -1}, "call_budget=-1"},
		{limiter.Options{CallBudget: math.NaN()}, "call_budget=NaN"},
		{limiter.Options{CallBudget: 2e7}, "call_budget=2e+07 must be calls a second in (0, 1e7]"},
	} {
		c, err := limiter.New(rdb, tc.o)
		if err == nil {
			c.Close()
			t.Errorf("New(%+v) accepted", tc.o)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) || !errors.Is(err, limiter.ErrInvalidArgument) {
			t.Errorf("New(%+v) = %v, want an ErrInvalidArgument naming %s", tc.o, err, tc.want)
		}
	}
	if _, err := limiter.New(nil, limiter.Options{}); !errors.Is(err, limiter.ErrInvalidArgument) {
		t.Errorf("New(nil client): %v", err)
	}
	// A source may be free text: an operator's note.
	c, err := limiter.New(rdb, limiter.Options{Source: "incident 4711"})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

func TestOutageModeText(t *testing.T) {
	for _, m := range []limiter.OutageMode{limiter.FailClosed, limiter.FailOpen, limiter.LocalFallback} {
		var got limiter.OutageMode = 9
		if err := got.UnmarshalText([]byte(m.String())); err != nil || got != m {
			t.Errorf("%v: round trip gave %v %v", m, got, err)
		}
	}
	got := limiter.FailOpen
	err := got.UnmarshalText([]byte("fail_sometimes"))
	var ae *limiter.ArgumentError
	if !errors.As(err, &ae) || ae.Field != "outage_mode" || got != limiter.FailOpen {
		t.Errorf("bad mode: %v, mode now %v (want an ArgumentError and FailOpen kept)", err, got)
	}
}
