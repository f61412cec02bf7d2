package limiter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// RuleKind is the kind of a pacing rule.
type RuleKind string

// Kinds of pacing rules (docs/rules.md).
const (
	// RuleWindow: at most Limit units in any Period (a sliding window).
	RuleWindow RuleKind = "window"
	// RuleKeyed: at most Limit units per request key in any Period; a
	// key's state is made on its first request and expires Period after
	// its last.
	RuleKeyed RuleKind = "keyed"
	// RuleSpacing: the same request key not again within Period.
	RuleSpacing RuleKind = "spacing"
	// RuleConcurrency: at most Limit units in flight. A grant carries a
	// Permit, held until Permit.Release or until its Lease ends (a holder
	// that crashed); Permit.Renew extends it for a long request.
	RuleConcurrency RuleKind = "concurrency"
)

// Rule is one of a provider's pacing rules, beside its token bucket. A
// request's cost applies to every rule it touches. Every replica decides
// against the same rules, stored in Redis by SetRules.
type Rule struct {
	// Name names the rule in refusals, status and metrics: 1 to 64 of
	// [A-Za-z0-9_.-], unique in the set, not "bucket".
	Name string
	Kind RuleKind
	// Limit is the most units in a window (window, keyed) or in flight
	// (concurrency), in [1, 10000]. A window's or key's log holds at most
	// 33 entries whatever Limit (docs/rules.md); a concurrency rule one
	// field per open permit, at most Limit. Not for spacing.
	Limit int
	// Period is the window (window, keyed) or the spacing, whole
	// milliseconds in [1ms, 24h]. Not for concurrency.
	Period time.Duration
	// Lease is how long a concurrency permit holds without Renew, whole
	// milliseconds in [1ms, 24h]. Only for concurrency.
	Lease time.Duration
	// Scaled makes the feedback scale apply to the rule: its limit is
	// floor(Limit × scale). Off by default (the bucket is always scaled);
	// not for spacing.
	Scaled bool
}

// ruleJSON is a rule as set_rules.lua reads it and stores it.
type ruleJSON struct {
	Name     string   `json:"name"`
	Kind     RuleKind `json:"kind"`
	Limit    int      `json:"limit,omitempty"`
	PeriodMS int64    `json:"period_ms,omitempty"`
	LeaseMS  int64    `json:"lease_ms,omitempty"`
	Scaled   bool     `json:"scaled"`
}

const maxRules = 16

// ValidateRules checks a rule set as SetRules would, without Redis: an
// *ArgumentError naming the field (rules.<name>.limit) and its range.
func ValidateRules(rules []Rule) error {
	if len(rules) > maxRules {
		return &ArgumentError{"rules", fmt.Sprintf("%d rules", len(rules)), "at most 16 rules"}
	}
	seen := map[string]bool{}
	for i, r := range rules {
		if validName("", r.Name) != nil || r.Name == "bucket" {
			return &ArgumentError{fmt.Sprintf("rules[%d].name", i+1), r.Name, `1 to 64 characters of [A-Za-z0-9_.-], not "bucket"`}
		}
		if seen[r.Name] {
			return &ArgumentError{"rules." + r.Name + ".name", r.Name, "unique among the rules"}
		}
		seen[r.Name] = true
		if err := r.validate(); err != nil {
			return err
		}
	}
	return nil
}

func (r Rule) validate() error {
	f := "rules." + r.Name + "."
	ms := func(d time.Duration) bool {
		return d%time.Millisecond == 0 && within(d, time.Millisecond, 24*time.Hour)
	}
	const msRange = "whole milliseconds in [1ms, 24h]"
	switch r.Kind {
	case RuleWindow, RuleKeyed, RuleSpacing, RuleConcurrency:
	default:
		return &ArgumentError{f + "kind", r.Kind, "one of window, keyed, spacing, concurrency"}
	}
	counted, timed := r.Kind != RuleSpacing, r.Kind != RuleConcurrency
	switch {
	case counted && !within(r.Limit, 1, 10000):
		return &ArgumentError{f + "limit", r.Limit, "an integer in [1, 10000]"}
	case !counted && r.Limit != 0 && r.Limit != 1:
		return &ArgumentError{f + "limit", r.Limit, "0 or 1 for a spacing rule"}
	case timed && !ms(r.Period):
		return &ArgumentError{f + "period", r.Period, msRange}
	case !timed && r.Period != 0:
		return &ArgumentError{f + "period", r.Period, "0 for a concurrency rule (its lease is Lease)"}
	case !timed && !ms(r.Lease):
		return &ArgumentError{f + "lease", r.Lease, msRange}
	case timed && r.Lease != 0:
		return &ArgumentError{f + "lease", r.Lease, "0 but for a concurrency rule"}
	case r.Scaled && !counted:
		return &ArgumentError{f + "scaled", r.Scaled, "false for a spacing rule"}
	}
	return nil
}

func (r Rule) toJSON() ruleJSON {
	return ruleJSON{Name: r.Name, Kind: r.Kind, Limit: r.Limit, PeriodMS: r.Period.Milliseconds(), LeaseMS: r.Lease.Milliseconds(), Scaled: r.Scaled}
}

func (j ruleJSON) rule() Rule {
	return Rule{Name: j.Name, Kind: j.Kind, Limit: j.Limit, Period: time.Duration(j.PeriodMS) * time.Millisecond,
		Lease: time.Duration(j.LeaseMS) * time.Millisecond, Scaled: j.Scaled}
}

// SetRules replaces provider's pacing rules with rules, all at once (none
// removes them); the provider must be registered. It reports whether the
// stored set changed. Every replica takes the new set at its next
// acquisition that reaches Redis: this Limiter's token lease ends before
// SetRules returns, another replica's tokens leased before the set are
// handed out until its lease ends (TokenLease, stretched by the call
// budget). The state of a rule kept by name and kind goes on.
func (c *Limiter) SetRules(ctx context.Context, provider string, rules []Rule) (changed bool, err error) {
	st, err := c.state(provider)
	if err != nil {
		return false, err
	}
	if err := ValidateRules(rules); err != nil {
		return false, err
	}
	text, err := rulesText(rules)
	if err != nil {
		return false, err
	}
	defer c.leaseAside(st)() // tokens leased before the set are not handed out under it here
	res, err := c.run(ctx, st, setRulesScript, []string{st.keys.config, st.keys.rules.Rules}, text)
	if err != nil {
		return false, err
	}
	r, err := replyArray(res, 2)
	if err != nil {
		return false, err
	}
	st.reg.setRules(rules)
	return r.str(0) == "updated", nil
}

// rulesText is rules as set_rules.lua reads them.
func rulesText(rules []Rule) (string, error) {
	js := make([]ruleJSON, len(rules))
	for i, r := range rules {
		js[i] = r.toJSON()
	}
	text, err := json.Marshal(js)
	return string(text), err
}

// ruleSet is what this process knows of a provider's rules: the set in
// force at revision rev, learnt from Redis (a RULES_CHANGED reply).
type ruleSet struct {
	mu    sync.Mutex
	known bool   // a reply told this process the rules; until then the plain form is tried
	rev   string // "" when the provider has none
	rules []Rule
}

func (s *ruleSet) get() (rev string, rules []Rule, known bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rev, s.rules, s.known
}

func (s *ruleSet) set(rev string, rules []Rule) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.known, s.rev, s.rules = true, rev, rules
}

// active reports whether the provider is known to have rules (a set
// removed leaves a rev and no rules: the plain form serves again).
func (s *ruleSet) active() bool {
	_, rules, known := s.get()
	return known && len(rules) > 0
}

// rule returns the rule named name.
func (s *ruleSet) rule(name string) (Rule, bool) {
	_, rules, _ := s.get()
	for _, r := range rules {
		if r.Name == name {
			return r, true
		}
	}
	return Rule{}, false
}

// rulesChanged is acquire.lua's RULES_CHANGED reply: the set in force.
type rulesChanged struct {
	rev   string
	rules []Rule
}

func (e *rulesChanged) Error() string { return "limiter: rules changed to rev " + e.rev }

// parseRulesChanged reads the text of a RULES_CHANGED reply, "<rev>
// <rules JSON>" (rev "-": none), or returns nil when it is not one.
func parseRulesChanged(text string) *rulesChanged {
	rev, rules, _ := strings.Cut(text, " ")
	var js []ruleJSON
	if json.Unmarshal([]byte(rules), &js) != nil {
		return nil
	}
	e := &rulesChanged{rev: strings.TrimPrefix(rev, "-")}
	for _, j := range js {
		e.rules = append(e.rules, j.rule())
	}
	return e
}

// rulesChangedIn returns the set in force an acquisition's error carries
// (mapErr made it from a RULES_CHANGED reply), or nil.
func rulesChangedIn(err error) *rulesChanged {
	var ch *rulesChanged
	if errors.As(err, &ch) {
		return ch
	}
	return nil
}

// ParseRules reads rules written as in configuration and on the command
// line (docs/rules.md), separated by commas:
//
//	<name>=window:<limit>/<period>     hist=window:60/10m
//	<name>=keyed:<limit>/<period>      contract=keyed:5/2s
//	<name>=spacing:<period>            identical=spacing:15s
//	<name>=concurrency:<limit>@<lease> open=concurrency:50@2m
//
// with ":scaled" after a window, keyed or concurrency rule to apply the
// feedback scale to it. "" and "none" are no rules. The rules are checked
// as ValidateRules does; an error names the rule and field.
func ParseRules(s string) ([]Rule, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "none" {
		return nil, nil
	}
	var rules []Rule
	for i, part := range strings.Split(s, ",") {
		r, err := parseRule(strings.TrimSpace(part))
		if err != nil {
			return nil, fmt.Errorf("rule %d (%q): %w", i+1, part, err)
		}
		rules = append(rules, r)
	}
	return rules, ValidateRules(rules)
}

const ruleForms = "<name>=window:<limit>/<period>, keyed:<limit>/<period>, spacing:<period> or concurrency:<limit>@<lease>, optionally :scaled"

func parseRule(s string) (Rule, error) {
	name, spec, ok := strings.Cut(s, "=")
	kind, args, ok2 := strings.Cut(spec, ":")
	if !ok || !ok2 {
		return Rule{}, &ArgumentError{"rules", s, ruleForms}
	}
	r := Rule{Name: name, Kind: RuleKind(kind)}
	if a, ok := strings.CutSuffix(args, ":scaled"); ok {
		args, r.Scaled = a, true
	}
	sep := "/"
	switch r.Kind {
	case RuleSpacing:
		sep = ""
	case RuleConcurrency:
		sep = "@"
	case RuleWindow, RuleKeyed:
	default:
		return Rule{}, &ArgumentError{"rules." + name + ".kind", kind, "one of window, keyed, spacing, concurrency"}
	}
	limit, span := "1", args
	if sep != "" {
		if limit, span, ok = strings.Cut(args, sep); !ok {
			return Rule{}, &ArgumentError{"rules." + name, args, ruleForms}
		}
	}
	n, err := strconv.Atoi(limit)
	if err != nil {
		return Rule{}, &ArgumentError{"rules." + name + ".limit", limit, "an integer in [1, 10000]"}
	}
	d, err := time.ParseDuration(span)
	if err != nil {
		return Rule{}, &ArgumentError{"rules." + name + ".period", span, "a duration like 10m, 2s or 250ms"}
	}
	switch r.Kind {
	case RuleSpacing:
		r.Period = d
	case RuleConcurrency:
		r.Limit, r.Lease = n, d
	default:
		r.Limit, r.Period = n, d
	}
	return r, nil
}

// FormatRules writes rules as ParseRules reads them ("none" for none).
func FormatRules(rules []Rule) string {
	if len(rules) == 0 {
		return "none"
	}
	parts := make([]string, len(rules))
	for i, r := range rules {
		parts[i] = r.String()
	}
	return strings.Join(parts, ",")
}

// String writes r as ParseRules reads it, e.g. "hist=window:60/10m".
func (r Rule) String() string {
	var s string
	switch r.Kind {
	case RuleSpacing:
		s = shortDuration(r.Period)
	case RuleConcurrency:
		s = strconv.Itoa(r.Limit) + "@" + shortDuration(r.Lease)
	default:
		s = strconv.Itoa(r.Limit) + "/" + shortDuration(r.Period)
	}
	if r.Scaled {
		s += ":scaled"
	}
	return r.Name + "=" + string(r.Kind) + ":" + s
}

// shortDuration is d as time.ParseDuration reads it, without the zero
// units time.Duration.String writes: 10m, not 10m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if t, ok := strings.CutSuffix(s, "m0s"); ok {
		s = t + "m"
	}
	if t, ok := strings.CutSuffix(s, "h0m"); ok {
		s = t + "h"
	}
	return s
}
