package limiter

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Request is one acquisition against a provider's bucket and pacing rules.
type Request struct {
	// Cost is the units the request takes from the bucket and from every
	// rule it touches (a BID_ASK request that counts twice: 2); 0 means 1.
	Cost int
	// Key identifies the request for keyed and spacing rules (e.g.
	// "AAPL:SMART:TRADES"): 1 to 256 bytes without braces, spaces or
	// control characters. A provider with such a rule refuses a request
	// with no key for it (ErrInvalidArgument naming key.<rule>).
	Key string
	// Keys gives a rule its own key, by rule name, in place of Key: e.g.
	// the contract for a keyed rule and the whole request for a spacing
	// rule against identical requests.
	Keys map[string]string
	// Lane names the provider's lane the request is in (SetLanes); ""
	// is its last, lowest lane. A provider without lanes ignores it, so
	// clients may name lanes before they are set; one with lanes refuses a
	// name it lacks (ErrInvalidArgument naming lane).
	Lane string
}

func (r Request) cost() int {
	if r.Cost == 0 {
		return 1
	}
	return r.Cost
}

// key is the request's key for rule.
func (r Request) key(rule string) string {
	if k, ok := r.Keys[rule]; ok {
		return k
	}
	return r.Key
}

// TryAcquireRequest decides req against provider's bucket and every one of
// its pacing rules in one script call, and never waits: granted only if
// all allow it, and then all are charged; otherwise nothing is, and the
// decision names the rule that lets it pass last (Decision.Rule) and when.
// A grant under a concurrency rule carries a Permit to release. For a
// provider without rules it is TryAcquire(ctx, provider, req.Cost).
func (c *Limiter) TryAcquireRequest(ctx context.Context, provider string, req Request) (Decision, error) {
	return c.acquisition(ctx, provider, req.cost(), req.Lane, false, func(ctx context.Context, st *providerState) (Decision, error) {
		return c.decideRequest(ctx, st, req)
	})
}

// AcquireRequest blocks until provider grants req, as Acquire does, and
// returns the granting decision (with its Permit under a concurrency
// rule). It returns at once with an error matching ErrRuleLimited when a
// rule's wait outlasts ctx's deadline or when req's cost is above a rule's
// limit. A waiter refused by a concurrency rule wakes when a permit is
// released (or at the first lease's end).
func (c *Limiter) AcquireRequest(ctx context.Context, provider string, req Request) (Decision, error) {
	return c.acquisition(ctx, provider, req.cost(), req.Lane, true, func(ctx context.Context, st *providerState) (Decision, error) {
		return c.decideRequest(ctx, st, req)
	})
}

// decideRequest takes req's decision: by the rules form of acquire.lua
// when the provider has rules (or req needs them: a key), else as any
// acquisition, in req's lane.
func (c *Limiter) decideRequest(ctx context.Context, st *providerState, req Request) (Decision, error) {
	if req.Key == "" && req.Keys == nil {
		return c.decide(ctx, st, req.cost(), req.Lane) // by the rules form if the provider has rules
	}
	d, err := c.decideRules(ctx, st, req)
	return inTime(ctx, st, d, err)
}

// decideRules decides one request by the rules form,
// learning the rules in force from Redis when it answers RULES_CHANGED
// (at most twice in a row: a set changing faster is an error). Rules are
// decided in Redis only: during an outage FailOpen grants (Local, no
// permit), any other mode refuses with ErrRedisUnavailable.
func (c *Limiter) decideRules(ctx context.Context, st *providerState, req Request) (Decision, error) {
	n := req.cost()
	if n < 1 || n > 1e9 {
		return Decision{}, &ArgumentError{"n", n, "an integer in [1, 1000000000]"}
	}
	c.joinOnce(ctx, st) // the first acquisition joins the replica registry
	for range 3 {
		if st.health.isDown() {
			return c.rulesOutage(st, n, ErrRedisUnavailable)
		}
		rev, rules, _ := st.rules.get()
		id := newPermitID()
		keys := append(acquireKeys(st.keys), st.keys.rules.Rules)
		for _, r := range rules {
			if r.Kind == RuleKeyed || r.Kind == RuleSpacing {
				k := req.key(r.Name)
				if err := checkRequestKey(r.Name, k); err != nil {
					return Decision{}, err
				}
				keys = append(keys, st.keys.rules.RuleKey(r.Name, k))
			}
		}
		res, err := c.run(ctx, st, acquireScript, keys, n, "rules", rev, id, req.Lane)
		if ch := rulesChangedIn(err); ch != nil {
			st.rules.set(ch.rev, ch.rules)
			continue
		}
		if err != nil {
			if errors.Is(err, ErrRedisUnavailable) {
				c.redisDown(st, err)
				return c.rulesOutage(st, n, err)
			}
			return Decision{}, err
		}
		c.redisUp(st)
		return c.parseRulesDecision(st, res, rules, id, n)
	}
	return Decision{}, fmt.Errorf("limiter: provider %q: its rules changed three times during one acquisition", st.name)
}

// checkRequestKey checks a request's key for rule (acquire.lua checks
// only that there is one and its length: the characters are the client's
// to check, which costs the script nothing).
func checkRequestKey(rule, key string) error {
	if key == "" { // acquire.lua's error: key.<rule>=(none)
		return nil
	}
	ok := len(key) <= 256
	for i := 0; ok && i < len(key); i++ {
		b := key[i]
		ok = b > ' ' && b != 0x7f && b != '{' && b != '}'
	}
	if !ok {
		return &ArgumentError{"key." + rule, key, "1 to 256 bytes without braces, spaces or control characters"}
	}
	return nil
}

func (c *Limiter) rulesOutage(st *providerState, n int, cause error) (Decision, error) {
	if c.opts.Outage == FailOpen {
		return c.outage(st, n, c.opts.Now(), cause)
	}
	return Decision{}, fmt.Errorf("%w: provider %q has pacing rules, which only Redis decides: %v", ErrRedisUnavailable, st.name, cause)
}

// parseRulesDecision reads the rules form's reply to request id of cost n:
// the plain decision, then the refusing rule and, for a grant under
// concurrency rules, the permit.
func (c *Limiter) parseRulesDecision(st *providerState, res any, rules []Rule, id string, n int) (Decision, error) {
	d, err := parseDecision(res)
	if err != nil {
		return Decision{}, err
	}
	r, err := replyArray(res, 12)
	if err != nil {
		return Decision{}, err
	}
	d.Rule = r.str(10)
	if d.Rule != "" {
		st.m.ruleRefused(d.Rule)
	}
	var held []Rule
	for _, rule := range rules {
		if rule.Kind == RuleConcurrency {
			held = append(held, rule)
		}
	}
	if d.Allowed && len(held) > 0 {
		d.Permit = &Permit{c: c, st: st, rules: held, id: id, cost: n, Expiry: time.UnixMicro(r.int(11))}
	}
	st.seen.remember(d, c.opts.Now())
	st.m.decision(d)
	return d, nil
}

// Permit is the places a granted request holds under its provider's
// concurrency rules. Release it when the request is done; a permit not
// released frees its places when its lease ends (a holder that crashed).
// A nil *Permit is a no-op.
type Permit struct {
	c     *Limiter
	st    *providerState
	rules []Rule
	id    string
	cost  int
	// Expiry is when the lease ends (Redis time) unless renewed.
	Expiry time.Time
}

// ID is the permit's id in Redis: the field <rule>#<id> of the
// provider's rules state hash, for each of its concurrency rules.
func (p *Permit) ID() string {
	if p == nil {
		return ""
	}
	return p.id
}

// Release frees the permit's places at once, and wakes the waiters of
// every replica. Releasing twice, or after the lease ended, frees nothing
// more.
func (p *Permit) Release(ctx context.Context) error {
	if p == nil {
		return nil
	}
	for _, r := range p.rules {
		if _, err := p.c.run(ctx, p.st, permitScript, []string{p.st.keys.rules.Rules, p.st.keys.released}, "release", p.id, p.cost, "", r.Name); err != nil {
			return err
		}
	}
	return nil
}

func (p *Permit) release(ctx context.Context) {
	if err := p.Release(ctx); err != nil {
		p.c.log.Warn("permit not released: its lease frees it", "provider", p.st.name, "permit", p.ID(), "err", err)
	}
}

// Renew extends the permit's lease to lease from now, in [1ms, 24h] in
// whole milliseconds, under each of its rules. It returns an error matching
// ErrPermitLost when the lease had already ended: the places may be
// another caller's, so the request should stop.
func (p *Permit) Renew(ctx context.Context, lease time.Duration) error {
	if p == nil {
		return nil
	}
	if lease%time.Millisecond != 0 || !within(lease, time.Millisecond, 24*time.Hour) {
		return &ArgumentError{"lease", lease, "whole milliseconds in [1ms, 24h]"}
	}
	for _, r := range p.rules {
		res, err := p.c.run(ctx, p.st, permitScript, []string{p.st.keys.rules.Rules, p.st.keys.released},
			"renew", p.id, p.cost, strconv.FormatInt(lease.Milliseconds(), 10), r.Name)
		if err != nil {
			return err
		}
		exp, _ := res.(int64)
		if exp == 0 {
			return fmt.Errorf("%w: provider %q, rule %s, permit %s", ErrPermitLost, p.st.name, r.Name, p.id)
		}
		p.Expiry = time.UnixMicro(exp)
	}
	return nil
}

// newPermitID returns 16 random hex digits.
func newPermitID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
