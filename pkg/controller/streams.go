package controller

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/keyspace"
	"github.com/sluice-dev/sluice/pkg/state"
	"github.com/sluice-dev/sluice/pkg/store"
	"github.com/sluice-dev/sluice/pkg/store/redisstream"
)

// Stream is a write stream whose backlog the controller counts as pressure,
// so that the stream stays bounded when no write coordinator is alive to
// report (see Options.Streams). A consumer of the group counts as alive
// only while a pressure report whose coordinator_id is its consumer name
// lives: every coordinator must report under its consumer name
// (redisstream.ConsumerOptions refuses a Store.ID other than Name; one in
// another language must do the same), or the controller takes it for dead
// and may pause a healthy fleet by the stream's backlog.
type Stream struct {
	// Name is the stream's name, as the coordinators' (their --stream): the
	// key is <prefix>:stream:{<Name>}. 1 to 57 of [A-Za-z0-9_.-] (its
	// pressure id, "stream.<Name>", is at most 64). Required.
	Name string
	// Group is the coordinators' consumer group; default "coordinators".
	Group string
	// Capacity is the backlog that counts as full: the store's default
	// watermarks apply to backlog ÷ Capacity (soft from 60%, back under
	// 40%; hard, a pause, from 85%, back under 70%), except that with no
	// coordinator alive soft counts as hard: nothing drains the stream
	// then, so it pauses at 60%. Default 10000, a coordinator's default
	// capacity: keep it at or above your coordinators' capacity, so that
	// the stream never asks for less than a live coordinator does.
	Capacity int
}

// DefaultStreamCapacity is Stream.Capacity's default.
const DefaultStreamCapacity = 10000

// streamIDPrefix starts the pressure id of a stream's backlog.
const streamIDPrefix = "stream."

// watched is a Stream as the controller follows it; only Run's goroutine
// touches it.
type watched struct {
	Stream
	key, id    string
	level      state.Level // by the watermarks, with their hysteresis
	unattended bool        // a backlog and no coordinator alive, at the last read
	lastErr    string      // the last error logged
	demand     demandMeter // the writers the demand needs
}

// MaxStreamName is the longest stream name the controller watches: the
// pressure id of a stream's backlog, "stream.<name>", is at most 64
// characters, as every coordinator's id.
const MaxStreamName = keyspace.MaxName - len(streamIDPrefix)

// CheckStreamNames returns nil when the controller can watch streams of
// these names (those of Options.Streams, in order): each a name the write
// stream takes, of 1 to MaxStreamName characters of [A-Za-z0-9_.-], and
// none twice. Else its error names the first that is not, by its index:
// streams[i].name="...": the rule. New checks Options.Streams with it, and
// so does pkg/config its controller.streams.
func CheckStreamNames(names []string) error {
	seen := map[string]bool{}
	for i, name := range names {
		if _, err := (redisstream.Options{Stream: name}).Key(); err != nil || len(name) > MaxStreamName {
			return fmt.Errorf("streams[%d].name=%q: must be 1 to %d characters of %s", i, name, MaxStreamName, keyspace.NameChars)
		}
		if seen[name] {
			return fmt.Errorf("streams[%d].name=%q: named twice", i, name)
		}
		seen[name] = true
	}
	return nil
}

func (o *Options) streams() ([]*watched, error) {
	names := make([]string, len(o.Streams))
	for i, s := range o.Streams {
		names[i] = s.Name
	}
	if err := CheckStreamNames(names); err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}
	out := make([]*watched, 0, len(o.Streams))
	for i, s := range o.Streams {
		key, _ := redisstream.Options{Prefix: o.Prefix, Stream: s.Name}.Key() // its only error, a bad name, is checked above
		if s.Group == "" {
			s.Group = "coordinators"
		}
		if s.Capacity == 0 {
			s.Capacity = DefaultStreamCapacity
		}
		if s.Capacity < 1 || s.Capacity > 1e9 {
			return nil, fmt.Errorf("controller: streams[%d].capacity=%d: must be in [1, 1000000000] (0 takes the default, %d)", i, s.Capacity, DefaultStreamCapacity)
		}
		out = append(out, &watched{Stream: s, key: key, id: streamIDPrefix + s.Name, level: state.OK, demand: demandMeter{window: o.RateWindow}})
	}
	return out, nil
}

// backlog is what the controller reads of a stream.
type backlog struct {
	length   int64 // XLEN
	lag      int64 // entries not delivered to the group yet (every entry when there is no group)
	stranded int64 // entries pending on consumers whose coordinator does not report
	alive    int   // consumers of the group whose coordinator reports
	read     int64 // entries the group ever read (entries-read; 0 without a group)
}

// unwritten is what no living coordinator holds: the lag and the entries
// stranded on dead consumers.
func (b backlog) unwritten() int64 { return b.lag + b.stranded }

// readBacklog reads the stream's length, its group's lag and every
// consumer's pending count in one round trip (one key: one cluster slot).
// A consumer counts as alive when live holds its name: its coordinator's
// pressure report has not expired (a coordinator reports under its
// consumer name).
func readBacklog(ctx context.Context, rdb redis.UniversalClient, key, group string, live map[string]bool) (backlog, error) {
	var b backlog
	var (
		xlen      *redis.IntCmd
		groups    *redis.XInfoGroupsCmd
		consumers *redis.XInfoConsumersCmd
	)
	_, _ = rdb.Pipelined(ctx, func(p redis.Pipeliner) error { // each command's error is read below
		xlen = p.XLen(ctx, key)
		groups = p.XInfoGroups(ctx, key)
		consumers = p.XInfoConsumers(ctx, key, group)
		return nil
	})
	n, err := xlen.Result()
	if err != nil || n == 0 { // no stream, or an empty one: no backlog
		return b, err
	}
	b.length = n
	gs, err := groups.Result()
	if err != nil {
		return b, err
	}
	var g *redis.XInfoGroup
	for i := range gs {
		if gs[i].Name == group {
			g = &gs[i]
		}
	}
	if g == nil { // no coordinator ever read it: every entry waits
		b.lag = n
		return b, nil
	}
	b.read = g.EntriesRead
	if b.lag = g.Lag; b.lag < 0 { // unknown (entries were deleted): estimate, as the consumers do
		b.lag = max(0, n-g.Pending)
	}
	cs, err := consumers.Result()
	if err != nil {
		return b, err
	}
	for _, c := range cs {
		if live[c.Name] {
			b.alive++
		} else {
			b.stranded += c.Pending
		}
	}
	return b, nil
}

// watchStreams reads every stream's backlog and hands it to the handler as
// the report of a coordinator of its own, "stream.<name>": queue_size the
// unwritten backlog (capped at Capacity), level by the store's watermarks.
// live are the coordinators whose report has not expired. It runs while the
// handler does (this controller holds the lease, feedback on).
func (c *Controller) watchStreams(ctx context.Context, live []feedback.Event) {
	if c.loop == nil || len(c.streams) == 0 {
		return
	}
	alive := make(map[string]bool, len(live))
	busy := true
	for _, e := range live {
		alive[e.CoordinatorID] = true
		if !strings.HasPrefix(e.CoordinatorID, streamIDPrefix) {
			busy = busy && float64(e.QueueSize) >= busyFill*float64(e.Capacity)
		}
	}
	scale, scaleErr := c.scale(ctx)
	for _, w := range c.streams {
		gctx, cancel, err := c.guard(ctx)
		if err != nil {
			return
		}
		b, err := readBacklog(gctx, c.rdb, w.key, w.Group, alive)
		if err == nil {
			err = c.loop.Handler().Handle(gctx, c.streamEvent(w, b))
		}
		if err == nil && scaleErr == nil {
			c.measure(w, b, scale, busy)
		}
		cancel()
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, ErrNotLeader) && err.Error() != w.lastErr {
				c.log.Warn("cannot count the stream's backlog as pressure; retrying", "stream", w.key, "err", err)
			}
			w.lastErr = err.Error()
			continue
		}
		w.lastErr = ""
	}
}

// streamEvent records b for w (metrics, the watermarks' level, a log line
// when the stream loses or regains its last coordinator) and returns the
// event that reports it. With no coordinator alive, soft is reported as
// hard: nothing drains the stream, so a policy cannot hold its backlog at
// a mark, only slow its growth to a trickle that never ends; a pause bounds
// it, and is what a policy recovers from fastest when a coordinator
// returns (feedback.PIPolicy restarts from full scale after a pause, from
// the scale in force otherwise).
func (c *Controller) streamEvent(w *watched, b backlog) feedback.Event {
	n := b.unwritten()
	fill := float64(n) / float64(w.Capacity)
	w.level = store.DefaultWatermarks.Next(w.level, fill)
	level := w.level
	if b.alive == 0 && level == state.Soft {
		level = state.Hard
	}
	c.m.backlog.WithLabelValues(c.o.ID, w.Name).Set(float64(n))
	c.m.alive.WithLabelValues(c.o.ID, w.Name).Set(float64(b.alive))
	if unattended := b.alive == 0 && n > 0; unattended != w.unattended {
		w.unattended = unattended
		if unattended {
			c.log.Warn("no write coordinator alive on the stream: its backlog steers the scale", "stream", w.key,
				"backlog", n, "length", b.length, "capacity", w.Capacity, "pause_at", int(store.DefaultWatermarks.SoftHigh*float64(w.Capacity)))
		} else {
			c.log.Info("the stream's backlog is attended again", "stream", w.key, "backlog", n, "coordinators", b.alive)
		}
	}
	return feedback.Event{CoordinatorID: w.id, QueueSize: int(min(n, int64(w.Capacity))), Capacity: w.Capacity,
		Level: level, Seq: uint64(c.seq.Add(1)), TS: time.Now(), Kind: feedback.KindReport}
}

// forgetStreams drops what this controller read of the streams, when it
// stops steering: its gauges (the next holder's are the ones that count)
// and the state behind its log lines (a new term logs them afresh). The
// watermarks' level stays: it is the stream's, not the term's.
func (c *Controller) forgetStreams() {
	for _, g := range []*prometheus.GaugeVec{c.m.backlog, c.m.alive, c.m.demand, c.m.perWriter, c.m.needed} {
		g.DeletePartialMatch(prometheus.Labels{"controller_id": c.o.ID})
	}
	for _, w := range c.streams {
		w.unattended, w.lastErr = false, ""
		w.demand.samples = nil // the next term measures afresh; the writers' rate stays
	}
}
