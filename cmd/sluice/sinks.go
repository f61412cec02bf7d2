package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/sluice-dev/sluice/pkg/store"
	"github.com/sluice-dev/sluice/pkg/store/redisstream"
)

// lineSink writes each entry's data as one line (the sluice pipelines write
// JSON objects, so the output is JSON lines) to w, flushed after every
// batch. With a rate > 0 it simulates a store that writes rate items per
// second (the demo's slow store; a drill may change it while it runs);
// with failWhile set, every write fails while that file exists (a store
// outage, for drills). Safe for concurrent use: batches are written one at
// a time.
type lineSink struct {
	mu        sync.Mutex
	w         *bufio.Writer
	dst       io.Writer
	close     func() error
	rate      *knob
	failWhile string
	next      time.Time // the simulated store is busy until then
}

// errOutage is what a sink in a simulated outage returns.
var errOutage = errors.New("simulated store outage")

// openSink opens the sink --sink names: discard, stdout or file:PATH; rate
// nil writes as fast as it can.
func openSink(spec string, rate *knob, failWhile string, stdout io.Writer) (*lineSink, error) {
	if rate == nil {
		rate = newKnob(0, "")
	}
	s := &lineSink{rate: rate, failWhile: failWhile, close: func() error { return nil }}
	switch {
	case spec == "discard":
		s.dst = io.Discard
	case spec == "stdout":
		s.dst = stdout
	case strings.HasPrefix(spec, "file:") && len(spec) > len("file:"):
		f, err := os.OpenFile(strings.TrimPrefix(spec, "file:"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return nil, fmt.Errorf("--sink=%q: %w", spec, err)
		}
		s.dst, s.close = f, f.Close
	default:
		return nil, usagef("--sink=%q: must be discard, stdout or file:PATH", spec)
	}
	s.w = bufio.NewWriterSize(s.dst, 1<<16)
	if !(rate.def >= 0 && rate.def <= 1e9) {
		return nil, usagef("--sink-rate=%v: must be in [0, 1e9] (0: as fast as it can)", rate.def)
	}
	return s, nil
}

// Write writes batch, after the simulated store's time for it.
func (s *lineSink) Write(ctx context.Context, batch []redisstream.Entry) error {
	if s.failWhile != "" {
		if _, err := os.Stat(s.failWhile); err == nil {
			return fmt.Errorf("%w (%s exists)", errOutage, s.failWhile)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if rate := s.rate.Value(); rate > 0 {
		// The simulated store's time for a batch includes the real write
		// (file, fsync) of the one before: a store kept busy starts the
		// next batch where the last one's time ended, so it writes rate
		// items a second, not rate less the file's time.
		now := time.Now()
		start := s.next
		if start.Before(now.Add(-100 * time.Millisecond)) {
			start = now // idle since: a fresh start
		}
		s.next = start.Add(time.Duration(float64(len(batch)) / rate * float64(time.Second)))
		t := time.NewTimer(time.Until(s.next))
		select {
		case <-ctx.Done():
			t.Stop()
			s.next = start // not written: the store's time is not spent
			return ctx.Err()
		case <-t.C:
		}
	}
	return s.flush(batch)
}

// flush writes the batch's lines and syncs a file.
func (s *lineSink) flush(batch []redisstream.Entry) error {
	for _, e := range batch {
		_, _ = s.w.Write(e.Data)
		_ = s.w.WriteByte('\n')
	}
	if err := s.w.Flush(); err != nil {
		s.w.Reset(s.dst) // a failed write is retried whole: drop what is left of it
		return err
	}
	// A file is synced before the entries are acknowledged: written means
	// on disk, so a node that loses power loses nothing acknowledged.
	if f, ok := s.dst.(*os.File); ok && f != os.Stdout {
		return f.Sync()
	}
	return nil
}

// Close flushes and closes the output.
func (s *lineSink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.w.Flush(); err != nil {
		return err
	}
	return s.close()
}

var _ store.Sink[redisstream.Entry] = (*lineSink)(nil)
