// Command rule-memory measures the Redis memory of a keyed or spacing
// rule's state per request key: 100,000 keys made through
// TryAcquireRequest on a redis-server of its own (a free loopback port,
// never 6379), used_memory (INFO memory) before and after, divided by the
// keys. docs/rules.md ("Memory") has the figures.
//
//	go run ./scripts/rule-memory            # 100,000 keys per case
//	go run ./scripts/rule-memory -keys 10000
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/pkg/limiter"
)

func main() {
	keys := flag.Int("keys", 100000, "request keys per case")
	flag.Parse()
	if err := run(*keys); err != nil {
		log.Fatal(err)
	}
}

type memCase struct {
	what  string
	rule  limiter.Rule
	units int // units counted per key, one request of cost 1 each
}

func run(keys int) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "rule-memory")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	srv := exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir)
	if err := srv.Start(); err != nil {
		return err
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	addr := "127.0.0.1:" + strconv.Itoa(port)
	if err := waitListening(addr); err != nil {
		return err
	}
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: addr, PoolSize: 32})
	defer rdb.Close()
	hour := time.Hour // idle keys must outlive the measurement
	cases := []memCase{
		{"keyed rule, 1 unit in the window", limiter.Rule{Name: "contract", Kind: limiter.RuleKeyed, Limit: 5, Period: hour}, 1},
		{"keyed rule, 5 units (a limit of 5 full)", limiter.Rule{Name: "contract", Kind: limiter.RuleKeyed, Limit: 5, Period: hour}, 5},
		{"keyed rule, 64 units (16 entries + 1 merged)", limiter.Rule{Name: "contract", Kind: limiter.RuleKeyed, Limit: 10000, Period: hour}, 64},
		{"spacing rule", limiter.Rule{Name: "identical", Kind: limiter.RuleSpacing, Period: hour}, 1},
	}
	fmt.Printf("%-48s %s\n", "state", "bytes per key")
	for _, mc := range cases {
		per, err := measure(ctx, rdb, mc, keys)
		if err != nil {
			return fmt.Errorf("%s: %w", mc.what, err)
		}
		fmt.Printf("%-48s %.0f\n", mc.what, per)
	}
	return nil
}

func measure(ctx context.Context, rdb *redis.Client, mc memCase, keys int) (float64, error) {
	if err := rdb.FlushAll(ctx).Err(); err != nil {
		return 0, err
	}
	c, err := limiter.New(rdb, limiter.Options{MaxBatch: 1})
	if err != nil {
		return 0, err
	}
	defer c.Close()
	cfg := limiter.DefaultProviderConfig()
	cfg.Capacity, cfg.RefillRate = 1e9, 1e9
	if _, err := c.Register(ctx, "ib", cfg); err != nil {
		return 0, err
	}
	if _, err := c.SetRules(ctx, "ib", []limiter.Rule{mc.rule}); err != nil {
		return 0, err
	}
	before, err := usedMemory(ctx, rdb)
	if err != nil {
		return 0, err
	}
	// Units of one key at distinct Redis times: a key's log holds one
	// entry per grant until it merges them (docs/lua.md).
	const workers = 16
	errs := make(chan error, workers)
	for w := range workers {
		go func() {
			for i := w; i < keys; i += workers {
				key := fmt.Sprintf("C%06d:SMART:TRADES", i)
				for range mc.units {
					d, err := c.TryAcquireRequest(ctx, "ib", limiter.Request{Key: key})
					if err == nil && !d.Allowed {
						err = fmt.Errorf("key %s refused: %s", key, d.Rule)
					}
					if err != nil {
						errs <- err
						return
					}
				}
			}
			errs <- nil
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			return 0, err
		}
	}
	after, err := usedMemory(ctx, rdb)
	if err != nil {
		return 0, err
	}
	return float64(after-before) / float64(keys), nil
}

func usedMemory(ctx context.Context, rdb *redis.Client) (int64, error) {
	info, err := rdb.Info(ctx, "memory").Result()
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, errors.New("INFO memory has no used_memory")
}

func waitListening(addr string) error {
	for range 100 {
		if conn, err := net.Dial("tcp", addr); err == nil {
			conn.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.New("redis-server did not listen within 5 s")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
