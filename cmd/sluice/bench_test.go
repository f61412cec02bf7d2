package main

import (
	"encoding/json"
	"math"
	"os/exec"
	"strings"
	"testing"

	"github.com/sluice-dev/sluice/internal/bench"
	"github.com/sluice-dev/sluice/internal/redistest"
)

// TestBench runs a short `sluice bench` on a real redis-server, as a user
// would: every implementation, one and two processes (the second process is
// the binary started again), limited and unlimited, blocking too. It checks
// what the report promises, never how fast anything was: every workload
// ran through every implementation without errors, no limited run admitted
// more than burst + rate × elapsed, and the run left no keys behind.
func TestBench(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	srv := redistest.Start(t)
	cmd := exec.Command(buildBinary(t), "--redis", srv.URL(), "bench", "--callers", "1,4", "--procs", "1,2",
		"--duration", "300ms", "--rounds", "1", "--json")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("sluice bench: %v\n%s", err, out)
	}
	var rep struct {
		Runs      []bench.Run     `json:"runs"`
		Summaries []bench.Summary `json:"summaries"`
		Memory    bench.Memory    `json:"memory_per_provider"`
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	// callers 1 × procs 1; 4 × 1; 4 × 2 (1 caller × 2 procs is skipped):
	// 3 unlimited, 3 limited, 3 limited blocking; × every implementation.
	if len(rep.Runs) != 9*len(bench.Impls) || len(rep.Summaries) != 9*len(bench.Impls) {
		t.Fatalf("%d runs, %d summaries, want %d", len(rep.Runs), len(rep.Summaries), 9*len(bench.Impls))
	}
	for _, r := range rep.Runs {
		name := r.Name() + " through " + r.Impl
		if r.Errors > 0 || r.Decisions == 0 || r.Scripts == 0 {
			t.Errorf("%s: %d decisions, %d scripts, %d errors (%s)", name, r.Decisions, r.Scripts, r.Errors, r.FirstErr)
		}
		if r.Limited && float64(r.Granted) > r.Bound {
			t.Errorf("%s: admitted %d > bound %.1f", name, r.Granted, r.Bound)
		}
		if (r.Procs > 1) != (len(r.Shares) == r.Procs) {
			t.Errorf("%s: shares %v", name, r.Shares)
		}
	}
	for _, s := range rep.Summaries {
		if (s.Impl == bench.RedisRate) != (s.Vs == nil) {
			t.Errorf("%s %s: ratios %+v", s.Workload, s.Impl, s.Vs)
		}
	}
	// config, bucket, scale and the replica registry, each sized.
	if len(rep.Memory.Keys) != 4 || rep.Memory.Total <= 0 {
		t.Errorf("memory per provider: %+v", rep.Memory)
	}
	if keys := srv.Client(t).Keys(t.Context(), "*bench*").Val(); len(keys) > 0 {
		t.Errorf("keys left behind: %v", keys)
	}
	// The text report: one table per workload, a row per implementation.
	txt := sluice(t, nil, "--redis", srv.URL(), "bench", "--callers", "2", "--procs", "1", "--mode", "limited",
		"--blocking=false", "--duration", "100ms", "--rounds", "1").ok(t).stdout
	for _, want := range append([]string{"2 callers × 1 procs, limited 1000/s, TryAcquire"}, bench.Impls...) {
		if !strings.Contains(txt, want) {
			t.Errorf("text report lacks %q:\n%s", want, txt)
		}
	}
}

// TestBenchPropagation: the propagation measurement on a real redis-server
// measures every path it reports, and no replica decided other than paused
// once the controller had written scale 0.
func TestBenchPropagation(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	srv := redistest.Start(t)
	out := sluice(t, nil, "--redis", srv.URL(), "bench", "--propagation", "--samples", "5", "--replicas", "2", "--waiters", "4", "--json").ok(t).stdout
	var p bench.Propagation
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if p.Floor.N != 5 || p.Enforced.N != 5 || p.Seen.N != 5 || p.Resumed.N != 20 {
		t.Fatalf("samples: %+v", p)
	}
	if p.Missed != 0 {
		t.Fatalf("%d replica decisions were not paused after the scale was written", p.Missed)
	}
	if p.Enforced.P50 <= 0 || p.Seen.P50 < p.Enforced.P50 {
		t.Fatalf("the notification cannot come before the write it announces: %+v", p)
	}
}

// TestBenchLanes: the lanes measurement on a real redis-server, across
// processes, runs every phase it reports, never admits above the bound,
// and leaves no key; the figures themselves are docs/lanes.md's, not a
// test's (a loaded machine moves them).
func TestBenchLanes(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	srv := redistest.Start(t)
	out, err := exec.Command(buildBinary(t), "--redis", srv.URL(), "bench", "--lanes", "--phase", "1s", "--lane-procs", "2",
		"--backfill-callers", "4", "--json").Output()
	if err != nil {
		t.Fatalf("sluice bench --lanes: %v\n%s", err, out)
	}
	var rep bench.LanesReport
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, r := range []bench.LanesRun{rep.Today, rep.Lanes} {
		if r.Errors > 0 || r.Admitted <= 0 || r.Admitted > 1 || r.Backfill[0] <= 0 || math.IsNaN(r.LiveP99[2]) {
			t.Errorf("lanes %v: %+v", r.Lanes, r)
		}
	}
	if !rep.Lanes.Lanes || rep.Today.Lanes || rep.Weights[0] == 0 || rep.Weights[1] == 0 {
		t.Errorf("report: %+v", rep)
	}
	if keys := srv.Client(t).Keys(t.Context(), "*bench*").Val(); len(keys) > 0 {
		t.Errorf("keys left behind: %v", keys)
	}
}

// TestBenchFleet: the fleet measurement on a real redis-server, across
// processes: every step of every workload and budget ran without errors,
// made calls, saw every instance take a decision at the new scale, never
// admitted above the bound, and left no key; bad lists are refused naming
// the flag. The figures themselves are docs/capacity.md's.
func TestBenchFleet(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	srv := redistest.Start(t)
	out, err := exec.Command(buildBinary(t), "--redis", srv.URL(), "bench", "--fleet", "--instances", "1,3", "--fleet-procs", "2",
		"--budgets", "off,50", "--warmup", "200ms", "--measure", "2s", "--tick", "10ms", "--json").Output()
	if err != nil {
		t.Fatalf("sluice bench --fleet: %v\n%s", err, out)
	}
	var steps []bench.FleetStep
	if err := json.Unmarshal(out, &steps); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(steps) != 2*2*2 {
		t.Fatalf("%d steps, want 8 (2 workloads × 2 counts × 2 budgets)", len(steps))
	}
	for _, s := range steps {
		if s.Errors > 0 || s.CallsPS <= 0 || s.NotApplied > 0 || s.Granted <= 0 || float64(s.Granted) > s.Bound ||
			s.Procs != min(2, s.Instances) || s.DelayMax < s.DelayP50 {
			t.Errorf("step %+v", s)
		}
	}
	if keys := srv.Client(t).Keys(t.Context(), "*fleet*").Val(); len(keys) > 0 {
		t.Errorf("keys left behind: %v", keys)
	}
	for _, bad := range [][]string{{"--budgets", "off,-1", "--budgets"}, {"--instances", "0", "--instances"}, {"--workloads", "busy", "--workloads"}} {
		r := sluice(t, nil, "--redis", srv.URL(), "bench", "--fleet", bad[0], bad[1])
		if r.code == 0 || !strings.Contains(r.stderr, bad[2]) {
			t.Errorf("%s %s: exit %d, %s", bad[0], bad[1], r.code, r.stderr)
		}
	}
}
