package httpbus_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/pkg/feedback/httpbus"
	"github.com/sluice-dev/sluice/pkg/feedback/redisbus"
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
