package sim

import (
	"fmt"
	"time"
)

// Case is one case of the matrix, declared once for the simulator
// (Scenario) and for the process-level run (sluice up --scenario), which
// both play it: a provider with a base rate of 600/s, replicas that want
// Demand (0: as much as the budget allows), stores with a queue of 1000,
// the default watermarks and 4 workers writing batches of 100 (the
// coordinator's defaults, as shipped).
type Case struct {
	Name     string
	Duration time.Duration
	Stores   []Plan // one per store; every item goes to each
	Demand   Plan   // items/s the replicas want, all together; Rate 0: unlimited
}

// Plan is a rate and its changes during a run.
type Plan struct {
	ID      string // a store's id
	Rate    float64
	Changes []Change
}

// Change sets a rate at a time since the start.
type Change struct {
	At   time.Duration
	Rate float64
}

// At returns the plan's rate at t.
func (p Plan) At(t time.Duration) float64 {
	r := p.Rate
	for _, c := range p.Changes {
		if t >= c.At {
			r = c.Rate
		}
	}
	return r
}

// Base rate, queue capacity and batch size of every case.
const (
	MatrixBase     = 600
	MatrixCapacity = 1000
	MatrixBatch    = 100
)

// Matrix returns the cases every policy is measured on (docs/feedback.md):
//
//	2x, 5x, 10x   a steady overload: the sink writes 300, 120, 60 items/s
//	sink/3        the sink writes 300/s, 100/s from 30 s, 300/s again from 60 s
//	burst         the replicas want 60/s, as much as the sink writes, and 600/s (10x) from 30 s to 35 s
//	two-stores    every item goes to two stores, writing 300/s and 120/s
func Matrix() []Case {
	one := func(rate float64, changes ...Change) []Plan {
		return []Plan{{ID: "store", Rate: rate, Changes: changes}}
	}
	return []Case{
		{Name: "2x", Duration: time.Minute, Stores: one(300)},
		{Name: "5x", Duration: time.Minute, Stores: one(120)},
		{Name: "10x", Duration: time.Minute, Stores: one(60)},
		{Name: "sink/3", Duration: 90 * time.Second, Stores: one(300, Change{30 * time.Second, 100}, Change{60 * time.Second, 300})},
		{Name: "burst", Duration: time.Minute, Stores: one(60),
			Demand: Plan{Rate: 60, Changes: []Change{{30 * time.Second, 600}, {35 * time.Second, 60}}}},
		{Name: "two-stores", Duration: time.Minute, Stores: []Plan{{ID: "db", Rate: 300}, {ID: "archive", Rate: 120}}},
	}
}

// FindCase returns the case of the matrix named name.
func FindCase(name string) (Case, error) {
	var names []string
	for _, c := range Matrix() {
		if c.Name == name {
			return c, nil
		}
		names = append(names, c.Name)
	}
	return Case{}, fmt.Errorf("no case %q in the matrix (%v)", name, names)
}

// Steps returns the case's changes in time order (a sink's and the
// demand's), described.
func (c Case) Steps() []Step {
	var out []Step
	for _, s := range c.Stores {
		prev := s.Rate
		for _, ch := range s.Changes {
			what := fmt.Sprintf("sink %g -> %g/s", prev, ch.Rate)
			if len(c.Stores) > 1 {
				what = s.ID + " " + what
			}
			out = append(out, Step{At: ch.At, What: what, Sink: true})
			prev = ch.Rate
		}
	}
	prev := c.Demand.Rate
	for _, ch := range c.Demand.Changes {
		out = append(out, Step{At: ch.At, What: fmt.Sprintf("demand %g -> %g/s", prev, ch.Rate)})
		prev = ch.Rate
	}
	for i := 1; i < len(out); i++ { // few: insertion sort
		for j := i; j > 0 && out[j].At < out[j-1].At; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// Scenario returns the case for the simulator.
func (c Case) Scenario() Scenario {
	sc := Scenario{Name: c.Name, Duration: c.Duration, Base: MatrixBase, Steps: c.Steps()}
	for _, s := range c.Stores {
		sc.Stores = append(sc.Stores, StoreSpec{ID: s.ID, Capacity: MatrixCapacity, BatchSize: MatrixBatch, SinkRate: s.At})
	}
	if c.Demand.Rate > 0 {
		sc.Demand = c.Demand.At
	}
	return sc
}
