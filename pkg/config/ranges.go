package config

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Bound is the type of a range's ends: a count, a number or a duration.
type Bound interface {
	int | int64 | float64 | time.Duration
}

// Range is the values a setting or a command-line flag may take: [Lo, Hi],
// or (Lo, Hi] when Open. ReadNumber and ReadDuration read a value and
// check it against its range, so that each range is written once, where
// the setting is declared, and its message ("must be in [1, 1024]") says
// the same range everywhere.
type Range[T Bound] struct {
	Lo, Hi T
	Open   bool
}

// Closed is the range [lo, hi].
func Closed[T Bound](lo, hi T) Range[T] { return Range[T]{Lo: lo, Hi: hi} }

// Above is the range (lo, hi].
func Above[T Bound](lo, hi T) Range[T] { return Range[T]{Lo: lo, Hi: hi, Open: true} }

// Has reports whether f is in the range.
func (r Range[T]) Has(f float64) bool {
	return (f > float64(r.Lo) || !r.Open && f == float64(r.Lo)) && f <= float64(r.Hi)
}

// String writes the range as [lo, hi] or (lo, hi], whole numbers in digits
// (1000000000, not 1e+09) and durations short (24h, not 24h0m0s).
func (r Range[T]) String() string {
	left := "["
	if r.Open {
		left = "("
	}
	return left + showBound(r.Lo) + ", " + showBound(r.Hi) + "]"
}

func showBound[T Bound](v T) string {
	if d, ok := any(v).(time.Duration); ok {
		return shortDuration(d)
	}
	return FormatNumber(float64(v))
}

// FormatNumber writes a whole number in digits (1000000000, not 1e+09).
func FormatNumber(f float64) string {
	if f == math.Trunc(f) && math.Abs(f) < 1e15 {
		return strconv.FormatFloat(f, 'f', -1, 64)
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}

// shortDuration writes 24h for 24h0m0s, 0 for 0s.
func shortDuration(d time.Duration) string {
	if d == 0 {
		return "0"
	}
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// ReadNumber reads s by ParseNumber, the rule of every number sluice reads;
// a count (an int or int64) must be whole. The error is the rule s breaks,
// with the range: "must be a whole number in [1, 1024]".
func ReadNumber[T int | int64 | float64](s string, r Range[T]) (T, error) {
	f, err := ParseNumber(s)
	if err != nil {
		return 0, fmt.Errorf("%v, in %s", err, r)
	}
	if _, isFloat := any(T(0)).(float64); !isFloat && f != math.Trunc(f) {
		return 0, fmt.Errorf("must be a whole number in %s", r)
	}
	if !r.Has(f) {
		return 0, fmt.Errorf("must be in %s", r)
	}
	return T(f), nil
}

// ReadDuration reads s as a Go duration (5s, 250ms) in r.
func ReadDuration(s string, r Range[time.Duration]) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("must be a duration like 5s or 250ms, in %s", r)
	}
	if !r.Has(float64(d)) {
		return 0, errors.New("must be in " + r.String())
	}
	return d, nil
}

// The ranges that more than one reader checks: a setting and the flag that
// sets it, or the flags of several commands. Each is written here once.
var (
	// PeriodRange is a time a service waits or keeps something: the
	// duration settings (feedback.dwell, feedback.coordinator_ttl) and
	// flags such as --drain, --claim-idle, --ttl, --for.
	PeriodRange = Above(0, 24*time.Hour)
	// ItemRateRange is a simulated speed in items a second, 0 for none
	// (--sink-rate, --demand, the drills' rate files).
	ItemRateRange = Closed(0, 1e9)
	// StreamCapacityRange is controller.stream_capacity and
	// --stream-capacity.
	StreamCapacityRange = Closed(1, 1_000_000_000)
	// MaxBodyRange is receiver.max_body, in bytes.
	MaxBodyRange = Closed[int64](1, 1<<30)
)
