package knob

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// waitFor polls cond every 20ms until it holds, failing after limit.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestKnob: the knob follows its file while it exists and holds a number
// >= 0, and its flag's value otherwise.
func TestKnob(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rate")
	k := New(300, path)
	if v := k.Value(); v != 300 {
		t.Fatalf("no file: %v, want the flag's 300", v)
	}
	if err := Write(path, 100); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the knob to read 100", func() bool { return k.Value() == 100 })
	for _, bad := range []string{"fast", "-5", ""} {
		if err := os.WriteFile(path, []byte(bad), 0o644); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, "the knob to ignore "+bad, func() bool { return k.Value() == 300 })
	}
	if err := Write(path, 0); err != nil { // 0: as fast as it can (a sink), unpaced (a demand)
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the knob to read 0", func() bool { return k.Value() == 0 })
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the knob back to 300", func() bool { return k.Value() == 300 })
	if v := New(7, "").Value(); v != 7 {
		t.Fatalf("no path: %v", v)
	}
}

// TestPacer: a pacer spaces calls at its rate without banking the time a
// caller spent elsewhere; a rate of 0 does not pace.
func TestPacer(t *testing.T) {
	var p Pacer
	ctx := context.Background()
	start := time.Now()
	for range 11 {
		p.Wait(ctx, 50)
	}
	if d := time.Since(start); d < 200*time.Millisecond-time.Millisecond {
		t.Fatalf("11 calls at 50/s took %v, want at least 200 ms", d)
	}
	// Held back 300 ms (by the limiter, say): the next calls are spaced
	// again, not let through at once.
	time.Sleep(300 * time.Millisecond)
	p.Wait(ctx, 50)
	start = time.Now()
	p.Wait(ctx, 50)
	p.Wait(ctx, 50)
	if d := time.Since(start); d < 40*time.Millisecond-time.Millisecond {
		t.Fatalf("after a pause, 2 calls at 50/s took %v, want at least 40 ms: banked time", d)
	}
	start = time.Now()
	for range 1000 {
		p.Wait(ctx, 0)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("unpaced calls took %v", d)
	}
}
