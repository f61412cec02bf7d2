package store

import (
	"fmt"

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
	if err := checkMarks("soft", w.SoftLow, w.SoftHigh); err != nil {
		return err
	}
	if err := checkMarks("hard", w.HardLow, w.HardHigh); err != nil {
		return err
	}
	if w.SoftHigh > w.HardHigh || w.SoftLow > w.HardLow {
		return fmt.Errorf("store: watermarks: soft marks (%v, %v) must not be above hard marks (%v, %v)", w.SoftLow, w.SoftHigh, w.HardLow, w.HardHigh)
	}
	return nil
}

// checkMarks requires 0 <= low < high <= 1 of level's marks (NaN fails
// every comparison).
func checkMarks(level string, low, high float64) error {
	if low >= 0 && low < high && high <= 1 {
		return nil
	}
	return fmt.Errorf("store: watermarks %[1]s_low=%[2]v %[1]s_high=%[3]v: must satisfy 0 <= %[1]s_low < %[1]s_high <= 1", level, low, high)
}

// Next returns the level after observing fill while at cur: the highest
// level that fill enters, or that cur holds and fill has not left.
func (w Watermarks) Next(cur state.Level, fill float64) state.Level {
	switch {
	case holds(cur, state.Hard, fill, w.HardHigh, w.HardLow):
		return state.Hard
	case holds(cur, state.Soft, fill, w.SoftHigh, w.SoftLow):
		return state.Soft
	}
	return state.OK
}

// holds reports whether fill is at level (entered at high, left under low)
// for a coordinator at cur: at least high, or at least low while cur is
// that level or above.
func holds(cur, level state.Level, fill, high, low float64) bool {
	return fill >= high || cur.Rank() >= level.Rank() && fill >= low
}
