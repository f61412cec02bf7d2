package config_test

import (
	"math"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/sluice-dev/sluice/pkg/config"
)

// FuzzParseNumber: a number ParseNumber accepts is finite, reads the same
// with strconv, and is not a hex, underscore or space form.
func FuzzParseNumber(f *testing.F) {
	for _, s := range []string{"60", "0.5", ".5", "6e1", "-0", "0x1p-1", "1_0", " 5", "inf", "NaN", "1e999", "1e-400", "", "-", "."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := config.ParseNumber(s)
		if err != nil {
			return
		}
		if math.IsInf(v, 0) || math.IsNaN(v) {
			t.Fatalf("ParseNumber(%q) = %v", s, v)
		}
		if w, err := strconv.ParseFloat(s, 64); err != nil || w != v {
			t.Fatalf("ParseNumber(%q) = %v, strconv says %v, %v", s, v, w, err)
		}
		for _, r := range s {
			if !(r >= '0' && r <= '9' || r == '.' || r == '-' || r == '+' || r == 'e' || r == 'E') {
				t.Fatalf("ParseNumber(%q) accepted %q", s, r)
			}
		}
	})
}

// FuzzLoadFile: any YAML file either loads into settings that pass their
// own validation or is refused with an error; it never panics.
func FuzzLoadFile(f *testing.F) {
	for _, s := range []string{
		"feedback:\n  enable_feedback: true\n  provider_name: ibkr\nrate_coordinator:\n  providers:\n    ibkr: {capacity: 100, refill_rate: 60, cooldown_sec: 300}\n",
		"feedback: {dwell: 0s}\n", "redis: {url: 'redis://x:1'}\n", "rate_coordinator: {providers: {a.b: {capacity: 1}}}\n",
		"- 1\n- 2\n", "{", "feedback: {max_rise: .nan}\n", "rate_coordinator: {providers: {p: {capacity: 0x10}}}\n",
	} {
		f.Add(s)
	}
	// One file per fuzzing process, rewritten by each input (inputs run one
	// at a time in a process): a directory per input made the target
	// spend most of its time in mkdir and rm.
	path := filepath.Join(f.TempDir(), "c.yaml")
	f.Fuzz(func(t *testing.T, yaml string) {
		if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := config.Load(config.Sources{File: path})
		if err != nil {
			return
		}
		for name, p := range s.Providers {
			if err := p.Validate(); err != nil {
				t.Fatalf("loaded provider %s that does not validate: %v", name, err)
			}
		}
	})
}
