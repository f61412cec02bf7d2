// Package synthetic is the pipeline replica of `sluice pipeline`: a
// synthetic provider behind the shared budget, whose ticks are appended to
// the durable write streams for the coordinators to write.
package synthetic

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-dev/sluice/internal/service"
	"github.com/sluice-dev/sluice/pkg/limiter"
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

// Options are a replica's parts; all are required but Pace.
type Options struct {
	// ID is unique across replicas and restarts: the ticks' ids start
	// with it.
	ID, Provider string
	Limiter      *limiter.Limiter
	// Streams are the write streams every tick is appended to.
	Streams []*redisstream.Producer
	// Pace waits until the next tick may be fetched (nil: as many as the
	// budget allows).
	Pace func(ctx context.Context)
	// Failing, when set and true, makes a fetch fail (a provider outage,
	// for drills): the replica reports it to the provider's shared breaker
	// (Limiter.RecordFailure) and appends nothing for it.
	Failing    func() bool
	Log        *slog.Logger
	Registerer prometheus.Registerer
}

// Replica is a synthetic pipeline replica: it acquires one token per
// request from the shared budget of its provider, fetches a synthetic
// market-data tick and appends it (JSON) to every stream, retrying a
// failed append, so nothing fetched is dropped. Its counts are safe to
// read while it runs.
type Replica struct {
	o        Options
	appended prometheus.Counter
	ready    atomic.Bool
	n, lost  atomic.Int64
}

// New returns a replica, its counter pipeline_items_appended_total
// registered with o.Registerer.
func New(o Options) *Replica {
	p := &Replica{o: o}
	p.appended = prometheus.NewCounter(prometheus.CounterOpts{Name: "pipeline_items_appended_total", Help: "Items appended to the write stream."})
	o.Registerer.MustRegister(p.appended)
	return p
}

// Ready reports whether the last acquisition succeeded (false until the
// provider is registered and Redis answers).
func (p *Replica) Ready() bool { return p.ready.Load() }

// Appended is the ticks appended to every stream so far.
func (p *Replica) Appended() int64 { return p.n.Load() }

// Unappended is the ticks given up at shutdown.
func (p *Replica) Unappended() int64 { return p.lost.Load() }

// Run fetches and appends until ctx ends, then appends what it holds; it
// returns an error only for a provider the limiter refuses.
func (p *Replica) Run(ctx context.Context) error {
	rnd := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	price := map[string]float64{}
	var warned bool
	for seq := 1; ctx.Err() == nil; {
		if p.o.Pace != nil {
			if p.o.Pace(ctx); ctx.Err() != nil {
				return nil
			}
		}
		if _, err := p.o.Limiter.Acquire(ctx, p.o.Provider, 1); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, limiter.ErrInvalidArgument) { // a bad --provider: no retry will help
				return err
			}
			p.ready.Store(false)
			if !warned {
				p.o.Log.Warn("cannot acquire; retrying", "provider", p.o.Provider, "err", err)
				warned = true
			}
			service.Sleep(ctx, 500*time.Millisecond)
			continue
		}
		p.ready.Store(true)
		warned = false
		if p.o.Failing != nil && p.o.Failing() {
			if err := p.o.Limiter.RecordFailure(ctx, p.o.Provider); err != nil && ctx.Err() == nil {
				p.o.Log.Warn("cannot report the provider's failure", "provider", p.o.Provider, "err", err)
			}
			continue
		}
		sym := symbols[rnd.IntN(len(symbols))]
		if _, ok := price[sym]; !ok {
			price[sym] = 100 + 100*rnd.Float64()
		}
		price[sym] *= 1 + (rnd.Float64()-0.5)*0.002
		b, _ := json.Marshal(tick{ID: p.o.ID + "-" + strconv.Itoa(seq), Provider: p.o.Provider, Symbol: sym,
			Price: price[sym], FetchedAt: time.Now().UTC().Format(time.RFC3339Nano)})
		seq++
		p.append(ctx, b)
	}
	return nil
}

// append appends b to every stream, retrying until it is stored; once ctx
// ended it tries for 5 more seconds, then counts b as not appended.
func (p *Replica) append(ctx context.Context, b []byte) {
	var deadline time.Time // set when ctx ends
	for _, prod := range p.o.Streams {
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
				p.o.Log.Error("giving up an item at shutdown: not appended", "err", err)
				return
			}
			p.o.Log.Warn("append failed; retrying", "err", err)
			service.Sleep(context.Background(), wait)
		}
	}
	p.n.Add(1)
	p.appended.Inc()
}
