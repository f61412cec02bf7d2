package sim_test

import (
	"fmt"
	"os"
	"testing"

	"github.com/sluice-dev/sluice/internal/sim"
	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/state"
)

// aimd is the AIMD law issue 10 names as an alternative, as a Controller:
// on each sample above the set point with the fill rising, the scale is
// multiplied by Beta; otherwise it grows by Alpha per second. Hard pauses.
type aimd struct {
	SetPoint, Beta, Alpha float64
}

func (a aimd) Scale(e feedback.Event) float64 { return feedback.DefaultStepPolicy.Scale(e) }
func (a aimd) RiseRate() float64              { return 1 }

func (a aimd) Control(m *feedback.ControlState, e feedback.Event, scale float64) float64 {
	if e.Level == state.Hard {
		return 0
	}
	if m.Last.Seq == 0 {
		return scale
	}
	if e.Fill() > a.SetPoint && e.Fill() > m.Last.Fill() {
		return scale * a.Beta
	}
	return min(1, scale+a.Alpha*e.TS.Sub(m.Last.TS).Seconds())
}

// TestAlternatives prints the matrix for the policies that were not
// chosen (SLUICE_MATRIX_TABLE=1): the proportional policy and AIMD
// variants; and for the default policy with a third of the events lost on
// the bus, and with batches of 100 instead of 50. docs/feedback.md quotes
// it.
func TestAlternatives(t *testing.T) {
	if os.Getenv("SLUICE_MATRIX_TABLE") == "" {
		t.Skip("set SLUICE_MATRIX_TABLE=1 to print the alternatives' table")
	}
	loops := []struct {
		name  string
		loop  sim.Loop
		batch int
	}{
		{"proportional", sim.Loop{Policy: feedback.DefaultProportionalPolicy}, 0},
		{"aimd β 0.85 α 0.05/s", sim.Loop{Policy: aimd{SetPoint: 0.5, Beta: 0.85, Alpha: 0.05}}, 0},
		{"aimd β 0.7 α 0.2/s", sim.Loop{Policy: aimd{SetPoint: 0.5, Beta: 0.7, Alpha: 0.2}}, 0},
		{"pi, a third of the events lost", sim.Loop{DropEvery: 3}, 0},
		{"pi, batches of 100", sim.Loop{}, 100},
	}
	var rows []sim.Row
	for _, l := range loops {
		for _, c := range sim.Matrix() {
			sc := c.Scenario()
			for i := range sc.Stores {
				if l.batch > 0 {
					sc.Stores[i].BatchSize = l.batch
				}
			}
			r := simulate(t, sc, l.loop).Row(l.name)
			rows = append(rows, r)
			t.Logf("%s %s misses %q", l.name, c.Name, r.Misses())
		}
	}
	fmt.Print(sim.Markdown(rows))
}
