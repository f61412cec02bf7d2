package main

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/urfave/cli/v2"

	"github.com/sluice-dev/sluice/pkg/config"
	"github.com/sluice-dev/sluice/pkg/limiter"
	"github.com/sluice-dev/sluice/pkg/pipeline"
	"github.com/sluice-dev/sluice/pkg/store/redisstream"
)

// tick is what the synthetic provider returns: one market-data update, with
// an id unique across replicas and restarts (for counting duplicates).
type tick struct {
	ID        string  `json:"id"`
	Provider  string  `json:"provider"`
	Symbol    string  `json:"symbol"`
	Price     float64 `json:"price"`
	FetchedAt string  `json:"fetched_at"`
}

var symbols = []string{"AAPL", "MSFT", "NVDA", "AMZN", "GOOG", "ES", "NQ", "EURUSD"}

func (a *app) pipelineCmd() *cli.Command {
	var id, provider, stream, demandFile string
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
(--demand-file PATH: the number PATH holds while it exists, for drills). It
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
			if demandFile != "" {
				if err := checkParentDir("demand-file", demandFile); err != nil {
					return err
				}
			}
			var prods []*redisstream.Producer
			for _, name := range strings.Split(stream, ",") {
				prod, err := redisstream.NewProducer(s.rdb, redisstream.Options{Prefix: s.cfg.Redis.Prefix, Stream: name})
				if err != nil {
					return usagef("pipeline: --stream: %v", err)
				}
				prods = append(prods, prod)
			}
			rep, err := pipeline.New(c.Context, s.rdb, pipeline.Options{Limiter: limiter.Options{
				Prefix: s.cfg.Redis.Prefix, ReplicaID: id, Source: "pipeline", Outage: s.cfg.Outage, Logger: s.log, Registerer: s.reg,
			}})
			if err != nil {
				return usagef("pipeline: %v", err)
			}
			defer rep.Close()
			p := &synthetic{id: id + "." + strconv.FormatInt(time.Now().UnixMilli(), 36), provider: provider, lim: rep.Limiter(),
				prods: prods, log: s.log, pace: pacer{rate: newKnob(demand, demandFile).Value}}
			p.appended = prometheus.NewCounter(prometheus.CounterOpts{Name: "pipeline_items_appended_total", Help: "Items appended to the write stream."})
			s.reg.MustRegister(p.appended)
			var ready atomic.Bool
			p.ready = &ready
			s.log.Info("starting", "id", id, "provider", provider, "stream", stream)
			return s.run(c.Context, s.mux(s.ready(func() error {
				if !ready.Load() {
					return errors.New("provider " + provider + " not registered yet, or Redis refuses")
				}
				return nil
			})), func(ctx context.Context) error {
				err := p.run(ctx)
				s.final(map[string]any{"id": id, "appended": p.n.Load(), "unappended": p.lost.Load()})
				return err
			})
		},
	}
}

// synthetic is the replica's loop.
type synthetic struct {
	id, provider string
	lim          *limiter.Limiter
	prods        []*redisstream.Producer // every tick goes to each
	pace         pacer
	log          *slog.Logger
	appended     prometheus.Counter
	ready        *atomic.Bool
	n, lost      atomic.Int64
}

func (p *synthetic) run(ctx context.Context) error {
	rnd := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	price := map[string]float64{}
	var warned bool
	for seq := 1; ctx.Err() == nil; {
		if p.pace.wait(ctx); ctx.Err() != nil {
			return nil
		}
		if _, err := p.lim.Acquire(ctx, p.provider, 1); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, limiter.ErrInvalidArgument) { // a bad --provider: no retry will help
				return err
			}
			p.ready.Store(false)
			if !warned {
				p.log.Warn("cannot acquire; retrying", "provider", p.provider, "err", err)
				warned = true
			}
			sleep(ctx, 500*time.Millisecond)
			continue
		}
		p.ready.Store(true)
		warned = false
		sym := symbols[rnd.IntN(len(symbols))]
		if _, ok := price[sym]; !ok {
			price[sym] = 100 + 100*rnd.Float64()
		}
		price[sym] *= 1 + (rnd.Float64()-0.5)*0.002
		b, _ := json.Marshal(tick{ID: p.id + "-" + strconv.Itoa(seq), Provider: p.provider, Symbol: sym,
			Price: price[sym], FetchedAt: time.Now().UTC().Format(time.RFC3339Nano)})
		seq++
		p.append(ctx, b)
	}
	return nil
}

// append appends b to every stream, retrying until it is stored; once ctx
// ended it tries for 5 more seconds, then counts b as not appended.
func (p *synthetic) append(ctx context.Context, b []byte) {
	var deadline time.Time // set when ctx ends
	for _, prod := range p.prods {
		for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
			if ctx.Err() != nil && deadline.IsZero() {
				deadline = time.Now().Add(5 * time.Second)
			}
			actx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			err := prod.Append(actx, b)
			cancel()
			if err == nil {
				break
			}
			if !deadline.IsZero() && time.Now().After(deadline) {
				p.lost.Add(1)
				p.log.Error("giving up an item at shutdown: not appended", "err", err)
				return
			}
			p.log.Warn("append failed; retrying", "err", err)
			sleep(context.Background(), wait)
		}
	}
	p.n.Add(1)
	p.appended.Inc()
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
