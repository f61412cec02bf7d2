package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/internal/sim"
	"github.com/sluice-dev/sluice/pkg/keyspace"
)

// scenario plays a case of the feedback matrix in `sluice up`: it gives
// the coordinators and the pipelines their parts, changes sink rates and
// demand on time (through the files their knobs read), samples the loop
// every 100 ms and sums it up as the simulator's table does.
type scenario struct {
	c          sim.Case
	dir        string
	pipelines  int
	bottleneck int                // index of the slowest store
	set        map[string]float64 // knob file -> the rate written last

	apps   []sample // appended by all pipelines, every sample
	points []sim.Point
	scale  float64 // the last seen; -1 before the first
	rise   float64 // the largest single rise seen
	jump   bool
	// The bottleneck's items written: at 10 s and at the last second.
	written10, writtenLast sample
	end                    time.Duration
	load                   float64 // at the start
}

type sample struct {
	t time.Duration
	v float64
}

func newScenario(c sim.Case, u upArgs, dir string) *scenario {
	sc := &scenario{c: c, dir: dir, pipelines: u.Pipelines, set: map[string]float64{}, scale: -1, written10: sample{t: -1}, load: loadAverage()}
	slowest := 0.0
	for i, s := range c.Stores {
		sum := 0.0
		for t := time.Duration(0); t < c.Duration; t += 100 * time.Millisecond {
			sum += s.At(t)
		}
		if i == 0 || sum < slowest {
			sc.bottleneck, slowest = i, sum
		}
	}
	return sc
}

func (sc *scenario) rateFile(id string) string { return filepath.Join(sc.dir, id+".rate") }

// specs returns the coordinators to start (one per store of the case, each
// on its own stream) and the pipelines' extra flags.
func (sc *scenario) specs(pipelines int) ([]coordinatorSpec, []string) {
	var coords []coordinatorSpec
	var streams []string
	for _, s := range sc.c.Stores {
		coords = append(coords, coordinatorSpec{id: s.ID, stream: s.ID, rate: s.Rate, rateFile: sc.rateFile(s.ID),
			args: []string{"--batch", strconv.Itoa(sim.MatrixBatch)}})
		streams = append(streams, s.ID)
	}
	args := []string{"--stream", strings.Join(streams, ",")}
	if sc.c.Demand.Rate > 0 {
		args = append(args, "--demand", strconv.FormatFloat(sc.c.Demand.Rate/float64(pipelines), 'g', -1, 64),
			"--demand-file", sc.rateFile("demand"))
	}
	return coords, args
}

// describe says what the case runs.
func (sc *scenario) describe() string {
	var parts []string
	for _, s := range sc.c.Stores {
		parts = append(parts, fmt.Sprintf("store %s at %g items/s", s.ID, s.Rate))
	}
	for _, st := range sc.c.Steps() {
		parts = append(parts, fmt.Sprintf("%s at %v", st.What, st.At))
	}
	if sc.c.Demand.Rate > 0 {
		parts = append(parts, fmt.Sprintf("the pipelines want %g/s", sc.c.Demand.Rate))
	}
	return strings.Join(parts, ", ")
}

// step applies the changes due at t and takes a sample.
func (sc *scenario) step(ctx context.Context, cl *cluster, rdb *redis.Client, t time.Duration) error {
	for _, s := range sc.c.Stores {
		if err := sc.setRate(sc.rateFile(s.ID), s.At(t)); err != nil {
			return err
		}
	}
	if sc.c.Demand.Rate > 0 {
		if err := sc.setRate(sc.rateFile("demand"), sc.c.Demand.At(t)/float64(sc.pipelines)); err != nil {
			return err
		}
	}
	sc.end = t
	sc.apps = append(sc.apps, sample{t, cl.sum(ctx, cl.pipelines, "pipeline_items_appended_total")})
	if v, err := rdb.HGet(ctx, keyspace.Prefix(keyspace.DefaultPrefix).Provider("ibkr").Scale, "scale").Float64(); err == nil {
		if sc.scale >= 0 && v > sc.scale {
			sc.rise = max(sc.rise, v-sc.scale)
			sc.jump = sc.jump || sc.scale == 0 && v == 1
		}
		sc.scale = v
	}
	if n := len(sc.apps); n > 10 { // the admitted rate over the last second
		a, b := sc.apps[n-11], sc.apps[n-1]
		sc.points = append(sc.points, sim.Point{T: t, Admitted: (b.v - a.v) / (b.t - a.t).Seconds(), Scale: sc.scale,
			Sink: sc.c.Stores[sc.bottleneck].At(t)})
	}
	if len(sc.apps)%10 == 0 || sc.written10.t < 0 && t >= 10*time.Second {
		if v, err := cl.coordinators[sc.bottleneck].metric(ctx, "coordinator_items_written_total"); err == nil {
			if sc.written10.t < 0 && t >= 10*time.Second {
				sc.written10 = sample{t, v}
			}
			sc.writtenLast = sample{t, v}
		}
	}
	return nil
}

func (sc *scenario) setRate(path string, rate float64) error {
	if r, ok := sc.set[path]; ok && r == rate {
		return nil
	}
	sc.set[path] = rate
	return writeKnob(path, rate)
}

// upSummary is the summary of a scenario: a row of docs/feedback.md's
// table, the targets it misses, and what was produced.
type upSummary struct {
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
func (sc *scenario) summary(cl *cluster, u upArgs, produced, lost int64) upSummary {
	r := sim.Row{Case: sc.c.Name, Policy: u.Policy, HardMark: 0.85, Lost: lost, MaxRise: max(sc.rise, 0), Jump: sc.jump}
	changes := 0.0
	for _, p := range cl.coordinators {
		f := p.final()
		if c := num(f["capacity"]); c > 0 {
			r.MaxFill = max(r.MaxFill, num(f["max_depth"])/c)
		}
		changes += num(f["level_changes"])
	}
	if sc.end > 0 {
		r.LevelChangesPM = changes / sc.end.Minutes()
	}
	// What the bottleneck wrote after 10 s, over what it could have.
	could := 0.0
	for t := sc.written10.t; sc.written10.t >= 0 && t < sc.writtenLast.t; t += 10 * time.Millisecond {
		could += sc.c.Stores[sc.bottleneck].At(t) * 0.01
	}
	if could > 0 {
		r.SinkUse = (sc.writtenLast.v - sc.written10.v) / could
	}
	at := []time.Duration{0}
	var steps []sim.Step
	for _, st := range sc.c.Steps() {
		if st.At < sc.end { // a shortened run (--duration) never got there
			steps, at = append(steps, st), append(at, st.At)
		}
	}
	var demand func(time.Duration) float64
	if sc.c.Demand.Rate > 0 {
		demand = sc.c.Demand.At
	}
	for i, after := range sim.Settle(sc.points, at, sc.end, demand) {
		s := sim.Settled{What: "start", After: after}
		if i > 0 {
			s.What, s.Sink = steps[i-1].What, steps[i-1].Sink
		}
		r.Settle = append(r.Settle, s)
	}
	return upSummary{Row: r, Duration: sc.end, Produced: produced, Misses: r.Misses(), Load: [2]float64{sc.load, loadAverage()}}
}

// lines is the summary for people.
func (s upSummary) lines() []string {
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
