package feedback_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/state"
)

func TestDecodeEvent(t *testing.T) {
	e, err := feedback.DecodeEvent(strings.NewReader(`{"coordinator_id":"store-0","queue_size":800,"capacity":1000,"level":"soft","seq":7,"ts":"2026-11-27T09:00:00.5Z","extra":1}`))
	if err != nil {
		t.Fatal(err)
	}
	want := feedback.Event{CoordinatorID: "store-0", QueueSize: 800, Capacity: 1000, Level: state.Soft, Seq: 7,
		TS: time.Date(2026, 11, 27, 9, 0, 0, 5e8, time.UTC)}
	if e != want {
		t.Fatalf("decoded %+v, want %+v", e, want)
	}
	back, err := feedback.DecodeEvent(strings.NewReader(string(e.Encode())))
	if err != nil || !back.TS.Equal(e.TS) || back.Seq != e.Seq || back.Level != e.Level {
		t.Fatalf("round trip: %+v %v", back, err)
	}
	// ts is optional; so is kind (a report), which a report encodes
	// without, as before samples existed.
	if e, err := feedback.DecodeEvent(strings.NewReader(`{"coordinator_id":"c","queue_size":0,"capacity":1,"level":"ok","seq":1}`)); err != nil || !e.TS.IsZero() || e.Kind != "" || e.IsSample() {
		t.Fatalf("without ts and kind: %+v %v", e, err)
	}
	if strings.Contains(string(want.Encode()), "kind") {
		t.Fatalf("a report without a kind encodes one: %s", want.Encode())
	}
	// queue_mean is optional, fractional, in [0, capacity]; MeanFill
	// prefers it to the instant queue_size.
	m, err := feedback.DecodeEvent(strings.NewReader(`{"coordinator_id":"c","queue_size":800,"capacity":1000,"level":"soft","seq":2,"queue_mean":791.5}`))
	if err != nil || m.QueueMean != 791.5 || m.MeanFill() != 0.7915 || m.Fill() != 0.8 {
		t.Fatalf("queue_mean: %+v %v", m, err)
	}
	if back, err := feedback.DecodeEvent(strings.NewReader(string(m.Encode()))); err != nil || back != m {
		t.Fatalf("queue_mean round trip: %+v %v", back, err)
	}
	if e.MeanFill() != e.Fill() {
		t.Fatal("without queue_mean, MeanFill is not Fill")
	}
	for _, kind := range []string{feedback.KindSample, feedback.KindReport} {
		e, err := feedback.DecodeEvent(strings.NewReader(`{"coordinator_id":"c","queue_size":0,"capacity":1,"level":"ok","seq":1,"kind":"` + kind + `"}`))
		if err != nil || e.Kind != kind || e.IsSample() != (kind == feedback.KindSample) {
			t.Fatalf("kind %s: %+v %v", kind, e, err)
		}
		if back, err := feedback.DecodeEvent(strings.NewReader(string(e.Encode()))); err != nil || back.Kind != kind {
			t.Fatalf("kind %s round trip: %+v %v", kind, back, err)
		}
	}
}

func TestDecodeEventRejects(t *testing.T) {
	valid := map[string]string{
		"coordinator_id": `"c1"`, "queue_size": `5`, "capacity": `10`, "level": `"hard"`, "seq": `3`,
	}
	body := func(edit map[string]string) string {
		parts := []string{}
		for k, v := range valid {
			if nv, ok := edit[k]; ok {
				if nv == "" {
					continue // removed
				}
				v = nv
			}
			parts = append(parts, `"`+k+`":`+v)
		}
		for k, v := range edit {
			if _, ok := valid[k]; !ok {
				parts = append(parts, `"`+k+`":`+v)
			}
		}
		return "{" + strings.Join(parts, ",") + "}"
	}
	for _, tc := range []struct {
		field string
		edit  map[string]string
	}{
		{"coordinator_id", map[string]string{"coordinator_id": ""}},
		{"coordinator_id", map[string]string{"coordinator_id": `"a b"`}},
		{"coordinator_id", map[string]string{"coordinator_id": `"x{y}"`}},
		{"coordinator_id", map[string]string{"coordinator_id": `7`}},
		{"queue_size", map[string]string{"queue_size": ""}},
		{"queue_size", map[string]string{"queue_size": `-1`}},
		{"queue_size", map[string]string{"queue_size": `11`}},
		{"queue_size", map[string]string{"queue_size": `2.5`}},
		{"queue_size", map[string]string{"queue_size": `"5"`}},
		{"capacity", map[string]string{"capacity": `0`}},
		{"capacity", map[string]string{"capacity": ""}},
		{"level", map[string]string{"level": `"critical"`}},
		{"level", map[string]string{"level": ""}},
		{"seq", map[string]string{"seq": `0`}},
		{"seq", map[string]string{"seq": `-4`}},
		{"seq", map[string]string{"seq": `1.5`}},
		{"seq", map[string]string{"seq": `"3"`}},
		{"seq", map[string]string{"seq": `18446744073709551616`}},
		{"ts", map[string]string{"ts": `0`}},
		{"ts", map[string]string{"ts": `-1.5`}},
		{"ts", map[string]string{"ts": `253402300800`}},
		{"ts", map[string]string{"ts": `1e400`}},
		{"ts", map[string]string{"ts": `true`}},
		{"ts", map[string]string{"ts": `"0001-01-01T00:00:00Z"`, "seq": ""}}, // cannot number the event
		{"ts", map[string]string{"ts": `"yesterday"`}},
		{"kind", map[string]string{"kind": `"heartbeat"`}},
		{"kind", map[string]string{"kind": `""`}},
		{"kind", map[string]string{"kind": `1`}},
		{"queue_mean", map[string]string{"queue_mean": `-0.5`}},
		{"queue_mean", map[string]string{"queue_mean": `10.5`}},
		{"queue_mean", map[string]string{"queue_mean": `"3"`}},
	} {
		b := body(tc.edit)
		_, err := feedback.DecodeEvent(strings.NewReader(b))
		var fe *feedback.FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field || !errors.Is(err, feedback.ErrInvalidEvent) {
			t.Errorf("%s: err = %v, want a FieldError on %s", b, err, tc.field)
		}
	}
	for _, b := range []string{``, `{`, `[]`, `{"coordinator_id":"c"} {}`, `null x`} {
		if _, err := feedback.DecodeEvent(strings.NewReader(b)); !errors.Is(err, feedback.ErrInvalidEvent) {
			t.Errorf("%q: err = %v, want ErrInvalidEvent", b, err)
		}
	}
}

// TestDecodeSeedEvent: the seed's FeedbackEvent has no seq (finding 9 of
// issue 20: POST /feedback answered 400 "seq is missing"). It is numbered
// by its ts when it has one (a float of Unix seconds, or RFC 3339), else by
// arrival; the seq an event carries wins over both.
func TestDecodeSeedEvent(t *testing.T) {
	decode := func(body string) feedback.Event {
		t.Helper()
		e, err := feedback.DecodeEvent(strings.NewReader(body))
		if err != nil {
			t.Fatalf("%s: %v", body, err)
		}
		return e
	}
	// FeedbackEvent("default", 800, 1000, BackpressureLevel.SOFT), posted
	// as model_dump(): no seq, no ts. Numbered by arrival, increasing.
	bare := `{"coordinator_id":"default","queue_size":800,"capacity":1000,"level":"soft"}`
	first, second := decode(bare), decode(bare)
	if first.Seq < 1 || second.Seq <= first.Seq || first.Level != state.Soft || first.QueueSize != 800 || !first.TS.IsZero() {
		t.Fatalf("without seq and ts: %+v then %+v, want increasing seqs >= 1", first, second)
	}
	if now := uint64(time.Now().UnixMicro()); second.Seq > now+1000 {
		t.Fatalf("arrival seq %d is not the time of arrival in µs (now %d)", second.Seq, now)
	}
	if e := decode(`{"coordinator_id":"default","queue_size":800,"capacity":1000,"level":"soft","seq":null}`); e.Seq <= second.Seq {
		t.Fatalf("seq null: %d, want an arrival seq after %d", e.Seq, second.Seq)
	}
	// With source and a float ts (time.time()): numbered by the ts in µs.
	e := decode(`{"coordinator_id":"default","queue_size":950,"capacity":1000,"level":"hard","source":"store","ts":1764230000.123456}`)
	at := time.Date(2025, 11, 27, 7, 53, 20, 123456000, time.UTC)
	if e.Seq != 1764230000123456 || !e.TS.Equal(at) || e.Level != state.Hard {
		t.Fatalf("with a float ts: %+v, want seq 1764230000123456 at %v", e, at)
	}
	// An RFC 3339 ts numbers it too; so does an integer of seconds.
	if e := decode(`{"coordinator_id":"c","queue_size":0,"capacity":1,"level":"ok","ts":"2025-11-27T07:53:20.5Z"}`); e.Seq != 1764230000500000 {
		t.Fatalf("with an RFC 3339 ts: seq %d, want 1764230000500000", e.Seq)
	}
	if e := decode(`{"coordinator_id":"c","queue_size":0,"capacity":1,"level":"ok","ts":1764230000}`); e.Seq != 1764230000000000 {
		t.Fatalf("with ts in whole seconds: seq %d", e.Seq)
	}
	// sluice's schema is unchanged: its seq wins; a float ts is accepted there too.
	if e := decode(`{"coordinator_id":"c","queue_size":0,"capacity":1,"level":"ok","seq":7,"ts":1764230000.25}`); e.Seq != 7 || e.TS.UnixMicro() != 1764230000250000 {
		t.Fatalf("seq and a float ts: %+v", e)
	}
	// The numbered event round-trips with its seq.
	if back := decode(string(e.Encode())); back.Seq != e.Seq || !back.TS.Equal(e.TS) {
		t.Fatalf("round trip: %+v, want %+v", back, e)
	}
}

func TestPolicies(t *testing.T) {
	ev := func(l state.Level, q int) feedback.Event {
		return feedback.Event{CoordinatorID: "c", Level: l, QueueSize: q, Capacity: 100, Seq: 1}
	}
	step := feedback.DefaultStepPolicy
	for l, want := range map[state.Level]float64{state.OK: 1, state.Soft: 0.5, state.Hard: 0} {
		if got := step.Scale(ev(l, 0)); got != want {
			t.Errorf("step %s = %v, want %v", l, got, want)
		}
	}
	prop := feedback.DefaultProportionalPolicy // 1 at <= 50%, 0 at >= 90%
	for _, tc := range []struct {
		l    state.Level
		q    int
		want float64
	}{{state.OK, 10, 1}, {state.OK, 50, 1}, {state.Soft, 70, 0.5}, {state.Soft, 80, 0.25}, {state.Soft, 95, 0}, {state.Hard, 10, 0}} {
		if got := prop.Scale(ev(tc.l, tc.q)); got < tc.want-1e-9 || got > tc.want+1e-9 {
			t.Errorf("proportional %s %d%% = %v, want %v", tc.l, tc.q, got, tc.want)
		}
	}
	p, err := feedback.ParsePolicy("step:soft=0.7,hard=0.1")
	if err != nil || p.(feedback.StepPolicy) != (feedback.StepPolicy{OK: 1, Soft: 0.7, Hard: 0.1}) {
		t.Fatalf("parse step: %+v %v", p, err)
	}
	p, err = feedback.ParsePolicy("proportional:start=0.4,stop=0.8")
	if err != nil || p.(feedback.ProportionalPolicy) != (feedback.ProportionalPolicy{Start: 0.4, Stop: 0.8}) {
		t.Fatalf("parse proportional: %+v %v", p, err)
	}
	for _, bad := range []string{"", "pid", "step:soft=2", "step:soft=x", "step:medium=0.5", "proportional:start=0.9,stop=0.5", "proportional:floor=1"} {
		if _, err := feedback.ParsePolicy(bad); err == nil {
			t.Errorf("ParsePolicy(%q) accepted", bad)
		}
	}
}
