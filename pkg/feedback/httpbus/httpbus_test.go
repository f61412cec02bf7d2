package httpbus_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/feedback/httpbus"
	"github.com/sluice-dev/sluice/pkg/state"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func event(c string, seq uint64, l state.Level) feedback.Event {
	return feedback.Event{CoordinatorID: c, QueueSize: 500, Capacity: 1000, Level: l, Seq: seq}
}

func newReceiver(t *testing.T, deliver feedback.Deliver, ready func(context.Context) error) *httptest.Server {
	t.Helper()
	reg := prometheus.NewRegistry()
	h, err := httpbus.NewReceiver(httpbus.ReceiverOptions{
		Deliver: deliver, Token: "s3cret", MaxBody: 512, Gatherer: reg, Registerer: reg, Ready: ready, Logger: quiet,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

func TestReceiver(t *testing.T) {
	var got []feedback.Event
	srv := newReceiver(t, func(_ context.Context, e feedback.Event) error {
		if e.CoordinatorID == "broken" {
			return errors.New("redis down")
		}
		got = append(got, e)
		return nil
	}, nil)
	valid := `{"coordinator_id":"store-0","queue_size":800,"capacity":1000,"level":"soft","seq":1}`
	for _, tc := range []struct {
		name, method, ctype, auth, body string
		code                            int
		field                           string
	}{
		{"valid", "POST", "application/json", "Bearer s3cret", valid, 204, ""},
		{"charset param", "POST", "application/json; charset=utf-8", "Bearer s3cret", strings.Replace(valid, `"seq":1`, `"seq":2`, 1), 204, ""},
		{"no token", "POST", "application/json", "", valid, 401, ""},
		{"wrong token", "POST", "application/json", "Bearer guess", valid, 401, ""},
		{"lower-case scheme", "POST", "application/json", "bearer s3cret", strings.Replace(valid, `"seq":1`, `"seq":3`, 1), 204, ""},
		{"other scheme", "POST", "application/json", "Basic s3cret", valid, 401, ""},
		{"token only", "POST", "application/json", "s3cret", valid, 401, ""},
		{"GET", "GET", "", "Bearer s3cret", "", 405, ""},
		{"text", "POST", "text/plain", "Bearer s3cret", valid, 415, ""},
		{"no type", "POST", "", "Bearer s3cret", valid, 415, ""},
		{"too big", "POST", "application/json", "Bearer s3cret", `{"coordinator_id":"` + strings.Repeat("x", 600) + `"}`, 413, ""},
		{"malformed", "POST", "application/json", "Bearer s3cret", `{"coordinator_id":`, 400, ""},
		{"out of range", "POST", "application/json", "Bearer s3cret", strings.Replace(valid, "800", "1800", 1), 400, "queue_size"},
		{"bad level", "POST", "application/json", "Bearer s3cret", strings.Replace(valid, "soft", "panic", 1), 400, "level"},
		{"delivery fails", "POST", "application/json", "Bearer s3cret", strings.Replace(valid, "store-0", "broken", 1), 503, ""},
		// The seed's FeedbackEvent: no seq; with source and a float ts.
		{"seed", "POST", "application/json", "Bearer s3cret", `{"coordinator_id":"default","queue_size":800,"capacity":1000,"level":"soft"}`, 204, ""},
		{"seed with ts", "POST", "application/json", "Bearer s3cret", `{"coordinator_id":"default","queue_size":950,"capacity":1000,"level":"hard","source":"store","ts":1764230000.123456}`, 204, ""},
		{"seed with a bad ts", "POST", "application/json", "Bearer s3cret", `{"coordinator_id":"default","queue_size":950,"capacity":1000,"level":"hard","ts":-1}`, 400, "ts"},
	} {
		req, _ := http.NewRequest(tc.method, srv.URL+"/feedback", strings.NewReader(tc.body))
		if tc.ctype != "" {
			req.Header.Set("Content-Type", tc.ctype)
		}
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code {
			t.Errorf("%s: %d %s, want %d", tc.name, resp.StatusCode, body, tc.code)
			continue
		}
		if tc.code >= 400 {
			var eb struct{ Error, Field string }
			if err := json.Unmarshal(body, &eb); err != nil || eb.Error == "" || eb.Field != tc.field {
				t.Errorf("%s: error body %s, want field %q", tc.name, body, tc.field)
			}
		}
	}
	if len(got) != 5 || got[0].Level != state.Soft {
		t.Fatalf("delivered %+v, want the 5 valid events", got)
	}
	if seed, ts := got[3], got[4]; seed.Seq < 1 || seed.CoordinatorID != "default" || ts.Seq != 1764230000123456 || ts.Level != state.Hard {
		t.Fatalf("the seed's events delivered as %+v and %+v: want seq by arrival, then by ts in µs", seed, ts)
	}

	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200, "/metrics": 200, "/nope": 404} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s: %d, want %d", path, resp.StatusCode, want)
		}
		if path == "/metrics" && !strings.Contains(string(body), `feedback_http_requests_total{code="401"} 4`) {
			t.Errorf("/metrics lacks the request counts:\n%s", body)
		}
	}
}

func TestReceiverNotReady(t *testing.T) {
	srv := newReceiver(t, func(context.Context, feedback.Event) error { return nil },
		func(context.Context) error { return errors.New("redis: connection refused") })
	resp, err := http.Get(srv.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 {
		t.Fatalf("/readyz = %d, want 503", resp.StatusCode)
	}
}

func TestHTTPClientRetries(t *testing.T) {
	var calls atomic.Int32
	var delivered atomic.Int32
	srv := newReceiver(t, func(_ context.Context, e feedback.Event) error {
		if calls.Add(1) <= 2 {
			return errors.New("transient")
		}
		delivered.Add(1)
		return nil
	}, nil)
	c, err := httpbus.NewClient(httpbus.ClientOptions{URL: srv.URL + "/feedback", Token: "s3cret", Backoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Publish(context.Background(), event("store-0", 1, state.Hard)); err != nil {
		t.Fatalf("after two 503s: %v", err)
	}
	if calls.Load() != 3 || delivered.Load() != 1 {
		t.Fatalf("calls %d delivered %d, want 3 and 1", calls.Load(), delivered.Load())
	}

	// A 4xx is final: no retry.
	bad, _ := httpbus.NewClient(httpbus.ClientOptions{URL: srv.URL + "/feedback", Token: "wrong", Backoff: time.Millisecond})
	before := calls.Load()
	err = bad.Publish(context.Background(), event("store-0", 2, state.Hard))
	var se *httpbus.StatusError
	if !errors.As(err, &se) || se.Code != 401 || calls.Load() != before {
		t.Fatalf("wrong token: %v (calls %d -> %d)", err, before, calls.Load())
	}
	// Nobody listening: retried, then the network error.
	gone, _ := httpbus.NewClient(httpbus.ClientOptions{URL: "http://127.0.0.1:1/feedback", Attempts: 3, Backoff: time.Millisecond})
	if err := gone.Publish(context.Background(), event("store-0", 3, state.Hard)); err == nil {
		t.Fatal("publish to a closed port succeeded")
	}
	// Attempts 1: no retry.
	once, _ := httpbus.NewClient(httpbus.ClientOptions{URL: srv.URL + "/feedback", Token: "s3cret", Attempts: 1})
	calls.Store(0)
	if err := once.Publish(context.Background(), event("store-0", 4, state.Hard)); err == nil || calls.Load() != 1 {
		t.Fatalf("attempts 1 after a 503: err %v, %d calls; want the error after 1 call", err, calls.Load())
	}
	for _, o := range []httpbus.ClientOptions{{URL: srv.URL, Attempts: -1}, {URL: srv.URL, Timeout: -time.Second}} {
		if _, err := httpbus.NewClient(o); err == nil {
			t.Errorf("NewClient(%+v) accepted", o)
		}
	}
	for _, u := range []string{"", "ftp://x/feedback", "http://", "::"} {
		if _, err := httpbus.NewClient(httpbus.ClientOptions{URL: u}); err == nil {
			t.Errorf("NewHTTPClient(%q) accepted", u)
		}
	}
}
