package main

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sluice-dev/sluice/internal/sink"
	"github.com/sluice-dev/sluice/pkg/config"
	"github.com/sluice-dev/sluice/pkg/store"
	"github.com/sluice-dev/sluice/pkg/store/redisstream"
)

func (a *app) coordinatorCmd() *cli.Command {
	var (
		id, stream, sinkSpec, failWhile, deadLetter, rateFile string
		sinkRate                                              float64
		capacity, workers, batch, attempts                    int
		claimIdle, drain                                      time.Duration
	)
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
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "id", Usage: "coordinator id: consumer name and pressure id (default: the host name)", Destination: &id},
			&cli.StringFlag{Name: "stream", Value: "store", Usage: "the stream's name", Destination: &stream},
			&cli.StringFlag{Name: "sink", Value: "discard", Usage: "discard, stdout or file:PATH", Destination: &sinkSpec},
			numberFlag("sink-rate", "simulated store speed, items/s (0: as fast as the sink)", &sinkRate, 0, config.ItemRateRange),
			&cli.StringFlag{Name: "sink-rate-file", Usage: "while this file exists, the number it holds is the simulated store speed (a drill)", Destination: &rateFile},
			&cli.StringFlag{Name: "fail-while", Usage: "every write fails while this file exists (outage drill)", Destination: &failWhile},
			&cli.StringFlag{Name: "dead-letter", Usage: "file:PATH receiving batches that failed --attempts times (default: retry until written)", Destination: &deadLetter},
			numberFlag("attempts", "writes of a batch before it is dead-lettered (only with --dead-letter)", &attempts, 4, closed(1, 1000)),
			numberFlag("capacity", "queue capacity: the watermarks' 100%", &capacity, 10000, closed(1, 1000000000)),
			numberFlag("workers", "concurrent batch writers", &workers, 4, closed(1, 1024)),
			numberFlag("batch", "most items per write", &batch, 100, closed(1, 100000)),
			durationFlag("claim-idle", "claim entries pending this long on another coordinator", &claimIdle, 30*time.Second, config.PeriodRange),
			durationFlag("drain", "how long SIGTERM waits for the queue to drain", &drain, 20*time.Second, config.PeriodRange),
			listenFlag(),
		},
		Action: func(c *cli.Context) error {
			s, err := a.startService(c, "coordinator", nil)
			if err != nil {
				return err
			}
			id = orHostname(id)
			// Everything is checked before a file is opened.
			for _, f := range []struct{ flag, path string }{{"sink-rate-file", rateFile}, {"fail-while", failWhile}} {
				if f.path != "" {
					if err := checkParentDir(f.flag, f.path); err != nil {
						return err
					}
				}
			}
			o := redisstream.ConsumerOptions{
				Options: redisstream.Options{Prefix: s.cfg.Redis.Prefix, Stream: stream},
				Name:    id, ClaimIdle: claimIdle, Drain: drain, Logger: s.Log,
				Store: store.Options[redisstream.Entry]{
					Capacity: capacity, Workers: workers, BatchSize: batch, Registerer: s.Reg, Logger: s.Log,
				},
			}
			if err := o.Validate(); err != nil {
				return usagef("coordinator: %v", err)
			}
			out, err := sink.Open("sink", sinkSpec, sink.Options{Rate: newKnob(sinkRate, rateFile).Value, FailWhile: failWhile}, a.stdout)
			if err != nil {
				return pathError(err)
			}
			defer out.Close()
			out.LogRepair(s.Log, sinkSpec)
			if deadLetter != "" {
				dl, err := sink.Open("dead-letter", deadLetter, sink.Options{}, a.stdout)
				if err != nil {
					return pathError(err)
				}
				defer dl.Close()
				dl.LogRepair(s.Log, deadLetter)
				o.Store.DeadLetter, o.Store.Attempts = dl, attempts
			}
			pub, err := s.publisher()
			if err != nil {
				return err
			}
			o.Store.Publisher = pub
			// The consumer starts its coordinator, which publishes: made
			// once Redis answers (run waits for it before the body).
			var cons atomic.Pointer[redisstream.Consumer]
			ready := s.Ready(func() error {
				if c := cons.Load(); c != nil {
					return c.Ready()
				}
				return errors.New("starting")
			})
			s.Log.Info("starting", "id", id, "stream", stream, "sink", sinkSpec, "sink_rate", sinkRate, "capacity", capacity)
			return s.Run(c.Context, s.Mux(ready), func(ctx context.Context) error {
				cn, err := redisstream.NewConsumer(s.RDB, out, o)
				if err != nil {
					return err
				}
				cons.Store(cn)
				err = cn.Run(ctx)
				wctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				if werr := pub.Withdraw(wctx, id); werr != nil {
					s.Log.Warn("withdrawing the pressure report failed; it expires by itself", "err", werr)
				}
				st := cn.Stats()
				s.Final(map[string]any{"id": id, "read": st.Read, "written": st.Written, "claimed": st.Claimed,
					"acked": st.Acked, "dead_lettered": st.DeadLettered, "unwritten": st.Unwritten,
					"max_depth": st.MaxDepth, "capacity": st.Capacity, "level_changes": st.Transitions})
				return err
			})
		},
	}
}
