package feedback

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/lua"
)

// RedisKeys names the feedback's Redis keys under a prefix (default "sluice"):
//
//	<prefix>:pressure:{<coordinator>}   hash with TTL: level, queue_size, capacity, seq, ts
//	<prefix>:pressure:hard, :soft       sets of the coordinators now at that level (KEDA's redis trigger counts them)
//	<prefix>:pressure:coordinators      set of every coordinator that reported (an index)
//	<prefix>:feedback                   pub/sub channel: every event, as JSON
type RedisKeys struct{ Prefix string }

func (k RedisKeys) prefix() string {
	if k.Prefix == "" {
		return "sluice"
	}
	return k.Prefix
}

// Pressure is the hash of one coordinator.
func (k RedisKeys) Pressure(coordinator string) string {
	return k.prefix() + ":pressure:{" + coordinator + "}"
}

// LevelSet is the set of coordinators at level (soft or hard).
func (k RedisKeys) LevelSet(l Level) string { return k.prefix() + ":pressure:" + string(l) }

// Coordinators is the index set of coordinators.
func (k RedisKeys) Coordinators() string { return k.prefix() + ":pressure:coordinators" }

// Channel is the pub/sub channel of events.
func (k RedisKeys) Channel() string { return k.prefix() + ":feedback" }

var pressureScript = redis.NewScript(lua.Source("pressure"))

// RedisPublisher publishes events through Redis: it stores the event in the
// coordinator's pressure hash (with a TTL, refusing an older seq), updates
// the level sets, and PUBLISHes it. The keys are the truth; pub/sub is for
// speed. Safe for concurrent use.
type RedisPublisher struct {
	rdb  redis.UniversalClient
	keys RedisKeys
	ttl  time.Duration
}

// NewRedisPublisher returns a publisher on rdb. ttl is how long a pressure
// hash outlives its last event (default 10s): keep it above the
// coordinator's heartbeat.
func NewRedisPublisher(rdb redis.UniversalClient, keys RedisKeys, ttl time.Duration) *RedisPublisher {
	if ttl <= 0 {
		ttl = 10 * time.Second
	}
	return &RedisPublisher{rdb: rdb, keys: keys, ttl: ttl}
}

// Publish stores and announces e. An event older than the stored one (lower
// seq, e.g. reordered HTTP posts) is dropped without error.
func (p *RedisPublisher) Publish(ctx context.Context, e Event) error {
	if err := e.Validate(); err != nil {
		return err
	}
	if e.TS.IsZero() {
		e.TS = time.Now()
	}
	applied, err := pressureScript.Run(ctx, p.rdb, []string{p.keys.Pressure(e.CoordinatorID)},
		string(e.Level), e.QueueSize, e.Capacity, strconv.FormatUint(e.Seq, 10),
		e.TS.UTC().Format(time.RFC3339Nano), p.ttl.Milliseconds()).Int()
	if err != nil {
		return fmt.Errorf("feedback: store pressure of %q: %w", e.CoordinatorID, err)
	}
	if applied == 0 {
		return nil
	}
	_, err = p.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		p.keys.setMembership(ctx, pipe, e.CoordinatorID, e.Level)
		pipe.Publish(ctx, p.keys.Channel(), e.Encode())
		return nil
	})
	if err != nil {
		return fmt.Errorf("feedback: publish pressure of %q: %w", e.CoordinatorID, err)
	}
	return nil
}

// Withdraw removes a coordinator that is shutting down from every key.
func (p *RedisPublisher) Withdraw(ctx context.Context, coordinator string) error {
	_, err := p.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		pipe.Del(ctx, p.keys.Pressure(coordinator))
		pipe.SRem(ctx, p.keys.Coordinators(), coordinator)
		pipe.SRem(ctx, p.keys.LevelSet(Soft), coordinator)
		pipe.SRem(ctx, p.keys.LevelSet(Hard), coordinator)
		return nil
	})
	return err
}

// setMembership queues the commands that put coordinator in the set of its
// level and out of the other.
func (k RedisKeys) setMembership(ctx context.Context, pipe redis.Pipeliner, coordinator string, l Level) {
	pipe.SAdd(ctx, k.Coordinators(), coordinator)
	for _, s := range []Level{Soft, Hard} {
		if s == l {
			pipe.SAdd(ctx, k.LevelSet(s), coordinator)
		} else {
			pipe.SRem(ctx, k.LevelSet(s), coordinator)
		}
	}
}

// RedisSubscriber receives events from Redis: every message on the channel,
// and a snapshot of every coordinator's pressure hash when it subscribes,
// after every reconnect, and every Resync — so a replica that starts late or
// missed messages still converges. The snapshot also repairs the level sets
// and drops coordinators whose hash expired.
type RedisSubscriber struct {
	rdb    redis.UniversalClient
	keys   RedisKeys
	resync time.Duration
	log    *slog.Logger
}

// NewRedisSubscriber returns a subscriber on rdb; resync defaults to 10s.
func NewRedisSubscriber(rdb redis.UniversalClient, keys RedisKeys, resync time.Duration, log *slog.Logger) *RedisSubscriber {
	if resync <= 0 {
		resync = 10 * time.Second
	}
	if log == nil {
		log = slog.Default()
	}
	return &RedisSubscriber{rdb: rdb, keys: keys, resync: resync, log: log.With("component", "feedback-redis")}
}

// Run delivers events until ctx ends, and returns ctx.Err(). Invalid
// messages are logged and skipped; delivery errors are logged.
func (s *RedisSubscriber) Run(ctx context.Context, deliver Deliver) error {
	ps := s.rdb.Subscribe(ctx, s.keys.Channel())
	defer ps.Close()
	ch := ps.ChannelWithSubscriptions(redis.WithChannelHealthCheckInterval(s.resync))
	t := time.NewTicker(s.resync)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			s.snapshot(ctx, deliver)
		case msg, ok := <-ch:
			if !ok {
				return ctx.Err()
			}
			switch m := msg.(type) {
			case *redis.Subscription:
				if m.Kind == "subscribe" { // first subscription, or again after a reconnect
					s.snapshot(ctx, deliver)
				}
			case *redis.Message:
				e, err := DecodeEvent(strings.NewReader(m.Payload))
				if err != nil {
					s.log.Warn("ignoring malformed feedback message", "err", err)
					continue
				}
				s.deliver(ctx, deliver, e)
			}
		}
	}
}

func (s *RedisSubscriber) deliver(ctx context.Context, deliver Deliver, e Event) {
	if err := deliver(ctx, e); err != nil && ctx.Err() == nil {
		s.log.Warn("feedback delivery failed", "coordinator", e.CoordinatorID, "err", err)
	}
}

// Pressure is what Redis holds about the write coordinators.
type Pressure struct {
	Live      []Event          // coordinators with a pressure hash, by id
	Expired   []string         // in the index, but their hash expired
	Malformed map[string]error // hashes that do not decode (skipped)
}

// ReadPressure reads the stored pressure of every coordinator in the index.
// It writes nothing.
func ReadPressure(ctx context.Context, rdb redis.UniversalClient, keys RedisKeys) (Pressure, error) {
	var p Pressure
	ids, err := rdb.SMembers(ctx, keys.Coordinators()).Result()
	if err != nil {
		return p, err
	}
	sort.Strings(ids)
	cmds := make([]*redis.MapStringStringCmd, len(ids))
	if _, err := rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, id := range ids {
			cmds[i] = pipe.HGetAll(ctx, keys.Pressure(id))
		}
		return nil
	}); err != nil {
		return p, err
	}
	for i, id := range ids {
		h := cmds[i].Val()
		if len(h) == 0 {
			p.Expired = append(p.Expired, id)
			continue
		}
		e, err := eventFromHash(id, h)
		if err != nil {
			if p.Malformed == nil {
				p.Malformed = map[string]error{}
			}
			p.Malformed[id] = err
			continue
		}
		p.Live = append(p.Live, e)
	}
	return p, nil
}

// Snapshot reads every coordinator's stored pressure, drops the expired ones
// from the index and the level sets, repairs the sets' membership, and logs
// malformed hashes.
func (s *RedisSubscriber) Snapshot(ctx context.Context) ([]Event, error) {
	p, err := ReadPressure(ctx, s.rdb, s.keys)
	if err != nil {
		return nil, err
	}
	for id, err := range p.Malformed {
		s.log.Warn("ignoring malformed pressure hash", "key", s.keys.Pressure(id), "err", err)
	}
	if len(p.Live)+len(p.Expired) == 0 {
		return nil, nil
	}
	_, err = s.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for _, id := range p.Expired { // the coordinator stopped reporting
			pipe.SRem(ctx, s.keys.Coordinators(), id)
			pipe.SRem(ctx, s.keys.LevelSet(Soft), id)
			pipe.SRem(ctx, s.keys.LevelSet(Hard), id)
		}
		for _, e := range p.Live {
			s.keys.setMembership(ctx, pipe, e.CoordinatorID, e.Level)
		}
		return nil
	})
	return p.Live, err
}

func (s *RedisSubscriber) snapshot(ctx context.Context, deliver Deliver) {
	events, err := s.Snapshot(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("feedback snapshot failed", "err", err)
		}
		return
	}
	for _, e := range events {
		s.deliver(ctx, deliver, e)
	}
}

// eventFromHash reads a pressure hash back into an event.
func eventFromHash(id string, h map[string]string) (Event, error) {
	fields := map[string]any{"coordinator_id": id, "level": h["level"], "ts": h["ts"]}
	for _, k := range []string{"queue_size", "capacity", "seq"} {
		fields[k] = json.Number(h[k])
	}
	b, err := json.Marshal(fields)
	if err != nil {
		return Event{}, err
	}
	return DecodeEvent(bytes.NewReader(b))
}
