package state_test

import (
	"strings"
	"testing"

	"github.com/sluice-dev/sluice/pkg/state"
)

func TestLevels(t *testing.T) {
	for s, rank := range map[string]int{"ok": 0, "soft": 1, "hard": 2} {
		l, err := state.ParseLevel(s)
		if err != nil || l.Rank() != rank || string(l) != s {
			t.Errorf("ParseLevel(%q) = %q %v, rank %d; want rank %d", s, l, err, l.Rank(), rank)
		}
	}
	for _, bad := range []string{"", "OK", "critical", " soft"} {
		if _, err := state.ParseLevel(bad); err == nil || !strings.Contains(err.Error(), "must be one of ok, soft, hard") {
			t.Errorf("ParseLevel(%q): %v", bad, err)
		}
		if state.Level(bad).Rank() != -1 {
			t.Errorf("Level(%q).Rank() = %d, want -1", bad, state.Level(bad).Rank())
		}
	}
}

func TestBreakerRanks(t *testing.T) {
	for b, rank := range map[state.Breaker]int{"": 0, state.BreakerClosed: 0, state.BreakerHalfOpen: 1, state.BreakerOpen: 2, "ajar": -1} {
		if got := b.Rank(); got != rank {
			t.Errorf("Breaker(%q).Rank() = %d, want %d", b, got, rank)
		}
	}
}
