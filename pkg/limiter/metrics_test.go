package limiter_test

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-dev/sluice/pkg/internal/promutil"
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
