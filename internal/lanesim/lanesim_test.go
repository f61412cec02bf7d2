package lanesim

import (
	"fmt"
	"math"
	"testing"
)

const (
	rate, capacity = 100.0, 20.0
	rtt            = 0.0003
)

// priorityRun: live at 20% of the budget from 3 processes for the whole
// run, in bursts of burst requests; a backfill of 3 processes × 8 callers from 20 s; the scale cut to
// 0.5 from 40 s.
func priorityRun(seed uint64, burst int) Run {
	lanes := []Lane{{Name: "live", Priority: 1, Weight: 1}, {Name: "backfill", Priority: 0, Weight: 1}}
	var src []Source
	for range 3 {
		src = append(src, Source{Lane: 0, Rate: rate * 0.2 / 3 / float64(burst), Burst: burst, From: 0, To: 60})
		src = append(src, Source{Lane: 1, Open: 8, From: 20, To: 60})
	}
	return Run{Rate: rate, Capacity: capacity, Lanes: lanes, Sources: src,
		Scales: [][2]float64{{40, 0.5}}, Duration: 60, RTT: rtt, Seed: seed}
}

func weightRun(seed uint64) Run {
	lanes := []Lane{{Name: "a", Priority: 0, Weight: 3}, {Name: "b", Priority: 0, Weight: 1}}
	var src []Source
	for range 3 {
		src = append(src, Source{Lane: 0, Open: 8, From: 0, To: 30}, Source{Lane: 1, Open: 8, From: 0, To: 30})
	}
	return Run{Rate: rate, Capacity: capacity, Lanes: lanes, Sources: src, Duration: 30, RTT: rtt, Seed: seed}
}

func liveP99(res Result, r Run, from, to float64) float64 {
	var ws []float64
	for i, s := range r.Sources {
		if s.Lane != 0 {
			continue
		}
		for _, w := range res.Waits[i] {
			if w[0] >= from && w[0] < to {
				ws = append(ws, w[1])
			}
		}
	}
	return Quantile(ws, 0.99)
}

func policies(r Run) []Policy {
	return []Policy{
		NewShared(r.Rate, r.Capacity),
		NewReserve(r.Rate, r.Capacity, r.Lanes, 0),
		NewReserve(r.Rate, r.Capacity, r.Lanes, 0.25),
		NewReserve(r.Rate, r.Capacity, r.Lanes, 0.5),
		NewSplit(r.Rate, r.Capacity, r.Lanes),
		NewSplit(r.Rate, r.Capacity, withBurst(r.Lanes, 16)),
	}
}

// withBurst gives the first lane a bucket of b (the rest get what is left).
func withBurst(lanes []Lane, b float64) []Lane {
	out := append([]Lane(nil), lanes...)
	out[0].Burst = b
	return out
}

// TestCompare prints the table docs/lanes.md quotes (go test -v -run
// TestCompare ./internal/lanesim) and holds the chosen design to the
// issue's targets in the model.
func TestCompare(t *testing.T) {
	for _, burst := range []int{1, 8} {
		fmt.Printf("\nlive requests arriving %d at a time\n\n", burst)
		fmt.Println("| design | live p99 ms, alone | live p99 ms, backfill on | ratio | live admitted ÷ asked at scale 0.5 | backfill /s at scale 1, 0.5 | shares 3:1 (a) | over the bound |")
		fmt.Println("|---|---|---|---|---|---|---|---|")
		for i := range policies(priorityRun(1, burst)) {
			compare(t, i, burst)
		}
	}
}

func compare(t *testing.T, i, burst int) {
	r := priorityRun(1, burst)
	p := policies(r)[i]
	res := Simulate(r, p)
	alone, with := liveP99(res, r, 2, 20), liveP99(res, r, 25, 40)
	cut := res.Between(0, 45, 60) / res.Asked(0, 45, 60)
	bf1, bf05 := res.Between(1, 25, 40)/15, res.Between(1, 45, 60)/15
	w := weightRun(1)
	wres := Simulate(w, policies(w)[i])
	share := wres.Admitted[0] / (wres.Admitted[0] + wres.Admitted[1])
	over := math.Max(res.MaxOver, wres.MaxOver)
	fmt.Printf("| %s | %.2f | %.2f | %.2f | %.2f | %.1f, %.1f | %.3f | %.2f |\n",
		p.Name(), alone*1000, with*1000, with/alone, cut, bf1, bf05, share, over)
	if _, ok := p.(*Split); ok && burst == 1 { // the chosen design
		if with > 1.2*alone+0.001 {
			t.Errorf("%s: live p99 %.2f ms with the backfill, %.2f ms alone", p.Name(), with*1000, alone*1000)
		}
		if cut < 0.95 {
			t.Errorf("%s: live got %.2f of its demand at scale 0.5", p.Name(), cut)
		}
		if math.Abs(share-0.75) > 0.05 {
			t.Errorf("%s: weights 3:1 gave %.3f", p.Name(), share)
		}
	}
	if over > 1e-6 {
		t.Errorf("%s: admitted %.2f above the bound", p.Name(), over)
	}
}
