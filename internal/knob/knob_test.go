package knob

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestKnob: the knob follows its file while it exists and holds a number
// >= 0, and its flag's value otherwise; it reads the file at most every
// 100 ms (its clock is stepped here).
func TestKnob(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rate")
	k := New(300, path)
	now := time.Now()
	k.now = func() time.Time { return now }
	if v := k.Value(); v != 300 {
		t.Fatalf("no file: %v, want the flag's 300", v)
	}
	write := func(text string) func() error {
		return func() error { return os.WriteFile(path, []byte(text), 0o644) }
	}
	steps := []struct {
		what string
		set  func() error
		want float64
	}{
		{"Write 100", func() error { return Write(path, 100) }, 100},
		{"fast", write("fast"), 300},
		{"-5", write("-5"), 300},
		{"empty", write(""), 300},
		{"1e-400", write("1e-400"), 300},
		{"Write 0", func() error { return Write(path, 0) }, 0}, // 0: as fast as it can (a sink), unpaced (a demand)
		{"removed", func() error { return os.Remove(path) }, 300},
	}
	last := 300.0
	for _, st := range steps {
		if err := st.set(); err != nil {
			t.Fatal(err)
		}
		for range 2 { // within 100 ms of the last read: the old rate
			if v := k.Value(); v != last {
				t.Fatalf("%s: read again within 100 ms: %v, was %v", st.what, v, last)
			}
			now = now.Add(99 * time.Millisecond / 2)
		}
		now = now.Add(2 * time.Millisecond)
		if v := k.Value(); v != st.want {
			t.Fatalf("%s: %v, want %v", st.what, v, st.want)
		}
		last = st.want
	}
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
