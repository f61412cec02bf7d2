// Package redisbus carries pressure events between processes through Redis:
// a Publisher for write coordinators and a Subscriber for whoever steers the
// budget (a pipeline replica's handler, the controller). The keys are the
// truth and pub/sub is for speed:
//
//	<prefix>:pressure:{<coordinator>}   hash with TTL: level, queue_size, capacity, seq, ts, updated_at
//	<prefix>:pressure:hard, :soft       sets of the coordinators now at that level (KEDA's redis trigger counts them)
//	<prefix>:pressure:coordinators      set of every coordinator that reported (an index)
//	<prefix>:feedback                   pub/sub channel: every event, as JSON
//
// A report (a level change, a heartbeat) is stored and published; a fill
// sample (feedback.KindSample, four a second by default) is only published:
// it costs one PUBLISH, and the hash keeps what a late subscriber needs.
//
// docs/feedback.md describes the format for publishers in other languages.
package redisbus

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/lua"
	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/internal/opts"
	"github.com/sluice-dev/sluice/pkg/internal/pubsub"
	"github.com/sluice-dev/sluice/pkg/keyspace"
	"github.com/sluice-dev/sluice/pkg/state"
)

// Options configure a Publisher or a Subscriber. The zero value is ready to
// use: every zero field takes the default its comment gives.
type Options struct {
	// Prefix starts every key and the channel; default "sluice".
	Prefix string
	// TTL is how long a coordinator's pressure hash outlives its last event
	// (Publisher); default 10s. Keep it above the coordinator's heartbeat.
	TTL time.Duration
	// Hold is how long a stored report holds against a report with a lower
	// seq (Publisher), by Redis's clock: until then the lower one is
	// dropped as stale; after, it is stored (a coordinator that restarted
	// numbering from 1 again, or the real coordinator after a bogus high
	// seq). Default feedback.DefaultHold (3s), or TTL if shorter; at most
	// TTL. Keep it above the coordinators' heartbeat.
	Hold time.Duration
	// Resync is how often a Subscriber reads every coordinator's hash again,
	// besides at subscription and after every reconnect; default 10s.
	Resync time.Duration
	// Logger receives a Subscriber's warnings (malformed messages, failed
	// deliveries); default slog.Default().
	Logger *slog.Logger
}

func (o Options) withDefaults() (Options, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if err := opts.Check(
		opts.Positive("ttl", &o.TTL, 10*time.Second),
		opts.Positive("resync", &o.Resync, 10*time.Second),
	); err != nil {
		return o, fmt.Errorf("redisbus: %w", err)
	}
	hold, err := feedback.HoldFor(o.Hold, o.TTL, "ttl")
	if err != nil {
		return o, fmt.Errorf("redisbus: %w", err)
	}
	o.Hold = hold
	return o, nil
}

// keys names the Redis keys under a prefix, as keyspace builds them.
type keys struct{ prefix string }

// keysFor returns the keys under prefix, "" meaning keyspace.DefaultPrefix.
func keysFor(prefix string) keys { return keys{keyspace.Prefix(prefix).String()} }

func (k keys) pressure(coordinator string) string {
	return keyspace.Prefix(k.prefix).Pressure(coordinator)
}
func (k keys) levelSet(l state.Level) string {
	return keyspace.Prefix(k.prefix).PressureLevel(string(l))
}
func (k keys) coordinators() string { return keyspace.Prefix(k.prefix).PressureCoordinators() }
func (k keys) channel() string      { return keyspace.Prefix(k.prefix).Feedback() }

var pressureScript = redis.NewScript(lua.Source("pressure"))

// Publisher publishes events through Redis: it stores each report in its
// coordinator's pressure hash (with a TTL, refusing an older seq while the
// stored report is younger than Hold), updates the level sets, and
// PUBLISHes it; a fill sample it only PUBLISHes (the subscribers' handlers
// order events by seq). Safe for concurrent use.
type Publisher struct {
	rdb       redis.UniversalClient
	keys      keys
	ttl, hold time.Duration
}

// NewPublisher returns a Publisher on rdb (a Client, ClusterClient or Ring).
// A negative TTL, Hold or Resync, or a Hold above the TTL, is an error.
func NewPublisher(rdb redis.UniversalClient, o Options) (*Publisher, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Publisher{rdb: rdb, keys: keysFor(o.Prefix), ttl: o.TTL, hold: o.Hold}, nil
}

// Publish stores and announces a report, or announces a sample. A report
// with the stored seq, or a lower one while the stored report is younger
// than Hold (e.g. reordered HTTP posts), is dropped without error; an
// invalid event is refused with a *feedback.FieldError.
func (p *Publisher) Publish(ctx context.Context, e feedback.Event) error {
	if err := e.Validate(); err != nil {
		return err
	}
	if e.TS.IsZero() {
		e.TS = time.Now()
	}
	if e.IsSample() {
		if err := p.rdb.Publish(ctx, p.keys.channel(), e.Encode()).Err(); err != nil {
			return fmt.Errorf("redisbus: publish a sample of %q: %w", e.CoordinatorID, err)
		}
		return nil
	}
	applied, err := pressureScript.Run(ctx, p.rdb, []string{p.keys.pressure(e.CoordinatorID)},
		string(e.Level), e.QueueSize, e.Capacity, strconv.FormatUint(e.Seq, 10),
		e.TS.UTC().Format(time.RFC3339Nano), p.ttl.Milliseconds(), p.hold.Milliseconds()).Int()
	if err != nil {
		return fmt.Errorf("redisbus: store pressure of %q: %w", e.CoordinatorID, err)
	}
	if applied == 0 {
		return nil
	}
	_, err = p.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		p.keys.setMembership(ctx, pipe, e.CoordinatorID, e.Level)
		pipe.Publish(ctx, p.keys.channel(), e.Encode())
		return nil
	})
	if err != nil {
		return fmt.Errorf("redisbus: publish pressure of %q: %w", e.CoordinatorID, err)
	}
	return nil
}

// Withdraw removes a coordinator that is shutting down from every key.
func (p *Publisher) Withdraw(ctx context.Context, coordinator string) error {
	_, err := p.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		pipe.Del(ctx, p.keys.pressure(coordinator))
		p.keys.forget(ctx, pipe, coordinator)
		return nil
	})
	return err
}

// setMembership queues the commands that put coordinator in the set of its
// level and out of the other.
func (k keys) setMembership(ctx context.Context, pipe redis.Pipeliner, coordinator string, l state.Level) {
	pipe.SAdd(ctx, k.coordinators(), coordinator)
	for _, s := range []state.Level{state.Soft, state.Hard} {
		if s == l {
			pipe.SAdd(ctx, k.levelSet(s), coordinator)
		} else {
			pipe.SRem(ctx, k.levelSet(s), coordinator)
		}
	}
}

// forget queues the commands that take coordinator out of the index and the
// level sets.
func (k keys) forget(ctx context.Context, pipe redis.Pipeliner, coordinator string) {
	pipe.SRem(ctx, k.coordinators(), coordinator)
	pipe.SRem(ctx, k.levelSet(state.Soft), coordinator)
	pipe.SRem(ctx, k.levelSet(state.Hard), coordinator)
}

// Subscriber receives events from Redis (a feedback.Subscriber): every
// message on the channel, and a snapshot of every coordinator's pressure
// hash when it subscribes, after every reconnect and every Resync, so a
// replica that starts late or missed messages still converges. The snapshot
// also repairs the level sets and drops coordinators whose hash expired.
type Subscriber struct {
	rdb    redis.UniversalClient
	keys   keys
	resync time.Duration
	log    *slog.Logger
}

// NewSubscriber returns a Subscriber on rdb (a Client, ClusterClient or
// Ring). A negative TTL, Hold or Resync, or a Hold above the TTL, is an
// error.
func NewSubscriber(rdb redis.UniversalClient, o Options) (*Subscriber, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Subscriber{rdb: rdb, keys: keysFor(o.Prefix), resync: o.Resync, log: o.Logger.With("component", "redisbus")}, nil
}

// Subscribe subscribes to the channel, waits (within ctx) until Redis
// confirms, delivers a snapshot of every live coordinator, and returns; it
// then delivers every message, and a new snapshot after a reconnect and every
// Resync, until stop. It fails when Redis cannot confirm the subscription or
// answer the first snapshot within ctx, or when deliver refuses an event of
// that snapshot (the errors joined). Later, invalid messages and hashes are
// logged and skipped, and failed deliveries are logged.
func (s *Subscriber) Subscribe(ctx context.Context, deliver feedback.Deliver) (stop func(), err error) {
	ps, err := subscribe(ctx, s.rdb, s.keys.channel())
	if err != nil {
		return nil, fmt.Errorf("redisbus: subscribe to %s: %w", s.keys.channel(), err)
	}
	if err := s.snapshot(ctx, deliver); err != nil {
		_ = ps.Close()
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	sub := pubsub.New(s.rdb, ps, s.resync, func(err error) {
		s.log.Warn("feedback subscription lost; subscribing again", "err", err)
	}, s.keys.channel())
	var wg sync.WaitGroup
	wg.Go(func() { s.run(runCtx, sub, deliver) })
	return func() {
		cancel()
		sub.Close()
		wg.Wait()
	}, nil
}

// subscribe subscribes to channel and waits for Redis to confirm until ctx
// ends, even when ctx has no deadline (go-redis would then wait for ever on
// a Redis that accepted the connection and never answers). On ctx's end the
// connection is closed: a handshake under way still ends by the client's
// own timeouts.
func subscribe(ctx context.Context, rdb redis.UniversalClient, channel string) (*redis.PubSub, error) {
	var (
		mu       sync.Mutex
		ps       *redis.PubSub
		canceled bool
	)
	done := make(chan error, 1)
	go func() {
		p := rdb.Subscribe(ctx, channel)
		mu.Lock()
		ps = p
		stop := canceled
		mu.Unlock()
		if stop {
			_ = p.Close()
			done <- ctx.Err()
			return
		}
		_, err := p.Receive(ctx) // the confirmation
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			_ = ps.Close()
			return nil, err
		}
		return ps, nil
	case <-ctx.Done():
		mu.Lock()
		canceled = true
		if ps != nil {
			_ = ps.Close() // ends the Receive
		}
		mu.Unlock()
		return nil, ctx.Err()
	}
}

// run delivers until ctx ends, with a snapshot every Resync and after
// every (re)subscription. The subscription is a pubsub.Sub: go-redis's own
// channel swallows a refused resubscription and stays subscribed to
// nothing, and the fill samples, which are published and not stored, would
// never arrive again.
func (s *Subscriber) run(ctx context.Context, sub *pubsub.Sub, deliver feedback.Deliver) {
	next := time.Now().Add(s.resync)
	for {
		if !time.Now().Before(next) {
			s.logSnapshot(ctx, deliver)
			next = time.Now().Add(s.resync)
		}
		msg, err := sub.Next(ctx, time.Until(next))
		if err != nil {
			return
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" { // subscribed again after a reconnect
				s.logSnapshot(ctx, deliver)
			}
		case *redis.Message:
			e, err := feedback.DecodeEvent(strings.NewReader(m.Payload))
			if err != nil {
				s.log.Warn("ignoring malformed feedback message", "err", err)
				continue
			}
			if err := deliver(ctx, e); err != nil && ctx.Err() == nil {
				s.log.Warn("feedback delivery failed", "coordinator", e.CoordinatorID, "err", err)
			}
		}
	}
}

// snapshot reads every coordinator's stored pressure and delivers the live
// ones; it returns the read's error or the deliveries' errors, joined. On
// the way it repairs the level sets (drops the coordinators whose hash
// expired, puts the others in the set of their level): a repair that fails
// (a read-only replica, an ACL) is logged and delivers anyway. The repair is
// not atomic with the publishers' writes: a coordinator that publishes
// between the read and the repair may be misfiled until its next event,
// which files it again (its heartbeat, 2 s by default).
func (s *Subscriber) snapshot(ctx context.Context, deliver feedback.Deliver) error {
	p, err := Read(ctx, s.rdb, s.keys.prefix)
	if err != nil {
		return fmt.Errorf("redisbus: read pressure: %w", err)
	}
	for id, err := range p.Malformed {
		s.log.Warn("ignoring malformed pressure hash", "key", s.keys.pressure(id), "err", err)
	}
	if err := repair(ctx, s.rdb, s.keys, p); err != nil && ctx.Err() == nil {
		s.log.Warn("could not repair the pressure sets", "err", err)
	}
	var errs []error
	for _, e := range p.Live {
		if err := deliver(ctx, e); err != nil {
			errs = append(errs, fmt.Errorf("redisbus: deliver the pressure of %q: %w", e.CoordinatorID, err))
		}
	}
	return errors.Join(errs...)
}

func (s *Subscriber) logSnapshot(ctx context.Context, deliver feedback.Deliver) {
	if err := s.snapshot(ctx, deliver); err != nil && ctx.Err() == nil {
		s.log.Warn("feedback snapshot failed", "err", err)
	}
}

// repair drops the coordinators of p whose hash expired from the index and
// the level sets, and files the live ones in the set of their level.
func repair(ctx context.Context, rdb redis.UniversalClient, k keys, p Pressure) error {
	if len(p.Live)+len(p.Expired) == 0 {
		return nil
	}
	_, err := rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for _, id := range p.Expired { // the coordinator stopped reporting
			k.forget(ctx, pipe, id)
		}
		for _, e := range p.Live {
			k.setMembership(ctx, pipe, e.CoordinatorID, e.Level)
		}
		return nil
	})
	return err
}

// Reap reads the stored pressure under prefix ("" for "sluice") as Read
// does, then takes the coordinators whose hash expired out of the index and
// the level sets (KEDA's redis trigger counts those sets) and files every
// live one in the set of its level. The controller runs it every 250ms, so
// that the sets stay true with no pipeline replica running. The repair is
// not atomic with the publishers' writes: a coordinator that publishes
// between the read and the repair may be misfiled until its next event.
func Reap(ctx context.Context, rdb redis.UniversalClient, prefix string) (Pressure, error) {
	p, err := Read(ctx, rdb, prefix)
	if err != nil {
		return p, err
	}
	return p, repair(ctx, rdb, keysFor(prefix), p)
}

// Pressure is what Redis holds about the write coordinators.
type Pressure struct {
	Live      []feedback.Event // coordinators with a pressure hash, by id
	Expired   []string         // in the index, but their hash expired
	Malformed map[string]error // hashes that do not decode (skipped)
}

// Read reads the stored pressure of every coordinator in the index under
// prefix ("" for the default, "sluice"). It writes nothing.
func Read(ctx context.Context, rdb redis.UniversalClient, prefix string) (Pressure, error) {
	k := keysFor(prefix)
	var p Pressure
	ids, err := rdb.SMembers(ctx, k.coordinators()).Result()
	if err != nil {
		return p, err
	}
	sort.Strings(ids)
	cmds := make([]*redis.MapStringStringCmd, len(ids))
	if _, err := rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, id := range ids {
			cmds[i] = pipe.HGetAll(ctx, k.pressure(id))
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

// eventFromHash reads a pressure hash back into an event.
func eventFromHash(id string, h map[string]string) (feedback.Event, error) {
	fields := map[string]any{"coordinator_id": id, "level": h["level"], "ts": h["ts"]}
	for _, k := range []string{"queue_size", "capacity", "seq"} {
		fields[k] = json.Number(h[k])
	}
	b, err := json.Marshal(fields)
	if err != nil {
		return feedback.Event{}, err
	}
	return feedback.DecodeEvent(bytes.NewReader(b))
}
