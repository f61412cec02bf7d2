package sim

import "time"

// Matrix returns the cases every policy is measured on (docs/feedback.md):
// a provider with a base rate of 600/s whose replicas want more than that,
// stores with a queue of 1000, the default watermarks, 4 workers writing
// batches of 50 (what the process-level run gives its coordinators).
//
//	2x, 5x, 10x   a steady overload: the sink writes 300, 120, 60 items/s
//	sink/3        the sink writes 300/s, 100/s from 30 s, 300/s again from 60 s
//	burst         the replicas want 60/s, as much as the sink writes, and 600/s (10x) from 30 s to 35 s
//	two stores    every item goes to two stores, writing 300/s and 120/s
func Matrix() []Scenario {
	steady := func(id string, rate float64) StoreSpec {
		return StoreSpec{ID: id, BatchSize: 50, SinkRate: func(time.Duration) float64 { return rate }}
	}
	return []Scenario{
		{Name: "2x", Stores: []StoreSpec{steady("store", 300)}},
		{Name: "5x", Stores: []StoreSpec{steady("store", 120)}},
		{Name: "10x", Stores: []StoreSpec{steady("store", 60)}},
		{Name: "sink/3", Duration: 90 * time.Second,
			Steps: []Step{{30 * time.Second, "sink 300 -> 100/s", true}, {60 * time.Second, "sink 100 -> 300/s", true}},
			Stores: []StoreSpec{{ID: "store", BatchSize: 50, SinkRate: func(t time.Duration) float64 {
				if t >= 30*time.Second && t < 60*time.Second {
					return 100
				}
				return 300
			}}}},
		{Name: "burst", Steps: []Step{{30 * time.Second, "demand 60 -> 600/s", false}, {35 * time.Second, "demand 600 -> 60/s", false}},
			Demand: func(t time.Duration) float64 {
				if t >= 30*time.Second && t < 35*time.Second {
					return 600
				}
				return 60
			},
			Stores: []StoreSpec{steady("store", 60)}},
		{Name: "two stores", Stores: []StoreSpec{steady("db", 300), steady("archive", 120)}},
	}
}
