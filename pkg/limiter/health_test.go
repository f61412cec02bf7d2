package limiter

import "testing"

// TestHealthUpEndsProbing: a failure right after the prober saw Redis come
// back must start a new prober (the old one is finishing), or the limiter
// would stay in outage mode with nobody probing.
func TestHealthUpEndsProbing(t *testing.T) {
	var h health
	if changed, probe := h.markDown(); !changed || !probe {
		t.Fatalf("first failure: changed %v probe %v, want both", changed, probe)
	}
	if changed, probe := h.markDown(); changed || probe {
		t.Fatalf("second failure: changed %v probe %v, want neither (one prober runs)", changed, probe)
	}
	if !h.markUp() || h.isDown() {
		t.Fatal("markUp did not bring it up")
	}
	// The prober is returning now; a failure in that window:
	if changed, probe := h.markDown(); !changed || !probe {
		t.Fatalf("failure after recovery: changed %v probe %v, want a new prober", changed, probe)
	}
	if h.markUp(); h.markUp() {
		t.Fatal("markUp reported a change twice")
	}
}
