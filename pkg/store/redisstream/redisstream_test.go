package redisstream_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/pkg/state"
	"github.com/sluice-dev/sluice/pkg/store"
	"github.com/sluice-dev/sluice/pkg/store/redisstream"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

const key = "sluice:stream:{s}"

// sink records how often each item was written; it can be stopped (every
// write then waits for ctx) or made to fail.
type sink struct {
	mu      sync.Mutex
	counts  map[string]int
	stuck   chan struct{} // non-nil: writes block until closed or ctx ends
	failing bool
}

func newSink() *sink { return &sink{counts: map[string]int{}} }

func (s *sink) Write(ctx context.Context, batch []redisstream.Entry) error {
	s.mu.Lock()
	stuck, failing := s.stuck, s.failing
	s.mu.Unlock()
	if stuck != nil {
		select {
		case <-stuck:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if failing {
		return errors.New("store down")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range batch {
		s.counts[string(e.Data)]++
	}
	return nil
}

// recorder is a sink that keeps every entry it is given.
type recorder struct {
	mu  sync.Mutex
	got []redisstream.Entry
}

func (r *recorder) Write(_ context.Context, batch []redisstream.Entry) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, batch...)
	return nil
}

// entries returns a copy of what it was given so far.
func (r *recorder) entries() []redisstream.Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

func (s *sink) distinct() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.counts)
}

func produce(t *testing.T, rdb redis.UniversalClient, from, n int) {
	t.Helper()
	p, err := redisstream.NewProducer(rdb, redisstream.Options{Stream: "s"})
	if err != nil {
		t.Fatal(err)
	}
	for i := from; i < from+n; i += 100 {
		var items [][]byte
		for j := i; j < min(i+100, from+n); j++ {
			items = append(items, []byte(strconv.Itoa(j)))
		}
		if err := p.Append(context.Background(), items...); err != nil {
			t.Fatal(err)
		}
	}
}

type running struct {
	c      *redisstream.Consumer
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

func start(t *testing.T, rdb redis.UniversalClient, s store.Sink[redisstream.Entry], o redisstream.ConsumerOptions) *running {
	t.Helper()
	o.Stream, o.Logger = "s", quiet
	if o.Refresh == 0 {
		o.Refresh = 20 * time.Millisecond
	}
	if o.Block == 0 {
		o.Block = 50 * time.Millisecond
	}
	if o.Store.Linger == 0 {
		o.Store.Linger = time.Millisecond
	}
	c, err := redisstream.NewConsumer(rdb, s, o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{c: c, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- c.Run(ctx) }()
	t.Cleanup(func() { r.stop() })
	return r
}

// stop ends Run and returns its error; calls after the first return the same.
func (r *running) stop() error {
	r.once.Do(func() {
		r.cancel()
		r.err = <-r.done
	})
	return r.err
}

// leavePending runs a consumer name whose sink never writes, appends n
// entries, and stops it once it read them: its drain times out, so the n
// stay pending on it.
func leavePending(t *testing.T, rdb redis.UniversalClient, name string, n int) {
	t.Helper()
	dead := newSink()
	dead.stuck = make(chan struct{})
	a := start(t, rdb, dead, redisstream.ConsumerOptions{Name: name, Drain: time.Millisecond})
	produce(t, rdb, 0, n)
	eventually(t, fmt.Sprintf("%s read %d", name, n), func() bool { return a.c.Stats().Read == int64(n) })
	_ = a.stop()
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func pending(t *testing.T, rdb redis.UniversalClient) int64 {
	t.Helper()
	p, err := rdb.XPending(context.Background(), key, "coordinators").Result()
	if err != nil {
		t.Fatal(err)
	}
	return p.Count
}

// TestWritesAcksAndTrims: every entry written once, acknowledged, and the
// stream trimmed behind the group.
func TestWritesAcksAndTrims(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		rdb := b.Client(t)
		s := newSink()
		r := start(t, rdb, s, redisstream.ConsumerOptions{Name: "c1"})
		produce(t, rdb, 0, 2000)
		eventually(t, "2000 written", func() bool { return s.distinct() == 2000 })
		eventually(t, "all acknowledged and trimmed", func() bool {
			n, _ := rdb.XLen(context.Background(), key).Result()
			return pending(t, rdb) == 0 && r.c.Stats().Acked == 2000 && n < 2000
		})
		if err := r.stop(); err != nil {
			t.Fatal(err)
		}
		for k, n := range s.counts {
			if n != 1 {
				t.Fatalf("item %s written %d times", k, n)
			}
		}
		if st := r.c.Stats(); st.Read != 2000 || st.Written != 2000 || st.Claimed != 0 {
			t.Fatalf("stats %+v", st)
		}
	})
}

// TestDeadConsumerIsClaimed: a consumer that stops with entries it read
// but never wrote leaves them pending; a living one claims and writes them;
// the stream keeps them until then, whatever the trimming.
func TestDeadConsumerIsClaimed(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		rdb := b.Client(t)
		leavePending(t, rdb, "a", 500)
		if p := pending(t, rdb); p != 500 {
			t.Fatalf("pending %d, want 500", p)
		}
		live := newSink()
		l := start(t, rdb, live, redisstream.ConsumerOptions{Name: "b", ClaimIdle: 100 * time.Millisecond})
		produce(t, rdb, 500, 500)
		eventually(t, "all 1000 written by b", func() bool { return live.distinct() == 1000 })
		eventually(t, "nothing pending", func() bool { return pending(t, rdb) == 0 })
		// At least a's 500: on a loaded machine b may also claim back some
		// of its own entries that waited in its queue for longer than
		// ClaimIdle (100 ms), and write them twice (Delivery, case 3).
		if st := l.c.Stats(); st.Claimed < 500 {
			t.Fatalf("claimed %d, want at least 500: %+v", st.Claimed, st)
		}
	})
}

// TestRestartWritesOwnPending: a consumer restarting under its name writes
// what it had read and not acknowledged, before anything new.
func TestRestartWritesOwnPending(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	leavePending(t, rdb, "a", 300)
	again := newSink()
	a2 := start(t, rdb, again, redisstream.ConsumerOptions{Name: "a", ClaimIdle: time.Hour})
	eventually(t, "300 written after the restart", func() bool { return again.distinct() == 300 })
	eventually(t, "nothing pending", func() bool { return pending(t, rdb) == 0 })
	if st := a2.c.Stats(); st.Claimed != 0 || st.Read != 300 {
		t.Fatalf("stats %+v: own pending entries are read, not claimed", st)
	}
}

// TestTrimKeepsUnacknowledged: with one consumer stuck, the other's trims
// never remove an entry the stuck one holds (a stream trims a prefix: the
// oldest unacknowledged entry holds back everything after it), and once it
// is written the stream is trimmed.
func TestTrimKeepsUnacknowledged(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	stuck := newSink()
	stuck.stuck = make(chan struct{})
	a := start(t, rdb, stuck, redisstream.ConsumerOptions{Name: "a", Count: 10,
		Store: store.Options[redisstream.Entry]{Capacity: 50, Workers: 1, BatchSize: 1}})
	produce(t, rdb, 0, 100)
	eventually(t, "a holds entries", func() bool { return a.c.Stats().Read > 0 })
	fast := newSink()
	start(t, rdb, fast, redisstream.ConsumerOptions{Name: "b", ClaimIdle: time.Hour})
	for i := 1; i <= 20; i++ { // rounds of new entries, written and trimmed by b
		produce(t, rdb, i*1000, 500)
	}
	heldByA := func() []redis.XPendingExt {
		p, err := rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: key, Group: "coordinators", Consumer: "a", Start: "-", End: "+", Count: 1e6}).Result()
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	eventually(t, "every entry written by b or held by a", func() bool { return fast.distinct()+len(heldByA()) == 10100 })
	time.Sleep(100 * time.Millisecond) // several trims (every 20ms)
	held := heldByA()
	if len(held) == 0 {
		t.Fatal("a holds nothing: the test proves nothing")
	}
	for _, p := range held {
		got, err := rdb.XRange(ctx, key, p.ID, p.ID).Result()
		if err != nil || len(got) != 1 {
			t.Fatalf("entry %s held by a was trimmed (%v)", p.ID, err)
		}
	}
	close(stuck.stuck)
	eventually(t, "a wrote what it held", func() bool { return stuck.distinct() == len(held) })
	eventually(t, "trimmed once all acknowledged", func() bool {
		n, _ := rdb.XLen(ctx, key).Result()
		return pending(t, rdb) == 0 && n < 1000
	})
}

// TestLagIsPressure: entries waiting in the stream count towards the
// coordinator's level, not only its queue.
func TestLagIsPressure(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	s := newSink()
	s.stuck = make(chan struct{})
	r := start(t, rdb, s, redisstream.ConsumerOptions{Name: "a", Count: 10, Store: store.Options[redisstream.Entry]{
		Capacity: 100, Workers: 1, BatchSize: 10, Sample: 5 * time.Millisecond, HardAfter: time.Hour,
	}})
	produce(t, rdb, 0, 1000) // the queue holds at most 100: the rest is lag
	eventually(t, "hard from the lag", func() bool {
		st := r.c.Stats()
		return st.Level == state.Hard && st.Lag >= 800 && st.Depth >= 900
	})
	close(s.stuck)
	eventually(t, "all written, level ok", func() bool {
		st := r.c.Stats()
		return s.distinct() == 1000 && st.Level == state.OK && st.Lag == 0
	})
}

// TestForeignEntries: entries written by hand (no ts, no data) are handed
// to the sink and acknowledged like any other.
func TestForeignEntries(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		rdb := b.Client(t)
		ctx := context.Background()
		s := &recorder{}
		start(t, rdb, s, redisstream.ConsumerOptions{Name: "a"})
		rdb.XAdd(ctx, &redis.XAddArgs{Stream: key, Values: []any{"data", `{"x":1}`}})
		rdb.XAdd(ctx, &redis.XAddArgs{Stream: key, Values: []any{"other", "field", "ts", "garbage"}})
		eventually(t, "both written", func() bool { return len(s.entries()) == 2 })
		got := s.entries()
		sort.Slice(got, func(i, j int) bool { return len(got[i].Data) > len(got[j].Data) })
		if string(got[0].Data) != `{"x":1}` || !got[0].Appended.IsZero() || got[1].Data != nil || !got[1].Appended.IsZero() {
			t.Fatalf("entries %+v", got)
		}
		eventually(t, "acknowledged", func() bool { return pending(t, rdb) == 0 })
	})
}

// TestDeadLettered: with a dead-letter sink (an explicit choice), entries
// the sink keeps refusing go there and are acknowledged: they leave the
// stream instead of blocking its trimming.
func TestDeadLettered(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	bad := newSink()
	bad.failing = true
	dl := newSink()
	r := start(t, rdb, bad, redisstream.ConsumerOptions{Name: "a", Store: store.Options[redisstream.Entry]{
		DeadLetter: dl, Attempts: 2, Backoff: time.Millisecond,
	}})
	produce(t, rdb, 0, 50)
	eventually(t, "50 dead-lettered and acknowledged", func() bool {
		return dl.distinct() == 50 && pending(t, rdb) == 0 && r.c.Stats().Acked == 50
	})
	if st := r.c.Stats(); st.DeadLettered != 50 || st.Written != 0 || st.Acked != 50 {
		t.Fatalf("stats %+v", st)
	}
}

func TestBadOptions(t *testing.T) {
	_, rdb := redistest.Mini(t)
	ok := store.SinkFunc[redisstream.Entry](func(context.Context, []redisstream.Entry) error { return nil })
	for _, tc := range []struct {
		o    redisstream.ConsumerOptions
		want string
	}{
		{redisstream.ConsumerOptions{Name: "a"}, `stream=""`},
		{redisstream.ConsumerOptions{Options: redisstream.Options{Stream: "a b"}, Name: "a"}, `stream="a b"`},
		{redisstream.ConsumerOptions{Options: redisstream.Options{Stream: "s"}}, `name=""`},
		{redisstream.ConsumerOptions{Options: redisstream.Options{Stream: "s"}, Name: "a", Group: "g:1"}, `group="g:1"`},
		{redisstream.ConsumerOptions{Options: redisstream.Options{Stream: "s"}, Name: "a", ClaimIdle: -time.Second}, "claim_idle=-1s"},
		{redisstream.ConsumerOptions{Options: redisstream.Options{Stream: "s"}, Name: "a", Store: store.Options[redisstream.Entry]{Capacity: -1}}, "capacity=-1"},
		// The controller tells a consumer alive by a pressure report under
		// its name: a coordinator reporting under another would look dead.
		{redisstream.ConsumerOptions{Options: redisstream.Options{Stream: "s"}, Name: "a", Store: store.Options[redisstream.Entry]{ID: "b"}},
			`store.id="b": must be empty or equal to name="a"`},
	} {
		if err := tc.o.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want an error naming %s", tc.o, err, tc.want)
		}
		_, err := redisstream.NewConsumer(rdb, ok, tc.o)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewConsumer(%+v) = %v, want an error naming %s", tc.o, err, tc.want)
		}
	}
	same := redisstream.ConsumerOptions{Options: redisstream.Options{Stream: "s"}, Name: "a", Store: store.Options[redisstream.Entry]{ID: "a"}}
	if err := same.Validate(); err != nil {
		t.Errorf("Store.ID equal to Name refused: %v", err)
	}
	if _, err := redisstream.NewConsumer(rdb, nil, redisstream.ConsumerOptions{Options: redisstream.Options{Stream: "s"}, Name: "a"}); err == nil {
		t.Error("nil sink accepted")
	}
	if _, err := redisstream.NewProducer(rdb, redisstream.Options{Stream: strings.Repeat("x", 65)}); err == nil {
		t.Error("a 65-character stream name accepted")
	}
}

// TestRedisGoneAndBack: the consumer survives Redis going away (not
// ready meanwhile) and goes on when it returns.
func TestRedisGoneAndBack(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	s := newSink()
	r := start(t, rdb, s, redisstream.ConsumerOptions{Name: "a"})
	produce(t, rdb, 0, 100)
	eventually(t, "100 written", func() bool { return s.distinct() == 100 })
	srv.Stop()
	eventually(t, "not ready", func() bool { return r.c.Ready() != nil })
	srv.Restart(t) // empty: the group is gone too
	produce(t, rdb, 100, 100)
	eventually(t, "ready again and 100 more written", func() bool { return r.c.Ready() == nil && s.distinct() == 200 })
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(io.Discard, r.c.Stats())
}

// TestRepeatedDataRefused: an entry with two "data" fields (XADD allows
// repeated fields) is not handed to the sink, which would see only one of
// its values: it is moved whole, every field in order, to the refused
// stream and acknowledged. A repeated "ts" only loses the latency.
func TestRepeatedDataRefused(t *testing.T) {
	redistest.Each(t, func(t *testing.T, b redistest.Backend) {
		rdb := b.Client(t)
		ctx := context.Background()
		s := &recorder{}
		r := start(t, rdb, s, redisstream.ConsumerOptions{Name: "a"})
		add := func(fields ...any) string {
			id, err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: key, Values: fields}).Result()
			if err != nil {
				t.Fatal(err)
			}
			return id
		}
		add("data", "first")
		twice := add("data", "one", "data", "two", "ts", "1700000000000000")
		add("data", "ts-twice", "ts", "1700000000000000", "ts", "1700000000000001")
		add("data", "last")
		eventually(t, "3 written, 1 refused, nothing pending", func() bool {
			return len(s.entries()) == 3 && r.c.Stats().Refused == 1 && pending(t, rdb) == 0
		})
		for _, e := range s.entries() {
			if e.ID == twice || string(e.Data) == "one" || string(e.Data) == "two" {
				t.Errorf("the entry with two data fields reached the sink: %+v", e)
			}
			if string(e.Data) == "ts-twice" && !e.Appended.IsZero() {
				t.Errorf("a repeated ts read as %v", e.Appended)
			}
		}
		raw, err := rdb.Do(ctx, "XRANGE", key+":refused", "-", "+").Slice()
		if err != nil || len(raw) != 1 {
			t.Fatalf("refused stream: %v %v, want one entry", raw, err)
		}
		fields := fmt.Sprint(raw[0].([]any)[1])
		want := fmt.Sprint([]any{"data", "one", "data", "two", "ts", "1700000000000000",
			"refused_id", twice, "refused_reason", `field "data" repeated`, "refused_by", "a"})
		if fields != want {
			t.Fatalf("refused entry holds %s, want %s", fields, want)
		}
	})
}

// TestDepartedConsumerRemoved: a consumer that stopped with entries
// pending stays in the group until a living one has claimed them, then is
// removed once idle for longer than ClaimIdle; a consumer that stops with
// nothing pending leaves the group at once; the living one stays.
func TestDepartedConsumerRemoved(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	ctx := context.Background()
	consumers := func() map[string]int64 {
		cs, err := rdb.XInfoConsumers(ctx, key, "coordinators").Result()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]int64{}
		for _, c := range cs {
			out[c.Name] = c.Pending
		}
		return out
	}
	// Taken before a reads its entries: Redis counts their idle time from
	// the read, inside leavePending, so the time since this is at least
	// their idle time (taken after, a slow leavePending made a removal
	// at ClaimIdle look early: 193 ms on a loaded machine).
	stopped := time.Now()
	leavePending(t, rdb, "a", 300)
	if cs := consumers(); cs["a"] != 300 {
		t.Fatalf("consumers %v: a should stay with its 300 pending", cs)
	}
	const claimIdle = 300 * time.Millisecond
	live := newSink()
	b := start(t, rdb, live, redisstream.ConsumerOptions{Name: "b", ClaimIdle: claimIdle})
	eventually(t, "b wrote a's 300", func() bool { return live.distinct() == 300 })
	eventually(t, "a removed from the group", func() bool { _, ok := consumers()["a"]; return !ok })
	took := time.Since(stopped)
	t.Logf("a stopped with 300 pending: claimed and out of the group after %v (ClaimIdle %v)", took.Round(10*time.Millisecond), claimIdle)
	if took < claimIdle {
		t.Fatalf("a removed after %v, before ClaimIdle %v", took, claimIdle)
	}
	if _, ok := consumers()["b"]; !ok || len(consumers()) != 1 {
		t.Fatalf("consumers %v, want b alone", consumers())
	}
	if err := b.stop(); err != nil {
		t.Fatal(err)
	}
	if cs := consumers(); len(cs) != 0 {
		t.Fatalf("consumers %v after b stopped with nothing pending, want none", cs)
	}
	if st := b.c.Stats(); st.Claimed != 300 || pending(t, rdb) != 0 {
		t.Fatalf("stats %+v, pending %d", st, pending(t, rdb))
	}
}

// TestShortReadTimeout: a client whose ReadTimeout is below Block still
// reads without timing out (the read waits at most half the ReadTimeout).
func TestShortReadTimeout(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, ReadTimeout: 300 * time.Millisecond, MaxRetries: -1})
	t.Cleanup(func() { rdb.Close() })
	s := newSink()
	r := start(t, rdb, s, redisstream.ConsumerOptions{Name: "a", Block: time.Second})
	eventually(t, "ready", func() bool { return r.c.Ready() == nil })
	for range 30 { // several reads that find nothing
		if err := r.c.Ready(); err != nil {
			t.Fatalf("a read failed: %v", err)
		}
		time.Sleep(40 * time.Millisecond)
	}
	produce(t, rdb, 0, 10)
	eventually(t, "10 written", func() bool { return s.distinct() == 10 })
}

// TestOnCluster: on a 3-master Redis Cluster the raw reads and claims, the
// refusal (two keys, one hash tag) and the removal of a departed consumer
// work as on one server.
func TestOnCluster(t *testing.T) {
	cl := redistest.StartCluster(t, 3, 0)
	rdb := cl.Client(t)
	ctx := context.Background()
	leavePending(t, rdb, "a", 200)
	twice, err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: key, Values: []any{"data", "one", "data", "two"}}).Result()
	if err != nil {
		t.Fatal(err)
	}
	live := newSink()
	b := start(t, rdb, live, redisstream.ConsumerOptions{Name: "b", ClaimIdle: 300 * time.Millisecond})
	produce(t, rdb, 200, 100)
	eventually(t, "300 written, 1 refused, a removed", func() bool {
		cs, err := rdb.XInfoConsumers(ctx, key, "coordinators").Result()
		return err == nil && len(cs) == 1 && cs[0].Name == "b" && live.distinct() == 300 && b.c.Stats().Refused == 1
	})
	if got, err := rdb.XRange(ctx, key+":refused", "-", "+").Result(); err != nil || len(got) != 1 || got[0].Values["refused_id"] != twice {
		t.Fatalf("refused stream %v, %v", got, err)
	}
	if err := b.stop(); err != nil {
		t.Fatal(err)
	}
	if cs := rdb.XInfoConsumers(ctx, key, "coordinators").Val(); len(cs) != 0 || pending(t, rdb) != 0 {
		t.Fatalf("after b stopped: consumers %v, pending %d", cs, pending(t, rdb))
	}
}
