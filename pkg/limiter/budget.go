package limiter

import "time"

// maxStretch is the longest an adapted lease or refusal hold lasts,
// whatever the fleet: the options' own upper bound. Past
// CallBudget × maxStretch ÷ 2 live replicas a provider's calls exceed the
// budget (docs/capacity.md).
const maxStretch = time.Second

// Heartbeats take beatShare of the call budget, and a heartbeat period
// stretches to at most maxBeatStretch (the registry entry lives three
// periods).
const (
	beatShare      = 0.1
	maxBeatStretch = time.Minute
)

// stretch is d made long enough that replicas instances, each making
// calls Redis calls per period, stay within budget calls a second in all:
// max(d, calls × replicas ÷ budget), never longer than most unless d is,
// however small the budget.
// A budget ≤ 0 (off) leaves d as it is.
func stretch(d time.Duration, calls float64, replicas int, budget float64, most time.Duration) time.Duration {
	if budget <= 0 {
		return d
	}
	// Capped as a float: past 2^63 ns a conversion to Duration wraps
	// negative (a tiny budget, a vast count), which would leave d as it is.
	s := min(calls*float64(replicas)/budget*float64(time.Second), float64(most))
	return max(d, time.Duration(s))
}

// budget is the call budget in force: 0 when off.
func (o Options) budget() float64 {
	if o.NoCallBudget {
		return 0
	}
	return o.CallBudget
}

// leasePeriod is how long a lease of st lasts: TokenLease, stretched so
// that the live replicas (as of this replica's last heartbeat), each
// making two calls a period (the renewal and the refund of what is left),
// stay within CallBudget. It is the stated bound on how late a change made
// elsewhere applies here (a scale change's notification usually ends the
// lease sooner).
func (c *Limiter) leasePeriod(st *providerState) time.Duration {
	return stretch(c.opts.TokenLease, 2, st.member.live(), c.opts.budget(), maxStretch)
}

// holdLimit returns the longest st's refusals are held (RefusalHold,
// stretched like the lease, one call a hold) and spacing, the least a held
// rate limit lasts (0 with no budget): replicas ÷ CallBudget, each
// replica's turn at the budget, so that refused replicas do not ask more
// often than the budget allows in all.
func (c *Limiter) holdLimit(st *providerState) (limit, spacing time.Duration) {
	n, b := st.member.live(), c.opts.budget()
	return stretch(c.opts.RefusalHold, 1, n, b, maxStretch), stretch(0, 1, n, b, maxStretch)
}

// beatPeriod is how often this replica heartbeats for st: Heartbeat,
// stretched so that the live replicas' heartbeats stay within a tenth of
// CallBudget (at most a minute). A replica's registry entry lives three
// of its own periods, so a longer period only makes the count slower to
// see replicas come and go.
func (c *Limiter) beatPeriod(st *providerState) time.Duration {
	return stretch(c.opts.Heartbeat, 1, st.member.live(), beatShare*c.opts.budget(), maxBeatStretch)
}
