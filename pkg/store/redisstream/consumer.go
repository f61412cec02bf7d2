package redisstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/lua"
	"github.com/sluice-dev/sluice/pkg/internal/opts"
	"github.com/sluice-dev/sluice/pkg/internal/promutil"
	"github.com/sluice-dev/sluice/pkg/internal/redisopt"
	"github.com/sluice-dev/sluice/pkg/keyspace"
	"github.com/sluice-dev/sluice/pkg/store"
)

// ConsumerOptions configure a Consumer. Stream and Name are required; every
// other zero field takes the default its comment gives.
type ConsumerOptions struct {
	Options
	// Group is the consumer group; default "coordinators". Run creates it
	// (and the stream) from the stream's first entry when it is missing.
	Group string
	// Name is this consumer in the group: 1 to 64 of [A-Za-z0-9_.-], stable
	// across restarts when it can be (a StatefulSet pod's name): a consumer
	// that restarts under its name first writes what it had not
	// acknowledged. It is also its coordinator's ID (Store.ID), under which
	// it reports pressure: the controller counts a consumer of the group as
	// alive only while a pressure report under its name lives. Required.
	Name string
	// Count is the most entries one read returns; default 500.
	Count int
	// Block is how long a read waits for new entries; default 1s, and at
	// most half the client's ReadTimeout (the read is a raw command, which
	// go-redis bounds by ReadTimeout; go-redis v9 makes a zero ReadTimeout
	// 5s).
	Block time.Duration
	// ClaimIdle is how long an entry may stay pending, unacknowledged, on
	// another consumer before this one claims it (XAUTOCLAIM) and writes it;
	// default 30s. Keep it above the longest time an entry spends in a
	// living coordinator (queue and sink retries), or a slow coordinator's
	// entries are written twice. After each claim round, a consumer of the
	// group with no pending entry that has been idle for longer than
	// ClaimIdle has left: it is removed from the group.
	ClaimIdle time.Duration
	// Refresh is how often the group's lag is read (it is the coordinator's
	// Backlog), failed acknowledgements retried and the stream trimmed;
	// default 500ms.
	Refresh time.Duration
	// Drain bounds the drain when Run's context ends; default 10s. What is
	// not written by then stays pending, for a living consumer to claim.
	Drain time.Duration
	// Store configures the WriteCoordinator the entries go through. Its ID
	// is Name: left empty it is set to Name, and any other value is refused
	// (a coordinator reporting under another name than its consumer's would
	// look dead to the controller, which then steers by the stream's
	// backlog as if no coordinator ran). Its Backlog is set to the group's
	// lag. Entries its DeadLetter sink takes are acknowledged (they leave
	// the stream); those it refuses stay pending.
	Store store.Options[Entry]
	// Logger receives errors of Redis and the sink; default slog.Default().
	Logger *slog.Logger
}

func (o *ConsumerOptions) setDefaults() error {
	if _, err := o.Key(); err != nil {
		return err
	}
	if !keyspace.ValidName(o.Name) {
		return fmt.Errorf("redisstream: name=%q: must be %s", o.Name, keyspace.NameRule)
	}
	if o.Group == "" {
		o.Group = "coordinators"
	}
	if !keyspace.ValidName(o.Group) {
		return fmt.Errorf("redisstream: group=%q: must be %s", o.Group, keyspace.NameRule)
	}
	if err := opts.Check(
		opts.Positive("count", &o.Count, 500),
		opts.Positive("block", &o.Block, time.Second),
		opts.Positive("claim_idle", &o.ClaimIdle, 30*time.Second),
		opts.Positive("refresh", &o.Refresh, 500*time.Millisecond),
		opts.Positive("drain", &o.Drain, 10*time.Second),
	); err != nil {
		return fmt.Errorf("redisstream: %w", err)
	}
	switch o.Store.ID {
	case "":
		o.Store.ID = o.Name
	case o.Name:
	default:
		return fmt.Errorf("redisstream: store.id=%q: must be empty or equal to name=%q (a coordinator reports pressure under its consumer name, by which the controller tells that it is alive)", o.Store.ID, o.Name)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Store.Logger == nil {
		o.Store.Logger = o.Logger
	}
	return nil
}

// Validate returns the error NewConsumer would return for these options
// (naming the field and its range), without starting anything.
func (o ConsumerOptions) Validate() error {
	if err := o.setDefaults(); err != nil {
		return err
	}
	return o.Store.Validate()
}

// Consumer reads the stream through its consumer group into a
// store.WriteCoordinator and acknowledges each entry once the sink has
// written it. It first writes what is pending on its own name (a restart),
// then new entries; every ClaimIdle/2 it claims entries left pending by
// consumers that stopped, then removes from the group the consumers that
// have nothing pending and have been idle for longer than ClaimIdle (and
// itself when Run returns with nothing pending). An entry with a repeated
// "data" field never reaches the sink: it is moved whole to the refused
// stream, <key>:refused, and acknowledged. It trims the stream up to the
// oldest entry that some group has not acknowledged, never further. Its
// coordinator's pressure counts the queue and the group's lag.
type Consumer struct {
	rdb     redis.UniversalClient
	key     string
	refused string // the key refused entries are moved to
	o       ConsumerOptions
	log     *slog.Logger
	w       *store.WriteCoordinator[Entry]
	sink    store.Sink[Entry]
	m       consumerMetrics

	lag        atomic.Int64
	groupReady atomic.Bool
	readErr    atomic.Pointer[error] // the last read's error; nil once a read succeeded
	read       atomic.Int64
	claimed    atomic.Int64
	refusals   atomic.Int64
	acked      atomic.Int64
	ackFails   atomic.Int64

	mu      sync.Mutex
	held    map[string]struct{} // submitted, not yet acknowledged
	unacked []string            // written, but XACK failed: retried every Refresh
}

type consumerMetrics struct {
	lag              prometheus.Gauge
	claimed, acked   prometheus.Counter
	ackErrors, reads prometheus.Counter
	refused          prometheus.Counter
}

// NewConsumer returns a Consumer writing to sink, and starts its
// WriteCoordinator. Nothing is read before Run.
func NewConsumer(rdb redis.UniversalClient, sink store.Sink[Entry], o ConsumerOptions) (*Consumer, error) {
	if sink == nil {
		return nil, errors.New("redisstream: a Sink is required")
	}
	if err := o.setDefaults(); err != nil {
		return nil, err
	}
	key, _ := o.Key()
	if rt := readTimeout(rdb); rt > 0 {
		o.Block = min(o.Block, rt/2)
	}
	c := &Consumer{rdb: rdb, key: key, refused: keyspace.Prefix(o.Prefix).StreamRefused(o.Stream), o: o, sink: sink, held: map[string]struct{}{},
		log: o.Logger.With("component", "redisstream", "stream", key, "consumer", o.Name)}
	notYet := errors.New("redisstream: not reading yet")
	c.readErr.Store(&notYet)
	r := &promutil.Registrar{Reg: o.Store.Registerer}
	label := func(v *prometheus.CounterVec) prometheus.Counter { return v.WithLabelValues(o.Store.ID) }
	c.m = consumerMetrics{
		lag: r.GaugeVec(prometheus.GaugeOpts{Name: "coordinator_stream_lag",
			Help: "Entries of the write stream not yet delivered to the consumer group (the group's, so aggregate with max, not sum)."}, "coordinator_id").WithLabelValues(o.Store.ID),
		claimed: label(r.CounterVec(prometheus.CounterOpts{Name: "coordinator_stream_claimed_total",
			Help: "Entries claimed from consumers that left them pending."}, "coordinator_id")),
		acked: label(r.CounterVec(prometheus.CounterOpts{Name: "coordinator_stream_acked_total",
			Help: "Entries acknowledged: written, dead-lettered, or deleted while pending."}, "coordinator_id")),
		ackErrors: label(r.CounterVec(prometheus.CounterOpts{Name: "coordinator_stream_ack_errors_total",
			Help: "Failed acknowledgements (retried; the entry may be written twice)."}, "coordinator_id")),
		reads: label(r.CounterVec(prometheus.CounterOpts{Name: "coordinator_stream_read_entries_total",
			Help: "Entries read from the stream, claims included."}, "coordinator_id")),
		refused: label(r.CounterVec(prometheus.CounterOpts{Name: "coordinator_stream_refused_total",
			Help: "Entries refused (a repeated data field): moved whole to the refused stream, not written."}, "coordinator_id")),
	}
	if r.Err != nil {
		return nil, r.Err
	}
	o.Store.Backlog = func() int { return int(c.lag.Load()) }
	if dl := o.Store.DeadLetter; dl != nil {
		// A dead-lettered entry leaves the stream like a written one; one
		// the dead-letter sink refused too stays pending, to be claimed.
		o.Store.DeadLetter = store.SinkFunc[Entry](func(ctx context.Context, batch []Entry) error {
			if err := dl.Write(ctx, batch); err != nil {
				return err
			}
			c.ack(ctx, ids(batch))
			return nil
		})
	}
	w, err := store.New[Entry](store.SinkFunc[Entry](c.write), o.Store)
	if err != nil {
		return nil, err
	}
	c.w = w
	return c, nil
}

// Coordinator returns the WriteCoordinator the entries go through (for its
// Stats; Run closes it).
func (c *Consumer) Coordinator() *store.WriteCoordinator[Entry] { return c.w }

// Ready returns nil when the last read of the stream succeeded, else its
// error (Redis down, the group being created).
func (c *Consumer) Ready() error {
	if p := c.readErr.Load(); p != nil {
		return *p
	}
	return nil
}

// write is the coordinator's sink: the user's sink, then the
// acknowledgement. A failed acknowledgement does not fail the write (the
// items are written): it is retried every Refresh.
func (c *Consumer) write(ctx context.Context, batch []Entry) error {
	if err := c.sink.Write(ctx, batch); err != nil {
		return err
	}
	c.ack(ctx, ids(batch))
	return nil
}

func ids(batch []Entry) []string {
	out := make([]string, len(batch))
	for i, e := range batch {
		out[i] = e.ID
	}
	return out
}

// ack acknowledges ids, or keeps them for a retry.
func (c *Consumer) ack(ctx context.Context, ids []string) {
	if err := c.rdb.XAck(ctx, c.key, c.o.Group, ids...).Err(); err != nil {
		c.ackFails.Add(int64(len(ids)))
		c.m.ackErrors.Add(float64(len(ids)))
		c.log.Warn("acknowledging written entries failed; retrying", "entries", len(ids), "err", err)
		c.mu.Lock()
		c.unacked = append(c.unacked, ids...)
		c.mu.Unlock()
		return
	}
	c.acked.Add(int64(len(ids)))
	c.m.acked.Add(float64(len(ids)))
	c.mu.Lock()
	for _, id := range ids {
		delete(c.held, id)
	}
	c.mu.Unlock()
}

// Run reads the stream into the coordinator until ctx ends, then stops
// reading, drains the coordinator (within Drain), acknowledges what was
// written and returns. Redis errors do not end it: it retries with backoff
// and reports them through Ready. It returns the drain's error: the entries
// it names stay pending in Redis, for a living consumer to claim.
func (c *Consumer) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	mctx, stopMaint := context.WithCancel(context.Background())
	wg.Go(func() { c.maintain(mctx) })
	c.consume(ctx)
	dctx, cancel := context.WithTimeout(context.Background(), c.o.Drain)
	defer cancel()
	err := c.w.Close(dctx)
	if err != nil {
		c.w.Abort() // what is left stays pending in Redis, for another consumer
	}
	stopMaint()
	wg.Wait()
	// A fresh context: the drain may have used all of its own, and an entry
	// written but not acknowledged is written again by whoever claims it.
	actx, acancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer acancel()
	c.retryAcks(actx)
	c.mu.Lock()
	if n := len(c.unacked); n > 0 {
		c.log.Warn("written entries left unacknowledged: they will be written again", "entries", n)
	}
	c.mu.Unlock()
	// Leaving with nothing pending: out of the group at once. With entries
	// pending it stays, for a living consumer to claim them and remove it.
	c.forget(actx, -1, c.o.Name)
	return err
}

// consume is the read loop: own pending entries first, then new ones, with
// a claim round every ClaimIdle/2.
func (c *Consumer) consume(ctx context.Context) {
	cursor := "0" // own pending entries, from the first
	backoff := newBackoff()
	nextClaim := time.Now()
	for ctx.Err() == nil {
		if err := c.ensureGroup(ctx); err != nil {
			c.fail(ctx, err, backoff)
			continue
		}
		if time.Now().After(nextClaim) {
			if err := c.claim(ctx); err != nil {
				c.fail(ctx, err, backoff)
				continue
			}
			nextClaim = time.Now().Add(c.o.ClaimIdle / 2)
		}
		msgs, err := c.readGroup(ctx, cursor)
		if err != nil {
			if isNoGroup(err) {
				c.groupReady.Store(false)
			}
			c.fail(ctx, err, backoff)
			continue
		}
		c.readErr.Store(nil)
		backoff.reset()
		if cursor != ">" {
			if len(msgs) == 0 {
				cursor = ">" // own pending done: new entries from now on
				continue
			}
			cursor = msgs[len(msgs)-1].id
		}
		if !c.submit(ctx, msgs, false) {
			return
		}
	}
}

// readGroup reads up to Count entries from cursor: "0" and on, this
// consumer's pending entries; ">", new ones, waiting up to Block.
func (c *Consumer) readGroup(ctx context.Context, cursor string) ([]message, error) {
	args := []any{"XREADGROUP", "GROUP", c.o.Group, c.o.Name, "COUNT", c.o.Count}
	if cursor == ">" {
		args = append(args, "BLOCK", max(1, c.o.Block.Milliseconds()))
	}
	v, err := c.rdb.Do(ctx, append(args, "STREAMS", c.key, cursor)...).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return readReply(v)
}

// claim takes over the entries pending on other consumers for longer than
// ClaimIdle and submits them; then it removes the consumers that have
// left: nothing pending (what they held is claimed) and idle for longer
// than ClaimIdle.
func (c *Consumer) claim(ctx context.Context) error {
	start := "0-0"
	for range 100 { // bounded: the next round goes on
		v, err := c.rdb.Do(ctx, "XAUTOCLAIM", c.key, c.o.Group, c.o.Name, c.o.ClaimIdle.Milliseconds(), start, "COUNT", c.o.Count).Result()
		if err != nil {
			return err
		}
		next, msgs, err := claimReply(v)
		if err != nil {
			return err
		}
		if !c.submit(ctx, msgs, true) {
			return nil
		}
		if next == "0-0" || next == "" {
			break
		}
		start = next
	}
	c.forget(ctx, c.o.ClaimIdle)
	return nil
}

var forgetScript = redis.NewScript(lua.Source("forget"))

// forget removes from the group the consumers (names, or all when none is
// given) that have no pending entry and have been idle for longer than
// idle (-1: any), atomically (lua/forget.lua). Its errors are logged: nothing
// depends on it but the tidiness of XINFO CONSUMERS.
func (c *Consumer) forget(ctx context.Context, idle time.Duration, names ...string) {
	ms := idle.Milliseconds()
	if idle < 0 {
		ms = -1
	}
	args := append([]any{c.o.Group, ms}, anys(names)...)
	gone, err := forgetScript.Run(ctx, c.rdb, []string{c.key}, args...).StringSlice()
	if err != nil {
		if ctx.Err() == nil {
			c.log.Warn("removing departed consumers from the group failed", "err", err)
		}
		return
	}
	if len(gone) > 0 {
		c.log.Info("removed consumers with nothing pending from the group", "consumers", gone, "idle_over", idle.String())
	}
}

func anys(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

var refuseScript = redis.NewScript(lua.Source("refuse"))

// refuse moves an entry that must not reach the sink whole to the refused
// stream and acknowledges it (lua/refuse.lua). If that fails the entry stays
// pending, and is refused again when a claim round takes it.
func (c *Consumer) refuse(ctx context.Context, id, why string) {
	moved, err := refuseScript.Run(ctx, c.rdb, []string{c.key, c.refused}, c.o.Group, c.o.Name, id, why).Int()
	if err != nil {
		if ctx.Err() == nil {
			c.log.Warn("moving a refused entry failed; it stays pending", "id", id, "reason", why, "err", err)
		}
		return
	}
	if moved == 1 {
		c.refusals.Add(1)
		c.m.refused.Inc()
		c.log.Warn("refused an entry: moved it whole to the refused stream, not written", "id", id, "reason", why, "refused_stream", c.refused)
	}
}

// submit queues msgs on the coordinator, skipping those it holds already
// and refusing those it must not write; false when ctx ended or the
// coordinator closed (the rest stay pending).
func (c *Consumer) submit(ctx context.Context, msgs []message, claimed bool) bool {
	var gone []string
	for _, m := range msgs {
		if m.fields == nil { // deleted while pending: nothing to write
			gone = append(gone, m.id)
			continue
		}
		e, why := m.decode()
		if why != "" {
			c.refuse(ctx, m.id, why)
			continue
		}
		c.mu.Lock()
		_, dup := c.held[e.ID]
		c.held[e.ID] = struct{}{}
		c.mu.Unlock()
		if dup {
			continue
		}
		if err := c.w.Submit(ctx, e); err != nil {
			c.mu.Lock()
			delete(c.held, e.ID)
			c.mu.Unlock()
			return false
		}
		c.read.Add(1)
		c.m.reads.Inc()
		if claimed {
			c.claimed.Add(1)
			c.m.claimed.Inc()
		}
	}
	if len(gone) > 0 {
		c.ack(ctx, gone)
	}
	return true
}

func (c *Consumer) fail(ctx context.Context, err error, b *backoff) {
	if ctx.Err() != nil {
		return
	}
	c.readErr.Store(&err)
	if b.n == 0 {
		c.log.Warn("reading the stream failed; retrying", "err", err)
	}
	b.wait(ctx)
}

// ensureGroup creates the group (and the stream) once.
func (c *Consumer) ensureGroup(ctx context.Context) error {
	if c.groupReady.Load() {
		return nil
	}
	err := c.rdb.XGroupCreateMkStream(ctx, c.key, c.o.Group, "0").Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return fmt.Errorf("create group %s: %w", c.o.Group, err)
	}
	c.groupReady.Store(true)
	return nil
}

func isNoGroup(err error) bool { return strings.HasPrefix(err.Error(), "NOGROUP") }

// maintain refreshes the lag, retries acknowledgements and trims, every
// Refresh, until ctx ends.
func (c *Consumer) maintain(ctx context.Context) {
	t := time.NewTicker(c.o.Refresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c.retryAcks(ctx)
		if err := c.refresh(ctx); err != nil && ctx.Err() == nil {
			c.log.Debug("refreshing the lag or trimming failed", "err", err)
		}
	}
}

func (c *Consumer) retryAcks(ctx context.Context) {
	c.mu.Lock()
	ids := c.unacked
	c.unacked = nil
	c.mu.Unlock()
	for len(ids) > 0 {
		n := min(len(ids), 1000)
		c.ack(ctx, ids[:n])
		ids = ids[n:]
	}
}

// refresh reads every group of the stream: its own group's lag becomes the
// backlog, and the stream is trimmed below the oldest entry that any group
// has pending or not yet delivered.
func (c *Consumer) refresh(ctx context.Context) error {
	groups, err := c.rdb.XInfoGroups(ctx, c.key).Result()
	if err != nil {
		return err
	}
	var floor streamID
	for i, g := range groups {
		low, err := parseID(g.LastDeliveredID)
		if err != nil {
			return err
		}
		if g.Pending > 0 {
			p, err := c.rdb.XPending(ctx, c.key, g.Name).Result()
			if err != nil {
				return err
			}
			if lower, err := parseID(p.Lower); err == nil && lower.less(low) {
				low = lower
			}
		}
		if i == 0 || low.less(floor) {
			floor = low
		}
		if g.Name == c.o.Group {
			lag := g.Lag
			if lag < 0 { // unknown (entries were deleted): estimate from the length
				n, err := c.rdb.XLen(ctx, c.key).Result()
				if err != nil {
					return err
				}
				lag = max(0, n-g.Pending)
			}
			c.lag.Store(lag)
			c.m.lag.Set(float64(lag))
		}
	}
	if len(groups) == 0 || floor == (streamID{}) {
		return nil
	}
	// MINID keeps every entry at or above floor; "~" trims whole nodes
	// only, so it may keep a few more, never fewer.
	return c.rdb.XTrimMinIDApprox(ctx, c.key, floor.String(), 0).Err()
}

// Stats is a snapshot of a Consumer's counters.
type Stats struct {
	store.Stats
	Read      int64 // entries read into the coordinator, claims included
	Claimed   int64 // entries claimed from other consumers
	Refused   int64 // entries refused (a repeated data field), moved to the refused stream
	Acked     int64 // entries acknowledged after the sink wrote them
	AckErrors int64 // failed acknowledgements (retried)
	Lag       int64 // the group's lag at the last refresh
}

// Stats returns the counters so far.
func (c *Consumer) Stats() Stats {
	return Stats{Stats: c.w.Stats(), Read: c.read.Load(), Claimed: c.claimed.Load(), Refused: c.refusals.Load(),
		Acked: c.acked.Load(), AckErrors: c.ackFails.Load(), Lag: c.lag.Load()}
}

// streamID is a stream entry ID, ms-seq.
type streamID struct{ ms, seq uint64 }

func parseID(s string) (streamID, error) {
	a, b, ok := strings.Cut(s, "-")
	ms, err1 := strconv.ParseUint(a, 10, 64)
	seq, err2 := strconv.ParseUint(b, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		return streamID{}, fmt.Errorf("redisstream: bad entry id %q", s)
	}
	return streamID{ms, seq}, nil
}

func (a streamID) less(b streamID) bool {
	return a.ms < b.ms || a.ms == b.ms && a.seq < b.seq
}

func (a streamID) String() string {
	return strconv.FormatUint(a.ms, 10) + "-" + strconv.FormatUint(a.seq, 10)
}

// backoff waits 100ms, doubling to 500ms, between failed attempts: a
// consumer reads again within half a second of Redis (or, on a cluster,
// the stream's new master) answering, at two failed calls a second at
// most meanwhile.
type backoff struct {
	n int
	d time.Duration
}

func newBackoff() *backoff { return &backoff{d: 100 * time.Millisecond} }

func (b *backoff) reset() { b.n, b.d = 0, 100*time.Millisecond }

func (b *backoff) wait(ctx context.Context) {
	b.n++
	t := time.NewTimer(b.d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
	b.d = min(2*b.d, 500*time.Millisecond)
}

// readTimeout returns rdb's ReadTimeout when it is a Client, ClusterClient
// or Ring with one, else 0.
func readTimeout(rdb redis.UniversalClient) time.Duration {
	t, _ := redisopt.Of(rdb)
	return t.Read
}
