// Command goreplica is a Go pipeline replica for the Python client's interop
// tests (clients/python/tests/test_interop.py): it acquires one token at a
// time from a provider's shared bucket with pkg/limiter, in several
// goroutines, until SIGTERM or SIGINT, and then prints one JSON line: the
// Redis time of every grant and the errors it met. It only acquires: the
// test registers the provider and changes the scale.
//
// It prints {"ready":true,"id":...} after its first grant, so the test
// knows it takes part.
//
// With -capacity it registers the provider first (the seed's defaults but
// capacity and -refill-rate), so it registers it again if Redis loses it.
// With -try it asks with TryAcquireRequest (in -lane) every 2 ms instead,
// never waiting, and is ready after its first decision, granted or not
// (it then knows the provider's pacing rules).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/pkg/limiter"
)

func main() {
	url := flag.String("redis", "redis://127.0.0.1:6379/0", "Redis URL")
	provider := flag.String("provider", "interop", "provider to acquire from")
	goroutines := flag.Int("goroutines", 8, "concurrent acquirers, in [1, 1000]")
	id := flag.String("id", "go-replica", "replica id")
	recheck := flag.Duration("paused-recheck", 30*time.Second, "re-check of a paused waiter (long: only a notification wakes it in time)")
	capacity := flag.Int64("capacity", 0, "register the provider first with this capacity (0: do not register)")
	rate := flag.Float64("refill-rate", 60, "the refill rate -capacity registers")
	try := flag.Bool("try", false, "ask with TryAcquireRequest every 2 ms instead of Acquire")
	lane := flag.String("lane", "", "the lane of -try's requests")
	flag.Parse()
	m := mode{capacity: *capacity, rate: *rate, try: *try, lane: *lane}
	if err := run(*url, *provider, *id, *goroutines, *recheck, m); err != nil {
		fmt.Fprintln(os.Stderr, "goreplica:", err)
		os.Exit(1)
	}
}

type report struct {
	ID           string   `json:"id"`
	Granted      int      `json:"granted"`
	GrantsUS     []int64  `json:"grants_us"`
	Errors       int      `json:"errors"`
	ErrorSamples []string `json:"error_samples"`
}

// mode is how the replica asks: see the package doc.
type mode struct {
	capacity int64
	rate     float64
	try      bool
	lane     string
}

func run(url, provider, id string, goroutines int, recheck time.Duration, m mode) error {
	if goroutines < 1 || goroutines > 1000 {
		return fmt.Errorf("goroutines=%d: must be in [1, 1000]", goroutines)
	}
	opt, err := redis.ParseURL(url)
	if err != nil {
		return err
	}
	opt.ContextTimeoutEnabled = true
	var (
		mu    sync.Mutex
		rep   = report{ID: id, GrantsUS: []int64{}, ErrorSamples: []string{}}
		ready sync.Once
		wg    sync.WaitGroup
	)
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	lim, err := limiter.New(rdb, limiter.Options{ReplicaID: id, Source: "go-replica", PausedRecheck: recheck,
		// An interop test, not a stall test: a Redis slowed by a loaded
		// machine must not count as an outage here.
		CallTimeout: 5 * time.Second})
	if err != nil {
		return err
	}
	defer lim.Close()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if m.capacity > 0 {
		cfg := limiter.DefaultProviderConfig()
		cfg.Capacity, cfg.RefillRate = m.capacity, m.rate
		if _, err := lim.Register(ctx, provider, cfg); err != nil {
			return err
		}
	}
	acquire := func() (limiter.Decision, error) { return lim.Acquire(ctx, provider, 1) }
	if m.try {
		acquire = func() (limiter.Decision, error) {
			d, err := lim.TryAcquireRequest(ctx, provider, limiter.Request{Lane: m.lane})
			if err == nil {
				ready.Do(func() { fmt.Printf("{\"ready\":true,\"id\":%q}\n", id) })
			}
			select {
			case <-ctx.Done():
			case <-time.After(2 * time.Millisecond):
			}
			return d, err
		}
	}
	for range goroutines {
		wg.Go(func() {
			for ctx.Err() == nil {
				d, err := acquire()
				if err != nil && ctx.Err() != nil {
					return // stopping: not an error
				}
				mu.Lock()
				if err != nil {
					rep.Errors++
					if len(rep.ErrorSamples) < 5 {
						rep.ErrorSamples = append(rep.ErrorSamples, err.Error())
					}
				} else if d.Allowed {
					rep.Granted++
					rep.GrantsUS = append(rep.GrantsUS, d.Now.UnixMicro())
				}
				mu.Unlock()
				if err != nil {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				if !d.Allowed {
					continue // -try's refusals
				}
				ready.Do(func() { fmt.Printf("{\"ready\":true,\"id\":%q}\n", id) })
			}
		})
	}
	wg.Wait()
	return json.NewEncoder(os.Stdout).Encode(rep)
}
