package redisstream_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
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
		dead := newSink()
		dead.stuck = make(chan struct{})
		a := start(t, rdb, dead, redisstream.ConsumerOptions{Name: "a", Drain: time.Millisecond})
		produce(t, rdb, 0, 500)
		eventually(t, "a read 500", func() bool { return a.c.Stats().Read == 500 })
		_ = a.stop() // its drain times out: the 500 stay pending on a
		if p := pending(t, rdb); p != 500 {
			t.Fatalf("pending %d, want 500", p)
		}
		live := newSink()
		l := start(t, rdb, live, redisstream.ConsumerOptions{Name: "b", ClaimIdle: 100 * time.Millisecond})
		produce(t, rdb, 500, 500)
		eventually(t, "all 1000 written by b", func() bool { return live.distinct() == 1000 })
		eventually(t, "nothing pending", func() bool { return pending(t, rdb) == 0 })
		if st := l.c.Stats(); st.Claimed != 500 {
			t.Fatalf("claimed %d, want 500: %+v", st.Claimed, st)
		}
	})
}

// TestRestartWritesOwnPending: a consumer restarting under its name writes
// what it had read and not acknowledged, before anything new.
func TestRestartWritesOwnPending(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	dead := newSink()
	dead.stuck = make(chan struct{})
	a := start(t, rdb, dead, redisstream.ConsumerOptions{Name: "a", Drain: time.Millisecond})
	produce(t, rdb, 0, 300)
	eventually(t, "a read 300", func() bool { return a.c.Stats().Read == 300 })
	_ = a.stop()
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
		var mu sync.Mutex
		var got []redisstream.Entry
		s := store.SinkFunc[redisstream.Entry](func(_ context.Context, batch []redisstream.Entry) error {
			mu.Lock()
			got = append(got, batch...)
			mu.Unlock()
			return nil
		})
		start(t, rdb, s, redisstream.ConsumerOptions{Name: "a"})
		rdb.XAdd(ctx, &redis.XAddArgs{Stream: key, Values: []any{"data", `{"x":1}`}})
		rdb.XAdd(ctx, &redis.XAddArgs{Stream: key, Values: []any{"other", "field", "ts", "garbage"}})
		eventually(t, "both written", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == 2 })
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
	} {
		_, err := redisstream.NewConsumer(rdb, ok, tc.o)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewConsumer(%+v) = %v, want an error naming %s", tc.o, err, tc.want)
		}
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
