package up

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/sim"
)

// TestCountItems: lines that are items count, whatever else a sink file
// holds; ids are counted once across files; a file not written yet holds
// nothing.
func TestCountItems(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.jsonl"), filepath.Join(dir, "b.jsonl")
	if err := os.WriteFile(a, []byte(`{"id":"1"}`+"\n"+`{"id":"2"}`+"\ntorn {\"id\n"+`{"id":"1"}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(b, []byte(`{"id":"3"}`+"\n"+`{"id":"2"}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	lines, unique, err := CountItems([]string{a, b, filepath.Join(dir, "missing.jsonl")})
	if err != nil || lines != 5 || unique != 3 {
		t.Fatalf("CountItems = %d lines, %d distinct, %v; want 5, 3", lines, unique, err)
	}
}

// TestScenarioSummary plays a case's samples without processes: the
// largest rise of the scale and a jump from a pause are seen, only the
// changes the run reached are settled, and the lines say what missed.
func TestScenarioSummary(t *testing.T) {
	c, err := sim.FindCase("sink/3")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []struct {
		scales []float64
		rise   float64
		jump   bool
	}{
		{[]float64{1, 0.4, 1, 0, 0.5, 0.75}, 0.6, false}, // 1 from 0.4 is no jump from a pause
		{[]float64{0, 0.25, 0, 1, 0.5}, 1, true},
	} {
		sc := newScenario(c, Options{}, t.TempDir())
		for _, v := range want.scales {
			sc.sawScale(v)
		}
		if sc.rise != want.rise || sc.jump != want.jump {
			t.Errorf("scales %v: rise %v, jump %v; want %v, %v", want.scales, sc.rise, sc.jump, want.rise, want.jump)
		}
	}
	sc := newScenario(c, Options{Policy: "pi", Pipelines: 2}, t.TempDir())
	sc.sawScale(0)
	sc.sawScale(1)
	steps := c.Steps()
	sc.end = steps[0].At + time.Second // the run saw the first change only
	at, reached := sc.reached()
	if len(at) != 2 || at[1] != steps[0].At || len(reached) != 1 {
		t.Fatalf("reached %v %v of %v", at, reached, steps)
	}
	s := sc.summary(&cluster{}, 100, 3)
	if s.Case != "sink/3" || s.Policy != "pi" || s.Lost != 3 || s.Produced != 100 || len(s.Settle) != 2 || s.Settle[1].What != steps[0].What {
		t.Fatalf("summary %+v", s)
	}
	lines := strings.Join(s.Lines(), "\n")
	for _, want := range []string{"scenario sink/3, policy pi:", "lost 3", "largest rise of the scale 1.00", "targets of issue 10 missed:"} {
		if !strings.Contains(lines, want) {
			t.Errorf("lines lack %q:\n%s", want, lines)
		}
	}
}
