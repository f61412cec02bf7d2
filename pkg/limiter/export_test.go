package limiter

// Scripts for tests that call them the way a client in another language would.
var (
	RegisterScriptForTest = registerScript
	SetScaleScriptForTest = setScaleScript
)

// LeaseLeftForTest is the tokens c's lease of provider holds now.
func LeaseLeftForTest(c *Limiter, provider string) int64 {
	st, err := c.state(provider)
	if err != nil {
		return 0
	}
	st.batch.mu.Lock()
	defer st.batch.mu.Unlock()
	return st.batch.lease.left
}

// NoJoinBeatsForTest turns c's early heartbeats after joining off, for
// tests that count the commands Redis sees.
func NoJoinBeatsForTest(c *Limiter) { c.joinBeats = nil }

// WindowEntries decodes a window rule's stored state (windowEntries):
// each entry's time (Redis µs) and units, oldest first.
func WindowEntries(s string) (times []int64, units []int, err error) {
	es, err := windowEntries(s)
	for _, e := range es {
		times, units = append(times, e.t), append(units, e.c)
	}
	return times, units, err
}

// PairOf reads a concurrency rule's state or a permit as stored (pairOf).
func PairOf(v string) (a, b int64, ok bool) { return pairOf(v) }

// NewPermitForTest is a permit of id holding cost places under rules, as
// a grant would have made it (to release one another release wrote).
func NewPermitForTest(c *Limiter, provider, id string, cost int, rules ...Rule) *Permit {
	st, err := c.state(provider)
	if err != nil {
		panic(err)
	}
	return &Permit{c: c, st: st, rules: rules, id: id, cost: cost}
}
