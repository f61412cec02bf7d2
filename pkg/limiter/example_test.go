package limiter_test

import (
	"context"
	"fmt"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/pkg/limiter"
)

func Example() {
	mr, _ := miniredis.Run() // any Redis: a Client, a ClusterClient, a Ring
	defer mr.Close()
	mr.SetTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)) // Redis time stands still here
	// Round trips end at the context's deadline: the limiter calls the
	// client straight through (any client works; see Options.CallTimeout).
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), ContextTimeoutEnabled: true})
	defer rdb.Close()

	c, err := limiter.New(rdb, limiter.Options{Logger: quiet})
	if err != nil {
		panic(err)
	}
	defer c.Close()
	ctx := context.Background()

	cfg := limiter.DefaultProviderConfig() // 60 tokens, 60/s, as the seed
	cfg.Capacity, cfg.RefillRate = 10, 100
	if _, err := c.Register(ctx, "ibkr", cfg); err != nil {
		panic(err)
	}
	if _, err := c.Acquire(ctx, "ibkr", 4); err != nil { // blocks until granted
		panic(err)
	}

	// The store is falling behind: half the budget, for every replica.
	if _, err := c.SetBudgetScale(ctx, "ibkr", 0.5); err != nil {
		panic(err)
	}
	d, _ := c.TryAcquire(ctx, "ibkr", 6)
	fmt.Println(d.Allowed, d.Reason, d.Scale)

	d, _ = c.TryAcquire(ctx, "ibkr", 1)
	fmt.Println(d.Allowed, d.Reason, "retry after", d.RetryAfter) // 1 token at 50/s

	_, err = c.SetBudgetScale(ctx, "ibkr", 1.5)
	fmt.Println(err)
	// Output:
	// true ok 0.5
	// false rate_limited retry after 20ms
	// limiter: scale=1.5 must be a finite number in [0, 1] (max_scale)
}
