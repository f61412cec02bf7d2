// Package bench measures sluice's decisions side by side with
// go-redis/redis_rate and a minimal Lua token bucket on the same Redis: the
// workloads behind `sluice bench` and BENCHMARKS.md. It reports; it never
// judges speed (no test asserts it).
package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/pkg/limiter"
)

// The implementations a workload runs through.
const (
	Sluice       = "sluice"        // limiter.Limiter as shipped: its default options (coalescing, token lease, held refusals)
	SluicePlain  = "sluice-plain"  // limiter.Limiter, coalescing alone: no token lease, no held refusals
	SluiceSingle = "sluice-single" // limiter.Limiter with MaxBatch 1 and no held refusals: one script call per request
	SluiceLease  = "sluice-lease"  // limiter.Limiter, coalescing and a token lease of LeaseTTL, no held refusals
	SluiceRules  = "sluice-rules"  // limiter.Limiter with BenchRules beside the bucket: one request per call, its permit released
	RedisRate    = "redis_rate"    // go-redis/redis_rate v10 (GCRA), the reference peer
	MinimalLua   = "lua"           // a bare token bucket script: TIME, HMGET, HSET
)

// Impls lists every implementation, in the order reports show them.
var Impls = []string{Sluice, SluicePlain, SluiceSingle, SluiceLease, SluiceRules, RedisRate, MinimalLua}

// BenchRules are sluice-rules' pacing rules: one of each kind, wide enough
// never to refuse in these workloads, so that each call does the whole work
// of four rules (a window, a key's window, a spacing key per call, a permit
// taken and released). Its cost beside sluice-single's is the cost of rules.
var BenchRules = []limiter.Rule{
	{Name: "window", Kind: limiter.RuleWindow, Limit: 10000, Period: 100 * time.Millisecond},
	{Name: "keyed", Kind: limiter.RuleKeyed, Limit: 10000, Period: 100 * time.Millisecond},
	{Name: "spacing", Kind: limiter.RuleSpacing, Period: time.Millisecond},
	{Name: "open", Kind: limiter.RuleConcurrency, Limit: 10000, Lease: time.Minute},
}

// LeaseTTL is sluice-lease's Options.TokenLease: how long leased tokens may
// be handed out after the call that took them (and so how late a scale
// change may reach a process). The shipped default is
// limiter.DefaultTokenLease.
const LeaseTTL = 2 * time.Millisecond

// Limits of the two modes. Unlimited is a rate at which every implementation
// takes its write path on every call (redis_rate writes nothing at 1e9/s:
// its increment is below the resolution of its timestamp) with a burst no
// run can spend.
type Limits struct {
	Rate  float64 // per second
	Burst int64
}

var (
	Unlimited = Limits{Rate: 1e6, Burst: 1e9}
	Limited   = Limits{Rate: 1000, Burst: 100}
)

// sluiceOptions are the limiter options of each sluice implementation
// (Prefix and Logger are set per run).
var sluiceOptions = map[string]limiter.Options{
	Sluice:       {},
	SluicePlain:  {NoTokenLease: true, NoRefusalHold: true},
	SluiceSingle: {MaxBatch: 1, NoRefusalHold: true},
	SluiceLease:  {TokenLease: LeaseTTL, NoRefusalHold: true},
	SluiceRules:  {MaxBatch: 1},
}

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// decider is one implementation, set up on one provider or key.
type decider interface {
	// try takes one token if it can, without waiting.
	try(ctx context.Context) (allowed bool, retry time.Duration, err error)
	// wait blocks until it took one token.
	wait(ctx context.Context) error
	close()
}

// newDecider sets impl up on rdb for key (fresh per run) at lim. Setting up
// (registering) is the caller's job once per run: see setup.
func newDecider(impl string, rdb redis.UniversalClient, key string, lim Limits) (decider, error) {
	if o, isSluice := sluiceOptions[impl]; isSluice {
		o.Prefix, o.Logger = key, discard
		c, err := limiter.New(rdb, o)
		if err != nil {
			return nil, err
		}
		if impl == SluiceRules {
			return &rulesDecider{c: c}, nil
		}
		return sluiceDecider{c}, nil
	}
	switch impl {
	case RedisRate:
		return &retryLoop{tryFn: redisRateTry(rdb, key, lim)}, nil
	case MinimalLua:
		return &retryLoop{tryFn: luaTry(rdb, key, lim)}, nil
	}
	return nil, fmt.Errorf("bench: no implementation %q (one of %v)", impl, Impls)
}

// setup creates impl's state for key at lim: sluice's provider registration;
// the others start from a missing key.
func setup(ctx context.Context, impl string, rdb redis.UniversalClient, key string, lim Limits) error {
	if _, isSluice := sluiceOptions[impl]; !isSluice {
		return nil
	}
	c, err := limiter.New(rdb, limiter.Options{Prefix: key, Logger: discard})
	if err != nil {
		return err
	}
	defer c.Close()
	cfg := limiter.DefaultProviderConfig()
	cfg.Capacity, cfg.RefillRate = lim.Burst, lim.Rate
	if _, err = c.Register(ctx, provider, cfg); err != nil || impl != SluiceRules {
		return err
	}
	_, err = c.SetRules(ctx, provider, BenchRules)
	return err
}

const provider = "p"

type sluiceDecider struct{ c *limiter.Limiter }

func (s sluiceDecider) try(ctx context.Context) (bool, time.Duration, error) {
	d, err := s.c.TryAcquire(ctx, provider, 1)
	return d.Allowed, d.RetryAfter, err
}

func (s sluiceDecider) wait(ctx context.Context) error {
	_, err := s.c.Acquire(ctx, provider, 1)
	return err
}

func (s sluiceDecider) close() { s.c.Close() }

// rulesDecider asks for one request against BenchRules: the same key for
// the keyed rule, a new one per call for the spacing rule (an identical
// request is never repeated), and releases the permit of a grant at once.
type rulesDecider struct {
	c *limiter.Limiter
	n atomic.Int64
}

func (r *rulesDecider) request() limiter.Request {
	return limiter.Request{Key: "AAPL:SMART:TRADES", Keys: map[string]string{"spacing": "q" + strconv.FormatInt(r.n.Add(1), 36)}}
}

func (r *rulesDecider) try(ctx context.Context) (bool, time.Duration, error) {
	d, err := r.c.TryAcquireRequest(ctx, provider, r.request())
	if err == nil && d.Allowed {
		err = d.Permit.Release(ctx)
	}
	return d.Allowed, d.RetryAfter, err
}

func (r *rulesDecider) wait(ctx context.Context) error {
	d, err := r.c.AcquireRequest(ctx, provider, r.request())
	if err == nil {
		err = d.Permit.Release(ctx)
	}
	return err
}

func (r *rulesDecider) close() { r.c.Close() }

// retryLoop makes a blocking acquisition from a non-blocking one, as a user
// of redis_rate writes it: try, sleep what the answer says, try again.
type retryLoop struct {
	tryFn func(ctx context.Context) (bool, time.Duration, error)
}

func (r *retryLoop) try(ctx context.Context) (bool, time.Duration, error) { return r.tryFn(ctx) }

func (r *retryLoop) wait(ctx context.Context) error {
	for {
		ok, retry, err := r.tryFn(ctx)
		if err != nil || ok {
			return err
		}
		t := time.NewTimer(max(retry, time.Millisecond))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
}

func (r *retryLoop) close() {}

func redisRateTry(rdb redis.UniversalClient, key string, lim Limits) func(ctx context.Context) (bool, time.Duration, error) {
	l := redis_rate.NewLimiter(rdb)
	limit := redis_rate.Limit{Rate: int(lim.Rate), Burst: int(lim.Burst), Period: time.Second}
	return func(ctx context.Context) (bool, time.Duration, error) {
		res, err := l.AllowN(ctx, key, limit, 1)
		if err != nil {
			return false, 0, err
		}
		return res.Allowed > 0, res.RetryAfter, nil
	}
}

// minimalBucket is the least a shared token bucket can do in one script:
// Redis time, read the bucket, refill, take, write. No config, scale,
// breaker or cooldown: the floor the others are measured against.
var minimalBucket = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local capacity, rate = tonumber(ARGV[1]), tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or capacity
local ts = tonumber(b[2]) or now
tokens = math.min(capacity, tokens + (now - ts) * rate / 1000000)
if tokens < 1 then
  return {0, math.ceil((1 - tokens) * 1000000 / rate)}
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens - 1), 'ts', string.format('%.0f', now))
return {1, 0}
`)

func luaTry(rdb redis.UniversalClient, key string, lim Limits) func(ctx context.Context) (bool, time.Duration, error) {
	capacity, rate := strconv.FormatInt(lim.Burst, 10), strconv.FormatFloat(lim.Rate, 'g', -1, 64)
	keys := []string{key + ":bucket"}
	return func(ctx context.Context) (bool, time.Duration, error) {
		res, err := minimalBucket.Run(ctx, rdb, keys, capacity, rate).Int64Slice()
		if err != nil {
			return false, 0, err
		}
		return res[0] == 1, time.Duration(res[1]) * time.Microsecond, nil
	}
}
