package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/sluice-dev/sluice/pkg/store"
	"github.com/sluice-dev/sluice/pkg/store/redisstream"
)

// lineSink writes each entry's data as one line (the sluice pipelines write
// JSON objects, so the output is JSON lines). A batch is written whole or
// not at all: it goes out as one write, and a write to a file that fails is
// cut off before the batch is retried (see fileOutput). With a rate > 0 it
// simulates a store that writes rate items per second (the demo's slow
// store; a drill may change it while it runs); with failWhile set, every
// write fails while that file exists (a store outage, for drills). Safe for
// concurrent use: batches are written one at a time.
type lineSink struct {
	mu        sync.Mutex
	out       batchWriter
	buf       []byte // the batch's lines, reused
	close     func() error
	rate      *knob
	failWhile string
	next      time.Time // the simulated store is busy until then
	// cut is how many bytes of a torn last line openSink cut off the file
	// (a crash mid-write); 0 for a clean file or another output.
	cut int64
}

// batchWriter takes a batch's lines, whole.
type batchWriter interface {
	writeBatch(p []byte) error
}

// errOutage is what a sink in a simulated outage returns.
var errOutage = errors.New("simulated store outage")

// openSink opens the sink --sink names: discard, stdout or file:PATH; rate
// nil writes as fast as it can. A file is opened for appending whole
// batches; a torn last line, which a crash mid-write leaves and which was
// never acknowledged, is cut off first.
func openSink(spec string, rate *knob, failWhile string, stdout io.Writer) (*lineSink, error) {
	if rate == nil {
		rate = newKnob(0, "")
	}
	s := &lineSink{rate: rate, failWhile: failWhile, close: func() error { return nil }}
	switch {
	case spec == "discard":
		s.out = &streamOutput{w: io.Discard}
	case spec == "stdout":
		s.out = &streamOutput{w: stdout}
	case strings.HasPrefix(spec, "file:") && len(spec) > len("file:"):
		f, err := os.OpenFile(strings.TrimPrefix(spec, "file:"), os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return nil, fmt.Errorf("--sink=%q: %w", spec, err)
		}
		size, cut, err := cutTornTail(f)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("--sink=%q: %w", spec, err)
		}
		s.out, s.close, s.cut = &fileOutput{f: f, size: size}, f.Close, cut
	default:
		return nil, usagef("--sink=%q: must be discard, stdout or file:PATH", spec)
	}
	if !(rate.def >= 0 && rate.def <= 1e9) {
		s.close()
		return nil, usagef("--sink-rate=%v: must be in [0, 1e9] (0: as fast as it can)", rate.def)
	}
	return s, nil
}

// logRepair logs what openSink cut off the file, if anything.
func (s *lineSink) logRepair(log *slog.Logger, spec string) {
	if s.cut > 0 {
		log.Warn("cut a torn last line off the sink's file (a crash mid-write; it was never acknowledged)", "sink", spec, "bytes", s.cut)
	}
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
	s.buf = s.buf[:0]
	for _, e := range batch {
		s.buf = append(append(s.buf, e.Data...), '\n')
	}
	return s.out.writeBatch(s.buf)
}

// Close closes the output.
func (s *lineSink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.close()
}

var _ store.Sink[redisstream.Entry] = (*lineSink)(nil)

// file is what fileOutput needs of an *os.File (tests inject faults).
type file interface {
	io.WriterAt
	Truncate(size int64) error
	Sync() error
}

// fileOutput appends batches to a file, each whole or not at all. The
// invariant: the file's first size bytes are the batches written so far,
// each synced to disk before writeBatch returned nil (so before its entries
// were acknowledged); anything beyond size is what a failed write or sync
// left, and it is cut off (truncated back to size) before writeBatch
// returns, or, when that truncation fails too, before anything else is
// written.
type fileOutput struct {
	f    file
	size int64
	torn bool // bytes beyond size may remain: cut them before writing
}

func (o *fileOutput) writeBatch(p []byte) error {
	if o.torn {
		if err := o.cutBack(); err != nil {
			return err
		}
	}
	_, err := o.f.WriteAt(p, o.size)
	if err == nil {
		err = o.f.Sync()
	}
	if err != nil {
		o.torn = true
		if cerr := o.cutBack(); cerr != nil {
			return errors.Join(err, cerr)
		}
		return err
	}
	o.size += int64(len(p))
	return nil
}

// cutBack truncates the file to its complete batches.
func (o *fileOutput) cutBack() error {
	if err := o.f.Truncate(o.size); err != nil {
		return fmt.Errorf("cutting a failed write off (back to %d bytes): %w", o.size, err)
	}
	o.torn = false
	return nil
}

// streamOutput writes batches to an output that cannot be cut back (stdout,
// a pipe), each as one write. A failed write may leave part of a batch
// behind, which is written again whole by the retry; if that part ends
// within a line, a newline ends it before the next batch, so no line is
// glued onto a torn one.
type streamOutput struct {
	w    io.Writer
	torn bool // the last write stopped within a line
}

func (o *streamOutput) writeBatch(p []byte) error {
	if o.torn {
		if _, err := o.w.Write([]byte{'\n'}); err != nil {
			return err
		}
		o.torn = false
	}
	n, err := o.w.Write(p)
	if err != nil && n > 0 && p[n-1] != '\n' {
		o.torn = true
	}
	return err
}

// cutTornTail cuts off f's last line when it has no newline: a batch is
// written before it is acknowledged, so such a line is what a crash
// mid-write left, and its entry is written again by whoever claims it. It
// returns the file's size after the cut and how many bytes it cut.
func cutTornTail(f *os.File) (size, cut int64, err error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, err
	}
	end := fi.Size()
	buf := make([]byte, 64<<10)
	for pos := end; pos > 0; {
		n := min(pos, int64(len(buf)))
		pos -= n
		if _, err := f.ReadAt(buf[:n], pos); err != nil {
			return 0, 0, err
		}
		i := bytes.LastIndexByte(buf[:n], '\n')
		if i < 0 {
			continue
		}
		size = pos + int64(i) + 1
		break
	}
	if size == end {
		return end, 0, nil
	}
	if err := f.Truncate(size); err != nil {
		return 0, 0, fmt.Errorf("cutting a torn last line: %w", err)
	}
	return size, end - size, f.Sync()
}
