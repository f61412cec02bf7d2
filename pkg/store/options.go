package store

import (
	"cmp"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-dev/sluice/pkg/feedback"
	"github.com/sluice-dev/sluice/pkg/internal/opts"
	"github.com/sluice-dev/sluice/pkg/keyspace"
)

// Options configure a WriteCoordinator. Only ID is required: every other
// zero field takes the default its comment gives (nil Publisher: publish
// nothing; nil Registerer: no metrics).
type Options[T any] struct {
	// ID names the coordinator in events, metrics and Redis keys: 1 to 64 of
	// [A-Za-z0-9_.-]. Required.
	ID string
	// Capacity is the queue's size; default 10000.
	Capacity int
	// Workers write batches concurrently; default 4.
	Workers int
	// BatchSize is the most items per write; default 100.
	BatchSize int
	// Linger is how long a worker waits to fill a batch before writing a
	// smaller one; default 50ms.
	Linger time.Duration
	// Watermarks set the pressure levels; default DefaultWatermarks.
	Watermarks Watermarks
	// Publisher receives a report at every level change and every
	// Heartbeat, and a fill sample every Sample between them; nil
	// publishes nothing.
	Publisher feedback.Publisher
	// Heartbeat is the period of reports while the level stays; default
	// 2s. Keep it well under the feedback handler's coordinator TTL.
	Heartbeat time.Duration
	// Backoff is the wait before the first retry of a failed batch, doubled
	// at each further retry up to 2s; default 50ms. Without DeadLetter a
	// batch is retried until the sink takes it: nothing is given up.
	Backoff time.Duration
	// WriteTimeout bounds each call to the sink; default 30s.
	WriteTimeout time.Duration
	// HardAfter is how long the sink may go without a successful write,
	// while a batch is failing, before the level is hard: a store that
	// cannot write is a store under pressure. While any batch is failing
	// (retried, not yet written nor dead-lettered) the level is at least
	// soft; one batch the sink always refuses keeps it soft, not hard, as
	// long as other writes succeed. Default 1s.
	HardAfter time.Duration
	// DeadLetter, when set, receives the batches that still fail after
	// Attempts writes (an explicit choice: they are counted, and leave the
	// queue); nil (the default) retries every batch until it is written. A
	// batch the dead-letter sink refuses stays: it gets Attempts more writes,
	// then goes to the dead-letter sink again.
	DeadLetter Sink[T]
	// Attempts is how many writes a batch gets before it goes to DeadLetter;
	// default 4. Ignored without DeadLetter.
	Attempts int
	// Backlog, when set, returns how many items wait for this coordinator
	// outside its queue (a stream consumer's group lag). The watermarks
	// measure the queue plus the backlog; it is read at every re-evaluation
	// (every queue change and every Sample), so it must be cheap.
	Backlog func() int
	// Sample is how often the level is re-evaluated when the queue does not
	// change (the backlog moved, the sink keeps failing), and a fill sample
	// (an event of kind feedback.KindSample) is published when no report
	// was; default 250ms. The samples are the signal a controlling policy
	// (feedback.PIPolicy) follows between level changes.
	Sample time.Duration
	// Registerer receives the metrics; nil registers none.
	Registerer prometheus.Registerer
	// Logger receives failed writes and publications; default slog.Default().
	Logger *slog.Logger
}

// Validate returns the error New would return for these options (naming
// the field and its range), without starting anything.
func (o Options[T]) Validate() error { return o.setDefaults() }

// setDefaults fills the zero fields with their defaults and checks every
// field, naming the first one out of range.
func (o *Options[T]) setDefaults() error {
	if !keyspace.ValidName(o.ID) {
		return fmt.Errorf("store: id=%q: must be %s", o.ID, keyspace.NameRule)
	}
	if err := o.setSizes(); err != nil {
		return err
	}
	o.Watermarks = cmp.Or(o.Watermarks, DefaultWatermarks)
	o.Logger = cmp.Or(o.Logger, slog.Default())
	return o.Watermarks.Validate()
}

// setSizes defaults and checks the counts and durations.
func (o *Options[T]) setSizes() error {
	if err := opts.Check(
		opts.Positive("capacity", &o.Capacity, 10000),
		opts.Positive("workers", &o.Workers, 4),
		opts.Positive("batch_size", &o.BatchSize, 100),
		opts.Positive("attempts", &o.Attempts, 4),
		opts.Positive("linger", &o.Linger, 50*time.Millisecond),
		opts.Positive("heartbeat", &o.Heartbeat, 2*time.Second),
		opts.Positive("backoff", &o.Backoff, 50*time.Millisecond),
		opts.Positive("write_timeout", &o.WriteTimeout, 30*time.Second),
		opts.Positive("hard_after", &o.HardAfter, time.Second),
		opts.Positive("sample", &o.Sample, 250*time.Millisecond),
	); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	switch {
	case o.Capacity > 1e9:
		return fmt.Errorf("store: capacity=%d: must be in [1, 1000000000]", o.Capacity)
	case o.Workers > 1024:
		return fmt.Errorf("store: workers=%d: must be in [1, 1024]", o.Workers)
	}
	return nil
}
