// Package provsim is a simulated market-data provider that enforces a
// broker's published historical-data pacing exactly, by its own clock at
// each request's arrival, as the broker does: it counts every violation and
// drops the connection of the request that broke a rule. The pacing-rules
// drill (docs/rules.md) runs it as a process of its own.
package provsim

import (
	"encoding/json"
	"maps"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Rules are the provider's pacing, as published (with the long window
// time-scaled for a drill).
type Rules struct {
	Messages    int           // at most Messages units in any MessagesPer, every request (0: no limit)
	MessagesPer time.Duration // the broker's 50 messages a second
	Window      time.Duration // at most WindowLimit units in any Window
	WindowLimit int
	KeyPeriod   time.Duration // at most KeyLimit units per key in any KeyPeriod
	KeyLimit    int
	Identical   time.Duration // the same request not again within Identical
	Open        int           // at most Open units in flight
}

// Stats is what the provider saw.
type Stats struct {
	Requests   int            `json:"requests"`    // served, violations excluded
	Live       int            `json:"live"`        // of which live requests (the message rule alone)
	Units      int            `json:"units"`       // their cost
	Violations int            `json:"violations"`  // requests refused for breaking a rule
	ByRule     map[string]int `json:"by_rule"`     // violations by the rule broken: window, key, identical, open, messages
	Samples    []string       `json:"samples"`     // the first violations, described
	FirstUS    int64          `json:"first_us"`    // arrival of the first served request (Unix µs)
	LastUS     int64          `json:"last_us"`     // and of the last
	MaxOpen    int            `json:"max_open"`    // most units in flight at once
	MaxSkewMS  float64        `json:"max_skew_ms"` // most a request arrived after the grant it names
	Arrivals   [][2]int64     `json:"arrivals"`    // each served request's arrival (Unix µs) and cost
	// GrantViolations are the rules the requests broke by the times they
	// were granted (each request's grant_us), not by arrival: what the
	// limiter decided, whatever the delay to the provider. Open requests
	// are not among them (a permit outlives the request it covers).
	GrantViolations map[string]int `json:"grant_violations"`
}

// Provider enforces Rules. Its zero value is not usable: use New.
type Provider struct {
	r   Rules
	now func() time.Time

	mu     sync.Mutex
	msgs   []arrival            // every request's units in the message period, oldest first
	units  []arrival            // in the window, oldest first
	byKey  map[string][]arrival // per key, oldest first
	idents map[string]time.Time // last arrival of each identical request
	open   int
	st     Stats
	grants []grant
}

// grant is a request as its limiter granted it.
type grant struct {
	us         int64
	key, ident string
	cost       int
}

type arrival struct {
	at   time.Time
	cost int
}

// New returns a provider enforcing r by now (time.Now when nil).
func New(r Rules, now func() time.Time) *Provider {
	if now == nil {
		now = time.Now
	}
	return &Provider{r: r, now: now, byKey: map[string][]arrival{}, idents: map[string]time.Time{}}
}

// Admit checks a request of cost for key and ident arriving now, and
// records it unless it breaks a rule: then it returns which, and records a
// violation instead. A request admitted is open until Done.
func (p *Provider) Admit(key, ident string, cost int) (broke string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	p.units = drop(p.units, now.Add(-p.r.Window))
	k := drop(p.byKey[key], now.Add(-p.r.KeyPeriod))
	switch {
	case sum(p.units)+cost > p.r.WindowLimit:
		broke = "window"
	case sum(k)+cost > p.r.KeyLimit:
		broke = "key " + key
	case !p.idents[ident].IsZero() && now.Sub(p.idents[ident]) < p.r.Identical:
		broke = "identical " + ident
	case p.open+cost > p.r.Open:
		broke = "open"
	default:
		broke = p.message(now, cost)
	}
	if broke != "" {
		p.violation(now, broke)
		p.byKey[key] = k
		return broke
	}
	a := arrival{now, cost}
	p.units, p.byKey[key], p.idents[ident] = append(p.units, a), append(k, a), now
	p.msgs = append(p.msgs, a)
	p.open += cost
	p.st.MaxOpen = max(p.st.MaxOpen, p.open)
	p.st.Requests++
	p.st.Units += cost
	if p.st.FirstUS == 0 {
		p.st.FirstUS = now.UnixMicro()
	}
	p.st.LastUS = now.UnixMicro()
	p.st.Arrivals = append(p.st.Arrivals, [2]int64{now.UnixMicro(), int64(cost)})
	return ""
}

// AdmitLive checks a live request of cost arriving now against the
// message rule alone (the historical rules do not apply to it), and
// records it unless it breaks it. It is answered at once: never open.
func (p *Provider) AdmitLive(cost int) (broke string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	if broke = p.message(now, cost); broke != "" {
		p.violation(now, broke)
		return broke
	}
	p.msgs = append(p.msgs, arrival{now, cost})
	p.st.Requests++
	p.st.Live++
	return ""
}

// message checks the message rule for cost more units now (p.mu held).
func (p *Provider) message(now time.Time, cost int) string {
	if p.r.Messages == 0 {
		return ""
	}
	p.msgs = drop(p.msgs, now.Add(-p.r.MessagesPer))
	if sum(p.msgs)+cost > p.r.Messages {
		return "messages"
	}
	return ""
}

// violation counts a request that broke a rule (p.mu held).
func (p *Provider) violation(now time.Time, broke string) {
	p.st.Violations++
	rule, _, _ := strings.Cut(broke, " ")
	if p.st.ByRule == nil {
		p.st.ByRule = map[string]int{}
	}
	p.st.ByRule[rule]++
	if len(p.st.Samples) < 10 {
		p.st.Samples = append(p.st.Samples, now.Format("15:04:05.000000")+" "+broke)
	}
}

// Done closes a request Admit let in.
func (p *Provider) Done(cost int) {
	p.mu.Lock()
	p.open -= cost
	p.mu.Unlock()
}

// Stats returns what the provider saw so far.
func (p *Provider) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.st
	st.Samples = append([]string(nil), st.Samples...)
	st.ByRule = maps.Clone(st.ByRule)
	st.Arrivals = slices.Clone(st.Arrivals)
	st.GrantViolations = p.grantViolations()
	return st
}

// granted records a request's grant time (Unix µs; 0: unknown).
func (p *Provider) granted(us int64, key, ident string, cost int) {
	if us <= 0 {
		return
	}
	ms := float64(p.now().UnixMicro()-us) / 1000
	p.mu.Lock()
	p.st.MaxSkewMS = max(p.st.MaxSkewMS, ms)
	p.grants = append(p.grants, grant{us, key, ident, cost})
	p.mu.Unlock()
}

// grantViolations checks the window, per-key and identical rules on the
// requests in the order and at the times they were granted.
func (p *Provider) grantViolations() map[string]int {
	gs := slices.Clone(p.grants)
	slices.SortStableFunc(gs, func(a, b grant) int { return int(a.us - b.us) })
	chk := New(p.r, nil)
	chk.r.Open = math.MaxInt
	chk.r.Messages = 0 // live requests are not among the grants, and a request's message grant is another call
	out := map[string]int{}
	for _, g := range gs {
		chk.now = func() time.Time { return time.UnixMicro(g.us) }
		if broke := chk.Admit(g.key, g.ident, g.cost); broke != "" {
			rule, _, _ := strings.Cut(broke, " ")
			out[rule]++
		}
	}
	return out
}

func drop(as []arrival, before time.Time) []arrival {
	i := 0
	for i < len(as) && !as[i].at.After(before) {
		i++
	}
	return as[i:]
}

func sum(as []arrival) int {
	n := 0
	for _, a := range as {
		n += a.cost
	}
	return n
}

// Handler serves the provider over HTTP: GET /hist?key=&ident=&cost=&hold=
// (&grant_us=, the Redis time of the grant, for the skew) is one request,
// held open for hold (a duration) and answered 200; a request that breaks
// a rule is answered 429 and its connection dropped. GET /live?cost= is a
// live request (AdmitLive), answered at once. GET /stats is Stats.
func (p *Provider) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /hist", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		cost, err := strconv.Atoi(q.Get("cost"))
		hold, err2 := time.ParseDuration(q.Get("hold"))
		if err != nil || err2 != nil || cost < 1 {
			http.Error(w, "cost (an integer ≥ 1) and hold (a duration) are required", http.StatusBadRequest)
			return
		}
		key, ident := q.Get("key"), q.Get("ident")
		grantUS, _ := strconv.ParseInt(q.Get("grant_us"), 10, 64)
		p.granted(grantUS, key, ident, cost)
		if broke := p.Admit(key, ident, cost); broke != "" {
			w.Header().Set("Connection", "close") // the broker drops the connection
			http.Error(w, "pacing violation: "+broke, http.StatusTooManyRequests)
			return
		}
		defer p.Done(cost)
		time.Sleep(hold)
		w.WriteHeader(http.StatusOK)
	})
	mux.HandleFunc("GET /live", func(w http.ResponseWriter, r *http.Request) {
		cost, err := strconv.Atoi(r.URL.Query().Get("cost"))
		if err != nil || cost < 1 {
			http.Error(w, "cost (an integer ≥ 1) is required", http.StatusBadRequest)
			return
		}
		if broke := p.AdmitLive(cost); broke != "" {
			w.Header().Set("Connection", "close")
			http.Error(w, "pacing violation: "+broke, http.StatusTooManyRequests)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(p.Stats())
	})
	return mux
}
