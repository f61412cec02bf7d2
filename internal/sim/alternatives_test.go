package sim_test

import (
	"fmt"
	"math"
	"os"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/sim"
	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/state"
)

// aimd is the AIMD law issue 10 names as an alternative, as a StatefulPolicy:
// on each sample above the set point with the fill rising, the scale is
// multiplied by Beta; otherwise it grows by Alpha per second. Hard pauses.
type aimd struct {
	SetPoint, Beta, Alpha float64
}

func (a aimd) Scale(e feedback.Event) float64 { return feedback.DefaultStepPolicy.Scale(e) }
func (a aimd) RiseRate() float64              { return 1 }

func (a aimd) Control(m *feedback.PolicyState, e feedback.Event, scale float64) float64 {
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

// additive is the PI policy on the scale itself instead of its logarithm
// (same anti-windup, ramp and mean fill), to compare.
type additive struct {
	feedback.PIPolicy
}

func (p additive) Control(m *feedback.PolicyState, e feedback.Event, scale float64) float64 {
	err := e.MeanFill() - p.SetPoint
	switch {
	case m.Last.Seq == 0:
		m.Integral = scale + p.Kp*err
	case scale > 0:
		dt := min(e.TS.Sub(m.Last.TS), p.MaxStep).Seconds()
		m.Integral += -p.Ki*dt*err + (scale-m.Asked)*min(1, dt/p.Track.Seconds())
	}
	m.Asked = m.Integral - p.Kp*err
	if e.Level == state.Hard {
		return 0
	}
	return min(1, max(p.Floor, m.Asked))
}

// TestAlternatives prints the matrix for the policies that were not
// chosen (SLUICE_MATRIX_TABLE=1): the proportional policy and AIMD
// variants; and for the default policy with a third of the events lost on
// the bus, with batches of 50 instead of 100, and the policy as it was
// before its filter (set point 0.5, no filter). docs/feedback.md quotes
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
		{"additive PI kp 4 ki 0.2", sim.Loop{Policy: additive{pi(4, 0.2)}}, 0},
		{"additive PI, a third lost", sim.Loop{Policy: additive{pi(4, 0.2)}, DropEvery: 3}, 0},
		{"pi, a third of the events lost", sim.Loop{DropEvery: 3}, 0},
		{"pi, batches of 50", sim.Loop{}, 50},
		{"pi unfiltered, set point 0.5 (before)", sim.Loop{Policy: unfiltered()}, 0},
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

// TestRobustness prints the default policy off the matrix
// (SLUICE_MATRIX_TABLE=1): other base rates, queue sizes, batches and
// overloads, each with the sink slowed to a third from 30 s to 60 s.
func TestRobustness(t *testing.T) {
	if os.Getenv("SLUICE_MATRIX_TABLE") == "" {
		t.Skip("set SLUICE_MATRIX_TABLE=1 to print the robustness table")
	}
	fmt.Println("| base/s | queue | batch | overload | queue holds (of the budget) | max fill | sink use | level changes/min | settled after the drop; after the recovery |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|")
	for _, base := range []float64{600, 6000} {
		for _, capacity := range []int{1000, 10000} {
			for _, batch := range []int{25, 100} {
				for _, over := range []float64{2, 10, 50} {
					c := sim.Case{Name: "x", Duration: 90 * time.Second, Stores: []sim.Plan{{ID: "store", Rate: base / over,
						Changes: []sim.Change{{At: 30 * time.Second, Rate: base / over / 3}, {At: 60 * time.Second, Rate: base / over}}}}}
					sc := c.Scenario()
					sc.Base, sc.Stores[0].Capacity, sc.Stores[0].BatchSize = base, capacity, batch
					r := simulate(t, sc, defaultLoop).Row("pi")
					fmt.Printf("| %g | %d | %d | %g× | %.2g s | %.0f%% | %.1f%% | %.1f | %s; %s |\n", base, capacity, batch, over,
						float64(capacity)/base, 100*r.MaxFill, 100*r.SinkUse, r.LevelChangesPM, r.Settle[1], r.Settle[2])
				}
			}
		}
	}
}

// unfiltered is the default policy as it was before its filter: set point
// 0.5, the proportional term on the raw fill.
func unfiltered() feedback.PIPolicy {
	p := feedback.DefaultPIPolicy
	p.SetPoint, p.Filter = 0.5, 0
	return p
}

func pi(kp, ki float64) feedback.PIPolicy {
	p := feedback.DefaultPIPolicy
	p.Kp, p.Ki = kp, ki
	return p
}

// TestRipple prints how much the admitted rate (over a second) and the
// fill wander at 2x, 5x and 10x once settled (SLUICE_MATRIX_TABLE=1):
// under the default policy with the coordinator's batches of 100 and with
// batches of 50, under the policy as it was before its filter, and under
// the additive one. Each case runs 5 minutes; the first minute is left out.
func TestRipple(t *testing.T) {
	if os.Getenv("SLUICE_MATRIX_TABLE") == "" {
		t.Skip("set SLUICE_MATRIX_TABLE=1 to print the ripple")
	}
	fmt.Println("| policy | batch | case | admitted/s: mean, standard deviation | admitted within 10% of the sink | fill within ±10% of the set point |")
	fmt.Println("|---|---|---|---|---|---|")
	for _, l := range []struct {
		name  string
		pol   feedback.PIPolicy
		batch int
		add   bool
	}{
		{"pi (default)", feedback.DefaultPIPolicy, 100, false},
		{"pi (default)", feedback.DefaultPIPolicy, 50, false},
		{"pi unfiltered, set point 0.5 (before)", unfiltered(), 100, false},
		{"pi unfiltered, set point 0.5 (before)", unfiltered(), 50, false},
		{"additive kp 4 ki 0.2", pi(4, 0.2), 50, true},
	} {
		var pol feedback.Policy = l.pol
		if l.add {
			pol = additive{l.pol}
		}
		for _, c := range sim.Matrix()[:3] {
			sc := c.Scenario()
			sc.Duration = 5 * time.Minute
			sc.Stores[0].BatchSize = l.batch
			o := simulate(t, sc, sim.Loop{Policy: pol})
			var n, sum, sq, rateIn, fillIn float64
			for _, p := range o.Points {
				if p.T <= time.Minute {
					continue
				}
				n, sum, sq = n+1, sum+p.Admitted, sq+p.Admitted*p.Admitted
				if math.Abs(p.Admitted-p.Sink) <= 0.1*p.Sink {
					rateIn++
				}
				if math.Abs(p.Fill[0]-l.pol.SetPoint) <= 0.1*l.pol.SetPoint {
					fillIn++
				}
			}
			mean := sum / n
			fmt.Printf("| %s | %d | %s | %.1f, %.1f | %.0f%% | %.0f%% |\n", l.name, l.batch, c.Name, mean, math.Sqrt(sq/n-mean*mean),
				100*rateIn/n, 100*fillIn/n)
		}
	}
}
