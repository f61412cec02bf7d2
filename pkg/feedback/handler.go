package feedback

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-dev/sluice/pkg/internal/opts"
	"github.com/sluice-dev/sluice/pkg/state"
)

// Rate is what a Handler steers: the shared rate budget of each provider,
// as the seed's RateCoordinator protocol (set the pressure level, set the
// budget scale) plus what the Handler needs to share that budget with other
// handlers: a read of the scale in force and of when it last changed, and a
// place to record the scale a shadow-mode Handler would set. pipeline
// provides one over a limiter.Limiter, keeping everything in Redis.
type Rate interface {
	// SetPressure records the pressure level that applies to provider.
	SetPressure(ctx context.Context, provider string, level state.Level) error
	// SetBudgetScale sets provider's scale factor, in [0, 1], for everyone.
	SetBudgetScale(ctx context.Context, provider string, scale float64) error
	// SetShadowScale records scale as the one a shadow-mode Handler would
	// set, without changing the rate.
	SetShadowScale(ctx context.Context, provider string, scale float64) error
	// BudgetScale returns provider's scale in force and when it last
	// changed (the zero time if never), as every handler sees it.
	BudgetScale(ctx context.Context, provider string) (scale float64, changedAt time.Time, err error)
}

// Combine says how the scales wanted for several live coordinators combine.
type Combine string

// Ways to combine.
const (
	CombineMin  Combine = "min"  // the most loaded coordinator wins (default)
	CombineMean Combine = "mean" // the average of their scales
)

// Expiry says what a coordinator that stopped reporting (for longer than
// CoordinatorTTL) counts as.
type Expiry string

// What an expired coordinator counts as.
const (
	ExpiryForget Expiry = "forget" // nothing: the others decide; with none left, ok (default)
	ExpiryHold   Expiry = "hold"   // its last report, until it reports again
	ExpirySoft   Expiry = "soft"   // soft pressure, until it reports again
	ExpiryHard   Expiry = "hard"   // hard pressure, until it reports again
)

// Options configure a Handler. Only Providers is required: every other zero
// field takes the default its comment gives (nil Registerer: no metrics).
type Options struct {
	// Providers whose budget the Handler scales; at least one.
	Providers []string
	// Policy maps pressure to a scale; default DefaultPIPolicy, which holds
	// the queue at half its capacity. DefaultStepPolicy is the seed's (ok
	// 1, soft 0.5, hard 0).
	Policy Policy
	// Combine is how several coordinators combine; default CombineMin.
	Combine Combine
	// Dwell is the time the scale must have stayed unchanged before it may
	// rise again; decreases apply at once. Default 5s. It cannot be turned
	// off: it is what keeps the loop from thrashing. A StatefulPolicy policy
	// (DefaultPIPolicy) ramps at its RiseRate instead: Dwell and MaxRise do
	// not apply to it.
	Dwell time.Duration
	// MaxRise is the largest increase of the scale in one step, in (0, 1]:
	// a soft start, from a pause to full speed in 1/MaxRise steps, one per
	// Dwell. Default 1: straight to the target.
	MaxRise float64
	// CoordinatorTTL is how long a coordinator counts as live after its last
	// report; default 10s. Expiry says what it counts as afterwards; default
	// ExpiryForget.
	CoordinatorTTL time.Duration
	Expiry         Expiry
	// Hold is how long a coordinator's last accepted event holds against a
	// lower seq: until then a lower seq is stale; after that much silence
	// it is a new incarnation (a restart numbering from 1 again, or the
	// real coordinator after a bogus high seq), so no seq silences a
	// coordinator for longer than Hold and its next event. Default
	// DefaultHold (3s), or CoordinatorTTL if shorter; at most
	// CoordinatorTTL. Keep it above the coordinators' longest gap between
	// events (the Go coordinator's heartbeat, 2s).
	Hold time.Duration
	// Shadow computes and reports (logs, metrics, Rate.SetShadowScale) the
	// scale it would set, and sets nothing but the pressure level. Default
	// off.
	Shadow bool
	// Tick is how often Run re-evaluates (dwell and ramp progress, expiry,
	// re-assertion of the scale); default 1s.
	Tick time.Duration
	// Clock is the Handler's time; default time.Now.
	Clock func() time.Time
	// Logger receives one line per adjustment; default slog.Default().
	Logger *slog.Logger
	// Registerer receives the metrics; nil registers none.
	Registerer prometheus.Registerer
}

// Handler turns pressure events into the pressure level and scale factor of
// the providers it governs. It keeps the last event of every coordinator
// (repeated sequence numbers are ignored, and older ones until the
// coordinator has been silent for Hold), asks the Policy for each
// live one (a StatefulPolicy once per event, with its memory of that
// coordinator), combines, and moves the scale towards the result: down at
// once; up only after Dwell and by at most MaxRise per step, or under a
// StatefulPolicy at its RiseRate. It never raises a
// shared scale that was changed (by another handler, an operator) after its
// own newest news: an accepted event, an expiry, or its creation. It is safe
// for concurrent use: Handle may be called from any goroutine (a
// Subscriber's deliveries, an HTTP receiver), while Run drives time-based
// progress.
type Handler struct {
	rate Rate
	o    Options
	log  *slog.Logger
	m    *metrics

	mu     sync.Mutex
	coords map[string]*coordState
	provs  map[string]*provState
	news   time.Time // when the last event was accepted, a coordinator expired, or the Handler was made
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
	// With a StatefulPolicy, per provider: its memory of the coordinator, and
	// the scale it asked for at the last event (each event counts once).
	ctl map[string]*controlled
}

// controlled is a StatefulPolicy's memory of one coordinator for one provider,
// and the scale it asked for at the event it last saw (m.Last).
type controlled struct {
	m    PolicyState
	want float64
}

// provState is what this Handler last did for a provider.
type provState struct {
	level     state.Level // last level written ("" before the first, which no level equals)
	scale     float64     // last scale set (or shadowed)
	changedAt time.Time   // when (local time)
	known     bool        // scale was set
	rise      riseBudget  // a StatefulPolicy's ramp
	logged    float64     // a StatefulPolicy's scale at the last Info line
}

// NewHandler returns a Handler steering rate. A bad option is an error that
// names it and its allowed values.
func NewHandler(rate Rate, o Options) (*Handler, error) {
	if rate == nil {
		return nil, errors.New("feedback: handler needs a Rate")
	}
	if len(o.Providers) == 0 {
		return nil, errors.New("feedback: handler needs at least one provider (Options.Providers)")
	}
	if o.Policy == nil {
		o.Policy = DefaultPIPolicy
	}
	if v, ok := o.Policy.(interface{ Validate() error }); ok {
		if err := v.Validate(); err != nil {
			return nil, err
		}
	}
	switch o.Combine {
	case "":
		o.Combine = CombineMin
	case CombineMin, CombineMean:
	default:
		return nil, fmt.Errorf("feedback: combine=%q: must be min or mean", o.Combine)
	}
	switch o.Expiry {
	case "":
		o.Expiry = ExpiryForget
	case ExpiryForget, ExpiryHold, ExpirySoft, ExpiryHard:
	default:
		return nil, fmt.Errorf("feedback: expiry=%q: must be forget, hold, soft or hard", o.Expiry)
	}
	if o.MaxRise == 0 {
		o.MaxRise = 1
	}
	if !(o.MaxRise > 0 && o.MaxRise <= 1) {
		return nil, fmt.Errorf("feedback: max_rise=%v: must be in (0, 1] (1: no ramp)", o.MaxRise)
	}
	if err := opts.Check(
		opts.Positive("dwell", &o.Dwell, 5*time.Second),
		opts.Positive("coordinator_ttl", &o.CoordinatorTTL, 10*time.Second),
		opts.Positive("tick", &o.Tick, time.Second),
	); err != nil {
		return nil, fmt.Errorf("feedback: %w", err)
	}
	hold, err := HoldFor(o.Hold, o.CoordinatorTTL, "coordinator_ttl")
	if err != nil {
		return nil, fmt.Errorf("feedback: %w", err)
	}
	o.Hold = hold
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
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
// force is cur; h.mu is held. A StatefulPolicy is asked once per new event.
func (h *Handler) target(p string, reports []report, cur float64) float64 {
	ctl, _ := h.o.Policy.(StatefulPolicy)
	if len(reports) == 0 {
		return clampUnit(h.o.Policy.Scale(Event{Level: state.OK, Capacity: 1}))
	}
	scales := make([]float64, 0, len(reports))
	for _, r := range reports {
		s := 0.0
		switch {
		case ctl == nil || r.expired:
			s = h.o.Policy.Scale(r.e)
		default:
			if r.c.ctl == nil {
				r.c.ctl = map[string]*controlled{}
			}
			k := r.c.ctl[p]
			if k == nil {
				k = &controlled{}
				r.c.ctl[p] = k
			}
			if k.m.Last.Seq != r.e.Seq { // a new event (seq >= 1): one step of the controller
				k.want = ctl.Control(&k.m, r.e, cur)
				k.m.Last = r.e
			}
			s = k.want
		}
		scales = append(scales, clampUnit(s))
	}
	out := scales[0]
	switch h.o.Combine {
	case CombineMean:
		sum := 0.0
		for _, s := range scales {
			sum += s
		}
		out = sum / float64(len(scales))
	default:
		for _, s := range scales {
			out = min(out, s)
		}
	}
	return out
}

// reconcile moves every provider towards the target; h.mu is held.
func (h *Handler) reconcile(ctx context.Context, now time.Time) error {
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
		ps = &provState{scale: 1, logged: -1}
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

// applyScale moves p's shared scale towards what the reports call for; ps
// is p's state, and h.mu is held.
func (h *Handler) applyScale(ctx context.Context, p string, ps *provState, level state.Level, reports []report, now time.Time) error {
	cur, since := ps.scale, ps.changedAt
	if !h.o.Shadow { // the shared scale: another handler or an operator may have changed it
		var err error
		if cur, since, err = h.rate.BudgetScale(ctx, p); err != nil {
			return err
		}
	}
	target := h.target(p, reports, cur)
	h.m.target.WithLabelValues(p).Set(target)
	var next float64
	ctl, isCtl := h.o.Policy.(StatefulPolicy)
	if isCtl {
		next = ps.rise.ramp(cur, target, now, ctl.RiseRate())
	} else {
		next = govern(cur, since, target, now, h.o.Dwell, h.o.MaxRise)
	}
	if next > cur && cur != ps.scale && !h.news.After(since) {
		// Another replica's handler changed the shared scale after the
		// last news this one had: it may know better. Do not raise it
		// until this handler hears something newer.
		ps.rise.refund(next - cur)
		next = cur
	}
	if ps.known && next == cur {
		// Nothing to do; the gauge shows the shared scale in force, even
		// when another handler set it.
		h.m.applied.WithLabelValues(p).Set(cur)
		return nil
	}
	set := h.rate.SetBudgetScale
	if h.o.Shadow {
		set = h.rate.SetShadowScale
	}
	if err := set(ctx, p, next); err != nil {
		return err
	}
	if next != cur {
		dir := "down"
		if next > cur {
			dir = "up"
		}
		h.m.adjustments.WithLabelValues(p, dir).Inc()
		// A StatefulPolicy moves the scale at every sample: one Info line per
		// tenth of the range (or a pause, or a resumption), the rest at
		// debug level.
		lvl := slog.LevelInfo
		if isCtl && math.Abs(next-ps.logged) < 0.1 && (next == 0) == (ps.logged == 0) {
			lvl = slog.LevelDebug
		} else {
			ps.logged = next
		}
		h.log.Log(ctx, lvl, "feedback adjusted scale", "provider", p, "level", level, "from", cur, "to", next,
			"target", target, "shadow", h.o.Shadow, "coordinators", len(h.coords))
		ps.changedAt = now
	}
	ps.scale, ps.known = next, true
	h.m.applied.WithLabelValues(p).Set(next)
	return nil
}

// riseBudget is a StatefulPolicy's ramp: a bucket of allowed rise, refilled at
// the rise rate up to half a second's worth, spent by rises. Decreases cost
// nothing, so the ramp limits how fast the scale climbs, however unevenly
// events and ticks are spaced, without clipping a controller's small moves
// up and down; and the scale never rises by more than half the rate at once.
type riseBudget struct {
	left float64
	at   time.Time // of the last refill; zero before the first evaluation
}

// maxRampStep is how much time's worth of rise the budget holds.
const maxRampStep = 500 * time.Millisecond

// ramp returns the scale to set, moving from cur towards target: a
// decrease at once; an increase as far as the budget allows. The result is
// rounded to 1e-6.
func (b *riseBudget) ramp(cur, target float64, now time.Time, rate float64) float64 {
	round := func(f float64) float64 { return math.Round(f*1e6) / 1e6 }
	if !b.at.IsZero() && now.After(b.at) {
		b.left = min(rate*maxRampStep.Seconds(), b.left+rate*now.Sub(b.at).Seconds())
	}
	if b.at.IsZero() || now.After(b.at) {
		b.at = now
	}
	if target <= cur {
		return round(target)
	}
	next := round(min(target, cur+b.left))
	b.left = max(0, b.left-(next-cur))
	return max(cur, next)
}

// refund gives back a rise that was not made.
func (b *riseBudget) refund(r float64) { b.left += r }

// govern returns the scale to set, moving from cur (unchanged since
// changedAt) towards target: a decrease at once; an increase only once
// dwell has passed since the last change, by at most maxRise.
func govern(cur float64, changedAt time.Time, target float64, now time.Time, dwell time.Duration, maxRise float64) float64 {
	switch {
	case target <= cur:
		return target
	case !changedAt.IsZero() && now.Sub(changedAt) < dwell:
		return cur
	case target-cur > maxRise:
		return math.Round((cur+maxRise)*1e9) / 1e9
	}
	return target
}

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
