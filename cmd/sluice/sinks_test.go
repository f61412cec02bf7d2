package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/internal/sinktest"
)

// TestCoordinatorDiskFull: `sluice coordinator --sink file:` on a real
// 8 MB tmpfs that is full for 5 s while a pipeline appends. Every line of
// the output parses, every produced item is in it, none twice.
func TestCoordinatorDiskFull(t *testing.T) {
	f := newFleet(t)
	dir := sinktest.MountTmpfs(t, "8m")
	f.register(400, 20)
	out := filepath.Join(dir, "c0.jsonl")
	c0 := f.start("c0", "coordinator", "--id", "c0", "--sink", "file:"+out)
	p1 := f.start("p1", "pipeline", "--id", "p1")
	waitFor(t, 30*time.Second, "200 items written", func() bool { return f.metric(c0, "coordinator_items_written_total") >= 200 })
	filler := sinktest.FillUp(t, dir)
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
	c := sinktest.CheckOutput(t, out)
	t.Logf("filesystem full for 5 s: %.0f failed writes; produced %d, %d lines checked, %d bad, %d distinct, lost %d, duplicated %d",
		failures, produced, c.Lines+len(c.Bad), len(c.Bad), c.Distinct, produced-int64(c.Distinct), c.Dups)
	if len(c.Bad) > 0 {
		t.Errorf("%d lines do not parse, e.g. %s", len(c.Bad), c.Bad[0])
	}
	if int64(c.Distinct) != produced || c.Dups != 0 {
		t.Errorf("produced %d, written %d distinct with %d duplicates", produced, c.Distinct, c.Dups)
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
	// c1 goes on meanwhile, so the group's last delivered entry is read
	// first, then what is pending, then the files: an entry delivered
	// between the reads is after last, one delivered before is pending or
	// was written before its ack (the other order counted an entry c1 was
	// given between the two reads as acknowledged before it was written:
	// seen with the CPUs loaded).
	unacked := map[string]bool{}
	heldByC0 := 0
	groups, err := f.rdb.XInfoGroups(ctx, stream).Result()
	if err != nil || len(groups) != 1 {
		t.Fatalf("groups %v: %v", groups, err)
	}
	pend, err := f.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: stream, Group: "coordinators", Start: "-", End: "+", Count: 1e6}).Result()
	if err != nil {
		t.Fatal(err)
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
	atKill := sinktest.CheckOutput(t, files...)
	if len(atKill.Bad) > 0 {
		t.Errorf("at the kill, lines that do not parse: %v", atKill.Bad)
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

	end := sinktest.CheckOutput(t, files...)
	acked, found := 0, 0
	for id := range end.IDs {
		if !unacked[id] {
			acked++
			if atKill.IDs[id] > 0 {
				found++
			}
		}
	}
	t.Logf("kill -9 mid-write: produced %d; at the kill %d lines checked, %d acknowledged entries, %d of them in the files; "+
		"c0 held %d unacknowledged, out of the group %v after the kill (--claim-idle 2s); at the end %d lines checked, %d bad, %d distinct, duplicated %d",
		produced, atKill.Lines+len(atKill.Bad), acked, found, heldByC0, departed.Round(10*time.Millisecond),
		end.Lines+len(end.Bad), len(end.Bad), end.Distinct, end.Dups)
	if len(end.Bad) > 0 {
		t.Errorf("%d lines do not parse, e.g. %s", len(end.Bad), end.Bad[0])
	}
	if found != acked || acked == 0 {
		t.Errorf("%d entries were acknowledged at the kill, %d of them in the files", acked, found)
	}
	if int64(end.Distinct) != produced || end.IDs["torn-by-the-test"] != 0 {
		t.Errorf("produced %d, written %d distinct (%d torn-by-the-test)", produced, end.Distinct, end.IDs["torn-by-the-test"])
	}
	if end.Dups > heldByC0 {
		t.Errorf("%d duplicates, but c0 held only %d unacknowledged entries at the kill", end.Dups, heldByC0)
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
		sinktest.WriteFile(t, fail, "")
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
		out := sinktest.CheckOutput(t, file)
		t.Logf("kill -9 during a %d-byte batch write (attempt %d): %d bytes of it in the file at the kill (%d complete lines); "+
			"after the restart %d lines, %d bad, %d distinct, %d duplicated", total, attempt, atKill, atKill/line,
			out.Lines+len(out.Bad), len(out.Bad), out.Distinct, out.Dups)
		if len(out.Bad) > 0 || out.Distinct != n+1 || out.Dups != 0 {
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
