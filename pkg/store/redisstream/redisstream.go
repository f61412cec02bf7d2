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
// past an entry some group has not acknowledged. docs/streams.md has the
// details.
package redisstream

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Options name the stream. The zero Prefix is "sluice"; Stream is required.
type Options struct {
	// Prefix starts the key; default "sluice".
	Prefix string
	// Stream names the store the stream feeds: 1 to 64 of [A-Za-z0-9_.-].
	Stream string
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_.\-]{1,64}$`)

// Key returns the stream's key, <prefix>:stream:{<stream>}, or an error
// naming the bad field.
func (o Options) Key() (string, error) {
	if !nameRE.MatchString(o.Stream) {
		return "", fmt.Errorf("redisstream: stream=%q: must be 1 to 64 characters of [A-Za-z0-9_.-]", o.Stream)
	}
	prefix := o.Prefix
	if prefix == "" {
		prefix = "sluice"
	}
	return prefix + ":stream:{" + o.Stream + "}", nil
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
		for i, c := range cmds {
			if c.Err() != nil {
				return fmt.Errorf("redisstream: append to %s: %d of %d items not stored: %w", p.key, len(items)-i, len(items), c.Err())
			}
		}
		return fmt.Errorf("redisstream: append to %s: %w", p.key, err)
	}
	return nil
}

// entry decodes a stream message. A message without "data" (written by
// hand, or by a foreign producer) is returned with empty Data: the sink
// decides what it is worth, and it is acknowledged like any other.
func entry(m redis.XMessage) Entry {
	e := Entry{ID: m.ID}
	switch d := m.Values["data"].(type) {
	case string:
		e.Data = []byte(d)
	}
	if s, ok := m.Values["ts"].(string); ok {
		if us, err := strconv.ParseInt(s, 10, 64); err == nil && us > 0 {
			e.Appended = time.UnixMicro(us)
		}
	}
	return e
}
