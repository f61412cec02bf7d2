package limiter

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// RuleState is what one of a provider's pacing rules holds at a Redis
// instant, for inspection (sluice status).
type RuleState struct {
	Rule
	// Key is the request key a keyed or spacing rule was read for; "" when
	// none was given (then Held is 0: such a rule holds per key).
	Key string
	// Held is the units the rule counts now: in its window (window, keyed
	// for Key), or in flight (concurrency); a spacing rule holds 1 while Key
	// may not come again.
	Held int
	// Next is when the oldest counted unit leaves the window, the earliest
	// permit's lease ends or the spacing ends; zero when the rule holds none.
	Next time.Time
}

// RuleStatus reads provider's pacing rules and what each holds at Redis
// time; keyed and spacing rules for key (not read when key is ""). It
// writes nothing (units already out of a window, permits past their lease
// are not counted, not removed) and takes two pipelined round trips, no
// transaction: for inspection, not for deciding.
func (c *Limiter) RuleStatus(ctx context.Context, provider, key string) ([]RuleState, error) {
	st, err := c.state(provider)
	if err != nil {
		return nil, err
	}
	pipe := c.rdb.Pipeline()
	cfg := pipe.HMGet(ctx, st.keys.config, "capacity", "rules")
	clock := pipe.Time(ctx)
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, err
	}
	if cfg.Val()[0] == nil {
		return nil, fmt.Errorf("%w %q", ErrUnknownProvider, provider)
	}
	var js []ruleJSON
	if text, ok := cfg.Val()[1].(string); ok {
		if err := json.Unmarshal([]byte(text), &js); err != nil {
			return nil, fmt.Errorf("%w: %s rules: %v", ErrCorruptState, st.keys.config, err)
		}
	}
	now := clock.Val().UnixMicro()
	pipe = c.rdb.Pipeline()
	state := pipe.HGetAll(ctx, st.keys.rules.Rules)
	gets := make([]*redis.StringCmd, len(js))
	out := make([]RuleState, len(js))
	for i, j := range js {
		out[i] = RuleState{Rule: j.rule()}
		if (j.Kind == RuleKeyed || j.Kind == RuleSpacing) && key != "" {
			out[i].Key = key
			gets[i] = pipe.Get(ctx, st.keys.rules.RuleKey(j.Name, key))
		}
	}
	if _, err := pipe.Exec(ctx); err != nil && err != redis.Nil {
		return nil, err
	}
	fields := state.Val()
	for i := range out {
		r := &out[i]
		var err error
		switch r.Kind {
		case RuleWindow:
			r.Held, r.Next, err = windowHeld(fields[r.Name], now, r.Period)
		case RuleKeyed:
			if gets[i] != nil {
				r.Held, r.Next, err = windowHeld(gets[i].Val(), now, r.Period)
			}
		case RuleSpacing:
			if gets[i] != nil {
				// The key holds its grant's Redis time (µs).
				if us, perr := strconv.ParseInt(gets[i].Val(), 10, 64); perr == nil && us+r.Period.Microseconds() > now {
					r.Held, r.Next = 1, time.UnixMicro(us).Add(r.Period)
				}
			}
		case RuleConcurrency:
			r.Held, r.Next, err = permitsHeld(fields, r.Name, now)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %s rule %s: %v", ErrCorruptState, provider, r.Name, err)
		}
	}
	return out, nil
}

// windowHeld reads a window's state as acquire.lua writes it (docs/lua.md;
// "" for none): the units still in the window at now (µs) and when the
// oldest of them leaves (zero when none).
func windowHeld(s string, now int64, period time.Duration) (held int, next time.Time, err error) {
	entries, err := windowEntries(s)
	if err != nil {
		return 0, time.Time{}, err
	}
	cut := now - period.Microseconds()
	for _, e := range entries {
		if e.t > cut {
			if held == 0 {
				next = time.UnixMicro(e.t).Add(period)
			}
			held += e.c
		}
	}
	return held, next, nil
}

// windowEntry is c units counted until t (Redis µs) + the period.
type windowEntry struct {
	t int64
	c int
}

// windowEntries decodes a window's state, oldest entry first: packed,
// little-endian (a byte 1, held in 2 bytes, the entry count in 1, a keyed
// key's expiry in 6, then each entry's time in 7 and units in 2), or
// the text of the release before ("<held> <entries> <newest t:c> <older
// t:c...>").
func windowEntries(s string) ([]windowEntry, error) {
	if s == "" {
		return nil, nil
	}
	bad := fmt.Errorf("window state %q", s)
	if s[0] != 1 {
		f := strings.Fields(s)
		if len(f) < 3 {
			return nil, bad
		}
		var out []windowEntry
		for _, e := range append(f[3:], f[2]) { // oldest first
			ts, cs, ok := strings.Cut(e, ":")
			t, err1 := strconv.ParseInt(ts, 10, 64)
			c, err2 := strconv.Atoi(cs)
			if !ok || err1 != nil || err2 != nil {
				return nil, bad
			}
			out = append(out, windowEntry{t, c})
		}
		return out, nil
	}
	if len(s) < 10 || len(s) != 10+9*int(s[3]) {
		return nil, bad
	}
	out := make([]windowEntry, 0, s[3])
	for p := 10; p < len(s); p += 9 {
		var t int64
		for i := 6; i >= 0; i-- {
			t = t<<8 | int64(s[p+i])
		}
		out = append(out, windowEntry{t, int(s[p+7]) | int(s[p+8])<<8})
	}
	return out, nil
}

// permitsHeld reads concurrency rule rule's permits in the rules state
// hash (fields <rule>#<id>, places and expiry: pairOf): the places of
// those whose lease has not ended at now (µs), and the earliest such end.
func permitsHeld(fields map[string]string, rule string, now int64) (held int, next time.Time, err error) {
	for f, v := range fields {
		if !strings.HasPrefix(f, rule+"#") {
			continue
		}
		p, exp, ok := pairOf(v)
		if !ok {
			return 0, time.Time{}, fmt.Errorf("permit %s=%q", f, v)
		}
		places := int(p)
		if exp > now {
			held += places
			if t := time.UnixMicro(exp); next.IsZero() || t.Before(next) {
				next = t
			}
		}
	}
	return held, next, nil
}

// pairOf reads a concurrency rule's state (held, next) or a permit
// (places, expiry) as acquire.lua writes it: 9 bytes, little-endian, a
// 2-byte count then 7 bytes of Redis µs; or the text "<a> <b>" of the
// release before.
func pairOf(v string) (a, b int64, ok bool) {
	if len(v) == 9 {
		for i := 8; i >= 2; i-- {
			b = b<<8 | int64(v[i])
		}
		return int64(v[0]) | int64(v[1])<<8, b, true
	}
	as, bs, ok := strings.Cut(v, " ")
	a, err1 := strconv.ParseInt(as, 10, 64)
	b, err2 := strconv.ParseInt(bs, 10, 64)
	return a, b, ok && err1 == nil && err2 == nil
}
