// Package shardsim checks, in a model with a virtual clock, a design for a
// provider hotter than one Redis node (docs/capacity.md): the provider's
// bucket split into K shards on K slots, each with its share of the rate
// and the capacity, the fleet's calls spread over them. It measures what
// the split costs — the admitted total against the provider's bound (it
// must never be above), utilisation and per-instance fairness when demand
// is uneven across shards, and the calls each shard's node serves — with
// and without the mends (borrowing from a second shard, a leader moving
// rate to where the demand is). It models, it does not prove, and nothing
// of it is built into the limiter.
package shardsim

import (
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"

	"github.com/sluice-dev/sluice/internal/evq"
)

// Route is how an instance picks the shard of a call.
type Route int

const (
	// Pinned sends every call of an instance to one shard, hash(instance
	// id) mod K.
	Pinned Route = iota
	// Rotate sends an instance's calls to its shards in turn, starting at
	// hash(instance id) mod K: each shard sees about 1/K of every
	// instance's demand.
	Rotate
)

// Design is one way of running a provider on K shards.
type Design struct {
	Route Route
	// Borrow: a call refused by its shard for want of tokens asks one other
	// shard (Pinned: a random one; Rotate: the next in turn) before the
	// instance reports the refusal.
	Borrow bool
	// Rebalance: a leader reads every shard's demand each Run.Period and
	// moves the base rate (and the capacity in proportion) to where the
	// demand is, lowering shards before raising others so that the shards'
	// rates never sum above the provider's.
	Rebalance bool
}

// Name is the design's row in the table.
func (d Design) Name() string {
	s := "pinned"
	if d.Route == Rotate {
		s = "rotate"
	}
	if d.Rebalance {
		s += " + rebalance"
	}
	if d.Borrow {
		s += " + borrow"
	}
	return s
}

// Run is one model run: instances asking a provider of Rate tokens a
// second (at scale 1) and Capacity tokens of burst, split into Shards.
type Run struct {
	Rate, Capacity float64
	Shards         int
	// Demand is each instance's requests a second (Poisson, one token
	// each, TryAcquire: a refused request is dropped, not retried).
	Demand []float64
	// Scales are (time, scale) changes; the controller writes a change to
	// shard i at time + i × RTT (one shard after another).
	Scales   [][2]float64
	Duration float64 // seconds of virtual time
	Warmup   float64 // utilisation and fairness count from here
	RTT      float64 // one round trip to Redis
	Hold     float64 // the longest a refusal is held in the instance (RefusalHold)
	Jitter   float64 // the longest random delay added to a hold (WakeJitter)
	Period   float64 // the leader's period (Rebalance)
	Seed     uint64
}

// Validate names the first field out of its range.
func (r Run) Validate() error {
	pos := func(name string, v, hi float64) error {
		if math.IsNaN(v) || v <= 0 || v > hi {
			return fmt.Errorf("shardsim: %s = %v: want a number in (0, %g]", name, v, hi)
		}
		return nil
	}
	for _, c := range []struct {
		name  string
		v, hi float64
	}{{"Rate", r.Rate, 1e7}, {"Capacity", r.Capacity, 1e9}, {"Duration", r.Duration, 3600},
		{"RTT", r.RTT, 1}, {"Hold", r.Hold, 1}, {"Period", r.Period, 60}} {
		if err := pos(c.name, c.v, c.hi); err != nil {
			return err
		}
	}
	if r.Shards < 1 || r.Shards > 1024 {
		return fmt.Errorf("shardsim: Shards = %d: want an integer in [1, 1024]", r.Shards)
	}
	if math.IsNaN(r.Warmup) || r.Warmup < 0 || r.Warmup >= r.Duration {
		return fmt.Errorf("shardsim: Warmup = %v: want a number in [0, Duration = %v)", r.Warmup, r.Duration)
	}
	if math.IsNaN(r.Jitter) || r.Jitter < 0 || r.Jitter > r.Hold {
		return fmt.Errorf("shardsim: Jitter = %v: want a number in [0, Hold = %v]", r.Jitter, r.Hold)
	}
	if len(r.Demand) == 0 {
		return fmt.Errorf("shardsim: Demand is empty: want at least one instance")
	}
	for i, d := range r.Demand {
		if math.IsNaN(d) || d < 0 || d > 1e7 {
			return fmt.Errorf("shardsim: Demand[%d] = %v: want a number in [0, 1e7]", i, d)
		}
	}
	last := -1.0
	for i, s := range r.Scales {
		if math.IsNaN(s[0]) || s[0] < 0 || s[0] < last {
			return fmt.Errorf("shardsim: Scales[%d] time = %v: want a number ≥ 0, in order", i, s[0])
		}
		if math.IsNaN(s[1]) || s[1] < 0 || s[1] > 1 {
			return fmt.Errorf("shardsim: Scales[%d] scale = %v: want a number in [0, 1]", i, s[1])
		}
		last = s[0]
	}
	return nil
}

// Result is what a run measured.
type Result struct {
	Design string
	// Admitted and Asked are each instance's grants and requests from
	// Warmup on.
	Admitted, Asked []float64
	// Budget is what the provider's bound allows from Warmup on: ∫ rate ×
	// scale (the capacity aside).
	Budget float64
	// Total is every grant of the run; Bound the provider's bound over the
	// run, capacity + ∫ rate × scale (the scale as the controller set it).
	Total, Bound float64
	// OverShards is the most the grants of any window (s, t] were ever
	// above the sum of the shards' bounds over it (capacity + ∫ Σ shard
	// rate × shard scale): 0 or less when no shard over-admits. OverGlobal
	// is the same against the provider's bound with the scale applied at
	// once everywhere: above 0 only while a cut is on its way to the
	// shards.
	OverShards, OverGlobal float64
	// Calls is each shard's Redis calls a second over the run: decisions,
	// borrows, the leader's reads and writes, the controller's scale
	// writes.
	Calls []float64
	// Borrowed is the grants a second shard gave.
	Borrowed float64
}

// Utilisation is admitted ÷ min(asked, budget) from Warmup on.
func (res Result) Utilisation() float64 {
	return sum(res.Admitted) / math.Min(sum(res.Asked), res.Budget)
}

// Fairness is the lowest and highest of instance admitted ÷ its share,
// where an instance's share is its max-min fair share of the budget (what
// it asked when all asked no more than the budget; else no instance gets
// more than another one that wants more: the equal shares the limiter's
// refusal hold aims at). Instances that asked nothing are left out.
func (res Result) Fairness() (low, high float64) {
	share := waterfill(res.Budget, res.Asked)
	low, high = math.Inf(1), math.Inf(-1)
	for i, a := range res.Asked {
		if a == 0 {
			continue
		}
		x := res.Admitted[i] / math.Min(a, share[i])
		low, high = math.Min(low, x), math.Max(high, x)
	}
	return low, high
}

// BusiestCalls is the most calls a second any shard served.
func (res Result) BusiestCalls() float64 {
	m := 0.0
	for _, c := range res.Calls {
		m = math.Max(m, c)
	}
	return m
}

func sum(xs []float64) float64 {
	s := 0.0
	for _, x := range xs {
		s += x
	}
	return s
}

// shard is one sub-bucket, as acquire.lua would keep it on its own slot:
// tokens refill at base × scale up to capacity. spent is the refill it was
// ever given, uncapped (its bound less its starting capacity).
type shard struct {
	base, capacity, scale float64
	tokens, ts, spent     float64
}

func (s *shard) settle(t float64) {
	if t > s.ts {
		add := (t - s.ts) * s.base * s.scale
		s.tokens = math.Min(s.capacity, s.tokens+add)
		s.spent += add
		s.ts = t
	}
}

// take grants one token at t, or says how long until there is one (+Inf
// while paused).
func (s *shard) take(t float64) (bool, float64) {
	s.settle(t)
	if s.tokens >= 1 {
		s.tokens--
		return true, 0
	}
	if s.base*s.scale <= 0 {
		return false, math.Inf(1)
	}
	return false, (1 - s.tokens) / (s.base * s.scale)
}

// setRate settles at the old rate, then sets base and capacity (tokens
// above the new capacity are dropped: never a grant more).
func (s *shard) setRate(t, base, capacity float64) {
	s.settle(t)
	s.base, s.capacity = base, capacity
	s.tokens = math.Min(s.tokens, capacity)
}

type instance struct {
	home        int     // hash(instance id) mod K
	next        int     // Rotate: the shard of the next call
	holdUntil   float64 // refused locally before
	sinceRefuse float64 // grants since the last refusal (the hold's turn)
	asked       float64 // requests since the leader last read its home shard
	demand      float64 // the leader's estimate of its requests a second
}

const (
	evArrive = iota
	evBorrow
	evLeader
	evScale
	evRate
)

type event struct {
	t       float64
	kind    int
	who     int // instance, or shard
	v, w    float64
	started float64 // evBorrow: when the first call began
}

// HomeShard is the shard an instance is pinned to: FNV-1a of its id
// ("instance-<i>") mod shards.
func HomeShard(i, shards int) int {
	h := fnv.New32a()
	fmt.Fprintf(h, "instance-%d", i)
	return int(h.Sum32() % uint32(shards))
}

// Simulate runs r with design d.
func Simulate(r Run, d Design) (Result, error) {
	if err := r.Validate(); err != nil {
		return Result{}, err
	}
	k := r.Shards
	rng := rand.New(rand.NewPCG(r.Seed, 11))
	sh := make([]shard, k)
	for i := range sh {
		sh[i] = shard{base: r.Rate / float64(k), capacity: r.Capacity / float64(k), scale: 1, tokens: r.Capacity / float64(k)}
	}
	inst := make([]instance, len(r.Demand))
	for i := range inst {
		inst[i].home = HomeShard(i, k)
		inst[i].next = inst[i].home
	}
	res := Result{Design: d.Name(), Admitted: make([]float64, len(inst)), Asked: make([]float64, len(inst)),
		Calls: make([]float64, k)}

	var q evq.Queue[*event]
	push := func(e *event) { q.Push(e.t, e) }
	for i, dm := range r.Demand {
		if dm > 0 {
			push(&event{t: rng.ExpFloat64() / dm, kind: evArrive, who: i})
		}
	}
	for _, s := range r.Scales {
		for i := range k {
			push(&event{t: s[0] + float64(i)*r.RTT, kind: evScale, who: i, v: s[1]})
		}
	}
	if d.Rebalance && k > 1 {
		push(&event{t: r.Period, kind: evLeader})
	}

	// The provider's bound, with the scale applied at once (global), and
	// the sum of the shards' bounds; the worst window of each is tracked
	// as the running minimum of (grants − budget) just before a grant.
	globalAt := func(t float64) float64 { return r.Rate * scaleIntegral(r.Scales, t) }
	shardsAt := func(t float64) float64 {
		b := 0.0
		for i := range sh {
			sh[i].settle(t)
			b += sh[i].spent
		}
		return b
	}
	var total, minG, minS float64
	res.OverGlobal, res.OverShards = math.Inf(-1), math.Inf(-1)
	grant := func(t float64, i int) {
		g, s := globalAt(t), shardsAt(t)
		minG, minS = math.Min(minG, total-g), math.Min(minS, total-s)
		total++
		res.OverGlobal = math.Max(res.OverGlobal, total-g-minG-r.Capacity)
		res.OverShards = math.Max(res.OverShards, total-s-minS-r.Capacity)
		if t >= r.Warmup {
			res.Admitted[i]++
		}
		inst[i].sinceRefuse++
	}
	// refused starts the instance's hold: until its tokens can have
	// refilled or its turn (its grants since the last refusal × instances
	// ÷ the provider's rate), plus jitter, at most Hold after the call.
	refused := func(i int, started, wait float64) {
		in := &inst[i]
		if rate := r.Rate * sh[in.home].scale; rate > 0 {
			wait = math.Max(wait, in.sinceRefuse*float64(len(inst))/rate)
		}
		in.sinceRefuse = 0
		hold := r.Hold
		if !math.IsInf(wait, 1) {
			hold = math.Min(r.Hold, wait+rng.Float64()*math.Min(r.Jitter, wait))
		}
		in.holdUntil = math.Max(in.holdUntil, started+hold)
	}
	pick := func(i int) int {
		if d.Route == Pinned {
			return inst[i].home
		}
		s := inst[i].next
		inst[i].next = (s + 1) % k
		return s
	}
	other := func(i, first int) int {
		if d.Route == Rotate {
			return pick(i)
		}
		return (first + 1 + rng.IntN(k-1)) % k
	}

	for q.Len() > 0 {
		e := q.Pop()
		if e.t >= r.Duration {
			break
		}
		switch e.kind {
		case evArrive:
			i := e.who
			push(&event{t: e.t + rng.ExpFloat64()/r.Demand[i], kind: evArrive, who: i})
			if e.t >= r.Warmup {
				res.Asked[i]++
			}
			inst[i].asked++
			if e.t < inst[i].holdUntil {
				continue // held: refused here, no call
			}
			s := pick(i)
			res.Calls[s]++
			ok, wait := sh[s].take(e.t)
			switch {
			case ok:
				grant(e.t, i)
			case d.Borrow && k > 1 && !math.IsInf(wait, 1):
				push(&event{t: e.t + r.RTT, kind: evBorrow, who: i, v: float64(s), started: e.t})
			default:
				refused(i, e.t, wait)
			}
		case evBorrow:
			i := e.who
			s := other(i, int(e.v))
			res.Calls[s]++
			ok, wait := sh[s].take(e.t)
			if ok {
				grant(e.t, i)
				if e.t >= r.Warmup {
					res.Borrowed++
				}
				continue
			}
			refused(i, e.started, wait)
		case evScale:
			sh[e.who].settle(e.t)
			sh[e.who].scale = e.v
			res.Calls[e.who]++
		case evLeader:
			rebalance(e.t, r, sh, inst, res.Calls, push)
			push(&event{t: e.t + r.Period, kind: evLeader})
		case evRate:
			sh[e.who].setRate(e.t, e.v, e.w)
			res.Calls[e.who]++
		}
	}
	res.Budget = globalAt(r.Duration) - globalAt(r.Warmup)
	res.Total, res.Bound = total, r.Capacity+globalAt(r.Duration)
	for i := range res.Calls {
		res.Calls[i] /= r.Duration
	}
	return res, nil
}

// scaleIntegral is ∫₀ᵗ scale, the scale 1 until the first change.
func scaleIntegral(changes [][2]float64, t float64) float64 {
	area, from, scale := 0.0, 0.0, 1.0
	for _, c := range changes {
		if c[0] >= t {
			break
		}
		area += (c[0] - from) * scale
		from, scale = c[0], c[1]
	}
	return area + (t-from)*scale
}

// rebalance is the leader's step at t: it reads every shard's demand (one
// call each: each instance counts its requests, held ones included, in its
// home shard's hash, as a client would report them with its next call),
// smooths each instance's, shares the provider's rate among the instances
// max-min fairly (water-filled, what demand leaves spread evenly) and sets
// each shard's base rate to a floor of 5% of an even share plus its
// instances' shares; capacity in proportion to the rate. Shards whose rate
// falls are written first (at t + RTT), those whose rate rises after (t +
// 2 RTT), so the shards' rates never sum above the provider's.
func rebalance(t float64, r Run, sh []shard, inst []instance, calls []float64, push func(*event)) {
	k := len(sh)
	for i := range sh {
		calls[i]++
	}
	want := make([]float64, len(inst))
	for i := range inst {
		inst[i].demand = 0.5*inst[i].demand + 0.5*inst[i].asked/r.Period
		inst[i].asked = 0
		want[i] = inst[i].demand
	}
	floor := 0.05 * r.Rate / float64(k)
	give := make([]float64, k)
	for i, g := range waterfill(r.Rate-floor*float64(k), want) {
		give[inst[i].home] += g
	}
	for i := range give {
		give[i] += floor
	}
	for i := range sh {
		if give[i] < sh[i].base {
			push(&event{t: t + r.RTT, kind: evRate, who: i, v: give[i], w: r.Capacity * give[i] / r.Rate})
		}
	}
	for i := range sh {
		if give[i] > sh[i].base {
			push(&event{t: t + 2*r.RTT, kind: evRate, who: i, v: give[i], w: r.Capacity * give[i] / r.Rate})
		}
	}
}

// waterfill shares total among wants max-min fairly (no one gets more than
// it wants while another gets less than its equal share), then spreads
// what is left evenly. The result sums to total.
func waterfill(total float64, want []float64) []float64 {
	n := len(want)
	got := make([]float64, n)
	left, open := total, n
	done := make([]bool, n)
	for open > 0 && left > 1e-12 {
		level := left / float64(open)
		progress := false
		for i := range want {
			if !done[i] && want[i]-got[i] <= level {
				left -= want[i] - got[i]
				got[i] = want[i]
				done[i], open, progress = true, open-1, true
			}
		}
		if !progress {
			for i := range want {
				if !done[i] {
					got[i] += level
				}
			}
			left = 0
		}
	}
	if left > 0 {
		for i := range got {
			got[i] += left / float64(n)
		}
	}
	return got
}
