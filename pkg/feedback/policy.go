package feedback

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/sluice-dev/sluice/pkg/state"
)

// Policy maps one coordinator's pressure to the scale factor the pipeline
// should run at, in [0, 1]. The Handler asks it for every live coordinator
// and combines the answers (by default the lowest wins).
type Policy interface {
	Scale(e Event) float64
}

// PolicyFunc adapts a function to Policy.
type PolicyFunc func(Event) float64

// Scale calls f.
func (f PolicyFunc) Scale(e Event) float64 { return f(e) }

// StepPolicy maps each level to a fixed scale. The seed's policy is
// DefaultStepPolicy: ok 1.0, soft 0.5, hard 0.0.
type StepPolicy struct {
	OK, Soft, Hard float64
}

// DefaultStepPolicy is the seed's: ok → 1.0, soft → 0.5, hard → 0.0 (pause).
var DefaultStepPolicy = StepPolicy{OK: 1, Soft: 0.5, Hard: 0}

// Scale returns the scale of e's level.
func (p StepPolicy) Scale(e Event) float64 {
	switch e.Level {
	case state.Hard:
		return p.Hard
	case state.Soft:
		return p.Soft
	}
	return p.OK
}

// Validate checks that every scale is finite and in [0, 1].
func (p StepPolicy) Validate() error {
	for _, f := range []struct {
		name string
		v    float64
	}{{"ok", p.OK}, {"soft", p.Soft}, {"hard", p.Hard}} {
		if !inUnit(f.v) {
			return fmt.Errorf("feedback: step policy %s=%v: must be a finite number in [0, 1]", f.name, f.v)
		}
	}
	return nil
}

// ProportionalPolicy follows the queue's fill instead of its level: full
// scale while fill ≤ Start, Floor at fill ≥ Stop, linear in between. A hard
// level always gives Floor. A smoother loop than steps, for stores whose
// write rate is steady.
type ProportionalPolicy struct {
	Start, Stop float64 // fills, 0 ≤ Start < Stop ≤ 1
	Floor       float64 // scale at and above Stop, in [0, 1)
}

// DefaultProportionalPolicy slows from 50% fill to a pause at 90%.
var DefaultProportionalPolicy = ProportionalPolicy{Start: 0.5, Stop: 0.9, Floor: 0}

// Scale returns the scale for e's fill.
func (p ProportionalPolicy) Scale(e Event) float64 {
	f := e.Fill()
	switch {
	case e.Level == state.Hard || f >= p.Stop:
		return p.Floor
	case f <= p.Start:
		return 1
	}
	return 1 - (1-p.Floor)*(f-p.Start)/(p.Stop-p.Start)
}

// Validate checks the bounds.
func (p ProportionalPolicy) Validate() error {
	if !inUnit(p.Start) || !inUnit(p.Stop) || p.Start >= p.Stop {
		return fmt.Errorf("feedback: proportional policy start=%v stop=%v: must satisfy 0 <= start < stop <= 1", p.Start, p.Stop)
	}
	if !inUnit(p.Floor) || p.Floor >= 1 {
		return fmt.Errorf("feedback: proportional policy floor=%v: must be in [0, 1)", p.Floor)
	}
	return nil
}

// ParsePolicy reads a policy from its text form (missing keys keep the
// default):
//
//	pi                            DefaultPIPolicy: holds the fill at 45%
//	pi:setpoint=0.4,kp=7,ki=0.35,track=2,rise=0.5,floor=0.001,filter=0.1   (track and filter in seconds, rise per second)
//	step                          the seed's ok 1, soft 0.5, hard 0
//	step:ok=1,soft=0.6,hard=0.1   steps of your own
//	proportional                  from 50% fill to a pause at 90%
//	proportional:start=0.4,stop=0.8,floor=0.1
func ParsePolicy(s string) (Policy, error) {
	name, args, _ := strings.Cut(s, ":")
	kv := map[string]float64{}
	if args != "" {
		for _, part := range strings.Split(args, ",") {
			k, v, ok := strings.Cut(part, "=")
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if !ok || err != nil {
				return nil, fmt.Errorf("feedback: policy %q: %q is not key=number", s, part)
			}
			kv[strings.TrimSpace(k)] = f
		}
	}
	take := func(allowed ...string) error {
		for k := range kv {
			found := false
			for _, a := range allowed {
				found = found || a == k
			}
			if !found {
				return fmt.Errorf("feedback: policy %q: unknown key %q (allowed: %s)", s, k, strings.Join(allowed, ", "))
			}
		}
		return nil
	}
	get := func(k string, def float64) float64 {
		if v, ok := kv[k]; ok {
			return v
		}
		return def
	}
	switch name {
	case "pi":
		if err := take("setpoint", "kp", "ki", "track", "rise", "floor", "filter"); err != nil {
			return nil, err
		}
		d := DefaultPIPolicy
		track := get("track", d.Track.Seconds())
		if !(track > 0 && track <= 3600) {
			return nil, fmt.Errorf("feedback: pi policy track=%v: must be in (0, 3600] seconds", track)
		}
		filter := get("filter", d.Filter.Seconds())
		if !(filter >= 0 && filter <= 60) {
			return nil, fmt.Errorf("feedback: pi policy filter=%v: must be in [0, 60] seconds (0: none)", filter)
		}
		p := PIPolicy{SetPoint: get("setpoint", d.SetPoint), Kp: get("kp", d.Kp), Ki: get("ki", d.Ki),
			Track: time.Duration(track * float64(time.Second)), Rise: get("rise", d.Rise), Floor: get("floor", d.Floor), MaxStep: d.MaxStep,
			Filter: time.Duration(filter * float64(time.Second))}
		return p, p.Validate()
	case "step":
		if err := take("ok", "soft", "hard"); err != nil {
			return nil, err
		}
		d := DefaultStepPolicy
		p := StepPolicy{OK: get("ok", d.OK), Soft: get("soft", d.Soft), Hard: get("hard", d.Hard)}
		return p, p.Validate()
	case "proportional":
		if err := take("start", "stop", "floor"); err != nil {
			return nil, err
		}
		d := DefaultProportionalPolicy
		p := ProportionalPolicy{Start: get("start", d.Start), Stop: get("stop", d.Stop), Floor: get("floor", d.Floor)}
		return p, p.Validate()
	}
	return nil, fmt.Errorf("feedback: policy %q: must be pi[:setpoint=..,kp=..,ki=..,track=..,rise=..,floor=..,filter=..], step[:ok=..,soft=..,hard=..] or proportional[:start=..,stop=..,floor=..]", s)
}

func inUnit(f float64) bool { return !math.IsNaN(f) && f >= 0 && f <= 1 }
