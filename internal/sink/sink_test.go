package sink

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/sluice-dev/sluice/internal/sinktest"
	"github.com/sluice-dev/sluice/pkg/store/redisstream"
)

// batchOf returns n entries whose data are JSON objects with ids
// <prefix>-0 … and some padding (lines of 60-odd bytes, so a batch's end
// rarely falls on a page boundary).
func batchOf(prefix string, n int) []redisstream.Entry {
	out := make([]redisstream.Entry, n)
	for i := range out {
		out[i].Data = fmt.Appendf(nil, `{"id":"%s-%d","pad":"%s"}`, prefix, i, strings.Repeat("x", 30))
	}
	return out
}

// linesOf is what a batch writes: each entry's data and a newline.
func linesOf(batches ...[]redisstream.Entry) []byte {
	var b []byte
	for _, batch := range batches {
		for _, e := range batch {
			b = append(append(b, e.Data...), '\n')
		}
	}
	return b
}

// faultyFile is a file whose next writes, syncs or truncations fail as
// told: a failing write stores half of its bytes first, as a full disk
// does.
type faultyFile struct {
	*os.File
	shortWrites, syncFails, truncFails int
}

func (f *faultyFile) WriteAt(p []byte, off int64) (int, error) {
	if f.shortWrites > 0 {
		f.shortWrites--
		n, _ := f.File.WriteAt(p[:len(p)/2], off)
		return n, syscall.ENOSPC
	}
	return f.File.WriteAt(p, off)
}

func (f *faultyFile) Sync() error {
	if f.syncFails > 0 {
		f.syncFails--
		return syscall.EIO
	}
	return f.File.Sync()
}

func (f *faultyFile) Truncate(size int64) error {
	if f.truncFails > 0 {
		f.truncFails--
		return syscall.EIO
	}
	return f.File.Truncate(size)
}

// TestFileSinkFaults: whatever fails — the write (half of the batch
// stored), the fsync, the truncation that cuts a failed write off, several
// times in a row — the file holds exactly the batches whose Write returned
// nil, each once, in order, and every line parses. Retries go as the
// coordinator's do: the same batch again until it is taken.
func TestFileSinkFaults(t *testing.T) {
	for _, tc := range []struct {
		name          string
		fault, jfault faultyFile // of the file, of its journal
		fails         int        // Write calls of batch b that fail
	}{
		{"short write", faultyFile{shortWrites: 1}, faultyFile{}, 1},
		{"two short writes", faultyFile{shortWrites: 2}, faultyFile{}, 2},
		{"fsync fails", faultyFile{syncFails: 1}, faultyFile{}, 1},
		{"short write, and the cut fails once", faultyFile{shortWrites: 1, truncFails: 1}, faultyFile{}, 1},
		{"short write, and the cut fails three times", faultyFile{shortWrites: 1, truncFails: 3}, faultyFile{}, 3},
		{"short write, and the fsync after the cut fails", faultyFile{shortWrites: 1, syncFails: 1}, faultyFile{}, 1},
		{"the journal's record fails", faultyFile{}, faultyFile{shortWrites: 1}, 1},
		{"short write, and clearing the journal fails", faultyFile{shortWrites: 1}, faultyFile{syncFails: 1}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := filepath.Join(t.TempDir(), "out.jsonl")
			out, _, err := openFileOutput(name)
			if err != nil {
				t.Fatal(err)
			}
			defer out.close()
			ff, jf := &faultyFile{File: out.f.(*os.File)}, &faultyFile{File: out.j.f.(*os.File)}
			out.f, out.j.f = ff, jf
			s := &Lines{out: out, close: out.close}
			a, b, c := batchOf("a", 10), batchOf("b", 100), batchOf("c", 10)
			if err := s.Write(context.Background(), a); err != nil {
				t.Fatal(err)
			}
			ff.shortWrites, ff.syncFails, ff.truncFails = tc.fault.shortWrites, tc.fault.syncFails, tc.fault.truncFails
			jf.shortWrites, jf.syncFails = tc.jfault.shortWrites, tc.jfault.syncFails
			failed, torn := 0, false
			for s.Write(context.Background(), b) != nil {
				failed++
				if failed > 10 {
					t.Fatal("batch b never written")
				}
				if fi, _ := ff.Stat(); fi.Size() > int64(len(linesOf(a))) {
					torn = true // a remnant the next Write must cut first
				}
			}
			if failed != tc.fails {
				t.Fatalf("batch b failed %d times, want %d: the faults were not all hit", failed, tc.fails)
			}
			if tc.fault.truncFails > 0 && !torn {
				t.Fatal("no remnant was ever left: the failing cut was not exercised")
			}
			if ff.shortWrites+ff.syncFails+ff.truncFails+jf.shortWrites+jf.syncFails > 0 {
				t.Fatal("a fault was not hit")
			}
			if err := s.Write(context.Background(), c); err != nil {
				t.Fatal(err)
			}
			got, _ := os.ReadFile(name)
			if want := linesOf(a, b, c); !bytes.Equal(got, want) {
				t.Fatalf("file holds %d bytes, want exactly batches a, b, c (%d bytes):\n%s", len(got), len(want), got)
			}
		})
	}
}

// TestFileSinkJournal: what opening a file cuts, after a crash stopped
// the process at each point of a batch's write (the journal records the
// batch, the batch's bytes go out, the fsync): the part of a batch whose
// write was cut short, whole, when the journal names it for this file;
// nothing written whole (it was not acknowledged, and it is written again:
// a duplicate, as a crash before the XACK makes); nothing when the journal
// is malformed or names another file (then only a torn last line is cut).
func TestFileSinkJournal(t *testing.T) {
	a, b := batchOf("a", 10), batchOf("b", 200) // b: about 13 kB, several pages
	lb := len(linesOf(b))
	lines := func(n int) int { return bytes.LastIndexByte(linesOf(b)[:n], '\n') + 1 } // b's complete lines in n bytes
	for _, tc := range []struct {
		name    string
		written int                             // bytes of b in the file at the crash
		spoil   func(t *testing.T, name string) // what happens to the files then
		keep    int                             // bytes of b kept when opened again
		fix     repair
	}{
		{"before the write", 0, nil, 0, repair{}},
		{"within the first line", 20, nil, 0, repair{batch: 20}},
		{"after some lines, within one", lb / 2, nil, 0, repair{batch: int64(lb / 2)}},
		{"after some lines, at a line's end", lines(lb / 2), nil, 0, repair{batch: int64(lines(lb / 2))}},
		{"written whole", lb, nil, lb, repair{}},
		{"the journal spoilt", lb / 2, func(t *testing.T, name string) {
			sinktest.WriteFile(t, name+journalSuffix, "garbage")
		}, lines(lb / 2), repair{torn: int64(lb/2 - lines(lb/2))}},
		{"the file replaced by a copy", lb / 2, func(t *testing.T, name string) {
			data, _ := os.ReadFile(name)
			sinktest.WriteFile(t, name+".copy", string(data))
			if err := os.Rename(name+".copy", name); err != nil { // another inode: both existed at once
				t.Fatal(err)
			}
		}, lines(lb / 2), repair{torn: int64(lb/2 - lines(lb/2))}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := filepath.Join(t.TempDir(), "out.jsonl")
			s, err := Open("sink", "file:"+name, Options{}, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Write(context.Background(), a); err != nil {
				t.Fatal(err)
			}
			out := s.out.(*fileOutput)
			// The crash: the journal's record and part of b, then nothing.
			if err := out.j.record(out.size, int64(lb)); err != nil {
				t.Fatal(err)
			}
			if _, err := out.f.WriteAt(linesOf(b)[:tc.written], out.size); err != nil {
				t.Fatal(err)
			}
			if err := out.close(); err != nil {
				t.Fatal(err)
			}
			if tc.spoil != nil {
				tc.spoil(t, name)
			}
			s, err = Open("sink", "file:"+name, Options{}, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if s.repair != tc.fix {
				t.Errorf("cut %+v, want %+v", s.repair, tc.fix)
			}
			got, _ := os.ReadFile(name)
			if want := append(linesOf(a), linesOf(b)[:tc.keep]...); !bytes.Equal(got, want) {
				t.Fatalf("file holds %d bytes, want %d: batch a and %d bytes of b", len(got), len(want), tc.keep)
			}
			if c := sinktest.CheckOutput(t, name); len(c.Bad) > 0 {
				t.Errorf("lines that do not parse: %v", c.Bad)
			}
		})
	}
}

// TestFileSinkCutsTornTail: opening a file whose last line has no newline
// (a crash mid-write: never acknowledged) cuts that line off, so the next
// batch starts on a line of its own; complete lines are kept.
func TestFileSinkCutsTornTail(t *testing.T) {
	long := `{"id":"long","pad":"` + strings.Repeat("y", 100<<10) // longer than one read back
	for _, tc := range []struct {
		name, before, kept string
	}{
		{"missing", "", ""},
		{"empty", "", ""},
		{"clean", "{\"id\":\"k-0\"}\n{\"id\":\"k-1\"}\n", "{\"id\":\"k-0\"}\n{\"id\":\"k-1\"}\n"},
		{"torn", "{\"id\":\"k-0\"}\n{\"id\":\"k-", "{\"id\":\"k-0\"}\n"},
		{"one torn line", "{\"id\":\"k-", ""},
		{"long torn line", "{\"id\":\"k-0\"}\n" + long, "{\"id\":\"k-0\"}\n"},
		{"long complete line, then torn", long + "\"}\n{\"id", long + "\"}\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := filepath.Join(t.TempDir(), "out.jsonl")
			if tc.name != "missing" {
				if err := os.WriteFile(name, []byte(tc.before), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			s, err := Open("sink", "file:"+name, Options{}, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if want := (repair{torn: int64(len(tc.before) - len(tc.kept))}); s.repair != want {
				t.Errorf("cut %+v, want %+v", s.repair, want)
			}
			a := batchOf("a", 3)
			if err := s.Write(context.Background(), a); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			got, _ := os.ReadFile(name)
			if want := tc.kept + string(linesOf(a)); string(got) != want {
				t.Fatalf("file holds %.200q…, want %.200q…", got, want)
			}
		})
	}
}

// TestStdoutSinkEndsTornLine: a stream output cannot be cut back; after a
// write that stopped within a line, the retried batch starts on a line of
// its own, so the torn line is one bad line, not a record glued onto it.
func TestStdoutSinkEndsTornLine(t *testing.T) {
	var out bytes.Buffer
	w := &shortWriter{w: &out, failAfter: 25}
	s := &Lines{out: &streamOutput{w: w}, close: func() error { return nil }}
	a := batchOf("a", 2)
	if err := s.Write(context.Background(), a); err == nil {
		t.Fatal("the short write did not fail")
	}
	if err := s.Write(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 3 || lines[0] != string(a[0].Data)[:25] || lines[1] != string(a[0].Data) || lines[2] != string(a[1].Data) {
		t.Fatalf("stdout:\n%s", out.String())
	}
}

// shortWriter stores failAfter bytes of its first write, then fails it.
type shortWriter struct {
	w         io.Writer
	failAfter int
}

func (s *shortWriter) Write(p []byte) (int, error) {
	if s.failAfter > 0 && len(p) > s.failAfter {
		n, _ := s.w.Write(p[:s.failAfter])
		s.failAfter = 0
		return n, syscall.EPIPE
	}
	return s.w.Write(p)
}

// TestFileSinkDiskFull: on a real full filesystem (an 8 MB tmpfs), a batch
// that does not fit fails and leaves the file as it was; once there is
// room, the retry writes it whole after the batches before it.
func TestFileSinkDiskFull(t *testing.T) {
	dir := sinktest.MountTmpfs(t, "8m")
	name := filepath.Join(dir, "out.jsonl")
	s, err := Open("sink", "file:"+name, Options{}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a, b := batchOf("a", 50), batchOf("b", 2000) // b: about 130 kB, many pages
	if err := s.Write(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	filler := sinktest.FillUp(t, dir)
	for range 3 {
		err := s.Write(context.Background(), b)
		if !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("writing to a full filesystem: %v, want ENOSPC", err)
		}
		if got, _ := os.ReadFile(name); !bytes.Equal(got, linesOf(a)) {
			t.Fatalf("after a failed write the file holds %d bytes, want batch a alone (%d): a failed batch was left in it",
				len(got), len(linesOf(a)))
		}
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(name); !bytes.Equal(got, linesOf(a, b)) {
		t.Fatalf("file holds %d bytes, want batches a and b (%d)", len(got), len(linesOf(a, b)))
	}
}

// TestOpenFileOutputFIFO: the check holds for a FIFO created after the
// path was checked: the file opened is checked again (the command's
// messages are TestSinkNotRegularFile's, in cmd/sluice).
func TestOpenFileOutputFIFO(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	if _, _, err := openFileOutput(fifo); !errors.As(err, new(notRegularError)) {
		t.Errorf("openFileOutput on a FIFO: %v, want a notRegularError", err)
	}
}
