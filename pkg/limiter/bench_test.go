package limiter_test

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

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

// BenchmarkPlainPath is issue 26's lease-off case at one caller: one
// TryAcquire at a time on the plain path (NoTokenLease, NoRefusalHold, as
// `sluice bench`'s sluice-plain) beside redis_rate's AllowN, both on one
// client as the services build it (ContextTimeoutEnabled) and under a
// caller's context with a deadline, as `sluice bench` calls them. Besides
// ns/op and allocations it reports cpu-ns/op: this process's CPU time
// (user and system, every thread; redis-server is another process) per
// decision, the client's share of a decision; "interleaved" runs the two
// in turns and reports their ratios (sluice ÷ redis_rate: below 1 is
// sluice the cheaper).
//
//	go test -run '^$' -bench 'PlainPath$' -benchtime 20000x -count 5 ./pkg/limiter/
func BenchmarkPlainPath(b *testing.B) {
	srv := redistest.Start(b)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, ContextTimeoutEnabled: true})
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	impls := plainPair(ctx, b, rdb, rdb)
	for _, impl := range impls {
		b.Run(impl.name, func(b *testing.B) {
			b.ReportAllocs()
			before := cpuTime(b)
			for b.Loop() {
				if ok, err := impl.call(); err != nil || !ok {
					b.Fatal(ok, err)
				}
			}
			b.ReportMetric(float64(cpuTime(b)-before)/float64(b.N), "cpu-ns/op")
		})
	}
	// The two in turns of 200 calls, so that both see the same load on a
	// shared machine: each one's CPU and wall time per decision, and
	// sluice's ÷ redis_rate's.
	b.Run("interleaved", func(b *testing.B) {
		const turn = 200
		var cpu, wall [2]time.Duration
		for done := 0; done < b.N; done += turn {
			for i, impl := range impls {
				c0, w0 := cpuTime(b), time.Now()
				for range turn {
					if ok, err := impl.call(); err != nil || !ok {
						b.Fatal(ok, err)
					}
				}
				cpu[i] += cpuTime(b) - c0
				wall[i] += time.Since(w0)
			}
		}
		calls := float64((b.N + turn - 1) / turn * turn)
		b.ReportMetric(float64(cpu[0])/calls, "sluice-cpu-ns/op")
		b.ReportMetric(float64(cpu[1])/calls, "redis_rate-cpu-ns/op")
		b.ReportMetric(float64(cpu[0])/float64(cpu[1]), "cpu-ratio")
		b.ReportMetric(float64(wall[0])/float64(wall[1]), "wall-ratio")
	})
}

// plainImpl is one side of BenchmarkPlainPath: one decision, granted or not.
type plainImpl struct {
	name string
	call func() (bool, error)
}

// plainPair is BenchmarkPlainPath's two sides under ctx: sluice-plain on
// rdb (its provider registered there, every call granted and written) and
// redis_rate on peerRDB at the same limits. The limiter is closed when b
// ends.
func plainPair(ctx context.Context, b *testing.B, rdb, peerRDB *redis.Client) []plainImpl {
	c, err := limiter.New(rdb, limiter.Options{NoTokenLease: true, NoRefusalHold: true, Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	cfg := limiter.DefaultProviderConfig()
	cfg.Capacity, cfg.RefillRate = 1e9, 1e6
	if _, err := c.Register(ctx, "bench", cfg); err != nil {
		b.Fatal(err)
	}
	peer := redis_rate.NewLimiter(peerRDB)
	limit := redis_rate.Limit{Rate: 1e6, Burst: 1e9, Period: time.Second}
	return []plainImpl{
		{"sluice-plain", func() (bool, error) {
			d, err := c.TryAcquire(ctx, "bench", 1)
			return d.Allowed, err
		}},
		{"redis_rate", func() (bool, error) {
			r, err := peer.AllowN(ctx, "bench", limit, 1)
			return err == nil && r.Allowed > 0, err
		}},
	}
}

// cpuTime is this process's CPU time so far, user and system.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkPlainPathNoWire is BenchmarkPlainPath without the network:
// a go-redis hook answers each script call with the reply Redis gave the
// first one, so that what is left is the client's own work per decision
// (sluice's or redis_rate's, and go-redis's command building and hooks)
// without the syscalls and the reply's decoding, which the reply contract
// fixes.
//
//	go test -run '^$' -bench PlainPathNoWire -count 5 ./pkg/limiter/
func BenchmarkPlainPathNoWire(b *testing.B) {
	srv := redistest.Start(b)
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	newClient := func() *redis.Client {
		rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, ContextTimeoutEnabled: true})
		rdb.AddHook(&cannedReply{})
		return rdb
	}
	rdb := newClient()
	defer rdb.Close()
	peerRDB := newClient()
	defer peerRDB.Close()
	for _, impl := range plainPair(ctx, b, rdb, peerRDB) {
		if ok, err := impl.call(); err != nil || !ok { // the reply to replay
			b.Fatal(ok, err)
		}
		b.Run(impl.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if ok, err := impl.call(); err != nil || !ok {
					b.Fatal(ok, err)
				}
			}
		})
	}
}

// cannedReply answers every EVALSHA of a script after its first success
// with that one's reply, without a round trip.
type cannedReply struct {
	mu      sync.Mutex
	replies map[any]any // by the script's hash
}

func (h *cannedReply) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *cannedReply) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (h *cannedReply) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c, ok := cmd.(*redis.Cmd)
		if !ok || cmd.Name() != "evalsha" {
			return next(ctx, cmd)
		}
		sha := cmd.Args()[1]
		h.mu.Lock()
		reply, ok := h.replies[sha]
		h.mu.Unlock()
		if ok {
			c.SetVal(reply)
			return nil
		}
		err := next(ctx, cmd)
		if err == nil {
			h.mu.Lock()
			if h.replies == nil {
				h.replies = map[any]any{}
			}
			h.replies[sha] = c.Val()
			h.mu.Unlock()
		}
		return err
	}
}
