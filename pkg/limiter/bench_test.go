package limiter_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/internal/redistest"
	"github.com/sluice-dev/sluice/pkg/limiter"
)

// BenchmarkDecision compares one non-blocking decision of sluice
// (TryAcquire: config, cooldown, breaker, scale and bucket in one script;
// "sluice" is the default as shipped, with the token lease; "sluice-plain"
// coalesces concurrent calls without it; "sluice-single" sends each alone)
// with redis_rate's AllowN (GCRA, one script), side by side on the same
// real redis-server, serially and from parallel goroutines. The limits
// (1e6/s, burst 1e9) grant every call and make every one write. `sluice
// bench` runs the wider matrix (processes, limited, blocking).
//
// Each sluice variant runs on two clients: "ctx", with
// ContextTimeoutEnabled (its calls go straight through: the fast path),
// and "plain", without it (each call is made in a goroutine of its own, so
// that CallTimeout and the caller's deadline hold).
//
//	go test -run '^$' -bench Decision -benchtime 3s ./pkg/limiter/
func BenchmarkDecision(b *testing.B) {
	srv := redistest.Start(b)
	ctx := context.Background()
	var impls []struct {
		name string
		call func() (bool, error)
	}
	for _, client := range []struct {
		name string
		ctx  bool
	}{{"ctx", true}, {"plain", false}} {
		rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 64, ContextTimeoutEnabled: client.ctx})
		defer rdb.Close()
		for _, variant := range []struct {
			name string
			opts limiter.Options
		}{
			{"sluice", limiter.Options{}},
			{"sluice-plain", limiter.Options{NoTokenLease: true, NoRefusalHold: true}},
			{"sluice-single", limiter.Options{MaxBatch: 1}},
		} {
			o := variant.opts
			o.Logger = quiet
			c, err := limiter.New(rdb, o)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			impls = append(impls, struct {
				name string
				call func() (bool, error)
			}{variant.name + "-" + client.name, func() (bool, error) {
				d, err := c.TryAcquire(ctx, "bench", 1)
				return d.Allowed, err
			}})
		}
	}
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 64})
	defer rdb.Close()
	admin, err := limiter.New(rdb, limiter.Options{Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	defer admin.Close()
	cfg := limiter.DefaultProviderConfig()
	cfg.Capacity, cfg.RefillRate = 1e9, 1e6 // a rate at which redis_rate writes too
	if _, err := admin.Register(ctx, "bench", cfg); err != nil {
		b.Fatal(err)
	}
	peer := redis_rate.NewLimiter(rdb)
	limit := redis_rate.Limit{Rate: 1e6, Burst: 1e9, Period: 1e9}

	impls = append(impls, []struct {
		name string
		call func() (bool, error)
	}{
		{"redis_rate", func() (bool, error) {
			r, err := peer.AllowN(ctx, "bench", limit, 1)
			if err != nil {
				return false, err
			}
			return r.Allowed > 0, nil
		}},
	}...)
	for _, par := range []int{1, 16} {
		for _, impl := range impls {
			b.Run(fmt.Sprintf("%s/goroutines=%d", impl.name, par), func(b *testing.B) {
				b.SetParallelism(par)
				b.ReportAllocs()
				if par == 1 {
					for b.Loop() {
						if ok, err := impl.call(); err != nil || !ok {
							b.Fatal(ok, err)
						}
					}
					return
				}
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if ok, err := impl.call(); err != nil || !ok {
							b.Error(ok, err)
							return
						}
					}
				})
			})
		}
	}
}
