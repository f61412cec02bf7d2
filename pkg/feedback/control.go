package feedback

import (
	"fmt"
	"math"
	"time"

	"github.com/sluice-dev/sluice/pkg/state"
)

// StatefulPolicy is a Policy with memory of the loop: the Handler gives it
// every accepted event of each coordinator, with what it remembers of that
// coordinator, and the scale in force; it returns the scale that
// coordinator calls for. The Handler combines the answers as for any policy
// and shapes the rises as Options.Rise says, as for any policy. Its Scale
// answers where there are no samples to follow: for a coordinator that
// expired and counts as soft or hard, and when no coordinator is live.
type StatefulPolicy interface {
	Policy
	// Control returns the scale coordinator e.CoordinatorID calls for, in
	// [0, 1], given its memory m of that coordinator (the zero
	// PolicyState at its first event, or after a restart or an expiry),
	// which it may update, and the scale in force. The Handler then sets
	// m.Last to e.
	Control(m *PolicyState, e Event, scale float64) float64
}

// PolicyState is what a StatefulPolicy remembers of one coordinator, for one
// provider, between two of its events.
type PolicyState struct {
	Last     Event   // the coordinator's previous event (set by the Handler); Seq 0 before the first
	Integral float64 // the controller's integral term, in its own units
	Asked    float64 // what it asked for at Last, before clamping, in its own units
	Filtered float64 // the controller's low-passed measurement, in its own units
}

// PIPolicy holds the queue's fill at SetPoint with a proportional-integral
// controller on the fill of each coordinator's events (their mean fill
// since the previous event when they carry one: Event.MeanFill). It works on the
// logarithm of the scale, so that its gains act on the rate in proportion
// to the rate: the same fill error moves a scale of 0.1 (a sink ten times
// slower than the budget) by the same fraction as a scale of 0.5, and the
// loop is as calm at 10× overload as at 2×. With e = fill − SetPoint, and
// ē the error low-passed with the time constant Filter ÷ scale:
//
//	ln scale = I − Kp × ē      dI/dt = −Ki × e + (ln scale in force − ln scale asked) / Track
//
// The low pass is for the queue's batch ripple: a worker takes a whole
// batch at once, so the fill falls by a batch and climbs back once per
// batch written, a sawtooth whose period, batch ÷ sink rate, grows as the
// scale falls (a held sink rate is the scale × the budget); the
// proportional term would pass it on to the rate. The integral averages it
// out by itself and takes the raw error.
// The second term of dI/dt is the anti-windup: when the scale in force is
// not what this coordinator asked for (another coordinator asked for less,
// the ramp held a rise back, an operator set it), the integral follows the
// scale in force within Track instead of running away. The scale never goes
// below Floor but at a hard level, which pauses (scale 0) as the step
// policy does: a store past its hard mark, or whose sink fails, stops the
// fleet; during a pause the integral waits (the loop is open), and the
// Handler ramps the scale back up, the soft start: PIPolicy proposes
// (ProposedRise) a ramp of Rise per second and no dwell, which
// Options.Rise may override.
type PIPolicy struct {
	SetPoint float64       // the fill to hold, in (0, 1)
	Kp       float64       // ln scale per unit of fill error, ≥ 0
	Ki       float64       // ln scale per second per unit of fill error, > 0
	Track    time.Duration // the anti-windup's time constant, > 0
	Rise     float64       // the ramp it proposes: the largest rise of the scale per second, in (0, 1]
	Floor    float64       // the lowest scale short of a pause, in (0, 1)
	MaxStep  time.Duration // the longest time one event's error is integrated over, > 0
	// Filter is the proportional term's low-pass time constant at full
	// scale, ≥ 0 (0: none); at scale s it is Filter ÷ s, at most 100 × Filter.
	Filter time.Duration
}

// DefaultPIPolicy is the default policy. It holds the fill at 45%, inside
// the default watermarks' soft hysteresis band (a steady overload changes no
// level, and a sink slowed to a third peaks under the soft mark) and far
// under the hard mark (85%); its gains and filter were chosen on the
// simulated matrix of docs/feedback.md with the coordinator's default
// batches (100 items) and hold from 2× to 10× overload without tuning.
var DefaultPIPolicy = PIPolicy{SetPoint: 0.45, Kp: 7, Ki: 0.35, Track: 2 * time.Second, Rise: 0.5, Floor: 0.001,
	MaxStep: time.Second, Filter: 100 * time.Millisecond}

// Scale is the answer where there are no samples to follow: the seed's
// steps (hard 0, soft 0.5, ok 1).
func (p PIPolicy) Scale(e Event) float64 { return DefaultStepPolicy.Scale(e) }

// Control runs one step of the controller on e.
func (p PIPolicy) Control(m *PolicyState, e Event, scale float64) float64 {
	err := e.MeanFill() - p.SetPoint
	inForce := math.Log(max(scale, p.Floor))
	switch {
	case m.Last.Seq == 0 || e.TS.Before(m.Last.TS):
		// Start from the scale in force, without a bump; from full scale
		// if it is a pause (the equilibrium is unknown: the fill decides).
		if scale == 0 {
			inForce = 0
		}
		m.Filtered = err
		m.Integral = inForce + p.Kp*err
	case scale > 0: // during a pause the integral waits: the loop is open
		dt := min(e.TS.Sub(m.Last.TS), p.MaxStep).Seconds()
		m.Filtered = p.lowPass(m.Filtered, err, dt, scale)
		m.Integral += -p.Ki*dt*err + (inForce-m.Asked)*min(1, dt/p.Track.Seconds())
	default:
		m.Filtered = err
	}
	m.Asked = m.Integral - p.Kp*m.Filtered
	if e.Level == state.Hard {
		return 0
	}
	return min(1, max(p.Floor, math.Exp(m.Asked)))
}

// lowPass moves the filtered error f towards err over dt seconds at scale.
func (p PIPolicy) lowPass(f, err, dt, scale float64) float64 {
	if p.Filter <= 0 {
		return err
	}
	tc := p.Filter.Seconds() / max(scale, 0.01)
	return f + (err-f)*(1-math.Exp(-dt/tc))
}

// ProposedRise is the rise shaping the gains were chosen with: a ramp of
// Rise per second, no dwell (the policy moves the scale at every sample,
// so a dwell would hold every rise back), no step limit beyond the ramp's.
func (p PIPolicy) ProposedRise() Rise { return Rise{Rate: p.Rise, MaxStep: 1} }

// Validate checks the ranges.
func (p PIPolicy) Validate() error {
	finite := func(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }
	switch {
	case !(p.SetPoint > 0 && p.SetPoint < 1):
		return fmt.Errorf("feedback: pi policy setpoint=%v: must be in (0, 1)", p.SetPoint)
	case !(p.Kp >= 0) || !finite(p.Kp):
		return fmt.Errorf("feedback: pi policy kp=%v: must be a finite number >= 0", p.Kp)
	case !(p.Ki > 0) || !finite(p.Ki):
		return fmt.Errorf("feedback: pi policy ki=%v: must be a finite number > 0", p.Ki)
	case p.Track <= 0:
		return fmt.Errorf("feedback: pi policy track=%v: must be above 0", p.Track)
	case !(p.Rise > 0 && p.Rise <= 1):
		return fmt.Errorf("feedback: pi policy rise=%v: must be in (0, 1] (scale per second)", p.Rise)
	case !(p.Floor > 0 && p.Floor < 1):
		return fmt.Errorf("feedback: pi policy floor=%v: must be in (0, 1)", p.Floor)
	case p.MaxStep <= 0:
		return fmt.Errorf("feedback: pi policy max_step=%v: must be above 0", p.MaxStep)
	case p.Filter < 0:
		return fmt.Errorf("feedback: pi policy filter=%v: must be 0 (none) or above", p.Filter)
	}
	return nil
}
