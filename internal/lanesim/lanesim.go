// Package lanesim compares ways of sharing one provider's budget between
// lanes (live before backfill, weighted shares) in a model with a virtual
// clock: the deciding policy stands where the Lua script will, the callers
// are the fleet's processes, each decision costs a round trip. It measures
// what issue 25's targets ask of a design (live waits with and without a
// backfill, shares of equal-priority lanes, who absorbs a scale cut, the
// provider's total against its bound) before one is written in Lua, so
// docs/lanes.md can argue the choice with figures. It models, it does not
// prove: the chosen design is measured again on Redis.
package lanesim

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"

	"github.com/sluice-dev/sluice/internal/evq"
)

// Lane is a lane as configured: a higher Priority is served first, lanes of
// equal priority share by Weight. Burst is the lane's bucket in Split (0:
// what the lanes without one leave, shared by weight).
type Lane struct {
	Name     string
	Priority int
	Weight   float64
	Burst    float64
}

// Policy decides one request of cost n in lane at time t (seconds): granted,
// or the wait after which it may pass. Scale is the budget's scale in force.
type Policy interface {
	Name() string
	Decide(t float64, lane int, n float64) (bool, float64)
	SetScale(t, scale float64)
}

// bucket is the provider's token bucket, as acquire.lua keeps it.
type bucket struct {
	rate, capacity, scale float64
	tokens, ts            float64
}

func (b *bucket) settle(t float64) {
	if t > b.ts {
		b.tokens = math.Min(b.capacity, b.tokens+(t-b.ts)*b.rate*b.scale)
		b.ts = t
	}
}

// wait is how long until the bucket holds need tokens (+Inf when paused).
func (b *bucket) wait(need float64) float64 {
	if b.tokens >= need {
		return 0
	}
	if b.scale <= 0 || need > b.capacity {
		return math.Inf(1)
	}
	return (need - b.tokens) / (b.rate * b.scale)
}

// Shared is today's script: one bucket, lanes ignored.
type Shared struct{ b bucket }

// NewShared starts a Shared policy with a full bucket.
func NewShared(rate, capacity float64) *Shared {
	return &Shared{bucket{rate: rate, capacity: capacity, scale: 1, tokens: capacity}}
}

// Name is the policy's row in the table.
func (s *Shared) Name() string { return "shared bucket (today)" }

// SetScale settles the bucket at the old scale up to t, then changes it.
func (s *Shared) SetScale(t, scale float64) {
	s.b.settle(t)
	s.b.scale = scale
}

// Decide grants n if the bucket holds them.
func (s *Shared) Decide(t float64, _ int, n float64) (bool, float64) {
	s.b.settle(t)
	if w := s.b.wait(n); w > 0 {
		return false, w
	}
	s.b.tokens -= n
	return true, 0
}

// Reserve is one shared bucket (so the provider's bound is the bucket's)
// with two rules on top, both decided from per-lane state kept beside it:
//
//   - priority by reserve: a request may take tokens only above what the
//     lanes of higher priority are expected to ask for within Horizon
//     (their demand, an exponentially decaying average of the units they
//     asked for, granted or not, with time constant Tau), capped at the
//     capacity; so a higher lane finds tokens waiting and a lower one takes
//     the rest (work-conserving: an idle lane's demand decays to 0);
//   - weights by virtual clock: each lane's clock advances n/weight per
//     grant; among the active lanes (a request within Active) of one
//     priority, a lane more than Slack units of its own weight ahead of the
//     slowest waits. A lane that comes back from idle starts at the slowest
//     active clock: idle time is not banked.
//
// Strict (Horizon 0) is strict priority without a reserve: a lower lane
// yields while a higher one has been refused and not granted since.
type Reserve struct {
	b                           bucket
	lanes                       []Lane
	Horizon, Tau, Active, Slack float64
	demand, seen, clock         []float64
	pending                     []bool // refused and not granted since
}

// NewReserve starts a Reserve policy with a full bucket and the given
// horizon (0: strict priority).
func NewReserve(rate, capacity float64, lanes []Lane, horizon float64) *Reserve {
	r := &Reserve{b: bucket{rate: rate, capacity: capacity, scale: 1, tokens: capacity}, lanes: lanes,
		Horizon: horizon, Tau: 1, Active: 0.5, Slack: capacity / 4}
	k := len(lanes)
	r.demand, r.seen, r.clock, r.pending = make([]float64, k), make([]float64, k), make([]float64, k), make([]bool, k)
	for i := range r.seen {
		r.seen[i] = math.Inf(-1)
	}
	return r
}

// Name is the policy's row in the table.
func (r *Reserve) Name() string {
	if r.Horizon == 0 {
		return "strict priority, no reserve"
	}
	return fmt.Sprintf("reserve (horizon %gs) + virtual clocks", r.Horizon)
}

// SetScale settles the bucket at the old scale up to t, then changes it.
func (r *Reserve) SetScale(t, scale float64) {
	r.b.settle(t)
	r.b.scale = scale
}

func (r *Reserve) active(t float64, j int) bool { return t-r.seen[j] <= r.Active }

// Decide applies the reserve and the virtual clocks, then the bucket.
func (r *Reserve) Decide(t float64, lane int, n float64) (bool, float64) {
	r.b.settle(t)
	// This lane's demand, decayed to now, counts the request.
	decay := math.Exp(-(t - r.seen[lane]) / r.Tau)
	if math.IsInf(r.seen[lane], -1) {
		decay = 0
	}
	if !r.active(t, lane) { // back from idle: no banked clock
		r.clock[lane] = r.slowest(t, lane)
	}
	r.demand[lane] = r.demand[lane]*decay + n/r.Tau
	r.seen[lane] = t
	me := r.lanes[lane]
	reserve, yield := 0.0, 0.0
	for j, l := range r.lanes {
		if j == lane || !r.active(t, j) {
			continue
		}
		if l.Priority > me.Priority {
			d := r.demand[j] * math.Exp(-(t-r.seen[j])/r.Tau)
			reserve += d * r.Horizon
			if r.Horizon == 0 && r.pending[j] {
				yield = 1 / (r.b.rate * math.Max(r.b.scale, 1e-9))
			}
		}
	}
	reserve = math.Min(reserve, r.b.capacity-n)
	if yield > 0 {
		return false, yield
	}
	// Weights among the active lanes of this priority.
	if lead := r.clock[lane] - r.slowest(t, lane); lead > r.Slack/me.Weight {
		// Wait about as long as the others take to catch up at the full rate.
		return false, math.Max(1e-4, (lead-r.Slack/me.Weight)*me.Weight/(r.b.rate*math.Max(r.b.scale, 1e-9)))
	}
	if w := r.b.wait(n + reserve); w > 0 {
		r.pending[lane] = true
		return false, w
	}
	r.pending[lane] = false
	r.b.tokens -= n
	r.clock[lane] += n / me.Weight
	return true, 0
}

// slowest is the lowest clock among the active lanes of lane's priority
// other than lane (lane's own when there is none).
func (r *Reserve) slowest(t float64, lane int) float64 {
	low := r.clock[lane]
	first := true
	for j, l := range r.lanes {
		if j == lane || l.Priority != r.lanes[lane].Priority || !r.active(t, j) {
			continue
		}
		if first || r.clock[j] < low {
			low, first = r.clock[j], false
		}
	}
	if first {
		return r.clock[lane]
	}
	return low
}

// Split is hierarchical buckets: each lane its own bucket of capacity ×
// its weight's share; the refill goes to the lanes by priority, by weight
// among equals, each up to its bucket's top, and what a full bucket cannot
// take flows to the next. A request takes from its own lane's bucket, then
// from lanes of lower priority.
type Split struct {
	rate, capacity, scale, ts float64
	lanes                     []Lane
	tokens, caps              []float64
}

// NewSplit starts a Split policy with every lane's bucket full.
func NewSplit(rate, capacity float64, lanes []Lane) *Split {
	s := &Split{rate: rate, capacity: capacity, scale: 1, lanes: lanes,
		tokens: make([]float64, len(lanes)), caps: make([]float64, len(lanes))}
	total, left := 0.0, capacity
	for _, l := range lanes {
		if l.Burst > 0 {
			left -= l.Burst
		} else {
			total += l.Weight
		}
	}
	for i, l := range lanes {
		s.caps[i] = l.Burst
		if l.Burst == 0 {
			s.caps[i] = left * l.Weight / total
		}
		s.tokens[i] = s.caps[i]
	}
	return s
}

// Name is the policy's row in the table, with the lanes' bucket sizes.
func (s *Split) Name() string {
	return fmt.Sprintf("split buckets (hierarchical), bursts %v", s.caps)
}

// SetScale settles the lanes at the old scale up to t, then changes it.
func (s *Split) SetScale(t, scale float64) {
	s.settle(t)
	s.scale = scale
}

func (s *Split) settle(t float64) {
	if t <= s.ts {
		return
	}
	supply := (t - s.ts) * s.rate * s.scale
	s.ts = t
	prios := []int{}
	for _, l := range s.lanes {
		if !slices.Contains(prios, l.Priority) {
			prios = append(prios, l.Priority)
		}
	}
	slices.Sort(prios)
	slices.Reverse(prios)
	for _, p := range prios {
		// Water-fill this priority's lanes by weight.
		for supply > 1e-12 {
			w := 0.0
			for i, l := range s.lanes {
				if l.Priority == p && s.tokens[i] < s.caps[i] {
					w += l.Weight
				}
			}
			if w == 0 {
				break
			}
			used := 0.0
			for i, l := range s.lanes {
				if l.Priority == p && s.tokens[i] < s.caps[i] {
					give := math.Min(supply*l.Weight/w, s.caps[i]-s.tokens[i])
					s.tokens[i] += give
					used += give
				}
			}
			supply -= used
		}
	}
}

// Decide takes n from the lane's bucket, then from lower lanes'.
func (s *Split) Decide(t float64, lane int, n float64) (bool, float64) {
	s.settle(t)
	// Its own bucket first, then the buckets of lower priority, never a
	// higher one's: a live request may use what the backfill holds.
	have := s.tokens[lane]
	for i, l := range s.lanes {
		if l.Priority < s.lanes[lane].Priority {
			have += s.tokens[i]
		}
	}
	if have >= n {
		need := n
		take := func(i int) {
			d := math.Min(need, s.tokens[i])
			s.tokens[i] -= d
			need -= d
		}
		take(lane)
		for i, l := range s.lanes {
			if need > 0 && l.Priority < s.lanes[lane].Priority {
				take(i)
			}
		}
		return true, 0
	}
	if s.scale <= 0 || n > s.capacity {
		return false, math.Inf(1)
	}
	// At least its weight's share of the refill comes to it.
	w := 0.0
	for _, l := range s.lanes {
		w += l.Weight
	}
	return false, (n - have) / (s.rate * s.scale * s.lanes[lane].Weight / w)
}

// Source is a lane's demand: Open callers each asking again as soon as they
// are answered (a backlog) when Rate is 0, else arrivals of Burst requests
// at once (1 when 0) at Rate a second (Poisson), each request waiting
// (Acquire) until granted; active in [From, To).
type Source struct {
	Lane     int
	Rate     float64
	Burst    int
	Open     int
	From, To float64
}

// Run is one model run.
type Run struct {
	Rate, Capacity float64 // the provider's budget
	Lanes          []Lane
	Sources        []Source
	Scales         [][2]float64 // (time, scale) changes
	Duration       float64
	RTT            float64 // one round trip to Redis
	Seed           uint64
}

// Result is what a run measured.
type Result struct {
	Policy   string
	Admitted []float64      // units per lane
	Waits    [][][2]float64 // per source: each granted request's arrival and wait (to the grant's reply)
	MaxOver  float64        // the most total admitted ever exceeded capacity + ∫rate×scale
	// Between counts lane's grants in [from, to); Asked its requests that
	// arrived then.
	Between, Asked func(lane int, from, to float64) float64
	grants         [][2]float64 // (time, lane) of every grant
}

type event struct {
	t        float64
	src      int
	arrived  float64
	isArrive bool
}

// Simulate runs r against p.
func Simulate(r Run, p Policy) Result {
	rng := rand.New(rand.NewPCG(r.Seed, 7))
	res := Result{Policy: p.Name(), Admitted: make([]float64, len(r.Lanes)), Waits: make([][][2]float64, len(r.Sources))}
	var q evq.Queue[*event]
	push := func(e *event) { q.Push(e.t, e) }
	for i, s := range r.Sources {
		if s.Rate > 0 {
			push(&event{t: s.From + rng.ExpFloat64()/s.Rate, src: i, isArrive: true})
			continue
		}
		for k := 0; k < s.Open; k++ {
			push(&event{t: s.From + rng.Float64()*r.RTT, src: i, arrived: s.From})
		}
	}
	var asked [][2]float64 // (arrival, lane) of every Poisson request
	scales := slices.Clone(r.Scales)
	scale, budget, lastT := 1.0, r.Capacity, 0.0
	for q.Len() > 0 {
		e := q.Pop()
		if e.t >= r.Duration {
			break
		}
		for len(scales) > 0 && scales[0][0] <= e.t {
			budget += (scales[0][0] - lastT) * r.Rate * scale
			lastT = scales[0][0]
			scale = scales[0][1]
			p.SetScale(lastT, scale)
			scales = scales[1:]
		}
		s := r.Sources[e.src]
		if e.isArrive {
			if e.t < s.To {
				push(&event{t: e.t + rng.ExpFloat64()/s.Rate, src: e.src, isArrive: true})
				for range max(1, s.Burst) {
					asked = append(asked, [2]float64{e.t, float64(s.Lane)})
					push(&event{t: e.t + r.RTT/2, src: e.src, arrived: e.t})
				}
			}
			continue
		}
		if s.Rate == 0 && e.t >= s.To {
			continue
		}
		ok, wait := p.Decide(e.t, s.Lane, 1)
		if ok {
			res.Admitted[s.Lane]++
			res.grants = append(res.grants, [2]float64{e.t, float64(s.Lane)})
			total := 0.0
			for _, a := range res.Admitted {
				total += a
			}
			if over := total - (budget + (e.t-lastT)*r.Rate*scale); over > res.MaxOver {
				res.MaxOver = over
			}
			done := e.t + r.RTT/2
			res.Waits[e.src] = append(res.Waits[e.src], [2]float64{e.arrived, done - e.arrived})
			if s.Rate == 0 {
				push(&event{t: done + r.RTT/2, src: e.src, arrived: done})
			}
			continue
		}
		if math.IsInf(wait, 1) {
			wait = 0.25 // paused: the slow re-check
		}
		// The answer comes back, the caller sleeps the wait with up to 10%
		// jitter, and asks again.
		push(&event{t: e.t + r.RTT + wait*(1+0.1*rng.Float64()), src: e.src, arrived: e.arrived})
	}
	count := func(xs [][2]float64, lane int, from, to float64) float64 {
		c := 0.0
		for _, g := range xs {
			if int(g[1]) == lane && g[0] >= from && g[0] < to {
				c++
			}
		}
		return c
	}
	res.Between = func(lane int, from, to float64) float64 { return count(res.grants, lane, from, to) }
	res.Asked = func(lane int, from, to float64) float64 { return count(asked, lane, from, to) }
	return res
}

// Quantile of xs (not sorted in place).
func Quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[int(math.Min(float64(len(s)-1), math.Floor(q*float64(len(s)))))]
}
