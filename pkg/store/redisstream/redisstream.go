// Package redisstream is sluice's durable write path across processes:
// pipeline replicas append items to a Redis Stream with a Producer; write
// coordinators read it through a consumer group with a Consumer, which feeds
// a store.WriteCoordinator and acknowledges an entry only after the sink
// wrote it. The delivery is at least once: nothing acknowledged is lost, and
// an entry whose writer died before acknowledging is written again by
// another.
//
//	<prefix>:stream:{<stream>}   the stream; group "coordinators" by default
//
// An entry has two fields: "data", the item (opaque bytes; the sluice
// services use JSON), and "ts", the append time in Unix microseconds (the
// producer's clock, for latency only). A producer in another language runs
//
//	XADD sluice:stream:{store} * data <item> ts <unix-micros>
//
// and must not trim the stream (no MAXLEN): the consumers trim it, never
// past an entry some group has not acknowledged. An entry with more than
// one "data" field is refused: moved whole, with every field, to
//
//	<prefix>:stream:{<stream>}:refused   refused entries, never trimmed by sluice
//
// and acknowledged, never handed to the sink. docs/streams.md has the
// details.
package redisstream

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/pkg/keyspace"
)

// Options name the stream. The zero Prefix is "sluice"; Stream is required.
type Options struct {
	// Prefix starts the key; default "sluice".
	Prefix string
	// Stream names the store the stream feeds: 1 to 64 of [A-Za-z0-9_.-].
	Stream string
}

// Key returns the stream's key, <prefix>:stream:{<stream>}, or an error
// naming the bad field.
func (o Options) Key() (string, error) {
	if !keyspace.ValidName(o.Stream) {
		return "", fmt.Errorf("redisstream: stream=%q: must be %s", o.Stream, keyspace.NameRule)
	}
	return keyspace.Prefix(o.Prefix).Stream(o.Stream), nil
}

// Entry is one item read from the stream.
type Entry struct {
	ID       string    // the stream entry's ID
	Data     []byte    // the item as appended
	Appended time.Time // when it was appended (the producer's clock); zero if unknown
}

// Producer appends items to the stream. Safe for concurrent use.
type Producer struct {
	rdb redis.UniversalClient
	key string
	now func() time.Time
}

// NewProducer returns a Producer on rdb (a Client, ClusterClient or Ring).
func NewProducer(rdb redis.UniversalClient, o Options) (*Producer, error) {
	key, err := o.Key()
	if err != nil {
		return nil, err
	}
	return &Producer{rdb: rdb, key: key, now: time.Now}, nil
}

// Append appends items to the stream, in order, in one round trip. It
// returns nil only when Redis stored every one. On an error some may have
// been stored: appending them again is safe (the path is at least once) but
// writes those twice.
func (p *Producer) Append(ctx context.Context, items ...[]byte) error {
	if len(items) == 0 {
		return nil
	}
	ts := strconv.FormatInt(p.now().UnixMicro(), 10)
	cmds, err := p.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for _, it := range items {
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: p.key, Values: []any{"data", it, "ts", ts}})
		}
		return nil
	})
	if err != nil {
		return p.appendError(cmds, len(items), err)
	}
	return nil
}

// appendError is the error of an append of n items by cmds that failed
// with err: it says how many were not stored, from the first command that
// failed on.
func (p *Producer) appendError(cmds []redis.Cmder, n int, err error) error {
	for i, c := range cmds {
		if c.Err() != nil {
			return fmt.Errorf("redisstream: append to %s: %d of %d items not stored: %w", p.key, n-i, n, c.Err())
		}
	}
	return fmt.Errorf("redisstream: append to %s: %w", p.key, err)
}

// message is a stream entry as Redis holds it: every field and value, in
// order, repeats included (go-redis's XMessage keeps one value a field, so
// the consumer reads the raw reply). nil fields: the entry was deleted
// while pending.
type message struct {
	id     string
	fields []string
}

// refusedRepeatedData is why an entry with more than one "data" field is
// refused: a sink could be handed only one of its values.
const refusedRepeatedData = `field "data" repeated`

// decode returns the entry m holds, or why it is refused (then the entry
// is empty). An entry without "data" (written by hand, or by a foreign
// producer) has empty Data: the sink decides what it is worth, and it is
// acknowledged like any other. A "ts" that is repeated or not a positive
// integer leaves Appended zero.
func (m message) decode() (e Entry, refused string) {
	datas, data := m.field("data")
	if datas > 1 {
		return Entry{}, refusedRepeatedData
	}
	e.ID = m.id
	if datas == 1 {
		e.Data = []byte(data)
	}
	if tss, ts := m.field("ts"); tss == 1 {
		e.Appended = appendedAt(ts)
	}
	return e, ""
}

// field returns how many times name is a field of m, and its last value.
func (m message) field(name string) (n int, value string) {
	for i := 0; i+1 < len(m.fields); i += 2 {
		if m.fields[i] == name {
			n++
			value = m.fields[i+1]
		}
	}
	return n, value
}

// appendedAt reads a "ts" value, Unix microseconds: zero unless it is a
// positive integer.
func appendedAt(ts string) time.Time {
	if us, err := strconv.ParseInt(ts, 10, 64); err == nil && us > 0 {
		return time.UnixMicro(us)
	}
	return time.Time{}
}

var errReply = errors.New("redisstream: unexpected reply")

// readReply decodes the entries of an XREADGROUP reply for one stream:
// [[key, entries]] in RESP2, {key: entries} in RESP3, nil for none.
func readReply(v any) ([]message, error) {
	switch r := v.(type) {
	case nil:
		return nil, nil
	case []any:
		if len(r) == 0 {
			return nil, nil
		}
		if s, ok := r[0].([]any); ok && len(s) == 2 {
			return messages(s[1])
		}
	case map[any]any:
		for _, entries := range r {
			return messages(entries)
		}
		return nil, nil
	}
	return nil, fmt.Errorf("%w to XREADGROUP: %T", errReply, v)
}

// claimReply decodes an XAUTOCLAIM reply: the next start, and the entries.
func claimReply(v any) (next string, msgs []message, err error) {
	r, ok := v.([]any)
	if !ok || len(r) < 2 {
		return "", nil, fmt.Errorf("%w to XAUTOCLAIM: %T", errReply, v)
	}
	if next, ok = r[0].(string); !ok {
		return "", nil, fmt.Errorf("%w to XAUTOCLAIM: next is %T", errReply, r[0])
	}
	msgs, err = messages(r[1])
	return next, msgs, err
}

// messages decodes a list of [id, [field, value, ...]] entries.
func messages(v any) ([]message, error) {
	list, ok := v.([]any)
	if !ok {
		if v == nil {
			return nil, nil
		}
		return nil, fmt.Errorf("%w: entries are %T", errReply, v)
	}
	out := make([]message, 0, len(list))
	for _, x := range list {
		m, err := parseMessage(x)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// parseMessage decodes one [id, [field, value, ...]] entry; [id, nil] (an
// entry deleted while pending) has nil fields.
func parseMessage(x any) (message, error) {
	pair, ok := x.([]any)
	if !ok || len(pair) < 2 {
		return message{}, fmt.Errorf("%w: entry is %T", errReply, x)
	}
	id, ok := pair[0].(string)
	if !ok {
		return message{}, fmt.Errorf("%w: entry id is %T", errReply, pair[0])
	}
	if pair[1] == nil {
		return message{id: id}, nil
	}
	fields, err := fieldStrings(id, pair[1])
	return message{id: id, fields: fields}, err
}

// fieldStrings decodes the fields and values of entry id.
func fieldStrings(id string, v any) ([]string, error) {
	fs, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("%w: fields of %s are %T", errReply, id, v)
	}
	out := make([]string, len(fs))
	for i, f := range fs {
		if out[i], ok = f.(string); !ok {
			return nil, fmt.Errorf("%w: a field of %s is %T", errReply, id, f)
		}
	}
	return out, nil
}
