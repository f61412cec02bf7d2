package feedback

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/sluice-dev/sluice/pkg/state"
)

// Rate is what a Handler steers: the shared rate budget of each provider,
// as the seed's RateCoordinator protocol (set the pressure level, set the
// budget scale), with the scale set by compare-and-set so that handlers
// sharing the budget never overwrite a change they have not seen, and a
// place to record the scale a shadow-mode Handler would set.
// limiter.FeedbackRate provides one over a limiter.Limiter, keeping
// everything in Redis, one round trip per call.
type Rate interface {
	// SetPressure records the pressure level that applies to provider.
	SetPressure(ctx context.Context, provider string, level state.Level) error
	// CompareAndSetScale sets provider's scale factor, in [0, 1], for
	// everyone, if the scale in force is still old; otherwise (a
	// conflict) it changes nothing. Either way it returns the scale in
	// force after the call and when it last changed (the zero time if
	// never). With old == scale it changes nothing: a read.
	CompareAndSetScale(ctx context.Context, provider string, old, scale float64) (inForce float64, changedAt time.Time, err error)
	// SetShadowScale records scale as the one a shadow-mode Handler would
	// set, without changing the rate.
	SetShadowScale(ctx context.Context, provider string, scale float64) error
}

// Handler turns pressure events into the pressure level and scale factor of
// the providers it governs. It keeps the last event of every coordinator
// (repeated sequence numbers are ignored, and older ones until the
// coordinator has been silent for Hold), asks the Policy for each
// live one (a StatefulPolicy once per event, with its memory of that
// coordinator), combines, and moves the scale towards the result: down at
// once; up as Options.Rise shapes it, whatever the policy. It sets the
// shared scale by compare-and-set on the scale it last saw in force, and
// never raises a shared scale that was changed (by another handler, an
// operator) after its own newest news: an accepted event, an expiry, or its
// creation. It is safe for concurrent use: Handle may be called from any
// goroutine (a Subscriber's deliveries, an HTTP receiver), while Run drives
// time-based progress.
type Handler struct {
	rate Rate
	o    Options // with defaults; o.Rise resolved
	log  *slog.Logger
	m    *metrics

	mu     sync.Mutex
	coords map[string]*coordState
	provs  map[string]*provState
	news   time.Time // when the last event was accepted, a coordinator expired, or the Handler was made
	evals  uint64    // evaluations so far: a StatefulPolicy's step is redone only within its own
}

type coordState struct {
	last      Event
	seen      time.Time // local time of the last accepted event
	forgotten bool      // expired under ExpiryForget: kept only for its seq, so that a re-read report does not revive it
	// The reports a Redis subscriber's snapshot may deliver again, which
	// are never news: report, the last report accepted (samples move last
	// past it), and gone, the last report of the incarnation this one
	// replaced (a bogus seq, stored until this incarnation's first report
	// overwrites it). A delivery again has the same seq and ts.
	report, gone Event
	// With a StatefulPolicy, per provider: its memory of the coordinator,
	// and the scale it asked for at the last event (each event counts once).
	ctl map[string]*controlled
}

// controlled is a StatefulPolicy's memory of one coordinator for one
// provider, and the scale it asked for at the event it last saw (m.Last).
type controlled struct {
	m      PolicyState
	want   float64
	before PolicyState // m before that event's step, to redo it
	eval   uint64      // the evaluation that stepped it
}

// provState is what this Handler last did and saw for a provider.
type provState struct {
	level     state.Level // last level written ("" before the first, which no level equals)
	scale     float64     // last scale set (or shadowed)
	changedAt time.Time   // when (local time)
	known     bool        // scale was set
	shared    float64     // the shared scale in force, as the last call saw it (1 before the first)
	sharedAt  time.Time   // when it last changed (Redis time; zero if never)
	rise      riser       // the rise shaping
	logged    float64     // the scale at the last Info line
}

// NewHandler returns a Handler steering rate. A bad option is an error that
// names it and its allowed values (Options.Validate).
func NewHandler(rate Rate, o Options) (*Handler, error) {
	if rate == nil {
		return nil, errors.New("feedback: handler needs a Rate")
	}
	if err := o.Validate(); err != nil {
		return nil, err
	}
	o = o.withDefaults()
	m, err := newMetrics(o.Registerer)
	if err != nil {
		return nil, err
	}
	m.shadow.Set(b2f(o.Shadow))
	return &Handler{
		rate: rate, o: o, m: m, news: o.Clock(),
		log:    o.Logger.With("component", "feedback"),
		coords: map[string]*coordState{},
		provs:  map[string]*provState{},
	}, nil
}

// Handle takes one event. An invalid event is refused with a *FieldError.
// An event that is not news is ignored (nil): a seq equal to the
// coordinator's last, or a report it already took (the same seq and ts: a
// Redis snapshot delivers the stored report again); a lower seq while the
// coordinator's last event is younger than Hold (stale). After Hold of
// silence a lower seq counts: a new incarnation. Handle then re-evaluates
// every provider and returns the errors of the Rate for each provider that
// failed, joined (after trying all providers).
func (h *Handler) Handle(ctx context.Context, e Event) error {
	if err := e.Validate(); err != nil {
		h.m.ignored.WithLabelValues("invalid").Inc()
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.o.Clock()
	if e.TS.IsZero() {
		e.TS = now
	}
	c := h.coords[e.CoordinatorID]
	if reason := c.stale(e, now, h.o.Hold); reason != "" {
		h.m.ignored.WithLabelValues(reason).Inc()
		return nil
	}
	next := &coordState{last: e, seen: now}
	switch {
	case c == nil:
	case e.Seq > c.last.Seq && !c.forgotten: // the same incarnation goes on: the controller's memory too
		next.ctl, next.report, next.gone = c.ctl, c.report, c.gone
	default: // a new incarnation
		next.gone = c.report
		if e.Seq < c.last.Seq && !c.forgotten {
			h.log.Warn("coordinator's seq went back after it was silent for the hold: a restart, or the end of a bogus seq; following it",
				"coordinator", e.CoordinatorID, "from", c.last.Seq, "to", e.Seq, "silent", now.Sub(c.seen))
		}
	}
	if !e.IsSample() {
		next.report = e
	}
	h.coords[e.CoordinatorID] = next
	h.news = now
	h.m.events.WithLabelValues(string(e.Level)).Inc()
	return h.reconcile(ctx, now)
}

// same reports whether e and o are one event delivered twice: the same
// seq and ts.
func (e Event) same(o Event) bool { return e.Seq == o.Seq && e.TS.Equal(o.TS) }

// stale says why e is not news for the coordinator whose state is c (nil
// before its first event): "duplicate", "stale", or "" when it is news.
func (c *coordState) stale(e Event, now time.Time, hold time.Duration) string {
	switch {
	case c == nil:
		return ""
	case e.Seq == c.last.Seq || e.same(c.report) || e.same(c.gone):
		return "duplicate"
	case e.Seq < c.last.Seq && now.Sub(c.seen) < hold:
		return "stale"
	}
	return ""
}

// Run re-evaluates every Tick until ctx ends, so that a pending rise
// happens after its dwell, a ramp proceeds, silent coordinators expire and
// the scale is set again if something else changed it. It returns ctx.Err().
func (h *Handler) Run(ctx context.Context) error {
	t := time.NewTicker(h.o.Tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		if err := h.Reevaluate(ctx); err != nil && ctx.Err() == nil {
			h.log.Warn("feedback: re-evaluation failed", "err", err)
		}
	}
}

// Reevaluate does now what Run does every Tick.
func (h *Handler) Reevaluate(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.reconcile(ctx, h.o.Clock())
}

// report is one live coordinator's say: its state and the event that
// counts for it (its last, or what Expiry makes of it).
type report struct {
	c       *coordState
	e       Event
	expired bool // counted as Expiry says, not by its own samples
}

// live returns the reports of the live coordinators and the worst level
// among them; h.mu is held. Expired coordinators are handled as
// Options.Expiry says.
func (h *Handler) live(now time.Time) ([]report, state.Level) {
	level := state.OK
	out := make([]report, 0, len(h.coords))
	for id, c := range h.coords {
		r := report{c: c, e: c.last}
		if c.forgotten {
			continue
		}
		if now.Sub(c.seen) > h.o.CoordinatorTTL {
			switch h.o.Expiry {
			case ExpiryForget:
				c.forgotten = true
				h.news = now
				h.m.expired.Inc()
				h.log.Warn("coordinator stopped reporting; forgotten", "coordinator", id, "last_level", r.e.Level)
				continue
			case ExpirySoft, ExpiryHard:
				r.e.Level, r.expired = state.Level(h.o.Expiry), true
			}
		}
		if r.e.Level.Rank() > level.Rank() {
			level = r.e.Level
		}
		out = append(out, r)
	}
	h.m.live.Set(float64(len(out)))
	return out, level
}

// target combines what the reports call for provider p, whose scale in
// force is cur; h.mu is held. A StatefulPolicy is asked once per new event;
// with redo, the steps this evaluation made are made again on cur (the
// scale in force was not the one they saw).
func (h *Handler) target(p string, reports []report, cur float64, redo bool) float64 {
	if len(reports) == 0 {
		return clampUnit(h.o.Policy.Scale(Event{Level: state.OK, Capacity: 1}))
	}
	scales := make([]float64, 0, len(reports))
	for _, r := range reports {
		scales = append(scales, clampUnit(h.ask(p, r, cur, redo)))
	}
	if h.o.Combine == CombineMean {
		sum := 0.0
		for _, s := range scales {
			sum += s
		}
		return sum / float64(len(scales))
	}
	return slices.Min(scales)
}

// ask returns the scale report r calls for: the policy's Scale, or a
// StatefulPolicy's step on a new event (its answer to the last one
// otherwise).
func (h *Handler) ask(p string, r report, cur float64, redo bool) float64 {
	sp, ok := h.o.Policy.(StatefulPolicy)
	if !ok || r.expired {
		return h.o.Policy.Scale(r.e)
	}
	k := r.c.memory(p)
	switch {
	case k.m.Last.Seq != r.e.Seq: // a new event (seq >= 1): one step of the policy
		k.before, k.eval = k.m, h.evals
	case redo && k.eval == h.evals:
		k.m = k.before
	default:
		return k.want
	}
	k.want = sp.Control(&k.m, r.e, cur)
	k.m.Last = r.e
	return k.want
}

// memory returns the StatefulPolicy's memory of c for provider p.
func (c *coordState) memory(p string) *controlled {
	if c.ctl == nil {
		c.ctl = map[string]*controlled{}
	}
	k := c.ctl[p]
	if k == nil {
		k = &controlled{}
		c.ctl[p] = k
	}
	return k
}

// reconcile moves every provider towards the target; h.mu is held.
func (h *Handler) reconcile(ctx context.Context, now time.Time) error {
	h.evals++
	reports, level := h.live(now)
	var errs []error
	for _, p := range h.o.Providers {
		if err := h.apply(ctx, p, level, reports, now); err != nil {
			h.m.errors.Inc()
			errs = append(errs, fmt.Errorf("feedback: provider %q: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

func (h *Handler) apply(ctx context.Context, p string, level state.Level, reports []report, now time.Time) error {
	ps := h.provs[p]
	if ps == nil {
		ps = &provState{scale: 1, shared: 1, logged: -1}
		h.provs[p] = ps
	}
	// The scale first: it is what every replica enforces, so a level change
	// reaches them one round trip sooner; the level, which only reports,
	// follows.
	if err := h.applyScale(ctx, p, ps, level, reports, now); err != nil {
		return err
	}
	if ps.level != level {
		if err := h.rate.SetPressure(ctx, p, level); err != nil {
			return err
		}
		ps.level = level
		h.m.level.WithLabelValues(p).Set(float64(level.Rank()))
	}
	return nil
}

// step is one decision on a provider's scale: from cur, in force since
// since, towards target, the scale to set next.
type step struct {
	cur, target, next float64
	since             time.Time
}

// decide makes the decision for p on the scale in force as ps last saw it
// (a shadow Handler: its own); h.mu is held.
func (h *Handler) decide(p string, ps *provState, reports []report, now time.Time, redo bool) step {
	s := step{cur: ps.shared, since: ps.sharedAt}
	if h.o.Shadow {
		s.cur, s.since = ps.scale, ps.changedAt
	}
	s.target = h.target(p, reports, s.cur, redo)
	h.m.target.WithLabelValues(p).Set(s.target)
	s.next = ps.rise.next(h.o.Rise, s.cur, s.since, s.target, now)
	if s.next > s.cur && s.cur != ps.scale && !h.news.After(s.since) {
		// Another replica's handler changed the shared scale after the
		// last news this one had: it may know better. Do not raise it
		// until this handler hears something newer.
		ps.rise.refund(s.next - s.cur)
		s.next = s.cur
	}
	return s
}

// applyScale moves p's shared scale towards what the reports call for, by
// one compare-and-set on the scale last seen in force (a read when nothing
// changes). On a conflict (another handler or an operator changed it) it
// decides once more on the scale in force; a second conflict waits for the
// next evaluation. ps is p's state, and h.mu is held.
func (h *Handler) applyScale(ctx context.Context, p string, ps *provState, level state.Level, reports []report, now time.Time) error {
	if h.o.Shadow {
		return h.shadowScale(ctx, p, ps, level, reports, now)
	}
	s := h.decide(p, ps, reports, now, false)
	for try := 0; ; try++ {
		inForce, at, err := h.rate.CompareAndSetScale(ctx, p, s.cur, s.next)
		if err != nil {
			return err
		}
		ps.shared, ps.sharedAt = inForce, at
		if inForce == s.next || try == 1 {
			break
		}
		if s.next > s.cur {
			ps.rise.refund(s.next - s.cur)
		}
		s = h.decide(p, ps, reports, now, true)
	}
	if ps.shared == s.next && s.next != s.cur {
		h.changed(ctx, p, ps, level, s, now)
	}
	if ps.shared == s.next {
		ps.scale, ps.known = s.next, true
	}
	h.m.applied.WithLabelValues(p).Set(ps.shared)
	return nil
}

// shadowScale is applyScale for a shadow Handler: the scale it would set
// is recorded by Rate.SetShadowScale, beside the scale in force.
func (h *Handler) shadowScale(ctx context.Context, p string, ps *provState, level state.Level, reports []report, now time.Time) error {
	s := h.decide(p, ps, reports, now, false)
	if !ps.known || s.next != s.cur {
		if err := h.rate.SetShadowScale(ctx, p, s.next); err != nil {
			return err
		}
	}
	if s.next != s.cur {
		h.changed(ctx, p, ps, level, s, now)
	}
	ps.scale, ps.known = s.next, true
	h.m.applied.WithLabelValues(p).Set(s.next)
	return nil
}

// changed counts and logs a change of p's scale made by s: one Info line
// per tenth of the range (or a pause, or a resumption), the rest at debug
// level, since a policy may move the scale at every sample.
func (h *Handler) changed(ctx context.Context, p string, ps *provState, level state.Level, s step, now time.Time) {
	dir := "down"
	if s.next > s.cur {
		dir = "up"
	}
	h.m.adjustments.WithLabelValues(p, dir).Inc()
	lvl := slog.LevelInfo
	if math.Abs(s.next-ps.logged) < 0.1 && (s.next == 0) == (ps.logged == 0) {
		lvl = slog.LevelDebug
	} else {
		ps.logged = s.next
	}
	h.log.Log(ctx, lvl, "feedback adjusted scale", "provider", p, "level", level, "from", s.cur, "to", s.next,
		"target", s.target, "shadow", h.o.Shadow, "coordinators", len(h.coords))
	ps.changedAt = now
}

// riser shapes the rises of one provider's scale (Options.Rise): a dwell
// since the last change, a largest step, and a budget of rise refilled at
// the rate up to half a second's worth, spent by rises. Decreases cost
// nothing, so the budget limits how fast the scale climbs, however unevenly
// events and ticks are spaced, without clipping a policy's small moves up
// and down.
type riser struct {
	left float64
	at   time.Time // of the last refill; zero before the first evaluation
}

// maxRampStep is how much time's worth of rise the budget holds.
const maxRampStep = 500 * time.Millisecond

// next returns the scale to set, moving from cur (unchanged since
// changedAt, zero if never) towards target under r: a decrease at once; an
// increase once r.Dwell has passed since the change, by at most r.MaxStep
// and what the budget holds. The result is rounded to 1e-6.
func (b *riser) next(r Rise, cur float64, changedAt time.Time, target float64, now time.Time) float64 {
	if r.Rate > 0 && !b.at.IsZero() && now.After(b.at) {
		b.left = min(r.Rate*maxRampStep.Seconds(), b.left+r.Rate*now.Sub(b.at).Seconds())
	}
	if b.at.IsZero() || now.After(b.at) {
		b.at = now
	}
	switch {
	case target <= cur:
		return round6(target)
	case r.Dwell > 0 && !changedAt.IsZero() && now.Sub(changedAt) < r.Dwell:
		return cur
	}
	up := min(target-cur, r.MaxStep)
	if r.Rate > 0 {
		up = min(up, b.left)
	}
	next := max(cur, round6(cur+up))
	if r.Rate > 0 {
		b.left = max(0, b.left-(next-cur))
	}
	return next
}

// refund gives back a rise that was not made.
func (b *riser) refund(r float64) { b.left += r }

func round6(f float64) float64 { return math.Round(f*1e6) / 1e6 }

func clampUnit(f float64) float64 {
	if math.IsNaN(f) {
		return 0
	}
	return min(max(f, 0), 1)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
