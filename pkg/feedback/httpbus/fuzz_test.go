package httpbus_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/feedback/httpbus"
)

// FuzzReceiver: whatever the body, Authorization and Content-Type of a
// POST /feedback, the receiver answers 204 (and delivers exactly the event
// DecodeEvent reads from the body, once; an event without seq and ts is
// numbered by its arrival), or refuses with a 4xx and
// delivers nothing. Never a 5xx (delivery never fails here), never a panic.
func FuzzReceiver(f *testing.F) {
	valid := `{"coordinator_id":"store-0","queue_size":800,"capacity":1000,"level":"soft","seq":1}`
	for _, seed := range []struct{ auth, ctype, body string }{
		{"Bearer t0ken", "application/json", valid},
		{"bearer t0ken", "application/json; charset=utf-8", valid},
		{"Bearer wrong", "application/json", valid},
		{"", "application/json", valid},
		{"Bearer t0ken", "text/plain", valid},
		{"Bearer t0ken", "application/json", `{"coordinator_id":"a","queue_size":-1,"capacity":1,"level":"ok","seq":1}`},
		{"Bearer t0ken", "application/json", `{`},
		{"Bearer t0ken", "application/json", `{"coordinator_id":"default","queue_size":800,"capacity":1000,"level":"soft"}`},
		{"Bearer t0ken", "application/json", `{"coordinator_id":"default","queue_size":9,"capacity":10,"level":"hard","source":"store","ts":1764230000.5}`},
		{"Bearer t0ken", "application/json", string(bytes.Repeat([]byte("x"), 300))},
		{"Basic dDBrZW4=", "application/json", valid},
		{"Bearer  t0ken", "application/json", valid},
	} {
		f.Add(seed.auth, seed.ctype, []byte(seed.body))
	}
	f.Fuzz(func(t *testing.T, auth, ctype string, body []byte) {
		var got []feedback.Event
		h, err := httpbus.NewReceiver(httpbus.ReceiverOptions{
			Deliver: func(_ context.Context, e feedback.Event) error { got = append(got, e); return nil },
			Token:   "t0ken", MaxBody: 256, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
		if err != nil {
			t.Fatal(err)
		}
		req := httptest.NewRequest(http.MethodPost, "/feedback", bytes.NewReader(body))
		req.Header.Set("Authorization", auth)
		req.Header.Set("Content-Type", ctype)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch code := rec.Code; {
		case code == http.StatusNoContent:
			want, err := feedback.DecodeEvent(bytes.NewReader(body))
			if err == nil && len(got) == 1 && got[0].Seq != want.Seq && got[0].Seq >= 1 && want.TS.IsZero() {
				want.Seq = got[0].Seq // no seq and no ts: numbered by arrival, at each decoding
			}
			if err != nil || len(got) != 1 || got[0].CoordinatorID != want.CoordinatorID || got[0].Seq != want.Seq ||
				got[0].Level != want.Level || got[0].QueueSize != want.QueueSize || got[0].Capacity != want.Capacity {
				t.Fatalf("204 for %q: delivered %+v; the body decodes to %+v, %v", body, got, want, err)
			}
		case code >= 400 && code < 500:
			if len(got) != 0 {
				t.Fatalf("%d for %q, yet delivered %+v", code, body, got)
			}
		default:
			t.Fatalf("status %d for auth %q, type %q, body %q", code, auth, ctype, body)
		}
	})
}
