package limiter_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/pkg/internal/promutil"
	"github.com/sluice-dev/sluice/pkg/limiter"
)

func stringsReader(s string) *strings.Reader { return strings.NewReader(s) }

// gaugeValue reads the series name{provider=p}, failing if absent.
func gaugeValue(t testing.TB, reg *prometheus.Registry, name, p string) float64 {
	t.Helper()
	v, ok := promutil.Sum(reg, name, map[string]string{"provider": p})
	if !ok {
		t.Fatalf("metric %s{provider=%q} not found", name, p)
	}
	return v
}

// liveReplicas reads rate_coordinator_live_replicas{provider=p}: how many
// replicas the coordinator saw at its last heartbeat (0 before the first).
func liveReplicas(t testing.TB, reg *prometheus.Registry, p string) float64 {
	t.Helper()
	v, _ := promutil.Sum(reg, "rate_coordinator_live_replicas", map[string]string{"provider": p})
	return v
}

// waitFor polls ok until it holds, failing after 30 s (a loaded machine is
// slow, never wrong).
func waitFor(t testing.TB, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !ok(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 30s", what)
		}
	}
}

// pausedWaiters reads rate_coordinator_paused_waiters{provider=p}: Acquire
// calls of the coordinator waiting for the paused provider to resume.
func pausedWaiters(reg prometheus.Gatherer, p string) float64 {
	v, _ := promutil.Sum(reg, "rate_coordinator_paused_waiters", map[string]string{"provider": p})
	return v
}

// TestAcquisitionLabels: rate_coordinator_acquisitions_total{result} says
// how calls ended, and a refused provider name never becomes a label.
func TestAcquisitionLabels(t *testing.T) {
	_, rdb := redistest.Mini(t)
	c, reg := newCoord(t, rdb, limiter.Options{})
	register(t, c, "p", 1, 0.001)
	ctx := context.Background()
	try(t, c, "p", 1) // ok
	try(t, c, "p", 1) // rate_limited
	short, cancel := context.WithTimeout(ctx, time.Millisecond)
	defer cancel()
	<-short.Done()
	if _, err := c.Acquire(short, "p", 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire with an ended context: %v", err)
	}
	if _, err := c.SetBudgetScale(ctx, "p", 0); err != nil {
		t.Fatal(err)
	}
	paused, cancel2 := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel2()
	if _, err := c.Acquire(paused, "p", 1); !errors.Is(err, limiter.ErrPaused) {
		t.Fatalf("Acquire while paused: %v", err)
	}
	if _, err := c.Acquire(ctx, "a b", 1); !errors.Is(err, limiter.ErrInvalidArgument) {
		t.Fatalf("Acquire on a bad name: %v", err)
	}
	for result, want := range map[string]float64{"ok": 1, "rate_limited": 1, "canceled": 1, "paused": 1} {
		got, _ := promutil.Sum(reg, "rate_coordinator_acquisitions_total", map[string]string{"provider": "p", "result": result})
		if got != want {
			t.Errorf("acquisitions{result=%s} = %v, want %v", result, got, want)
		}
	}
	if n, ok := promutil.Sum(reg, "rate_coordinator_acquisitions_total", map[string]string{"provider": "a b"}); ok {
		t.Errorf("the refused name became a label (%v calls)", n)
	}
}

// TestReplicasThatStartTogetherCountEachOther: three replicas joining
// at once each learn that there are three from the early heartbeats after
// joining, not a Heartbeat (here a minute) later.
func TestReplicasThatStartTogetherCountEachOther(t *testing.T) {
	srv := redistest.Start(t)
	var regs []*prometheus.Registry
	for range 3 {
		c, reg := newCoord(t, srv.Client(t), limiter.Options{Heartbeat: time.Minute})
		if len(regs) == 0 {
			register(t, c, "p", 10, 10)
		}
		regs = append(regs, reg)
		try(t, c, "p", 1) // joins: the first sees 1 replica, the second 2
	}
	for _, reg := range regs {
		waitFor(t, "every replica counting 3", func() bool { return liveReplicas(t, reg, "p") == 3 })
	}
}
