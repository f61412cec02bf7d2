package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

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

// outputCheck is what a sink's output files hold.
type outputCheck struct {
	lines    int                 // complete lines that parse as JSON objects with an id
	bad      []string            // lines that do not (a torn last line included)
	ids      map[string]int      // how often each id was written
	distinct int                 // len(ids)
	dups     int                 // lines - distinct
	files    map[string][]string // the ids of each file, in order
}

// checkOutput reads the files a line sink wrote: every line must be a JSON
// object with an "id", ended by a newline.
func checkOutput(t *testing.T, files ...string) outputCheck {
	t.Helper()
	c := outputCheck{ids: map[string]int{}, files: map[string][]string{}}
	for _, name := range files {
		b, err := os.ReadFile(name)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		for len(b) > 0 {
			line, rest, complete := bytes.Cut(b, []byte{'\n'})
			b = rest
			var item struct {
				ID string `json:"id"`
			}
			if !complete || json.Unmarshal(line, &item) != nil || item.ID == "" {
				c.bad = append(c.bad, fmt.Sprintf("%s: %q (newline: %v)", filepath.Base(name), line, complete))
				continue
			}
			c.lines++
			c.ids[item.ID]++
			c.files[name] = append(c.files[name], item.ID)
		}
	}
	c.distinct = len(c.ids)
	c.dups = c.lines - c.distinct
	return c
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
			s := &lineSink{out: out, rate: newKnob(0, ""), close: out.close}
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
			writeFile(t, name+journalSuffix, "garbage")
		}, lines(lb / 2), repair{torn: int64(lb/2 - lines(lb/2))}},
		{"the file replaced by a copy", lb / 2, func(t *testing.T, name string) {
			data, _ := os.ReadFile(name)
			writeFile(t, name+".copy", string(data))
			if err := os.Rename(name+".copy", name); err != nil { // another inode: both existed at once
				t.Fatal(err)
			}
		}, lines(lb / 2), repair{torn: int64(lb/2 - lines(lb/2))}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := filepath.Join(t.TempDir(), "out.jsonl")
			s, err := openSink("sink", "file:"+name, nil, "", io.Discard)
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
			s, err = openSink("sink", "file:"+name, nil, "", io.Discard)
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
			if c := checkOutput(t, name); len(c.bad) > 0 {
				t.Errorf("lines that do not parse: %v", c.bad)
			}
		})
	}
}

func writeFile(t *testing.T, name, data string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(data), 0o644); err != nil {
		t.Fatal(err)
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
			s, err := openSink("sink", "file:"+name, nil, "", io.Discard)
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
	s := &lineSink{out: &streamOutput{w: w}, rate: newKnob(0, ""), close: func() error { return nil }}
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

// mountTmpfs mounts a tmpfs of size at a new directory for the test, or
// skips the test where mounting is not permitted.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v: %s): the real full-filesystem case needs root and mount permission; "+
			"TestFileSinkFaults covers the same path with injected faults", err, bytes.TrimSpace(out))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// fillUp writes a file into dir until the filesystem is full, and returns
// its name (remove it to free the space).
func fillUp(t *testing.T, dir string) string {
	t.Helper()
	name := filepath.Join(dir, "filler")
	f, err := os.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 4096)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			return name
		}
	}
}

// TestFileSinkDiskFull: on a real full filesystem (an 8 MB tmpfs), a batch
// that does not fit fails and leaves the file as it was; once there is
// room, the retry writes it whole after the batches before it.
func TestFileSinkDiskFull(t *testing.T) {
	dir := mountTmpfs(t, "8m")
	name := filepath.Join(dir, "out.jsonl")
	s, err := openSink("sink", "file:"+name, nil, "", io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a, b := batchOf("a", 50), batchOf("b", 2000) // b: about 130 kB, many pages
	if err := s.Write(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	filler := fillUp(t, dir)
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

// TestCoordinatorDiskFull: `sluice coordinator --sink file:` on a real
// 8 MB tmpfs that is full for 5 s while a pipeline appends. Every line of
// the output parses, every produced item is in it, none twice.
func TestCoordinatorDiskFull(t *testing.T) {
	f := newFleet(t)
	dir := mountTmpfs(t, "8m")
	f.register(400, 20)
	out := filepath.Join(dir, "c0.jsonl")
	c0 := f.start("c0", "coordinator", "--id", "c0", "--sink", "file:"+out)
	p1 := f.start("p1", "pipeline", "--id", "p1")
	waitFor(t, 30*time.Second, "200 items written", func() bool { return f.metric(c0, "coordinator_items_written_total") >= 200 })
	filler := fillUp(t, dir)
	full := time.Now()
	waitFor(t, 30*time.Second, "writes failing", func() bool { return f.metric(c0, "coordinator_write_errors_total") >= 3 })
	time.Sleep(time.Until(full.Add(5 * time.Second))) // the outage's length, not an assertion
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	failures := f.metric(c0, "coordinator_write_errors_total")
	produced := stopPipelines(t, p1)
	waitFor(t, 60*time.Second, "the stream to drain", func() bool { return f.undrained() == 0 })
	if err := c0.stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	c := checkOutput(t, out)
	t.Logf("filesystem full for 5 s: %.0f failed writes; produced %d, %d lines checked, %d bad, %d distinct, lost %d, duplicated %d",
		failures, produced, c.lines+len(c.bad), len(c.bad), c.distinct, produced-int64(c.distinct), c.dups)
	if len(c.bad) > 0 {
		t.Errorf("%d lines do not parse, e.g. %s", len(c.bad), c.bad[0])
	}
	if int64(c.distinct) != produced || c.dups != 0 {
		t.Errorf("produced %d, written %d distinct with %d duplicates", produced, c.distinct, c.dups)
	}
}

// TestCoordinatorKilledMidWrite: two coordinators write a backlog to
// their files; one is killed with SIGKILL while it writes. At that moment
// every acknowledged entry is in the files. The survivor claims what the
// killed one held and then removes it from the consumer group. A torn
// line is left at the end of the killed one's file (what a kill between
// the pages of a write leaves); the killed one restarts on that file,
// cuts it and writes the rest after it. At the end every line parses,
// every produced item is there, and duplicates are only entries the killed
// one held unacknowledged; the consumers leave the group when they stop.
func TestCoordinatorKilledMidWrite(t *testing.T) {
	f := newFleet(t)
	ctx := context.Background()
	f.register(1500, 50)
	const stream = "sluice:stream:{store}"
	files := []string{filepath.Join(f.dir, "c0.jsonl"), filepath.Join(f.dir, "c1.jsonl")}
	coordinator := func(i int) *proc {
		return f.start(fmt.Sprintf("c%d", i), "coordinator", "--id", fmt.Sprintf("c%d", i), "--sink", "file:"+files[i],
			"--sink-rate", "300", "--batch", "50", "--capacity", "500", "--claim-idle", "2s")
	}
	c0, c1 := coordinator(0), coordinator(1)
	p1, p2 := f.start("p1", "pipeline", "--id", "p1"), f.start("p2", "pipeline", "--id", "p2")
	waitFor(t, 30*time.Second, "c0 to write 300", func() bool { return f.metric(c0, "coordinator_items_written_total") >= 300 })
	produced := stopPipelines(t, p1, p2)
	if f.metric(c0, "coordinator_queue_depth") == 0 {
		t.Fatal("c0 has nothing queued: the kill would not land mid-write")
	}
	c0.kill()
	killed := time.Now()

	// What was not acknowledged at the kill: pending, or not yet delivered.
	unacked := map[string]bool{}
	heldByC0 := 0
	pend, err := f.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: stream, Group: "coordinators", Start: "-", End: "+", Count: 1e6}).Result()
	if err != nil {
		t.Fatal(err)
	}
	groups, err := f.rdb.XInfoGroups(ctx, stream).Result()
	if err != nil || len(groups) != 1 {
		t.Fatalf("groups %v: %v", groups, err)
	}
	pendingIDs := map[string]bool{}
	for _, p := range pend {
		pendingIDs[p.ID] = true
		if p.Consumer == "c0" {
			heldByC0++
		}
	}
	entries, err := f.rdb.XRange(ctx, stream, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	last, _ := parseStreamID(groups[0].LastDeliveredID)
	for _, e := range entries {
		if id, _ := parseStreamID(e.ID); pendingIDs[e.ID] || id.after(last) {
			var item struct {
				ID string `json:"id"`
			}
			_ = json.Unmarshal([]byte(fmt.Sprint(e.Values["data"])), &item)
			unacked[item.ID] = true
		}
	}
	atKill := checkOutput(t, files...)
	if len(atKill.bad) > 0 {
		t.Errorf("at the kill, lines that do not parse: %v", atKill.bad)
	}

	// The survivor claims c0's entries and removes c0 from the group.
	waitFor(t, 60*time.Second, "c0 to leave the group", func() bool { return !f.inGroup("c0") })
	departed := time.Since(killed)

	// A torn line at the end of c0's file, then c0 again on it, alone.
	if err := c1.stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	// Stopped with claimed entries not yet queued (a loaded machine), it
	// stays for the restarted c0 to claim them; with nothing, it leaves.
	c1Held, err := f.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: stream, Group: "coordinators", Start: "-", End: "+", Count: 1e6, Consumer: "c1"}).Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(c1Held) == 0 && f.inGroup("c1") {
		t.Error("c1 stopped with nothing pending, yet it stays in the group")
	}
	tf, err := os.OpenFile(files[0], os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tf.WriteString(`{"id":"torn-by-the-test","pad":"xx`); err != nil {
		t.Fatal(err)
	}
	tf.Close()
	c0 = coordinator(0)
	waitFor(t, 60*time.Second, "the stream to drain", func() bool { return f.undrained() == 0 })
	if err := c0.stop(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	// The torn line alone, or with the rest of a batch the kill cut short.
	if log := f.log("c0"); !strings.Contains(log, "cut a torn last line") && !strings.Contains(log, "a crash cut short") {
		t.Error("the restarted c0 did not log that it cut the torn line")
	}
	if cs := f.rdb.XInfoConsumers(ctx, stream, "coordinators").Val(); len(cs) != 0 {
		t.Errorf("consumers left in the group after every coordinator stopped: %v", cs)
	}

	end := checkOutput(t, files...)
	acked, found := 0, 0
	for id := range end.ids {
		if !unacked[id] {
			acked++
			if atKill.ids[id] > 0 {
				found++
			}
		}
	}
	t.Logf("kill -9 mid-write: produced %d; at the kill %d lines checked, %d acknowledged entries, %d of them in the files; "+
		"c0 held %d unacknowledged, out of the group %v after the kill (--claim-idle 2s); at the end %d lines checked, %d bad, %d distinct, duplicated %d",
		produced, atKill.lines+len(atKill.bad), acked, found, heldByC0, departed.Round(10*time.Millisecond),
		end.lines+len(end.bad), len(end.bad), end.distinct, end.dups)
	if len(end.bad) > 0 {
		t.Errorf("%d lines do not parse, e.g. %s", len(end.bad), end.bad[0])
	}
	if found != acked || acked == 0 {
		t.Errorf("%d entries were acknowledged at the kill, %d of them in the files", acked, found)
	}
	if int64(end.distinct) != produced || end.ids["torn-by-the-test"] != 0 {
		t.Errorf("produced %d, written %d distinct (%d torn-by-the-test)", produced, end.distinct, end.ids["torn-by-the-test"])
	}
	if end.dups > heldByC0 {
		t.Errorf("%d duplicates, but c0 held only %d unacknowledged entries at the kill", end.dups, heldByC0)
	}
	if heldByC0 == 0 {
		t.Error("c0 held nothing at the kill: the test proves nothing")
	}
}

// TestCoordinatorKilledMidBatch: `sluice coordinator --sink file:` is
// killed with SIGKILL while it writes one batch of many pages (40 entries
// of 512 kB: one write of 20 MB), once the batch's first lines are in the
// file. Restarted on that file under its name, it writes its pending
// entries again, whole: every line parses and each entry is in the file
// once. Before the journal, the complete lines the killed write had left
// stayed in the file and were written again (duplicates).
//
// The 40 entries make one batch: a first entry's write fails (--fail-while)
// until they are all queued behind it, so the next batch takes them all.
func TestCoordinatorKilledMidBatch(t *testing.T) {
	f := newFleet(t)
	ctx := context.Background()
	const n, pad = 40, 512 << 10
	values := make([]any, n)
	var total int64 // the big batch's bytes
	for i := range values {
		data := fmt.Sprintf(`{"id":"big-%d","pad":"%s"}`, i, strings.Repeat("x", pad))
		values[i], total = data, total+int64(len(data))+1
	}
	const first = `{"id":"first"}`
	line := int64(len(values[0].(string))) + 1 // a big line, newline included
	for attempt := 1; ; attempt++ {
		stream := fmt.Sprintf("big%d", attempt)
		key, file, fail := "sluice:stream:{"+stream+"}", filepath.Join(f.dir, stream+".jsonl"), filepath.Join(f.dir, stream+".fail")
		writeFile(t, fail, "")
		args := []string{"coordinator", "--id", "c", "--stream", stream, "--sink", "file:" + file,
			"--workers", "1", "--batch", strconv.Itoa(n), "--claim-idle", "1h"}
		c := f.start(stream, append(args, "--fail-while", fail)...)
		if err := f.rdb.XAdd(ctx, &redis.XAddArgs{Stream: key, Values: []any{"data", first}}).Err(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 60*time.Second, "the first entry's write to fail", func() bool { return f.metric(c, "coordinator_write_errors_total") > 0 })
		if _, err := f.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
			for _, v := range values {
				p.XAdd(ctx, &redis.XAddArgs{Stream: key, Values: []any{"data", v}})
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 60*time.Second, "the big entries to be queued", func() bool { return f.metric(c, "coordinator_queue_depth") == n })
		if err := os.Remove(fail); err != nil {
			t.Fatal(err)
		}
		// The write takes milliseconds: watch the file without sleeping.
		start := int64(len(first) + 1) // where the big batch goes
		deadline := time.Now().Add(30 * time.Second)
		for {
			if fi, err := os.Stat(file); err == nil && fi.Size() > start+line {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the coordinator did not write the big batch within 30 s")
			}
		}
		c.kill()
		fi, err := os.Stat(file)
		if err != nil {
			t.Fatal(err)
		}
		atKill := fi.Size() - start // of the big batch
		if atKill >= total {
			if attempt == 5 {
				t.Fatalf("in %d attempts the kill never landed before the batch's write ended", attempt)
			}
			t.Logf("attempt %d: the batch was written whole (%d bytes) before the kill landed; again", attempt, atKill)
			continue
		}
		c = f.start(stream+"-again", args...)
		waitFor(t, 60*time.Second, "the restarted coordinator to write its pending entries", func() bool {
			p, err := f.rdb.XPending(ctx, key, "coordinators").Result()
			return err == nil && p.Count == 0
		})
		if err := c.stop(30 * time.Second); err != nil {
			t.Fatal(err)
		}
		out := checkOutput(t, file)
		t.Logf("kill -9 during a %d-byte batch write (attempt %d): %d bytes of it in the file at the kill (%d complete lines); "+
			"after the restart %d lines, %d bad, %d distinct, %d duplicated", total, attempt, atKill, atKill/line,
			out.lines+len(out.bad), len(out.bad), out.distinct, out.dups)
		if len(out.bad) > 0 || out.distinct != n+1 || out.dups != 0 {
			t.Errorf("want %d distinct lines, each once, every one parsing", n+1)
		}
		if log := f.log(stream + "-again"); !strings.Contains(log, "the part of a batch that a crash cut short") ||
			!strings.Contains(log, fmt.Sprintf(`"bytes":%d`, atKill)) {
			t.Errorf("the restarted coordinator did not log that it cut the %d bytes of the batch", atKill)
		}
		return
	}
}

// TestSinkNotRegularFile: file: on a FIFO or a device is refused before
// anything starts (exit 2), naming the flag and pointing to stdout: a
// batch is written at its offset and a failed one cut back, which only a
// regular file allows (before, each batch failed with ESPIPE, forever).
func TestSinkNotRegularFile(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	dl := "file:" + filepath.Join(t.TempDir(), "dl.jsonl")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--sink", "file:" + fifo}, `--sink="file:` + fifo + `": a named pipe (FIFO), not a regular file`},
		{[]string{"--sink", "file:/dev/null"}, `--sink="file:/dev/null": a character device, not a regular file`},
		{[]string{"--sink", "file:" + filepath.Dir(fifo)}, "a directory, not a file"},
		{[]string{"--sink", "discard", "--dead-letter", "file:" + fifo}, `--dead-letter="file:` + fifo + `": a named pipe (FIFO)`},
		{[]string{"--sink", "file:" + fifo, "--dead-letter", dl}, "use --sink stdout for a terminal or a pipe"},
		{[]string{"--dead-letter", "file:/dev/null"}, "use --dead-letter stdout for a terminal or a pipe (--dead-letter discard for /dev/null)"},
	} {
		r := sluice(t, []string{"SLUICE_REDIS_URL=redis://127.0.0.1:1/0", "SLUICE_RECEIVER_LISTEN=127.0.0.1:0"},
			append([]string{"coordinator"}, tc.args...)...)
		if r.code != 2 || !strings.Contains(r.stderr, tc.want) || strings.Count(strings.TrimSpace(r.stderr), "\n") > 0 {
			t.Errorf("coordinator %v: exit %d, stderr %q; want exit 2 and one line containing %q", tc.args, r.code, r.stderr, tc.want)
		}
	}
	// The check holds for a FIFO created after the path was checked: the
	// file opened is checked again.
	if _, _, err := openFileOutput(fifo); !errors.As(err, new(notRegularError)) {
		t.Errorf("openFileOutput on a FIFO: %v, want a notRegularError", err)
	}
}

// inGroup reports whether name is a consumer of the write stream's group.
func (f *fleet) inGroup(name string) bool {
	cs, _ := f.rdb.XInfoConsumers(context.Background(), "sluice:stream:{store}", "coordinators").Result()
	for _, c := range cs {
		if c.Name == name {
			return true
		}
	}
	return false
}

// streamID is a stream entry's ID, for ordering.
type streamID struct{ ms, seq int64 }

func parseStreamID(s string) (streamID, error) {
	var id streamID
	_, err := fmt.Sscanf(s, "%d-%d", &id.ms, &id.seq)
	return id, err
}

func (a streamID) after(b streamID) bool { return a.ms > b.ms || a.ms == b.ms && a.seq > b.seq }
