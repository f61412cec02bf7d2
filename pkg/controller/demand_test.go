package controller

import (
	"math"
	"testing"
	"time"
)

// feed adds a sample every 250 ms for d: appended and read at their rates
// (items/s), at the scale and writer count given; it returns the last
// reading.
func feed(t *testing.T, m *demandMeter, at *time.Time, added, read *int64, d time.Duration, appendRate, readRate, scale float64, writers int) (reading, bool) {
	t.Helper()
	var out reading
	var ok bool
	for end := at.Add(d); at.Before(end); {
		*at = at.Add(250 * time.Millisecond)
		*added += int64(appendRate / 4)
		*read += int64(readRate / 4)
		out, ok = m.add(demandSample{at: *at, added: *added, read: *read, scale: scale, writers: writers, busy: scale < 1})
	}
	return out, ok
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }

func TestDemandMeter(t *testing.T) {
	m := &demandMeter{window: 4 * time.Second}
	at := time.Unix(1_800_000_000, 0)
	var added, read int64
	if _, ok := feed(t, m, &at, &added, &read, time.Second, 300, 300, 1, 1); ok {
		t.Fatal("a reading from a quarter of the window")
	}
	// One writer keeping up at 1x: not held back; the writer's rate is a
	// lower bound, and the demand is what got through.
	d, ok := feed(t, m, &at, &added, &read, 5*time.Second, 300, 300, 1, 1)
	if !ok || !near(d.Rate, 300) || !near(d.PerWriter, 300) || !near(d.Needed, 1) {
		t.Fatalf("1x: %+v %v", d, ok)
	}
	// 5x held back by the loop to a fifth: the lone writer is busy at
	// 300/s, the sources want 1500/s: 5 writers.
	d, _ = feed(t, m, &at, &added, &read, 5*time.Second, 300, 300, 0.2, 1)
	if !near(d.Rate, 1500) || !near(d.Scale, 0.2) || !near(d.PerWriter, 300) || !near(d.Needed, 5) {
		t.Fatalf("5x held back: %+v", d)
	}
	// Writers added: their queues are empty while the policy still raises
	// the scale; not a busy measurement.
	for _, x := range []float64{0.3, 0.5, 0.8} {
		at = at.Add(time.Second)
		added += int64(1500 * x)
		read += int64(1500 * x)
		d, _ = m.add(demandSample{at: at, added: added, read: read, scale: x, writers: 5})
	}
	if d.PerWriter != 300 {
		t.Fatalf("idle writers measured as busy: %+v", d)
	}
	// Five writers carry it at full scale, each busy (the set point).
	d, _ = feed(t, m, &at, &added, &read, 5*time.Second, 1500, 1500, 1, 5)
	if !near(d.Rate, 1500) || !near(d.Writers, 5) || !near(d.Needed, 5) {
		t.Fatalf("5x carried: %+v", d)
	}
	// Back to 1x: five writers idle at 60/s each; the busy rate is kept,
	// so the demand needs one.
	d, _ = feed(t, m, &at, &added, &read, 5*time.Second, 300, 300, 1, 5)
	if !near(d.PerWriter, 300) || !near(d.Needed, 1) {
		t.Fatalf("1x with 5 writers: %+v", d)
	}
	// The store slows to 200/s a writer: the queues rise, the loop holds
	// back, the busy rate is measured again (lower).
	d, _ = feed(t, m, &at, &added, &read, 5*time.Second, 200, 200, 0.5, 1)
	if !near(d.PerWriter, 200) || !near(d.Rate, 400) || !near(d.Needed, 2) {
		t.Fatalf("slower store: %+v", d)
	}
	// A pause says little: the demand reads as 20x what got through.
	d, _ = feed(t, m, &at, &added, &read, 5*time.Second, 20, 200, 0, 1)
	if !near(d.Rate, 400) {
		t.Fatalf("paused: %+v", d)
	}
	// The counters go back (the stream was deleted): measured afresh.
	added, read = 0, 0
	if d, ok := feed(t, m, &at, &added, &read, time.Second, 300, 300, 1, 1); ok {
		t.Fatalf("a reading across a reset: %+v", d)
	}
}
