package main

import (
	"context"
	"errors"
	"io"
	"sync/atomic"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sluice-dev/sluice/internal/knob"
	"github.com/sluice-dev/sluice/internal/sink"
	"github.com/sluice-dev/sluice/pkg/config"
	"github.com/sluice-dev/sluice/pkg/feedback/redisbus"
	"github.com/sluice-dev/sluice/pkg/store"
	"github.com/sluice-dev/sluice/pkg/store/redisstream"
)

// coordinatorArgs are the flags of sluice coordinator.
type coordinatorArgs struct {
	id, stream, sinkSpec, failWhile, deadLetter, rateFile string
	sinkRate                                              float64
	capacity, workers, batch, attempts                    int
	claimIdle, drain                                      time.Duration
}

func (a *app) coordinatorCmd() *cli.Command {
	var f coordinatorArgs
	return &cli.Command{
		Name:  "coordinator",
		Usage: "write the durable write stream into a store, and publish the store's pressure",
		Description: `Reads <prefix>:stream:{<stream>} through the consumer group "coordinators"
into a write coordinator (bounded queue, --workers writing batches of --batch
to the sink), acknowledges each entry once the sink wrote it, claims entries
left pending by dead coordinators (idle for --claim-idle), trims the stream
behind the group, and publishes its pressure (queue fill plus the group's
lag; a failing sink is pressure too) to Redis for the controller and KEDA.
A failing write is retried until the sink takes it; --dead-letter is the
explicit, counted alternative. On SIGTERM it stops reading, drains within
--drain and withdraws its pressure; what it could not write stays pending.

Sinks: discard; stdout; file:PATH (JSON lines, appended). --sink-rate
simulates a store that writes that many items/s (--sink-rate-file PATH: the
number PATH holds while it exists, read every 100 ms, so a drill can slow the
store down mid-run); --fail-while PATH makes every write fail while PATH
exists (an outage drill). At exit it prints its counts, with the deepest the
queue and backlog went (max_depth) and its level changes.

Examples:
   sluice --redis redis://redis:6379/0 coordinator --id "$POD_NAME" --sink file:/data/ticks.jsonl
   sluice coordinator --sink discard --sink-rate 300`,
		Flags:  f.flags(),
		Action: func(c *cli.Context) error { return a.runCoordinator(c, &f) },
	}
}

func (f *coordinatorArgs) flags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "id", Usage: "coordinator id: consumer name and pressure id (default: the host name)", Destination: &f.id},
		&cli.StringFlag{Name: "stream", Value: "store", Usage: "the stream's name", Destination: &f.stream},
		&cli.StringFlag{Name: "sink", Value: "discard", Usage: "discard, stdout or file:PATH", Destination: &f.sinkSpec},
		numberFlag("sink-rate", "simulated store speed, items/s (0: as fast as the sink)", &f.sinkRate, 0, config.ItemRateRange),
		&cli.StringFlag{Name: "sink-rate-file", Usage: "while this file exists, the number it holds is the simulated store speed (a drill)", Destination: &f.rateFile},
		&cli.StringFlag{Name: "fail-while", Usage: "every write fails while this file exists (outage drill)", Destination: &f.failWhile},
		&cli.StringFlag{Name: "dead-letter", Usage: "file:PATH receiving batches that failed --attempts times (default: retry until written)", Destination: &f.deadLetter},
		numberFlag("attempts", "writes of a batch before it is dead-lettered (only with --dead-letter)", &f.attempts, 4, closed(1, 1000)),
		numberFlag("capacity", "queue capacity: the watermarks' 100%", &f.capacity, 10000, closed(1, 1000000000)),
		numberFlag("workers", "concurrent batch writers", &f.workers, 4, closed(1, 1024)),
		numberFlag("batch", "most items per write", &f.batch, 100, closed(1, 100000)),
		durationFlag("claim-idle", "claim entries pending this long on another coordinator", &f.claimIdle, 30*time.Second, config.PeriodRange),
		durationFlag("drain", "how long SIGTERM waits for the queue to drain", &f.drain, 20*time.Second, config.PeriodRange),
		listenFlag(),
	}
}

// runCoordinator checks everything before a file is opened, opens the
// sinks and runs a stream consumer until SIGTERM, then withdraws its
// pressure and prints its counts.
func (a *app) runCoordinator(c *cli.Context, f *coordinatorArgs) error {
	s, err := a.startService(c, "coordinator", nil)
	if err != nil {
		return err
	}
	id := orHostname(f.id)
	for _, p := range []struct{ flag, path string }{{"sink-rate-file", f.rateFile}, {"fail-while", f.failWhile}} {
		if p.path != "" {
			if err := checkParentDir(p.flag, p.path); err != nil {
				return err
			}
		}
	}
	o := redisstream.ConsumerOptions{
		Options: redisstream.Options{Prefix: s.cfg.Redis.Prefix, Stream: f.stream},
		Name:    id, ClaimIdle: f.claimIdle, Drain: f.drain, Logger: s.Log,
		Store: store.Options[redisstream.Entry]{
			Capacity: f.capacity, Workers: f.workers, BatchSize: f.batch, Registerer: s.Reg, Logger: s.Log,
		},
	}
	if err := o.Validate(); err != nil {
		return usagef("coordinator: %v", err)
	}
	out, closeSinks, err := f.openSinks(s, &o.Store, a.stdout)
	if err != nil {
		return err
	}
	defer closeSinks()
	pub, err := s.publisher()
	if err != nil {
		return err
	}
	o.Store.Publisher = pub
	// The consumer starts its coordinator, which publishes: made once
	// Redis answers (Run waits for it before the body).
	var cons atomic.Pointer[redisstream.Consumer]
	ready := s.Ready(func() error {
		if c := cons.Load(); c != nil {
			return c.Ready()
		}
		return errors.New("starting")
	})
	s.Log.Info("starting", "id", id, "stream", f.stream, "sink", f.sinkSpec, "sink_rate", f.sinkRate, "capacity", f.capacity)
	return s.Run(c.Context, s.Mux(ready), func(ctx context.Context) error {
		cn, err := redisstream.NewConsumer(s.RDB, out, o)
		if err != nil {
			return err
		}
		cons.Store(cn)
		err = cn.Run(ctx)
		withdraw(s, pub, id)
		st := cn.Stats()
		s.Final(map[string]any{"id": id, "read": st.Read, "written": st.Written, "claimed": st.Claimed,
			"acked": st.Acked, "dead_lettered": st.DeadLettered, "unwritten": st.Unwritten,
			"max_depth": st.MaxDepth, "capacity": st.Capacity, "level_changes": st.Transitions})
		return err
	})
}

// openSinks opens --sink and, when set, --dead-letter into o; closeAll
// closes both.
func (f *coordinatorArgs) openSinks(s *svc, o *store.Options[redisstream.Entry], stdout io.Writer) (out *sink.Lines, closeAll func(), err error) {
	out, err = sink.Open("sink", f.sinkSpec, sink.Options{Rate: knob.New(f.sinkRate, f.rateFile).Value, FailWhile: f.failWhile}, stdout)
	if err != nil {
		return nil, nil, pathError(err)
	}
	out.LogRepair(s.Log, f.sinkSpec)
	if f.deadLetter == "" {
		return out, func() { out.Close() }, nil
	}
	dl, err := sink.Open("dead-letter", f.deadLetter, sink.Options{}, stdout)
	if err != nil {
		out.Close()
		return nil, nil, pathError(err)
	}
	dl.LogRepair(s.Log, f.deadLetter)
	o.DeadLetter, o.Attempts = dl, f.attempts
	return out, func() { dl.Close(); out.Close() }, nil
}

// withdraw removes the coordinator's pressure report at exit; a report
// left behind expires by itself.
func withdraw(s *svc, pub *redisbus.Publisher, id string) {
	wctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := pub.Withdraw(wctx, id); err != nil {
		s.Log.Warn("withdrawing the pressure report failed; it expires by itself", "err", err)
	}
}
