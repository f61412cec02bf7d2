package redisstream

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

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

// setDefaults fills the zero fields with their defaults and checks every
// field, naming the first one out of range.
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
	if err := o.setSizes(); err != nil {
		return err
	}
	return o.setStore()
}

// setSizes defaults and checks the counts and durations.
func (o *ConsumerOptions) setSizes() error {
	if err := opts.Check(
		opts.Positive("count", &o.Count, 500),
		opts.Positive("block", &o.Block, time.Second),
		opts.Positive("claim_idle", &o.ClaimIdle, 30*time.Second),
		opts.Positive("refresh", &o.Refresh, 500*time.Millisecond),
		opts.Positive("drain", &o.Drain, 10*time.Second),
	); err != nil {
		return fmt.Errorf("redisstream: %w", err)
	}
	return nil
}

// setStore sets the options of the coordinator the consumer sets: its ID
// (the consumer's name) and the loggers.
func (o *ConsumerOptions) setStore() error {
	switch o.Store.ID {
	case "":
		o.Store.ID = o.Name
	case o.Name:
	default:
		return fmt.Errorf("redisstream: store.id=%q: must be empty or equal to name=%q (a coordinator reports pressure under its consumer name, by which the controller tells that it is alive)", o.Store.ID, o.Name)
	}
	o.Logger = cmp.Or(o.Logger, slog.Default())
	o.Store.Logger = cmp.Or(o.Store.Logger, o.Logger)
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

// consumerMetrics are a consumer's own, beside its coordinator's, all
// labelled coordinator_id.
type consumerMetrics struct {
	lag              prometheus.Gauge
	claimed, acked   prometheus.Counter
	ackErrors, reads prometheus.Counter
	refused          prometheus.Counter
}

// newConsumerMetrics registers the metrics of consumer id on reg (none when
// reg is nil).
func newConsumerMetrics(reg prometheus.Registerer, id string) (consumerMetrics, error) {
	r := &promutil.Registrar{Reg: reg}
	counter := func(name, help string) prometheus.Counter {
		return r.CounterVec(prometheus.CounterOpts{Name: name, Help: help}, "coordinator_id").WithLabelValues(id)
	}
	m := consumerMetrics{
		lag: r.GaugeVec(prometheus.GaugeOpts{Name: "coordinator_stream_lag",
			Help: "Entries of the write stream not yet delivered to the consumer group (the group's, so aggregate with max, not sum)."}, "coordinator_id").WithLabelValues(id),
		claimed:   counter("coordinator_stream_claimed_total", "Entries claimed from consumers that left them pending."),
		acked:     counter("coordinator_stream_acked_total", "Entries acknowledged: written, dead-lettered, or deleted while pending."),
		ackErrors: counter("coordinator_stream_ack_errors_total", "Failed acknowledgements (retried; the entry may be written twice)."),
		reads:     counter("coordinator_stream_read_entries_total", "Entries read from the stream, claims included."),
		refused:   counter("coordinator_stream_refused_total", "Entries refused (a repeated data field): moved whole to the refused stream, not written."),
	}
	return m, r.Err
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
	m, err := newConsumerMetrics(o.Store.Registerer, o.Store.ID)
	if err != nil {
		return nil, err
	}
	c.m = m
	o.Store.Backlog = func() int { return int(c.lag.Load()) }
	o.Store.DeadLetter = c.acking(o.Store.DeadLetter)
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

// readTimeout returns rdb's ReadTimeout when it is a Client, ClusterClient
// or Ring with one, else 0.
func readTimeout(rdb redis.UniversalClient) time.Duration {
	t, _ := redisopt.Of(rdb)
	return t.Read
}
