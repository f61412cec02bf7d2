package limiter

import (
	"math"
	"testing"
)

// Numbers in replies are read as the scripts write them: decimals. What
// acquire's guard lets through besides (hex, spaces) and what is not
// finite read as 0, as in the Python client (test_contract.py).
func TestParseFloatDecimalOnly(t *testing.T) {
	for s, want := range map[string]float64{
		"50": 50, "-2.5": -2.5, "+7": 7, "0.5": 0.5, ".5": 0.5, "5.": 5, "5e1": 50, "1e-05": 1e-05, "1.5E+20": 1.5e20, "-0": 0,
		"0x32": 0, " 50": 0, "50 ": 0, "5_0": 0, "inf": 0, "-Inf": 0, "nan": 0, "1e999": 0, "0x1p4": 0,
		"": 0, ".": 0, "e5": 0, "5e": 0, "5e+": 0, "--5": 0, "5..0": 0, "1.2.3": 0,
	} {
		if got := parseFloat(s); got != want || math.Signbit(got) != math.Signbit(want) && got != 0 {
			t.Errorf("parseFloat(%q) = %v, want %v", s, got, want)
		}
	}
}
