package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/internal/sim"
	"github.com/sluice-dev/sluice/internal/up"
)

// playCase runs `sluice up --scenario name --json` with env and returns
// its summary.
func playCase(t *testing.T, bin, name string, env []string, args ...string) up.Summary {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"up", "--scenario", name, "--json", "--dir", t.TempDir()}, args...)...)
	for _, kv := range os.Environ() { // not this test's own settings: sluice refuses unknown SLUICE_ variables
		if !strings.HasPrefix(kv, "SLUICE_PROCESS_MATRIX=") && !strings.HasPrefix(kv, "SLUICE_MATRIX_OUT=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("sluice up --scenario %s: %v\n%s\n%s", name, err, out, stderr.String())
	}
	if dir := os.Getenv("SLUICE_MATRIX_OUT"); dir != "" { // the progress lines, for a look at the run
		file := strings.NewReplacer("/", "_").Replace(name) + "-" + strings.Join(env, "_") + ".log"
		if err := os.WriteFile(filepath.Join(dir, file), []byte(stderr.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var s up.Summary
	if err := json.Unmarshal(out, &s); err != nil {
		t.Fatalf("sluice up --scenario %s --json: %v\n%s", name, err, out)
	}
	return s
}

// TestUpScenario: a short process-level run of a case (two stores fed by
// every pipeline, at 300 and 120 items/s, over a real redis-server): the
// default policy holds the slower store under its hard mark and loses
// nothing on either stream. The timing targets are left to the full
// matrix (TestProcessMatrix), which is not run on a loaded CI machine.
func TestUpScenario(t *testing.T) {
	redistest.Start(t) // skips under -short; needs redis-server, which up runs itself
	s := playCase(t, buildBinary(t), "two-stores", nil, "--duration", "12s")
	t.Logf("%s", strings.Join(s.Lines(), "\n"))
	if s.Case != "two-stores" || s.Policy != "pi" || s.Produced == 0 || len(s.Settle) != 1 {
		t.Fatalf("summary %+v", s)
	}
	if s.Lost != 0 || s.MaxFill >= s.HardMark || s.Jump {
		t.Errorf("lost %d, max fill %.2f (hard mark %.2f), jump %v", s.Lost, s.MaxFill, s.HardMark, s.Jump)
	}
}

// TestProcessMatrix plays every case of the matrix as processes (sluice up
// --scenario: replicas, coordinators and the controller as OS processes
// over a real redis-server) under the default policy and the seed's step
// policy, and prints the table of docs/feedback.md. About 17 minutes: set
// SLUICE_PROCESS_MATRIX=1 (and -timeout 40m); SLUICE_PROCESS_MATRIX=5x,burst
// plays only those cases. It asserts the safety targets of the default
// policy (under the hard mark, nothing lost, no jump from a pause) and
// reports the rest.
func TestProcessMatrix(t *testing.T) {
	which := os.Getenv("SLUICE_PROCESS_MATRIX")
	if which == "" {
		t.Skip("set SLUICE_PROCESS_MATRIX=1 to play the matrix as processes (about 17 minutes)")
	}
	redistest.Start(t)
	bin := buildBinary(t)
	var rows []sim.Row
	for _, c := range sim.Matrix() {
		if which != "1" && !strings.Contains(","+which+",", ","+c.Name+",") {
			continue
		}
		for _, policy := range []string{"pi", "step"} {
			began := time.Now()
			s := playCase(t, bin, c.Name, []string{"MDP_FB_POLICY=" + policy})
			t.Logf("%s (%v):\n%s", c.Name, time.Since(began).Round(time.Second), strings.Join(s.Lines(), "\n"))
			s.Note = fmt.Sprintf("load average %.0f → %.0f", s.Load[0], s.Load[1])
			rows = append(rows, s.Row)
			if policy == "pi" && (s.Lost != 0 || s.MaxFill >= s.HardMark || s.Jump) {
				t.Errorf("%s: the default policy: lost %d, max fill %.2f (hard mark %.2f), jump %v", c.Name, s.Lost, s.MaxFill, s.HardMark, s.Jump)
			}
		}
	}
	table := sim.Markdown(rows)
	fmt.Print(table)
	if dir := os.Getenv("SLUICE_MATRIX_OUT"); dir != "" {
		if err := os.WriteFile(filepath.Join(dir, "process-matrix.md"), []byte(table), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
