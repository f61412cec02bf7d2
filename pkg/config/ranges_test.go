package config

import (
	"testing"
	"time"
)

// TestRanges: a value is read by its range, and the error says the range
// as every flag and setting shows it.
func TestRanges(t *testing.T) {
	for _, tc := range []struct {
		s    string
		r    Range[int]
		want int
		err  string
	}{
		{"4", Closed(1, 1024), 4, ""},
		{"1", Closed(1, 1024), 1, ""},
		{"0", Closed(1, 1024), 0, "must be in [1, 1024]"},
		{"1e9", Closed(1, 1_000_000_000), 1_000_000_000, ""},
		{"2.5", Closed(1, 1_000_000_000), 0, "must be a whole number in [1, 1000000000]"},
		{"0x10", Closed(1, 1024), 0, "must be a decimal number (digits, an optional fraction and exponent), in [1, 1024]"},
		{"0", Above(0, 10), 0, "must be in (0, 10]"},
	} {
		got, err := ReadNumber(tc.s, tc.r)
		if got != tc.want || errText(err) != tc.err {
			t.Errorf("ReadNumber(%q, %v) = %v, %v; want %v, %q", tc.s, tc.r, got, err, tc.want, tc.err)
		}
	}
	if f, err := ReadNumber("0.5", ItemRateRange); f != 0.5 || err != nil {
		t.Errorf("ReadNumber(0.5, %v) = %v, %v", ItemRateRange, f, err)
	}
	for _, tc := range []struct {
		s    string
		want time.Duration
		err  string
	}{
		{"5s", 5 * time.Second, ""},
		{"24h", 24 * time.Hour, ""},
		{"24h0m1s", 0, "must be in (0, 24h]"},
		{"0s", 0, "must be in (0, 24h]"},
		{"soon", 0, "must be a duration like 5s or 250ms, in (0, 24h]"},
	} {
		got, err := ReadDuration(tc.s, PeriodRange)
		if got != tc.want || errText(err) != tc.err {
			t.Errorf("ReadDuration(%q) = %v, %v; want %v, %q", tc.s, got, err, tc.want, tc.err)
		}
	}
	if got := Closed(10*time.Millisecond, 90*time.Minute).String(); got != "[10ms, 1h30m]" {
		t.Errorf("String() = %q", got)
	}
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
