package up

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-dev/sluice/internal/sim"
)

// Summary is the summary of a scenario: a row of docs/feedback.md's table,
// the targets it misses, and what was produced. With JSON it is
// what Run prints on Stdout.
type Summary struct {
	sim.Row
	Duration time.Duration `json:"-"`
	Produced int64         `json:"produced"`
	Misses   []string      `json:"misses"`
	// Load is the machine's 1-minute load average at the start and the end
	// of the run (Linux; 0 elsewhere): timings on a busy machine mean less.
	Load [2]float64 `json:"load_average"`
}

// loadAverage returns the 1-minute load average, 0 where it cannot tell.
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f, _ := strconv.ParseFloat(strings.Fields(string(b) + " 0")[0], 64)
	return f
}

// summary sums the run up, once every process has stopped (their final
// counts give the queues' deepest fill and the level changes).
func (sc *scenario) summary(cl *cluster, produced, lost int64) Summary {
	r := sim.Row{Case: sc.c.Name, Policy: sc.policy, HardMark: 0.85, Lost: lost, MaxRise: max(sc.rise, 0), Jump: sc.jump}
	changes := 0.0
	for _, p := range cl.coordinators {
		f := p.Final()
		if c := f.Num("capacity"); c > 0 {
			r.MaxFill = max(r.MaxFill, f.Num("max_depth")/c)
		}
		changes += f.Num("level_changes")
	}
	if sc.end > 0 {
		r.LevelChangesPM = changes / sc.end.Minutes()
	}
	r.SinkUse = sc.sinkUse()
	r.Settle = sc.settled()
	return Summary{Row: r, Duration: sc.end, Produced: produced, Misses: r.Misses(), Load: [2]float64{sc.load, loadAverage()}}
}

// sinkUse is what the bottleneck wrote after 10 s, over what it could
// have; 0 if the run was too short to tell.
func (sc *scenario) sinkUse() float64 {
	could := 0.0
	for t := sc.written10.t; sc.written10.t >= 0 && t < sc.writtenLast.t; t += 10 * time.Millisecond {
		could += sc.c.Stores[sc.bottleneck].At(t) * 0.01
	}
	if could > 0 {
		return (sc.writtenLast.v - sc.written10.v) / could
	}
	return 0
}

// settled says how long the admitted rate took to come within 10% of the
// sink rate after the start and after each change the run reached.
func (sc *scenario) settled() []sim.Settled {
	at, steps := sc.reached()
	var demand func(time.Duration) float64
	if sc.c.Demand.Rate > 0 {
		demand = sc.c.Demand.At
	}
	var out []sim.Settled
	for i, after := range sim.Settle(sc.points, at, sc.end, demand) {
		s := sim.Settled{What: "start", After: after}
		if i > 0 {
			s.What, s.Sink = steps[i-1].What, steps[i-1].Sink
		}
		out = append(out, s)
	}
	return out
}

// reached returns the changes of the case that the run reached, and when
// they came, after the start at 0.
func (sc *scenario) reached() (at []time.Duration, steps []sim.Step) {
	at = []time.Duration{0}
	for _, st := range sc.c.Steps() {
		if st.At < sc.end { // a shortened run (--duration) never got there
			steps, at = append(steps, st), append(at, st.At)
		}
	}
	return at, steps
}

// Lines is the summary for people.
func (s Summary) Lines() []string {
	var settle []string
	for _, st := range s.Settle {
		settle = append(settle, st.What+" "+st.String())
	}
	out := []string{
		fmt.Sprintf("scenario %s, policy %s: max fill %.0f%% (hard mark %.0f%%), sink use %.1f%% after 10 s, %.1f level changes/min, lost %d, largest rise of the scale %.2f",
			s.Case, s.Policy, 100*s.MaxFill, 100*s.HardMark, 100*s.SinkUse, s.LevelChangesPM, s.Lost, s.MaxRise),
		"admitted within 10% of the sink rate after: " + strings.Join(settle, "; "),
		fmt.Sprintf("load average %.1f at the start, %.1f at the end", s.Load[0], s.Load[1]),
	}
	if len(s.Misses) == 0 {
		return append(out, "targets of issue 10: all met")
	}
	return append(out, "targets of issue 10 missed: "+strings.Join(s.Misses, "; "))
}
