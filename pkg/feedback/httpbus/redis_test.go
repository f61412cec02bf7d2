package httpbus_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/feedback/httpbus"
	"github.com/sluice-dev/sluice/pkg/feedback/redisbus"
	"github.com/sluice-dev/sluice/pkg/state"
	"github.com/sluice-dev/sluice/pkg/store"
)

// redisReceiver serves a receiver that delivers to a redisbus.Publisher on
// rdb, as sluice receiver does.
func redisReceiver(t *testing.T, rdb redis.UniversalClient, o redisbus.Options) *httptest.Server {
	t.Helper()
	pub, err := redisbus.NewPublisher(rdb, o)
	if err != nil {
		t.Fatal(err)
	}
	h, err := httpbus.NewReceiver(httpbus.ReceiverOptions{Deliver: pub.Publish, Token: "s3cret", Registerer: prometheus.NewRegistry(), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// post posts body to srv's /feedback and returns the status code.
func post(t *testing.T, srv *httptest.Server, body string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/feedback", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer s3cret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestReceiverSeedStore: the seed's store posts its FeedbackEvent (no seq)
// to sluice receiver on a real redis-server; it is stored as its pressure,
// ordered by its ts: a retried older post does not overwrite a newer one.
func TestReceiverSeedStore(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t).Client(t)
	srv := redisReceiver(t, rdb, redisbus.Options{})
	key := "sluice:pressure:{default}"

	if code := post(t, srv, `{"coordinator_id":"default","queue_size":950,"capacity":1000,"level":"hard","source":"store","ts":1764230001.5}`); code != 204 {
		t.Fatalf("the seed's event with a float ts: %d, want 204", code)
	}
	if code := post(t, srv, `{"coordinator_id":"default","queue_size":800,"capacity":1000,"level":"soft","source":"store","ts":1764230000.5}`); code != 204 {
		t.Fatalf("an older post: %d, want 204 (dropped without error)", code)
	}
	h := rdb.HGetAll(ctx, key).Val()
	if h["level"] != "hard" || h["seq"] != "1764230001500000" || h["ts"] != "2025-11-27T07:53:21.5Z" {
		t.Fatalf("pressure hash %v: want the newer ts's event (hard, seq 1764230001500000)", h)
	}
	if !rdb.SIsMember(ctx, "sluice:pressure:hard", "default").Val() {
		t.Fatal("the seed's store is not in the hard set KEDA counts")
	}

	// Without ts: numbered by arrival, so the next post is newer.
	rdb.Del(ctx, key)
	for _, l := range []string{"soft", "ok"} {
		if code := post(t, srv, `{"coordinator_id":"default","queue_size":500,"capacity":1000,"level":"`+l+`"}`); code != 204 {
			t.Fatalf("the bare seed event (%s): %d, want 204", l, code)
		}
		if got := rdb.HGet(ctx, key, "level").Val(); got != l {
			t.Fatalf("after posting %s without seq or ts the stored level is %q", l, got)
		}
	}
}

// levelRate is the Rate a Handler steers, reduced to what this test reads:
// the pressure level it last set, and when.
type levelRate struct {
	mu      sync.Mutex
	level   state.Level
	changed chan struct{}
}

func newLevelRate() *levelRate { return &levelRate{changed: make(chan struct{}, 1)} }

func (r *levelRate) SetPressure(_ context.Context, _ string, l state.Level) error {
	r.mu.Lock()
	r.level = l
	r.mu.Unlock()
	select {
	case r.changed <- struct{}{}:
	default:
	}
	return nil
}
func (r *levelRate) SetShadowScale(context.Context, string, float64) error { return nil }
func (r *levelRate) CompareAndSetScale(_ context.Context, _ string, _, s float64) (float64, time.Time, error) {
	return s, time.Time{}, nil
}

// waitLevel waits until the handler has set level l, and returns when.
func (r *levelRate) waitLevel(t *testing.T, l state.Level) time.Time {
	t.Helper()
	deadline := time.After(60 * time.Second)
	for {
		r.mu.Lock()
		got := r.level
		r.mu.Unlock()
		if got == l {
			return time.Now()
		}
		select {
		case <-r.changed:
		case <-deadline:
			t.Fatalf("the handler's level is %q after 60 s, want %q", got, l)
		}
	}
}

// TestHostileSeq (finding 10 of issue 20): a real write coordinator
// (store.WriteCoordinator, its defaults: a sample every 250 ms, a report
// every 2 s) reports ok through one receiver; a token holder posts a hard
// event with seq 2^64-1 as the same coordinator through another receiver
// (two receivers, one real redis-server); a Handler follows the Redis bus.
// The hostile event counts at most until the real coordinator's first event
// after the hold (feedback.DefaultHold, 3 s), not for the report TTL (10 s):
// the handler and the stored pressure follow the real coordinator again.
func TestHostileSeq(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	real, hostile := redisReceiver(t, srv.Client(t), redisbus.Options{}), redisReceiver(t, srv.Client(t), redisbus.Options{})

	rate := newLevelRate()
	h, err := feedback.NewHandler(rate, feedback.Options{Providers: []string{"ibkr"}, Policy: feedback.DefaultStepPolicy, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	sub, err := redisbus.NewSubscriber(srv.Client(t), redisbus.Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	stop, err := sub.Subscribe(ctx, h.Handle)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()

	client, err := httpbus.NewClient(httpbus.ClientOptions{URL: real.URL + "/feedback", Token: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	coord, err := store.New(store.SinkFunc[int](func(context.Context, []int) error { return nil }),
		store.Options[int]{ID: "store-0", Capacity: 1000, Publisher: client, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer coord.Abort()
	key := "sluice:pressure:{store-0}"
	rate.waitLevel(t, state.OK)
	for rdb.HGet(ctx, key, "level").Val() != "ok" { // its first report is stored
		time.Sleep(10 * time.Millisecond)
	}

	start := time.Now()
	if code := post(t, hostile, `{"coordinator_id":"store-0","queue_size":1000,"capacity":1000,"level":"hard","seq":18446744073709551615}`); code != 204 {
		t.Fatalf("the hostile post: %d", code)
	}
	rate.waitLevel(t, state.Hard) // it counts, for a while
	handler := rate.waitLevel(t, state.OK).Sub(start)
	for rdb.HGet(ctx, key, "seq").Val() == "18446744073709551615" {
		time.Sleep(10 * time.Millisecond)
	}
	stored := time.Since(start)
	t.Logf("seq 2^64-1 silenced the real coordinator for %v in the handler, %v in the stored pressure", handler.Round(time.Millisecond), stored.Round(time.Millisecond))
	// Upper bounds, generous for a busy machine, below the old 10 s TTL:
	// the hold, then the coordinator's next sample (handler) or report
	// (stored, heartbeat 2 s).
	if handler > feedback.DefaultHold+3*time.Second || stored > feedback.DefaultHold+5*time.Second {
		t.Fatalf("silenced for %v (handler) and %v (stored pressure): want at most the hold %v and the coordinator's next event",
			handler, stored, feedback.DefaultHold)
	}
}
