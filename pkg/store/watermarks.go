package store

import (
	"fmt"
	"math"

	"github.com/sluice-dev/sluice/pkg/state"
)

// Watermarks are the queue fills (fractions of capacity) at which the
// pressure level changes. Each level has a high mark, where it is entered,
// and a lower recovery mark, under which it is left: the gap is the
// hysteresis that keeps a queue hovering at one mark from flapping.
//
//	ok   -> soft when fill >= SoftHigh      soft -> ok   when fill < SoftLow
//	any  -> hard when fill >= HardHigh      hard -> soft when fill < HardLow (-> ok if also < SoftLow)
type Watermarks struct {
	SoftHigh, SoftLow float64
	HardHigh, HardLow float64
}

// DefaultWatermarks: soft from 60% down to 40%, hard from 85% down to 70%.
var DefaultWatermarks = Watermarks{SoftHigh: 0.6, SoftLow: 0.4, HardHigh: 0.85, HardLow: 0.7}

// Validate requires 0 <= low < high <= 1 for both levels, with soft's marks
// not above hard's.
func (w Watermarks) Validate() error {
	ok := func(f float64) bool { return !math.IsNaN(f) && f >= 0 && f <= 1 }
	switch {
	case !ok(w.SoftLow) || !ok(w.SoftHigh) || w.SoftLow >= w.SoftHigh:
		return fmt.Errorf("store: watermarks soft_low=%v soft_high=%v: must satisfy 0 <= soft_low < soft_high <= 1", w.SoftLow, w.SoftHigh)
	case !ok(w.HardLow) || !ok(w.HardHigh) || w.HardLow >= w.HardHigh:
		return fmt.Errorf("store: watermarks hard_low=%v hard_high=%v: must satisfy 0 <= hard_low < hard_high <= 1", w.HardLow, w.HardHigh)
	case w.SoftHigh > w.HardHigh || w.SoftLow > w.HardLow:
		return fmt.Errorf("store: watermarks: soft marks (%v, %v) must not be above hard marks (%v, %v)", w.SoftLow, w.SoftHigh, w.HardLow, w.HardHigh)
	}
	return nil
}

// Next returns the level after observing fill while at cur.
func (w Watermarks) Next(cur state.Level, fill float64) state.Level {
	switch {
	case fill >= w.HardHigh:
		return state.Hard
	case cur == state.Hard && fill >= w.HardLow:
		return state.Hard
	case fill >= w.SoftHigh:
		return state.Soft
	case (cur == state.Soft || cur == state.Hard) && fill >= w.SoftLow:
		return state.Soft
	}
	return state.OK
}
