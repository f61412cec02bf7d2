package limiter_test

import (
	"context"
	"testing"
	"time"
)

// TestCallBudgetFleet: three replica processes of 40 limiter instances
// each (every instance its own client and limiter, one worker: two
// processes TryAcquire, one Acquire) share a provider with a call budget
// of 200 calls/s, so that the 120 instances' leases stretch to their cap
// (2 × 120 ÷ 200 = 1.2 s, capped at 1 s) and their held refusals to 0.6 s.
// The bucket starts with plenty (leases are taken) and runs dry (scarce):
// together the instances never admit more than burst + rate × elapsed, on a
// real redis-server, and leases served some of the grants.
func TestCallBudgetFleet(t *testing.T) {
	const rate, burst, instances = 2000, 3000, 40
	srv, admin, ctl := pausedProvider(t, "fl", burst, rate)
	var procs []*replicaProc
	for _, mode := range []string{"try", "try", "acquire"} {
		procs = append(procs, startReplica(t, srv.Addr, "fl", 1, "MODE="+mode, "INSTANCES=40", "CALL_BUDGET=200"))
	}
	if n, err := admin.ZCard(context.Background(), "sluice:replicas:{fl}").Result(); err != nil || n != 3*instances {
		t.Fatalf("replicas registered: %d (%v), want %d", n, err, 3*instances)
	}
	t0 := time.Now()
	if _, err := ctl.SetBudgetScale(context.Background(), "fl", 1); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	var admitted, leased, held int64
	for _, p := range procs {
		r := p.stop(t)
		admitted, leased, held = admitted+r.Admitted, leased+r.Leased, held+r.Held
	}
	elapsed := time.Since(t0)
	bound := burst + rate*elapsed.Seconds()
	t.Logf("admitted %d of bound %.0f over %v (%d leased, %d refusals held)", admitted, bound, elapsed, leased, held)
	if float64(admitted) > bound {
		t.Fatalf("admitted %d > bound %.0f", admitted, bound)
	}
	if admitted == 0 || leased == 0 {
		t.Fatalf("admitted %d, leased %d: the run took no leases", admitted, leased)
	}
}
