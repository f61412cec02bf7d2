package limiter

import (
	"math"
	"strconv"
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

// Integers of up to 15 digits take a shorter path (smallInteger): it reads
// each as strconv.ParseFloat does, and leaves the rest to it.
func TestParseFloatSmallIntegers(t *testing.T) {
	for _, s := range []string{
		"0", "00", "1", "7", "10", "1000000", "1000000000", "000000000000042", "123456789012345", "999999999999999",
		"1234567890123456", "9007199254740993", "99999999999999999999", // 16 digits and more: the general path
		"-1", "+1", "-0", "1.0", "1e3", "12a", "a12", "1 ", "", "١٢", // not digits alone
	} {
		want := 0.0
		if decimal(s) {
			want, _ = strconv.ParseFloat(s, 64)
		}
		if got := parseFloat(s); got != want || math.Signbit(got) != math.Signbit(want) {
			t.Errorf("parseFloat(%q) = %v, want %v (strconv.ParseFloat)", s, got, want)
		}
	}
	if _, ok := smallInteger("1234567890123456"); ok {
		t.Error("smallInteger took 16 digits: beyond 2^53 a float64 rounds")
	}
}
