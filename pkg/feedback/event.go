// Package feedback is the core of sluice's backpressure loop: the pressure
// Event a write coordinator reports, the Policy that maps pressure to a scale
// factor, and the Handler that combines every coordinator's pressure and
// steers the shared rate budget through the small Rate interface defined
// here. It moves events in process (Bus); the Redis and HTTP transports are
// the packages redisbus and httpbus. It imports neither go-redis nor
// net/http, and never the limiter.
package feedback

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/sluice-dev/sluice/pkg/keyspace"
	"github.com/sluice-dev/sluice/pkg/state"
)

// Event is one report of a write coordinator's queue. Its JSON form:
//
//	{"coordinator_id":"store-0","queue_size":800,"capacity":1000,
//	 "level":"soft","seq":1764230000123457,"ts":"2026-11-27T09:00:00.123Z",
//	 "kind":"sample","queue_mean":791.5}
//
// coordinator_id is 1–64 of [A-Za-z0-9_.-]; capacity in [1, 1e9]; queue_size
// in [0, capacity]; level ok, soft or hard; seq ≥ 1 and increasing per
// coordinator, across its restarts too (the Go coordinator starts it at its
// start time in Unix microseconds), samples and reports alike; ts is
// optional, RFC 3339 or a number of Unix seconds (receivers use the time of
// receipt when it is absent); kind is optional:
// "report" (the default: a level change, a heartbeat, a start or a close,
// stored by the Redis bus as the coordinator's pressure) or "sample" (a fill
// sample between reports, published only); queue_mean is optional: the
// time-weighted mean of the queue size since the coordinator's previous
// event, a number in [0, capacity] (0 or absent: not measured). Unknown
// fields are ignored.
//
// The seed's FeedbackEvent, {coordinator_id, queue_size, capacity, level}
// with an optional source (ignored) and ts, has no seq: DecodeEvent numbers
// it by its ts (in Unix µs) when it has one, else by its arrival (see
// DecodeEvent). An Event in Go always has a seq.
type Event struct {
	CoordinatorID string      `json:"coordinator_id"`
	QueueSize     int         `json:"queue_size"`
	Capacity      int         `json:"capacity"`
	Level         state.Level `json:"level"`
	Seq           uint64      `json:"seq"`
	TS            time.Time   `json:"ts,omitzero"`
	Kind          string      `json:"kind,omitempty"`
	QueueMean     float64     `json:"queue_mean,omitzero"`
}

// DefaultHold is how long, by default, a coordinator's last event holds
// against an event with a lower seq (Options.Hold, and redisbus's for the
// stored report). While the last event is younger, a lower seq is stale:
// a retried or reordered post. Once the coordinator has been silent this
// long, a lower seq starts a new incarnation: a coordinator that restarted
// and numbers from 1 again, or the real coordinator after an event with a
// bogus high seq (2^64-1 from a token holder, a clock in the future). So no
// seq, however high, silences a coordinator for longer than the hold and
// its next event. 3s: above the Go coordinator's heartbeat (2s), so that
// a live coordinator's reports are never taken out of order, and well under
// the report TTL (10s), which bounded the silence before.
const DefaultHold = 3 * time.Second

// HoldFor returns the hold to use for reports that expire after ttl (which
// has already taken its default): hold itself when set, else DefaultHold, or
// ttl if shorter. The result is always in (0, ttl]: a negative hold, or one
// above ttl, is an error naming hold and ttlField, ttl's option name.
// Handler and redisbus's Publisher both take their Hold from it.
func HoldFor(hold, ttl time.Duration, ttlField string) (time.Duration, error) {
	switch {
	case hold == 0:
		return min(DefaultHold, ttl), nil
	case hold < 0:
		return 0, fmt.Errorf("hold=%v: must be positive (0 takes the default, %v or %s if shorter)", hold, DefaultHold, ttlField)
	case hold > ttl:
		return 0, fmt.Errorf("hold=%v: must be at most %s=%v", hold, ttlField, ttl)
	}
	return hold, nil
}

// The kinds of event. An event without a kind is a report.
const (
	KindReport = "report" // a level change, a heartbeat, a start or a close: the pressure to keep
	KindSample = "sample" // a fill sample between reports: for the policy, not kept
)

// IsSample reports whether e is a fill sample rather than a report.
func (e Event) IsSample() bool { return e.Kind == KindSample }

// Fill is QueueSize ÷ Capacity, in [0, 1] for a valid event.
func (e Event) Fill() float64 {
	if e.Capacity <= 0 {
		return 0
	}
	return float64(e.QueueSize) / float64(e.Capacity)
}

// MeanFill is QueueMean ÷ Capacity when the event has a mean, else Fill:
// the fill over the time since the coordinator's previous event, free of
// the queue's jumps as workers take batches.
func (e Event) MeanFill() float64 {
	if e.QueueMean > 0 && e.Capacity > 0 {
		return e.QueueMean / float64(e.Capacity)
	}
	return e.Fill()
}

// ErrInvalidEvent is matched by every *FieldError.
var ErrInvalidEvent = errors.New("feedback: invalid event")

// FieldError names the event field that is missing, malformed or out of range.
type FieldError struct {
	Field string
	Value string // as received ("" when missing)
	Rule  string // what it must be
}

func (e *FieldError) Error() string {
	if e.Value == "" {
		return fmt.Sprintf("feedback: event field %s is missing: must be %s", e.Field, e.Rule)
	}
	return fmt.Sprintf("feedback: event field %s=%s: must be %s", e.Field, e.Value, e.Rule)
}

// Unwrap makes errors.Is(err, ErrInvalidEvent) true.
func (e *FieldError) Unwrap() error { return ErrInvalidEvent }

// Validate returns a *FieldError for the first field out of range.
func (e Event) Validate() error {
	switch {
	case !keyspace.ValidName(e.CoordinatorID):
		return &FieldError{"coordinator_id", strconv.Quote(e.CoordinatorID), keyspace.NameRule}
	case e.Capacity < 1 || e.Capacity > 1e9:
		return &FieldError{"capacity", strconv.Itoa(e.Capacity), "an integer in [1, 1000000000]"}
	case e.QueueSize < 0 || e.QueueSize > e.Capacity:
		return &FieldError{"queue_size", strconv.Itoa(e.QueueSize), fmt.Sprintf("an integer in [0, capacity=%d]", e.Capacity)}
	case e.Level.Rank() < 0:
		return &FieldError{"level", strconv.Quote(string(e.Level)), "one of ok, soft, hard"}
	case e.Seq < 1:
		return &FieldError{"seq", "0", seqRule}
	case e.Kind != "" && e.Kind != KindReport && e.Kind != KindSample:
		return &FieldError{"kind", strconv.Quote(e.Kind), "one of report, sample (or absent: report)"}
	case !(e.QueueMean >= 0 && e.QueueMean <= float64(e.Capacity)):
		return &FieldError{"queue_mean", strconv.FormatFloat(e.QueueMean, 'g', -1, 64), fmt.Sprintf("a number in [0, capacity=%d]", e.Capacity)}
	}
	return nil
}

// wireEvent detects missing fields: every field is a pointer.
type wireEvent struct {
	CoordinatorID *string          `json:"coordinator_id"`
	QueueSize     *json.RawMessage `json:"queue_size"`
	Capacity      *json.RawMessage `json:"capacity"`
	Level         *string          `json:"level"`
	Seq           *json.RawMessage `json:"seq"`
	TS            *json.RawMessage `json:"ts"`
	Kind          *string          `json:"kind"`
	QueueMean     *float64         `json:"queue_mean"`
}

// DecodeEvent reads exactly one JSON event from r and validates it. Errors
// name the field (a *FieldError) or say the JSON is malformed.
//
// An event without seq (the seed's FeedbackEvent) is numbered here: by its
// ts in Unix microseconds when it has one, so that the coordinator's own
// clock orders its events however its posts are retried, reordered or
// spread over receivers; else by its arrival, the time of decoding in Unix
// microseconds, strictly increasing within the process.
func DecodeEvent(r io.Reader) (Event, error) {
	dec := json.NewDecoder(r)
	var w wireEvent
	if err := dec.Decode(&w); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return Event{}, &FieldError{te.Field, "(a JSON " + te.Value + ")", "of JSON type " + jsonType(te.Field)}
		}
		return Event{}, fmt.Errorf("%w: malformed JSON: %v", ErrInvalidEvent, err)
	}
	if dec.More() {
		return Event{}, fmt.Errorf("%w: malformed JSON: more than one value", ErrInvalidEvent)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Event{}, fmt.Errorf("%w: malformed JSON: trailing data", ErrInvalidEvent)
	}
	var e Event
	var err error
	if w.CoordinatorID == nil {
		return Event{}, &FieldError{"coordinator_id", "", keyspace.NameRule}
	}
	e.CoordinatorID = *w.CoordinatorID
	if e.Capacity, err = intField("capacity", w.Capacity, 1e9); err != nil {
		return Event{}, err
	}
	if e.QueueSize, err = intField("queue_size", w.QueueSize, 1e9); err != nil {
		return Event{}, err
	}
	if w.Level == nil {
		return Event{}, &FieldError{"level", "", "one of ok, soft, hard"}
	}
	e.Level = state.Level(*w.Level)
	hasTS := w.TS != nil && !bytes.Equal(*w.TS, []byte("null"))
	if hasTS {
		if e.TS, err = tsField(*w.TS); err != nil {
			return Event{}, err
		}
	}
	switch {
	case w.Seq != nil:
		if e.Seq, err = strconv.ParseUint(string(*w.Seq), 10, 64); err != nil {
			return Event{}, &FieldError{"seq", string(*w.Seq), seqRule}
		}
	case hasTS:
		if e.TS.UnixMicro() < 1 {
			return Event{}, &FieldError{"ts", string(*w.TS), "after 1970-01-01T00:00:00Z when seq is absent (ts then orders the events)"}
		}
		e.Seq = uint64(e.TS.UnixMicro())
	default:
		e.Seq = arrivalSeq(time.Now())
	}
	if w.Kind != nil {
		if *w.Kind == "" {
			return Event{}, &FieldError{"kind", `""`, "one of report, sample (or absent: report)"}
		}
		e.Kind = *w.Kind
	}
	if w.QueueMean != nil {
		e.QueueMean = *w.QueueMean
	}
	return e, e.Validate()
}

const seqRule = "an integer >= 1, increasing per coordinator (or absent: numbered by ts, else by arrival)"

// maxUnixTS is 9999-12-31T23:59:59Z, the last second RFC 3339 can write.
const maxUnixTS = 253402300799

// tsField parses ts: an RFC 3339 string, or a JSON number of Unix seconds
// (fractions allowed, as Python's time.time() writes; whole microseconds
// kept) in [0.000001, 253402300799].
func tsField(raw json.RawMessage) (time.Time, error) {
	const rule = "an RFC 3339 time string, or Unix seconds (a number in [0.000001, 253402300799])"
	var t time.Time
	if len(raw) > 0 && raw[0] == '"' {
		if err := json.Unmarshal(raw, &t); err != nil {
			return t, &FieldError{"ts", string(raw), rule}
		}
		return t, nil
	}
	f, err := strconv.ParseFloat(string(raw), 64)
	if err != nil || !(f >= 1e-6 && f <= maxUnixTS) {
		return t, &FieldError{"ts", string(raw), rule}
	}
	return time.UnixMicro(int64(math.Round(f * 1e6))).UTC(), nil
}

// arrival is the last seq arrivalSeq returned.
var arrival atomic.Uint64

// arrivalSeq returns the seq of an event without seq or ts that arrives at
// now: now in Unix microseconds, or one more than the last seq it returned
// if that is not below. It is strictly increasing within the process, so
// that such events are ordered by their arrival here. Safe for concurrent
// use.
func arrivalSeq(now time.Time) uint64 {
	us := uint64(max(now.UnixMicro(), 1))
	for {
		last := arrival.Load()
		next := max(us, last+1)
		if arrival.CompareAndSwap(last, next) {
			return next
		}
	}
}

// intField parses a JSON integer (not a string, not a fraction).
func intField(name string, raw *json.RawMessage, maxValue int64) (int, error) {
	rule := "an integer in [0, 1000000000]"
	if name == "capacity" {
		rule = "an integer in [1, 1000000000]"
	}
	if raw == nil {
		return 0, &FieldError{name, "", rule}
	}
	v, err := strconv.ParseInt(string(*raw), 10, 64)
	if err != nil || v < 0 || v > maxValue {
		return 0, &FieldError{name, string(*raw), rule}
	}
	return int(v), nil
}

func jsonType(field string) string {
	switch field {
	case "coordinator_id", "level", "kind":
		return "string"
	}
	return "number"
}

// Encode returns the event's JSON form.
func (e Event) Encode() []byte {
	b, _ := json.Marshal(e) // cannot fail: plain fields
	return b
}
