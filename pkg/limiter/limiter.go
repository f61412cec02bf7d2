package limiter

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/lua"
	"github.com/sluice-dev/sluice/pkg/internal/opts"
)

// The scripts are built once; Run sends EVALSHA and falls back to EVAL on
// NOSCRIPT, so a SCRIPT FLUSH or a Redis restart costs one round trip more.
var (
	registerScript  = redis.NewScript(lua.Source("register"))
	acquireScript   = redis.NewScript(lua.Source("acquire"))
	setScaleScript  = redis.NewScript(lua.Source("set_scale"))
	annotateScript  = redis.NewScript(lua.Source("annotate"))
	breakerScript   = redis.NewScript(lua.Source("breaker"))
	cooldownScript  = redis.NewScript(lua.Source("cooldown"))
	heartbeatScript = redis.NewScript(lua.Source("heartbeat"))
	statusScript    = redis.NewScript(lua.Source("status"))
)

// OutageMode is what TryAcquire and Acquire do for a provider while Redis
// cannot serve it (unreachable, stalled, or, on a cluster, its slot not
// settled within CallTimeout). Health is per provider: the mode applies to
// the providers whose calls failed, the others keep using Redis.
type OutageMode int

const (
	// FailClosed refuses: calls return an error wrapping ErrRedisUnavailable.
	FailClosed OutageMode = iota
	// FailOpen grants every request (Decision.Local is set).
	FailOpen
	// LocalFallback decides from an in-process bucket (Decision.Local is
	// set) refilled at base rate × last known scale ÷ live replicas, with
	// capacity ÷ live replicas, starting empty; a cooldown or open breaker
	// seen last is honoured. Without any earlier answer from Redis about
	// the provider it behaves as FailClosed.
	LocalFallback
)

var outageNames = []string{"fail_closed", "fail_open", "local_fallback"}

// String returns the mode's name in configuration: fail_closed, fail_open
// or local_fallback.
func (m OutageMode) String() string {
	if m >= 0 && int(m) < len(outageNames) {
		return outageNames[m]
	}
	return fmt.Sprintf("OutageMode(%d)", int(m))
}

// UnmarshalText sets m from its name (fail_closed, fail_open or
// local_fallback); anything else is a *ArgumentError and leaves m alone.
func (m *OutageMode) UnmarshalText(text []byte) error {
	for i, n := range outageNames {
		if string(text) == n {
			*m = OutageMode(i)
			return nil
		}
	}
	return &ArgumentError{"outage_mode", string(text), "one of " + strings.Join(outageNames, ", ")}
}

// Options configure a Limiter. The zero value is ready to use: a zero
// field takes the default its comment gives (nil Registerer: no metrics).
type Options struct {
	// Prefix starts every key and channel; default "sluice".
	Prefix string
	// ReplicaID names this replica in the replica registry; default
	// <hostname>-<pid>-<random>.
	ReplicaID string
	// Source is recorded in the scale hash as who changed the scale, the
	// shadow scale or the pressure level through this Limiter (e.g.
	// "operator", "feedback:pod-3"); default "api".
	Source string
	// Outage is what to do for a provider Redis cannot serve; default FailClosed.
	Outage OutageMode
	// Registerer receives the metrics; nil registers none.
	Registerer prometheus.Registerer
	// Logger receives warnings (outages, re-registration); default slog.Default().
	Logger *slog.Logger
	// PausedRecheck is how often a waiter paused at scale 0 re-checks Redis
	// in case a wake-up notification was lost; default 5s.
	PausedRecheck time.Duration
	// WakeJitter is the upper bound of the random delay added to every wait,
	// so waiters do not all retry at the same instant; default 5ms.
	WakeJitter time.Duration
	// Heartbeat is how often this replica renews its entry in the replica
	// registry (the entry lives 3 heartbeats); default 2s.
	Heartbeat time.Duration
	// RedisRetry is how often Redis is probed, in the background, for a
	// provider whose call found Redis unable to serve it (EXISTS on the
	// provider's keys, so that a cluster routes the probe to the node of
	// the provider's slot); until a probe succeeds, that provider's calls
	// go straight to the outage mode without touching Redis. Other
	// providers are not affected; default 1s.
	RedisRetry time.Duration
	// CallTimeout bounds each call to Redis (every script, the provider
	// list, the probes): a Redis that gives no answer within it, while the
	// caller's context is still live, counts as unreachable for that
	// provider (the outage mode decides, and RedisRetry probes), so a
	// stalled Redis cannot hold a caller; default 500ms. A caller's
	// shorter deadline ends its call first, with the deadline's error; a
	// probe in the background then gives Redis the whole CallTimeout, so
	// callers whose deadlines are all shorter still see the outage mode
	// take over. On a cluster, a call that meets its slot in motion
	// (TRYAGAIN, ASK, MOVED or CLUSTERDOWN answers: a migration or a
	// failover) is tried again after 5–50 ms (jittered) within the same
	// budget; a slot that does not settle within it counts as unreachable
	// too. Keep it above three round trips to Redis: a call on a new
	// connection waits for the connection's handshake (HELLO, CLIENT
	// SETINFO) before the script. It holds with any client: one with
	// ContextTimeoutEnabled (Client, ClusterClient, Ring) is called
	// straight through, its socket deadlines bound the round trip; with
	// any other the call is made in a goroutine of its own and left to
	// finish in the background when its time is up.
	CallTimeout time.Duration
	// MaxBatch is the most requests of one provider that one script call
	// carries: concurrent TryAcquire and Acquire calls in this process are
	// coalesced (one call in flight per provider; those that arrive
	// meanwhile go together in the next), which takes the same tokens in
	// far fewer round trips. 1 sends every request on its own; default
	// 128; at most 1000.
	MaxBatch int
	// TokenLease, when positive, lets this process take tokens for a
	// provider ahead of its callers, as one more request at the end of the
	// coalesced calls it makes anyway, and hand them out without a round
	// trip (Decision.Leased) until TokenLease after the latest call that
	// added to the lease; what is left then goes back to the shared bucket
	// (refund.lua). It never over-admits: the tokens leave the shared bucket
	// first. A lease is taken only from plenty: at most half of what the
	// bucket held after the process's own requests at its last call, so
	// while tokens are scarce every process asks only for its callers; and
	// at most what refills during one TokenLease at the scale in force, so a
	// window of any length T admits at most capacity + rate × scale × (T +
	// TokenLease × leasing processes). The price is the design's promise
	// that a change reaches every replica at its next acquisition: a scale
	// change, a pause, a cooldown or an open breaker set by another process
	// reaches this one within TokenLease; one made through this Limiter
	// (SetBudgetScale, RecordFailure, TriggerCooldown) ends the lease before
	// it returns. Default 0: off; at most 1s; needs MaxBatch > 1.
	TokenLease time.Duration
	// Now is the clock of the local fallback bucket; default time.Now.
	// Everything shared uses Redis time instead.
	Now func() time.Time
}

func (o Options) withDefaults() (Options, error) {
	if o.Prefix == "" {
		o.Prefix = defaultPrefix
	}
	if o.Source == "" {
		o.Source = "api"
	}
	if o.ReplicaID == "" {
		o.ReplicaID = defaultReplicaID()
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	err := opts.Check(
		opts.Positive("paused_recheck", &o.PausedRecheck, 5*time.Second),
		opts.Positive("wake_jitter", &o.WakeJitter, 5*time.Millisecond),
		opts.Positive("heartbeat", &o.Heartbeat, 2*time.Second),
		opts.Positive("redis_retry", &o.RedisRetry, time.Second),
		opts.Positive("call_timeout", &o.CallTimeout, 500*time.Millisecond),
	)
	if o.MaxBatch == 0 {
		o.MaxBatch = 128
	}
	if err == nil && (o.MaxBatch < 1 || o.MaxBatch > maxRequests) {
		return o, &ArgumentError{"max_batch", o.MaxBatch, "an integer in [1, 1000]"}
	}
	if err == nil && (o.TokenLease < 0 || o.TokenLease > time.Second) {
		return o, &ArgumentError{"token_lease", o.TokenLease, "a duration in [0, 1s]"}
	}
	if err == nil && o.TokenLease > 0 && o.MaxBatch == 1 {
		return o, &ArgumentError{"token_lease", o.TokenLease, "0 when max_batch is 1 (a lease rides on coalesced calls)"}
	}
	if oe := (*opts.Error)(nil); errors.As(err, &oe) {
		return o, &ArgumentError{oe.Field, oe.Value, oe.Rule}
	}
	return o, err
}

// maxRequests is the most requests acquire.lua takes in one call.
const maxRequests = 1000

func defaultReplicaID() string {
	host, _ := os.Hostname()
	if host == "" {
		host = "replica"
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b))
}

// Limiter shares one token bucket per provider among every replica that
// talks to the same Redis: each bucket holds at most its capacity and refills
// at base rate × scale tokens per second, where the scale (0 pauses) lives in
// Redis so a change reaches every replica at its next acquisition. Every
// decision is one Lua script at Redis time. A Limiter is safe for
// concurrent use by many goroutines, and many processes may each have one.
type Limiter struct {
	rdb      redis.UniversalClient
	direct   bool // rdb bounds each round trip by its context (honoursDeadlines): called straight through
	opts     Options
	log      *slog.Logger
	m        *metrics
	notifier *notifier

	downMu sync.Mutex // orders the changes of down and the redis_up gauge
	down   int        // providers now in outage mode

	mu        sync.Mutex
	providers map[string]*providerState
	closed    bool

	stop chan struct{}
	wg   sync.WaitGroup
}

// providerState is what this replica knows locally about one provider.
type providerState struct {
	name string
	keys keys

	mu         sync.Mutex
	registered *ProviderConfig // set by Register: re-registered if Redis loses it
	last       Decision        // last decision from Redis
	lastAt     time.Time       // local time of last
	haveLast   bool
	replicas   int          // live replicas at the last heartbeat (>= 1)
	local      *localBucket // the fallback bucket during an outage

	turn  chan struct{} // held by the one rate-limited waiter that polls Redis
	batch batcher       // coalesces this process's concurrent acquisitions
	m     *providerMetrics
	rereg sync.Mutex // one re-registration at a time

	// active is set at the first acquisition: from then on this replica
	// heartbeats for the provider. Operator calls (Register, Status,
	// SetBudgetScale, ...) never make a process count as a replica.
	active atomic.Bool

	// health says whether Redis serves this provider: per provider, since
	// on a cluster each lives in its own slot, on its own node.
	health health
}

// New returns a Limiter on rdb, which may be a *redis.Client,
// *redis.ClusterClient or *redis.Ring (any redis.UniversalClient), with any
// options: every call returns within Options.CallTimeout and its caller's
// deadline whatever they say. A client with ContextTimeoutEnabled is the
// cheaper one (no goroutine per call; see CallTimeout). It starts the
// heartbeat goroutine; Close stops it.
func New(rdb redis.UniversalClient, o Options) (*Limiter, error) {
	if rdb == nil {
		return nil, &ArgumentError{"client", nil, "a Redis client"}
	}
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := validName("prefix", o.Prefix); err != nil {
		return nil, err
	}
	if len(o.ReplicaID) > 128 || strings.ContainsAny(o.ReplicaID, " \t\r\n") {
		return nil, &ArgumentError{"replica_id", strconv.Quote(o.ReplicaID), "at most 128 characters without spaces"}
	}
	if len(o.Source) > 128 || strings.ContainsFunc(o.Source, unicode.IsControl) {
		return nil, &ArgumentError{"source", strconv.Quote(o.Source), "at most 128 characters without control characters"}
	}
	if o.Outage < FailClosed || o.Outage > LocalFallback {
		return nil, &ArgumentError{"outage_mode", o.Outage, "one of " + strings.Join(outageNames, ", ")}
	}
	m, err := newMetrics(o.Registerer)
	if err != nil {
		return nil, fmt.Errorf("limiter: %w", err)
	}
	m.redisUp.Set(1)
	c := &Limiter{
		rdb:       rdb,
		direct:    honoursDeadlines(rdb),
		opts:      o,
		log:       o.Logger.With("component", "limiter", "replica", o.ReplicaID),
		m:         m,
		providers: map[string]*providerState{},
		stop:      make(chan struct{}),
	}
	if !c.direct {
		c.log.Debug("the redis client does not end round trips at context deadlines (ContextTimeoutEnabled off): " +
			"each call runs in a goroutine of its own, so that call_timeout and callers' deadlines hold; set ContextTimeoutEnabled for the direct path")
	}
	c.notifier = newNotifier(rdb, c.log, o.PausedRecheck)
	c.background(func() { c.every(o.Heartbeat, c.beatAll) })
	return c, nil
}

// Close stops the heartbeat and the notification subscription and removes
// this replica from the registry of every provider it used. Calls after Close
// return ErrClosed. Close does not close the Redis client.
func (c *Limiter) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	states := c.statesLocked()
	c.mu.Unlock()
	close(c.stop)
	c.wg.Wait()
	c.notifier.close()
	for _, st := range states {
		c.dropLease(st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for _, st := range states {
		if st.active.Load() {
			_, _ = c.script(ctx, st, heartbeatScript, []string{st.keys.replicas}, "leave", c.opts.ReplicaID, c.heartbeatTTL().Milliseconds())
		}
	}
	return nil
}

// isClosed reports whether Close has begun.
func (c *Limiter) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// state returns the local state of provider, creating it on first use.
func (c *Limiter) state(provider string) (*providerState, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	st := c.providers[provider]
	if st == nil {
		if err := validName("provider", provider); err != nil { // checked once per name
			return nil, err
		}
		st = &providerState{name: provider, keys: providerKeys(c.opts.Prefix, provider), replicas: 1, turn: make(chan struct{}, 1), m: c.m.forProvider(provider)}
		c.providers[provider] = st
	}
	return st, nil
}

// every calls fn every d until Close, or until fn returns false. It runs in
// the caller's goroutine: start it with background.
func (c *Limiter) every(d time.Duration, fn func() bool) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		if !fn() {
			return
		}
	}
}

func (c *Limiter) statesLocked() []*providerState {
	out := make([]*providerState, 0, len(c.providers))
	for _, st := range c.providers {
		out = append(out, st)
	}
	return out
}

// RegisterResult says what Register changed.
type RegisterResult string

// Results of Register.
const (
	Created   RegisterResult = "created"   // the provider did not exist
	Updated   RegisterResult = "updated"   // it existed with another config
	Unchanged RegisterResult = "unchanged" // it existed with this config
)

// Register creates or updates provider's config in Redis, shared by every
// replica. It is idempotent. A new provider starts with a full bucket and
// scale 1; an update settles the bucket at the old rate first and caps it at
// the new capacity; the scale in force is kept. This replica remembers cfg and
// registers it again if Redis loses the provider (a restart without
// persistence).
func (c *Limiter) Register(ctx context.Context, provider string, cfg ProviderConfig) (RegisterResult, error) {
	if err := cfg.Validate(); err != nil {
		return "", err
	}
	st, err := c.state(provider)
	if err != nil {
		return "", err
	}
	res, err := c.register(ctx, st, cfg)
	if err != nil {
		return "", err
	}
	st.mu.Lock()
	st.registered = &cfg
	st.mu.Unlock()
	if res == Updated {
		c.log.Warn("provider config changed", "provider", provider, "capacity", cfg.Capacity, "refill_rate", cfg.RefillRate,
			"cooldown", cfg.Cooldown, "breaker_threshold", cfg.BreakerThreshold, "breaker_timeout", cfg.BreakerTimeout, "max_scale", cfg.maxScale())
	}
	return res, nil
}

func (c *Limiter) register(ctx context.Context, st *providerState, cfg ProviderConfig) (RegisterResult, error) {
	k := st.keys
	res, err := c.script(ctx, st, registerScript, []string{k.config, k.bucket, k.scale}, cfg.args()...)
	if err != nil {
		return "", c.mapErr(st.name, err)
	}
	s, _ := res.(string)
	if _, err := c.command(ctx, st, func(ctx context.Context) (any, error) {
		return c.rdb.SAdd(ctx, providersKey(c.opts.Prefix), st.name).Result()
	}); err != nil {
		return "", c.mapErr(st.name, err)
	}
	return RegisterResult(s), nil
}

// Providers lists the registered providers, sorted.
func (c *Limiter) Providers(ctx context.Context) ([]string, error) {
	res, err := c.command(ctx, nil, func(ctx context.Context) (any, error) {
		return c.rdb.SMembers(ctx, providersKey(c.opts.Prefix)).Result()
	})
	if err != nil {
		return nil, c.mapErr("", err)
	}
	names, _ := res.([]string)
	slices.Sort(names)
	return names, nil
}

// run runs a script for provider. If Redis answers UNKNOWN_PROVIDER for a
// provider this replica registered (Redis restarted without persistence),
// it registers it again, restores the last scale it saw if that was not 1
// (an operator's 0.5 survives the restart), and retries once. Concurrent
// callers re-register once: the others find the provider back.
func (c *Limiter) run(ctx context.Context, st *providerState, s *redis.Script, keys []string, args ...any) (any, error) {
	res, err := c.script(ctx, st, s, keys, args...)
	if err == nil || !isUnknownProvider(err) {
		return res, c.mapErr(st.name, err)
	}
	st.mu.Lock()
	cfg := st.registered
	scale, known := st.last.Scale, st.haveLast
	st.mu.Unlock()
	if cfg == nil {
		return nil, c.mapErr(st.name, err)
	}
	st.rereg.Lock()
	defer st.rereg.Unlock()
	// Another caller may have registered it while this one waited.
	if res, err = c.script(ctx, st, s, keys, args...); err == nil || !isUnknownProvider(err) {
		return res, c.mapErr(st.name, err)
	}
	c.log.Warn("provider missing from Redis, registering it again", "provider", st.name)
	if _, rerr := c.register(ctx, st, *cfg); rerr != nil {
		return nil, rerr
	}
	if known && scale != 1 {
		if _, serr := c.script(ctx, st, setScaleScript, []string{st.keys.config, st.keys.bucket, st.keys.scale},
			formatFloat(scale), c.opts.Source+" (restored after redis lost it)", st.keys.notify); serr != nil {
			return nil, c.mapErr(st.name, serr)
		}
		c.log.Warn("scale restored after redis lost it", "provider", st.name, "scale", scale)
	}
	res, err = c.script(ctx, st, s, keys, args...)
	return res, c.mapErr(st.name, err)
}

func isUnknownProvider(err error) bool {
	var rerr redis.Error
	return errors.As(err, &rerr) && strings.HasPrefix(rerr.Error(), "UNKNOWN_PROVIDER")
}

// mapErr turns script error replies into this package's errors and
// connection failures into ErrRedisUnavailable.
func (c *Limiter) mapErr(provider string, err error) error {
	if err == nil {
		return nil
	}
	var rerr redis.Error
	if errors.As(err, &rerr) {
		msg := rerr.Error()
		switch {
		case strings.HasPrefix(msg, "UNKNOWN_PROVIDER"):
			return fmt.Errorf("%w %q", ErrUnknownProvider, provider)
		case strings.HasPrefix(msg, "INVALID_ARGUMENT "):
			return parseArgumentError(strings.TrimPrefix(msg, "INVALID_ARGUMENT "))
		case strings.HasPrefix(msg, "CORRUPT "):
			return fmt.Errorf("%w: %s", ErrCorruptState, strings.TrimPrefix(msg, "CORRUPT "))
		}
	}
	if isOutage(err) {
		return fmt.Errorf("%w: %v", ErrRedisUnavailable, err)
	}
	return fmt.Errorf("limiter: %w", err)
}

// parseArgumentError reads "<field>=<value> must be <range>" from a script.
func parseArgumentError(s string) error {
	field, rest, _ := strings.Cut(s, "=")
	value, rng, _ := strings.Cut(rest, " must be ")
	return &ArgumentError{Field: field, Value: value, Range: rng}
}

// isOutage reports whether err means Redis could not serve the call (network,
// pool, stall, loading, failover, a cluster slot in motion), as opposed to
// an answer or the caller's context. mapErr wraps such errors in
// ErrRedisUnavailable without keeping the Redis reply in the chain, so a
// redirect (ASK, MOVED) never reaches a caller as it came.
func isOutage(err error) bool {
	if oe := (*outageError)(nil); errors.As(err, &oe) {
		return true
	}
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrClosed) {
		return false
	}
	var rerr redis.Error
	if errors.As(err, &rerr) {
		for _, p := range []string{"LOADING", "CLUSTERDOWN", "MASTERDOWN", "TRYAGAIN", "MOVED ", "ASK ", "READONLY", "BUSY"} {
			if strings.HasPrefix(rerr.Error(), p) {
				return true
			}
		}
		return false
	}
	return !errors.Is(err, redis.ErrClosed)
}
