package up

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-dev/sluice/internal/knob"
	"github.com/sluice-dev/sluice/internal/sim"
)

// scenario plays a case of the feedback matrix in `sluice up`: it gives
// the coordinators and the pipelines their parts, changes sink rates and
// demand on time (through the files their knobs read), samples the loop
// every 100 ms and sums it up as the simulator's table does.
type scenario struct {
	c          sim.Case
	dir        string
	policy     string
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

func newScenario(c sim.Case, o Options, dir string) *scenario {
	return &scenario{c: c, dir: dir, policy: o.Policy, pipelines: o.Pipelines, bottleneck: slowest(c), set: map[string]float64{},
		scale: -1, written10: sample{t: -1}, load: loadAverage()}
}

// slowest returns the index of the store of c that writes least over the
// run.
func slowest(c sim.Case) int {
	bottleneck, least := 0, 0.0
	for i, s := range c.Stores {
		sum := 0.0
		for t := time.Duration(0); t < c.Duration; t += 100 * time.Millisecond {
			sum += s.At(t)
		}
		if i == 0 || sum < least {
			bottleneck, least = i, sum
		}
	}
	return bottleneck
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
func (sc *scenario) step(ctx context.Context, cl *cluster, t time.Duration) error {
	if err := sc.setRates(t); err != nil {
		return err
	}
	sc.end = t
	sc.apps = append(sc.apps, sample{t, cl.sum(ctx, cl.pipelines, "pipeline_items_appended_total")})
	if v, err := cl.rdb.HGet(ctx, scaleKey, "scale").Float64(); err == nil {
		sc.sawScale(v)
	}
	sc.admitted(t)
	sc.sampleWritten(ctx, cl, t)
	return nil
}

// admitted adds the point at t: the rate all pipelines appended over the
// last second (once there is a second of samples).
func (sc *scenario) admitted(t time.Duration) {
	if n := len(sc.apps); n > 10 {
		a, b := sc.apps[n-11], sc.apps[n-1]
		sc.points = append(sc.points, sim.Point{T: t, Admitted: (b.v - a.v) / (b.t - a.t).Seconds(), Scale: sc.scale,
			Sink: sc.c.Stores[sc.bottleneck].At(t)})
	}
}

// sampleWritten reads the bottleneck's items written every second, and at
// the first sample from 10 s on.
func (sc *scenario) sampleWritten(ctx context.Context, cl *cluster, t time.Duration) {
	first10 := sc.written10.t < 0 && t >= 10*time.Second
	if len(sc.apps)%10 != 0 && !first10 {
		return
	}
	if v, err := cl.coordinators[sc.bottleneck].Metric(ctx, "coordinator_items_written_total"); err == nil {
		if first10 {
			sc.written10 = sample{t, v}
		}
		sc.writtenLast = sample{t, v}
	}
}

// setRates writes the stores' rates and the pipelines' demand due at t.
func (sc *scenario) setRates(t time.Duration) error {
	for _, s := range sc.c.Stores {
		if err := sc.setRate(sc.rateFile(s.ID), s.At(t)); err != nil {
			return err
		}
	}
	if sc.c.Demand.Rate > 0 {
		return sc.setRate(sc.rateFile("demand"), sc.c.Demand.At(t)/float64(sc.pipelines))
	}
	return nil
}

// sawScale records the scale v read now: the largest rise, and whether it
// jumped from a pause to 1 at once.
func (sc *scenario) sawScale(v float64) {
	if sc.scale >= 0 && v > sc.scale {
		sc.rise = max(sc.rise, v-sc.scale)
		sc.jump = sc.jump || sc.scale == 0 && v == 1
	}
	sc.scale = v
}

func (sc *scenario) setRate(path string, rate float64) error {
	if r, ok := sc.set[path]; ok && r == rate {
		return nil
	}
	sc.set[path] = rate
	return knob.Write(path, rate)
}
