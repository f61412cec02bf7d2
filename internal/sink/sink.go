// Package sink is the write coordinator's outputs for the sluice command:
// discard, stdout and file:PATH, each writing a batch's entries as JSON lines,
// whole or not at all. A file sink keeps a journal beside the file so that
// what a crash cut short is cut off when it is opened again.
package sink

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/sluice-dev/sluice/pkg/store"
	"github.com/sluice-dev/sluice/pkg/store/redisstream"
)

// Lines writes each entry's data as one line (the sluice pipelines write
// JSON objects, so the output is JSON lines). A batch is written whole or
// not at all: it goes out as one write, and a write to a file that fails is
// cut off before the batch is retried (see fileOutput). With a rate > 0 it
// simulates a store that writes rate items per second (the demo's slow
// store; a drill may change it while it runs); with a FailWhile file,
// every write fails while that file exists (a store outage, for drills).
// Safe for concurrent use: batches are written one at a time.
type Lines struct {
	mu        sync.Mutex
	out       batchWriter
	buf       []byte // the batch's lines, reused
	close     func() error
	rate      func() float64 // nil: as fast as the output
	failWhile string
	next      time.Time // the simulated store is busy until then
	// repair is what Open cut off the file, left by a crash mid-write;
	// zero for a clean file or another output.
	repair repair
}

// repair is what opening a file sink cut off: a crash's remnants, none of
// them acknowledged.
type repair struct {
	batch int64 // bytes of a batch whose write a crash cut short
	torn  int64 // bytes of a torn last line
}

// batchWriter takes a batch's lines, whole.
type batchWriter interface {
	writeBatch(p []byte) error
}

// ErrOutage is what a sink in a simulated outage returns.
var ErrOutage = errors.New("simulated store outage")

// UsageError is a sink spec that cannot work (exit 2 in the CLI): its
// message names the flag, the value and what is allowed.
type UsageError struct{ Msg string }

func (e *UsageError) Error() string { return e.Msg }

func usagef(format string, args ...any) error { return &UsageError{fmt.Sprintf(format, args...)} }

// Options are a sink's drill settings; the zero value writes as fast as
// it can and never fails on purpose.
type Options struct {
	// Rate is the simulated store's speed in items/s, read before each
	// batch (nil or 0: as fast as the output).
	Rate func() float64
	// FailWhile, when set, makes every write fail while that file exists.
	FailWhile string
}

// Open opens the sink named by --flag (sink, dead-letter): discard,
// stdout or file:PATH. A file must be a regular file (or not exist yet);
// it is opened for appending whole batches, after what a crash mid-write
// left is cut off (openFileOutput). A spec that cannot work is a
// *UsageError; a file that cannot be opened, an error wrapping the
// *fs.PathError.
func Open(flag, spec string, o Options, stdout io.Writer) (*Lines, error) {
	s := &Lines{rate: o.Rate, failWhile: o.FailWhile, close: func() error { return nil }}
	switch {
	case spec == "discard":
		s.out = &streamOutput{w: io.Discard}
	case spec == "stdout":
		s.out = &streamOutput{w: stdout}
	case strings.HasPrefix(spec, "file:") && len(spec) > len("file:"):
		out, fix, err := openFileOutput(strings.TrimPrefix(spec, "file:"))
		if nr := (notRegularError{}); errors.As(err, &nr) {
			return nil, nr.usage(flag, spec)
		}
		if err != nil {
			return nil, fmt.Errorf("--%s=%q: %w", flag, spec, err)
		}
		s.out, s.close, s.repair = out, out.close, fix
	default:
		return nil, usagef("--%s=%q: must be discard, stdout or file:PATH", flag, spec)
	}
	return s, nil
}

// notRegularError is a file sink's path that is not a regular file.
type notRegularError struct{ mode fs.FileMode }

func (e notRegularError) Error() string { return "not a regular file" }

// usage is the usage error for --flag=spec: a batch is written at its
// offset and a failed one cut back (pwrite, ftruncate), which a pipe or a
// terminal cannot do.
func (e notRegularError) usage(flag, spec string) error {
	what := "not a regular file"
	switch m := e.mode; {
	case m&fs.ModeNamedPipe != 0:
		what = "a named pipe (FIFO), not a regular file"
	case m&fs.ModeCharDevice != 0:
		what = "a character device, not a regular file"
	case m&fs.ModeSocket != 0:
		what = "a socket, not a regular file"
	case m.IsDir():
		what = "a directory, not a file"
	}
	return usagef("--%s=%q: %s: file: writes each batch at its place and cuts a failed one back, which needs a regular file; "+
		"use --%s stdout for a terminal or a pipe (--%s discard for /dev/null)", flag, spec, what, flag, flag)
}

// LogRepair logs what Open cut off the file, if anything.
func (s *Lines) LogRepair(log *slog.Logger, spec string) {
	if s.repair.batch > 0 {
		log.Warn("cut off the sink's file the part of a batch that a crash cut short (it was never acknowledged; it is written again whole)",
			"sink", spec, "bytes", s.repair.batch)
	}
	if s.repair.torn > 0 {
		log.Warn("cut a torn last line off the sink's file (a crash mid-write; it was never acknowledged)", "sink", spec, "bytes", s.repair.torn)
	}
}

// Write writes batch, after the simulated store's time for it.
func (s *Lines) Write(ctx context.Context, batch []redisstream.Entry) error {
	if s.failWhile != "" {
		if _, err := os.Stat(s.failWhile); err == nil {
			return fmt.Errorf("%w (%s exists)", ErrOutage, s.failWhile)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if rate := s.speed(); rate > 0 {
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

// speed is the simulated store's items/s now; 0 for none.
func (s *Lines) speed() float64 {
	if s.rate == nil {
		return 0
	}
	return s.rate()
}

// Close closes the output.
func (s *Lines) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.close()
}

var _ store.Sink[redisstream.Entry] = (*Lines)(nil)

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
//
// What a crash leaves beyond size (kill -9 stops a write between two
// pages, so a batch's first complete lines can be in the file) is cut off
// when the file is opened again, by the journal: before each batch, the
// journal records where it goes (offset size, its length); a file that
// ends strictly inside the recorded batch was cut short there.
type fileOutput struct {
	f     file
	j     *journal
	size  int64
	torn  bool // bytes beyond size may remain, or the journal names a batch not written: cut and clear first
	close func() error
}

func (o *fileOutput) writeBatch(p []byte) error {
	if o.torn {
		if err := o.cutBack(); err != nil {
			return err
		}
	}
	err := o.j.record(o.size, int64(len(p)))
	if err == nil {
		_, err = o.f.WriteAt(p, o.size)
	}
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

// cutBack truncates the file to its complete batches, syncs it, and
// clears the journal durably (journal.clear): the batch it names was not
// written, and the next one may start at the same offset.
func (o *fileOutput) cutBack() error {
	if err := o.f.Truncate(o.size); err != nil {
		return fmt.Errorf("cutting a failed write off (back to %d bytes): %w", o.size, err)
	}
	if err := o.f.Sync(); err != nil {
		return fmt.Errorf("cutting a failed write off (back to %d bytes): %w", o.size, err)
	}
	if err := o.j.clear(o.size); err != nil {
		return err
	}
	o.torn = false
	return nil
}

// openFileOutput opens (or creates) the regular file path for whole
// batches (anything else is a notRegularError), with its journal
// path+".inflight", and first cuts off what a
// crash left: the part of a batch the journal says was being written, then
// a torn last line (cutTornTail: a crash the journal cannot tell, such as
// a power loss, or a file an older sluice wrote).
func openFileOutput(path string) (_ *fileOutput, fix repair, err error) {
	// Checked before the open too: opening a FIFO may wait for a reader.
	if fi, err := os.Stat(path); err == nil && !fi.Mode().IsRegular() {
		return nil, fix, notRegularError{fi.Mode()}
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fix, err
	}
	jf, err := os.OpenFile(path+journalSuffix, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		f.Close()
		return nil, fix, err
	}
	defer func() {
		if err != nil {
			f.Close()
			jf.Close()
		}
	}()
	fi, err := f.Stat()
	if err != nil {
		return nil, fix, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fix, notRegularError{fi.Mode()}
	}
	j := &journal{f: jf, id: identify(fi)}
	size := fi.Size()
	if off, ok := j.inFlight(jf, size); ok {
		if err := f.Truncate(off); err != nil {
			return nil, fix, fmt.Errorf("cutting a batch a crash cut short: %w", err)
		}
		fix.batch, size = size-off, off
	}
	if size, fix.torn, err = cutTornTail(f, size); err != nil {
		return nil, fix, err
	}
	if err := f.Sync(); err != nil {
		return nil, fix, err
	}
	if err := j.clear(size); err != nil {
		return nil, fix, err
	}
	return &fileOutput{f: f, j: j, size: size, close: func() error { return errors.Join(f.Close(), jf.Close()) }}, fix, nil
}

// journalSuffix names a file sink's journal: PATH.inflight beside PATH.
const journalSuffix = ".inflight"

// journal is a file sink's sidecar: one fixed-size record naming the batch
// being written to the file (the file's device and inode, the offset, the
// length), written before the batch and not synced — a record costs a
// write into the page cache, not a second fsync per batch. It serves
// crashes of the process (kill -9, OOM), after which the page cache holds
// every write made. After a power loss the record on disk may be an older
// one; it can then leave lines of a batch that was cut short (kept, like a
// duplicate), never cut an acknowledged batch: a record is cleared with an
// fsync (clear) before the offset it names is written again, so a record
// on disk names either the batch being written when the power went, or a
// batch that was written whole and synced, which the file then covers.
type journal struct {
	f  file
	id fileID
}

// journalFormat is a record: fixed width, so each overwrites the last whole.
const journalFormat = "sluice file sink, batch being written: dev %020d inode %020d offset %020d length %020d\n"

// record notes that length bytes are about to be written at offset.
func (j *journal) record(offset, length int64) error {
	_, err := j.f.WriteAt(fmt.Appendf(nil, journalFormat, j.id.dev, j.id.ino, offset, length), 0)
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	return nil
}

// clear records, durably, that nothing is being written after offset.
func (j *journal) clear(offset int64) error {
	if err := j.record(offset, 0); err != nil {
		return err
	}
	if err := j.f.Sync(); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	return nil
}

// inFlight reads the record and returns the offset to cut the file back
// to when it ends strictly inside the batch recorded for this file (same
// device and inode): that batch was cut short. A missing or malformed
// record, or one for another file, cuts nothing.
func (j *journal) inFlight(r io.ReaderAt, size int64) (int64, bool) {
	buf := make([]byte, len(fmt.Sprintf(journalFormat, 0, 0, 0, 0)))
	if _, err := r.ReadAt(buf, 0); err != nil {
		return 0, false
	}
	var id fileID
	var off, n int64
	if _, err := fmt.Sscanf(string(buf), journalFormat, &id.dev, &id.ino, &off, &n); err != nil ||
		string(fmt.Appendf(nil, journalFormat, id.dev, id.ino, off, n)) != string(buf) || id != j.id {
		return 0, false
	}
	return off, off < size && size < off+n
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

// cutTornTail cuts off the last line of f's first size bytes when it has
// no newline: a batch is written before it is acknowledged, so such a line
// is what a crash mid-write left, and its entry is written again by
// whoever claims it. It returns the size after the cut and how many bytes
// it cut.
func cutTornTail(f *os.File, end int64) (size, cut int64, err error) {
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
	return size, end - size, nil
}
