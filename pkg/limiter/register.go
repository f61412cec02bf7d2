package limiter

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// RegisterResult says what Register changed.
type RegisterResult string

// Results of Register.
const (
	Created   RegisterResult = "created"   // the provider did not exist
	Updated   RegisterResult = "updated"   // it existed with another config
	Unchanged RegisterResult = "unchanged" // it existed with this config
)

// registration is the config this process registered for a provider,
// and the rules and lanes it set, kept to register it again if Redis
// loses the provider (a restart without persistence).
type registration struct {
	mu    sync.Mutex
	cfg   *ProviderConfig // set by Register; nil until then
	rules *[]Rule         // set by SetRules; nil until then
	lanes *[]Lane         // set by SetLanes; nil until then
	redo  sync.Mutex      // held by the one caller that registers again
}

func (r *registration) setRules(rules []Rule) {
	r.mu.Lock()
	r.rules = &rules
	r.mu.Unlock()
}

func (r *registration) setLanes(lanes []Lane) {
	r.mu.Lock()
	r.lanes = &lanes
	r.mu.Unlock()
}

// sets returns the rules and lanes SetRules and SetLanes were given last
// (nil: never called).
func (r *registration) sets() (rules *[]Rule, lanes *[]Lane) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rules, r.lanes
}

func (r *registration) set(cfg ProviderConfig) {
	r.mu.Lock()
	r.cfg = &cfg
	r.mu.Unlock()
}

// get returns the config Register was given last, nil if none.
func (r *registration) get() *ProviderConfig {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cfg
}

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
	defer st.hold.clear() // the new config applies to this Limiter's next call
	res, err := c.register(ctx, st, cfg)
	if err != nil {
		return "", err
	}
	st.reg.set(cfg)
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
// it registers it again (reregister) and retries once. Concurrent callers
// re-register once: the others find the provider back.
func (c *Limiter) run(ctx context.Context, st *providerState, s *redis.Script, keys []string, args ...any) (any, error) {
	return c.runTrip(ctx, st, roundTrip{script: s, keys: keys, args: args})
}

// runTrip is run for the script call rt.
func (c *Limiter) runTrip(ctx context.Context, st *providerState, rt roundTrip) (any, error) {
	res, err := c.call(ctx, st, rt)
	if err == nil || !isUnknownProvider(err) {
		return res, c.mapErr(st.name, err)
	}
	cfg, scale := st.reg.get(), st.seen.scale()
	if cfg == nil {
		return nil, c.mapErr(st.name, err)
	}
	st.reg.redo.Lock()
	defer st.reg.redo.Unlock()
	// Another caller may have registered it while this one waited.
	if res, err = c.call(ctx, st, rt); err == nil || !isUnknownProvider(err) {
		return res, c.mapErr(st.name, err)
	}
	if err := c.reregister(ctx, st, *cfg, scale); err != nil {
		return nil, err
	}
	res, err = c.call(ctx, st, rt)
	return res, c.mapErr(st.name, err)
}

// reregister registers st again with cfg after Redis lost it, with its
// pacing rules (the set this replica last learnt from Redis, else the one
// it last gave SetRules) and its lanes (the set it last gave SetLanes), in
// one MULTI: no replica can be decided on the provider without its rules
// in between (it would learn that the provider has none and be granted by
// the bucket alone). Then it restores scale, the last one this replica
// saw, if it is not 1 (an operator's 0.5 survives the restart). A refusal
// of the rules or lanes inside the MULTI (lanes that no longer fit cfg)
// is returned after the provider is listed and its scale restored: the
// MULTI is not rolled back, so the provider is registered all the same.
// The rules'
// state (windows, keys, permits) is lost with Redis's: see docs/rules.md.
// The caller holds st.reg.redo.
func (c *Limiter) reregister(ctx context.Context, st *providerState, cfg ProviderConfig, scale float64) error {
	c.log.Warn("provider missing from Redis, registering it again", "provider", st.name)
	rules, lanes := st.reg.sets()
	if _, learnt, known := st.rules.get(); known {
		rules = &learnt
	}
	var rtext, ltext string
	var err error
	if rules != nil && len(*rules) > 0 {
		if rtext, err = rulesText(*rules); err != nil {
			return err
		}
	}
	if lanes != nil && len(*lanes) > 0 {
		if ltext, err = lanesText(*lanes); err != nil {
			return err
		}
	}
	k := st.keys
	// late is set_rules' or set_lanes' refusal (lanes that no longer fit
	// cfg's capacity, say) after register ran: a MULTI is not rolled back,
	// so the provider is listed and its scale restored all the same, and
	// the refusal is returned last.
	var late error
	res, err := c.command(ctx, st, func(ctx context.Context) (any, error) {
		cmds, err := c.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
			registerScript.Eval(ctx, p, []string{k.config, k.bucket, k.scale}, cfg.args()...)
			if rtext != "" {
				setRulesScript.Eval(ctx, p, []string{k.config, k.rules.Rules}, rtext)
			}
			if ltext != "" {
				setLanesScript.Eval(ctx, p, []string{k.config, k.bucket}, ltext)
			}
			return nil
		})
		var rerr redis.Error
		if err != nil && len(cmds) > 1 && cmds[0].Err() == nil && errors.As(err, &rerr) {
			return err, nil // the reply, not a failed call: see late
		}
		return nil, err
	})
	if err != nil {
		return c.mapErr(st.name, err)
	}
	if e, ok := res.(error); ok {
		late = e
		c.log.Warn("provider registered again, but its pacing rules or lanes were refused", "provider", st.name, "err", e)
	}
	if _, err := c.command(ctx, st, func(ctx context.Context) (any, error) {
		return c.rdb.SAdd(ctx, providersKey(c.opts.Prefix), st.name).Result()
	}); err != nil {
		return c.mapErr(st.name, err)
	}
	if rtext != "" {
		c.log.Warn("pacing rules set again with the provider (their state starts empty)", "provider", st.name, "rules", FormatRules(*rules))
	}
	if ltext != "" && late == nil {
		c.log.Warn("lanes set again with the provider", "provider", st.name, "lanes", FormatLanes(*lanes))
	}
	if scale != 1 {
		if _, err := c.script(ctx, st, setScaleScript, []string{k.config, k.bucket, k.scale},
			formatFloat(scale), c.opts.Source+" (restored after redis lost it)", k.notify); err != nil {
			return c.mapErr(st.name, err)
		}
		c.log.Warn("scale restored after redis lost it", "provider", st.name, "scale", scale)
	}
	return c.mapErr(st.name, late)
}

func isUnknownProvider(err error) bool {
	var rerr redis.Error
	return errors.As(err, &rerr) && strings.HasPrefix(rerr.Error(), "UNKNOWN_PROVIDER")
}
