package main

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sluice-dev/sluice/internal/knob"
	"github.com/sluice-dev/sluice/internal/synthetic"
	"github.com/sluice-dev/sluice/pkg/config"
	"github.com/sluice-dev/sluice/pkg/pipeline"
	"github.com/sluice-dev/sluice/pkg/store/redisstream"
)

func (a *app) pipelineCmd() *cli.Command {
	var id, provider, stream, demandFile, failWhile string
	var demand float64
	return &cli.Command{
		Name:  "pipeline",
		Usage: "a synthetic pipeline replica: acquire from the shared budget, fetch, append to the write stream",
		Description: `Acquires one token per request from the shared budget of --provider (default
feedback.provider_name), fetches a synthetic market-data tick and appends it
(JSON) to <prefix>:stream:{<stream>}, for the coordinators to write; with
--stream a,b to each of the streams (a fan-out: a database and an archive).
It only acquires: the controller registers the provider and steers its
scale. It wants as many ticks as the budget allows, or --demand a second
(--demand-file PATH: the number PATH holds while it exists, for drills;
--fail-while PATH: while PATH exists every fetch fails and is reported to the
provider's shared breaker, a provider outage). It
waits for Redis and for the provider to be registered; a failed append is
retried, so nothing fetched is dropped. On SIGTERM it stops fetching, appends
what it holds and prints {"appended": N, ...}.

Examples:
   sluice --redis redis://redis:6379/0 pipeline --id "$POD_NAME"
   sluice pipeline --provider ibkr --stream store,archive --demand 20 --listen 127.0.0.1:0`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "id", Usage: "replica id (default: the host name)", Destination: &id},
			&cli.StringFlag{Name: "provider", Usage: "the provider to acquire from (default: feedback.provider_name)", Destination: &provider},
			&cli.StringFlag{Name: "stream", Value: "store", Usage: "the write stream's name; a,b appends every tick to each", Destination: &stream},
			numberFlag("demand", "ticks a second this replica wants (0: as many as the budget allows)", &demand, 0, config.ItemRateRange),
			&cli.StringFlag{Name: "demand-file", Usage: "while this file exists, the number it holds is --demand (a drill)", Destination: &demandFile},
			&cli.StringFlag{Name: "fail-while", Usage: "every fetch fails (reported to the shared breaker) while this file exists (provider outage drill)", Destination: &failWhile},
			listenFlag(),
		},
		Action: func(c *cli.Context) error {
			var named []string // MDP_RATE_<PROVIDER>_* may configure it
			if provider != "" {
				if err := checkProviders([]string{provider}); err != nil {
					return usagef("pipeline: --provider: %v", err)
				}
				named = append(named, provider)
			}
			s, err := a.startService(c, "pipeline", named)
			if err != nil {
				return err
			}
			id = orHostname(id)
			if provider == "" { // checked by the configuration
				provider = s.cfg.Feedback.Provider
			}
			for _, f := range []struct{ flag, path string }{{"demand-file", demandFile}, {"fail-while", failWhile}} {
				if f.path != "" {
					if err := checkParentDir(f.flag, f.path); err != nil {
						return err
					}
				}
			}
			var failing func() bool
			if failWhile != "" {
				failing = func() bool { _, err := os.Stat(failWhile); return err == nil }
			}
			prods, err := producers(s, stream)
			if err != nil {
				return err
			}
			lo := s.cfg.LimiterOptions()
			lo.ReplicaID, lo.Source, lo.Logger, lo.Registerer = id, "pipeline", s.Log, s.Reg
			rep, err := pipeline.New(c.Context, s.RDB, pipeline.Options{Limiter: lo})
			if err != nil {
				return usagef("pipeline: %v", err)
			}
			defer rep.Close()
			rate, pace := knob.New(demand, demandFile), knob.Pacer{}
			p := synthetic.New(synthetic.Options{ID: id + "." + strconv.FormatInt(time.Now().UnixMilli(), 36), Provider: provider,
				Limiter: rep.Limiter(), Streams: prods, Pace: func(ctx context.Context) { pace.Wait(ctx, rate.Value()) }, Failing: failing, Log: s.Log, Registerer: s.Reg})
			s.Log.Info("starting", "id", id, "provider", provider, "stream", stream)
			return s.Run(c.Context, s.Mux(s.Ready(func() error {
				if !p.Ready() {
					return errors.New("provider " + provider + " not registered yet, or Redis refuses")
				}
				return nil
			})), func(ctx context.Context) error {
				err := p.Run(ctx)
				s.Final(map[string]any{"id": id, "appended": p.Appended(), "unappended": p.Unappended()})
				return err
			})
		},
	}
}

// producers returns a producer for each of the streams a,b names.
func producers(s *svc, streams string) ([]*redisstream.Producer, error) {
	var prods []*redisstream.Producer
	for _, name := range strings.Split(streams, ",") {
		prod, err := redisstream.NewProducer(s.RDB, redisstream.Options{Prefix: s.cfg.Redis.Prefix, Stream: name})
		if err != nil {
			return nil, usagef("pipeline: --stream: %v", err)
		}
		prods = append(prods, prod)
	}
	return prods, nil
}
