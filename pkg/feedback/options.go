package feedback

import (
	"cmp"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-dev/sluice/pkg/internal/opts"
)

// Combine says how the scales wanted for several live coordinators combine.
type Combine string

// Ways to combine.
const (
	CombineMin  Combine = "min"  // the most loaded coordinator wins (default)
	CombineMean Combine = "mean" // the average of their scales: one loaded store of several slows the fleet less
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

// Rise shapes every rise of the scale, under every policy; a decrease
// always applies at once. A rise waits until the scale has been unchanged
// for Dwell, then goes up by at most MaxStep at once and at most Rate per
// second: a budget of rise refilled at Rate and holding half a second's
// worth, spent by rises, so that one step rises by at most Rate/2 however
// unevenly events and ticks come, and a policy's small moves up and down
// are not clipped. In a resolved Rise a zero Dwell or Rate is none.
type Rise struct {
	// Dwell is the time the scale must have stayed unchanged before it
	// may rise again, in [0, 24h]; it keeps a policy that jumps between
	// levels from thrashing.
	Dwell time.Duration
	// MaxStep is the largest rise in one step, in (0, 1]: a soft start,
	// from a pause to full speed in 1/MaxStep steps, one per Dwell.
	MaxStep float64
	// Rate is the largest rise per second, in (0, 1]: a ramp.
	Rate float64
}

// DefaultRise is the rise shaping of a policy that does not propose one
// (StepPolicy, ProportionalPolicy, a PolicyFunc): a 5 s dwell, then straight
// to the target.
var DefaultRise = Rise{Dwell: 5 * time.Second, MaxStep: 1}

// RiseProposer is a Policy designed with a rise shaping of its own
// (PIPolicy: a ramp at its Rise per second, no dwell). Options.Rise's zero
// fields take ProposedRise's instead of DefaultRise's.
type RiseProposer interface {
	Policy
	ProposedRise() Rise
}

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
	// Rise shapes every rise of the scale, whatever the policy. Each zero
	// field takes the policy's default: a RiseProposer's ProposedRise
	// (DefaultPIPolicy: a ramp of 0.5 per second, no dwell, MaxStep 1),
	// else DefaultRise (a 5 s dwell, MaxStep 1, no ramp). So a dwell cannot
	// be turned off where the policy has one: it is what keeps the loop
	// from thrashing.
	Rise Rise
	// CoordinatorTTL is how long a coordinator counts as live after its last
	// report, in (0, 24h]; default 10s. Expiry says what it counts as
	// afterwards; default ExpiryForget.
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

const maxDuration = 24 * time.Hour

// Validate checks every field's range (a zero field, which takes its
// default, passes). An error is a *opts.Error wrapped with the package
// name: its Field is the option's setting name (dwell, max_rise,
// rise_rate, coordinator_ttl, hold, tick, combine, expiry, providers,
// the policy's own error names its field), its Rule the allowed range, so that pkg/config reports it
// against its key. NewHandler calls it.
func (o Options) Validate() error {
	if v, ok := o.Policy.(interface{ Validate() error }); ok {
		if err := v.Validate(); err != nil {
			return err // names the policy's field: "feedback: pi policy kp=..."
		}
	}
	for _, check := range []func() error{o.checkProviders, o.checkChoices, o.Rise.validate, o.checkTimes} {
		if err := check(); err != nil {
			return fmt.Errorf("feedback: %w", err)
		}
	}
	return nil
}

func (o Options) checkProviders() error {
	if len(o.Providers) == 0 {
		return &opts.Error{Field: "providers", Value: "[]", Rule: "at least one provider (Options.Providers)"}
	}
	return nil
}

func (o Options) checkChoices() error {
	switch o.Combine {
	case "", CombineMin, CombineMean:
	default:
		return &opts.Error{Field: "combine", Value: fmt.Sprintf("%q", o.Combine), Rule: "one of min, mean"}
	}
	switch o.Expiry {
	case "", ExpiryForget, ExpiryHold, ExpirySoft, ExpiryHard:
	default:
		return &opts.Error{Field: "expiry", Value: fmt.Sprintf("%q", o.Expiry), Rule: "one of forget, hold, soft, hard"}
	}
	return nil
}

func (o Options) checkTimes() error {
	const rule = "a duration like 5s or 250ms, in (0, 24h] (0 takes the default, %v)"
	for _, d := range []struct {
		field string
		v     time.Duration
		def   time.Duration
	}{{"coordinator_ttl", o.CoordinatorTTL, 10 * time.Second}, {"tick", o.Tick, time.Second}} {
		if d.v < 0 || d.v > maxDuration {
			return &opts.Error{Field: d.field, Value: d.v, Rule: fmt.Sprintf(rule, d.def)}
		}
	}
	_, err := HoldFor(o.Hold, cmp.Or(o.CoordinatorTTL, 10*time.Second), "coordinator_ttl")
	return err
}

// validate checks the ranges of r as an option (zero fields pass).
func (r Rise) validate() error {
	switch {
	case r.Dwell < 0 || r.Dwell > maxDuration:
		return &opts.Error{Field: "dwell", Value: r.Dwell, Rule: "a duration like 5s or 250ms, in (0, 24h] (0 takes the policy's)"}
	case !(r.MaxStep >= 0 && r.MaxStep <= 1):
		return &opts.Error{Field: "max_rise", Value: r.MaxStep, Rule: "in (0, 1] (1: straight to the target; 0 takes the policy's)"}
	case !(r.Rate >= 0 && r.Rate <= 1):
		return &opts.Error{Field: "rise_rate", Value: r.Rate, Rule: "in (0, 1], scale per second (0 takes the policy's)"}
	}
	return nil
}

// over returns r with its zero fields taken from d.
func (r Rise) over(d Rise) Rise {
	return Rise{Dwell: cmp.Or(r.Dwell, d.Dwell), MaxStep: cmp.Or(r.MaxStep, d.MaxStep), Rate: cmp.Or(r.Rate, d.Rate)}
}

// RiseFor returns the rise shaping a Handler with options o applies: o.Rise
// over the policy's defaults (see Options.Rise).
func (o Options) RiseFor() Rise {
	d := DefaultRise
	if p, ok := o.Policy.(RiseProposer); ok {
		d = p.ProposedRise()
	}
	return o.Rise.over(d)
}

// withDefaults returns o with every zero field set to its default; o is
// valid.
func (o Options) withDefaults() Options {
	if o.Policy == nil {
		o.Policy = DefaultPIPolicy
	}
	o.Rise = o.RiseFor()
	o.Combine = cmp.Or(o.Combine, CombineMin)
	o.Expiry = cmp.Or(o.Expiry, ExpiryForget)
	o.CoordinatorTTL = cmp.Or(o.CoordinatorTTL, 10*time.Second)
	o.Tick = cmp.Or(o.Tick, time.Second)
	o.Hold, _ = HoldFor(o.Hold, o.CoordinatorTTL, "coordinator_ttl") // checked by Validate
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}
