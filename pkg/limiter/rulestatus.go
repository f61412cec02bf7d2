package limiter

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
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
// writes nothing (units already out of a window are not counted, not
// removed) and takes two pipelined round trips, no transaction: each rule
// is read as of its own instant, for inspection, not for deciding.
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
	now := clock.Val()
	pipe = c.rdb.Pipeline()
	type read struct {
		count *redis.IntCmd
		first *redis.ZSliceCmd
		until *redis.StringCmd
	}
	reads := make([]read, len(js))
	out := make([]RuleState, len(js))
	for i, j := range js {
		out[i] = RuleState{Rule: j.rule()}
		r := out[i].Rule
		var zkey string
		from := now.Add(-r.Period)
		switch r.Kind {
		case RuleWindow:
			zkey = st.keys.rules.Rule(r.Name)
		case RuleConcurrency:
			zkey, from = st.keys.rules.Permits(r.Name), now
		case RuleKeyed, RuleSpacing:
			if key == "" {
				continue
			}
			out[i].Key = key
			if r.Kind == RuleSpacing {
				reads[i].until = pipe.Get(ctx, st.keys.rules.RuleKey(r.Name, key))
				continue
			}
			zkey = st.keys.rules.RuleKey(r.Name, key)
		}
		lo := "(" + strconv.FormatInt(from.UnixMicro(), 10)
		reads[i].count = pipe.ZCount(ctx, zkey, lo, "+inf")
		reads[i].first = pipe.ZRangeByScoreWithScores(ctx, zkey, &redis.ZRangeBy{Min: lo, Max: "+inf", Count: 1})
	}
	if _, err := pipe.Exec(ctx); err != nil && err != redis.Nil {
		return nil, err
	}
	for i := range out {
		rd, r := reads[i], &out[i]
		switch {
		case rd.until != nil:
			if us, err := strconv.ParseInt(rd.until.Val(), 10, 64); err == nil && us > now.UnixMicro() {
				r.Held, r.Next = 1, time.UnixMicro(us)
			}
		case rd.count != nil:
			r.Held = int(rd.count.Val())
			if z := rd.first.Val(); len(z) > 0 {
				r.Next = time.UnixMicro(int64(z[0].Score))
				if r.Kind != RuleConcurrency {
					r.Next = r.Next.Add(r.Period)
				}
			}
		}
	}
	return out, nil
}
