package demo

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/internal/sim"
)

// TestWriteReport: the page names the loop, draws the three charts from
// the samples, marks the PI policy's set point only where that policy
// closes the loop, and loads nothing from the network.
func TestWriteReport(t *testing.T) {
	var res sim.Result
	for i := range 10 {
		res.Samples = append(res.Samples, sim.Sample{T: time.Duration(i) * time.Second, QueueDepth: 50 * i, Scale: 1, Admitted: 300, WriteRate: 250})
	}
	for _, c := range []struct {
		policy   string
		open     bool
		title    string
		setPoint bool
	}{
		{"pi", false, "closed loop (feedback on, pi policy)", true},
		{"step", false, "closed loop (feedback on, step policy)", false},
		{"pi", true, "open loop (feedback off)", false},
	} {
		path := filepath.Join(t.TempDir(), "r.html")
		if err := WriteReport(path, res, Options{Policy: c.policy, OpenLoop: c.open, Queue: 1000, Rate: 600, SinkRate: 300, Replicas: 3}); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		page := string(b)
		if !strings.Contains(page, "<title>sluice demo: "+c.title+"</title>") || strings.Count(page, "<svg") != 3 ||
			strings.Count(page, "<polyline") != 4 || strings.Contains(page, "set point") != c.setPoint {
			t.Errorf("%s, open %v: title, 3 charts, 4 series, set point %v:\n%s", c.policy, c.open, c.setPoint, page)
		}
		if strings.Contains(page, "http://") || strings.Contains(page, "https://") {
			t.Errorf("the report must not load anything from the network")
		}
	}
}

// TestNiceStep: chart ticks fall on 1, 2, 2.5 or 5 times a power of ten,
// at least as wide as asked.
func TestNiceStep(t *testing.T) {
	for raw, want := range map[float64]float64{0.3: 0.5, 1: 1, 1.1: 2, 2.2: 2.5, 3: 5, 7: 10, 250: 250, 251: 500, 1e-9: 1e-9} {
		if got := niceStep(raw); got != want {
			t.Errorf("niceStep(%v) = %v, want %v", raw, got, want)
		}
	}
}
