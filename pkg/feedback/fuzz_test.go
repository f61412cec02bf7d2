package feedback_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/sluice-dev/sluice/pkg/feedback"
)

// FuzzDecodeEvent: whatever the bytes, DecodeEvent either refuses them
// (ErrInvalidEvent or a *FieldError) or returns an event that validates and
// survives an Encode/Decode round trip unchanged (an event without seq
// included: it is numbered once, and encoded with its number).
func FuzzDecodeEvent(f *testing.F) {
	for _, seed := range []string{
		`{"coordinator_id":"store-0","queue_size":800,"capacity":1000,"level":"soft","seq":1}`,
		`{"coordinator_id":"store-0","queue_size":0,"capacity":1,"level":"ok","seq":18446744073709551615,"ts":"2026-11-27T16:00:00Z"}`,
		`{"coordinator_id":"a","queue_size":-1,"capacity":1000,"level":"hard","seq":1}`,
		`{"coordinator_id":"a","queue_size":1e3,"capacity":1000,"level":"hard","seq":1}`,
		`{"coordinator_id":"a b","queue_size":1,"capacity":2,"level":"HARD","seq":0}`,
		`{"coordinator_id":"a"}{"x":1}`, `[]`, `null`, ``, `{`, `{"seq":"1"}`,
		`{"coordinator_id":"default","queue_size":800,"capacity":1000,"level":"soft"}`,
		`{"coordinator_id":"default","queue_size":950,"capacity":1000,"level":"hard","source":"store","ts":1764230000.123456}`,
		`{"coordinator_id":"c","queue_size":0,"capacity":1,"level":"ok","ts":"2025-11-27T07:53:20.5Z","seq":null}`,
		`{"coordinator_id":"c","queue_size":0,"capacity":1,"level":"ok","ts":1e-7}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := feedback.DecodeEvent(bytes.NewReader(data))
		if err != nil {
			var fe *feedback.FieldError
			if !errors.Is(err, feedback.ErrInvalidEvent) && !errors.As(err, &fe) {
				t.Fatalf("error %v is neither ErrInvalidEvent nor a *FieldError", err)
			}
			return
		}
		if err := e.Validate(); err != nil {
			t.Fatalf("decoded %+v does not validate: %v", e, err)
		}
		again, err := feedback.DecodeEvent(bytes.NewReader(e.Encode()))
		if err != nil || again.CoordinatorID != e.CoordinatorID || again.Seq != e.Seq || again.Level != e.Level ||
			again.QueueSize != e.QueueSize || again.Capacity != e.Capacity || !again.TS.Equal(e.TS) {
			t.Fatalf("round trip of %+v: %+v, %v", e, again, err)
		}
	})
}
