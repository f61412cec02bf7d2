package redisstream

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/lua"
)

// What the living do for the dead: claim the entries a consumer left
// pending, remove from the group the consumers that left, and move an
// entry that must not reach the sink to the refused stream.

// claim takes over the entries pending on other consumers for longer than
// ClaimIdle and submits them; then it removes the consumers that have
// left: nothing pending (what they held is claimed) and idle for longer
// than ClaimIdle.
func (c *Consumer) claim(ctx context.Context) error {
	start := "0-0"
	for range 100 { // bounded: the next round goes on
		next, msgs, err := c.autoclaim(ctx, start)
		if err != nil {
			return err
		}
		if !c.submit(ctx, msgs, true) {
			return nil
		}
		if next == "0-0" || next == "" {
			break
		}
		start = next
	}
	c.forget(ctx, c.o.ClaimIdle)
	return nil
}

// autoclaim claims up to Count entries pending on other consumers for
// longer than ClaimIdle, from start on; it returns where the next call
// starts ("0-0" or "" once the scan is complete) and the entries.
func (c *Consumer) autoclaim(ctx context.Context, start string) (next string, msgs []message, err error) {
	v, err := c.rdb.Do(ctx, "XAUTOCLAIM", c.key, c.o.Group, c.o.Name, c.o.ClaimIdle.Milliseconds(), start, "COUNT", c.o.Count).Result()
	if err != nil {
		return "", nil, err
	}
	return claimReply(v)
}

var forgetScript = redis.NewScript(lua.Source("forget"))

// forget removes from the group the consumers (names, or all when none is
// given) that have no pending entry and have been idle for longer than
// idle (-1: any), atomically (lua/forget.lua). Its errors are logged: nothing
// depends on it but the tidiness of XINFO CONSUMERS.
func (c *Consumer) forget(ctx context.Context, idle time.Duration, names ...string) {
	ms := idle.Milliseconds()
	if idle < 0 {
		ms = -1
	}
	args := append([]any{c.o.Group, ms}, anys(names)...)
	gone, err := forgetScript.Run(ctx, c.rdb, []string{c.key}, args...).StringSlice()
	if err != nil {
		if ctx.Err() == nil {
			c.log.Warn("removing departed consumers from the group failed", "err", err)
		}
		return
	}
	if len(gone) > 0 {
		c.log.Info("removed consumers with nothing pending from the group", "consumers", gone, "idle_over", idle.String())
	}
}

func anys(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

var refuseScript = redis.NewScript(lua.Source("refuse"))

// refuse moves an entry that must not reach the sink whole to the refused
// stream and acknowledges it (lua/refuse.lua). If that fails the entry stays
// pending, and is refused again when a claim round takes it.
func (c *Consumer) refuse(ctx context.Context, id, why string) {
	moved, err := refuseScript.Run(ctx, c.rdb, []string{c.key, c.refused}, c.o.Group, c.o.Name, id, why).Int()
	if err != nil {
		if ctx.Err() == nil {
			c.log.Warn("moving a refused entry failed; it stays pending", "id", id, "reason", why, "err", err)
		}
		return
	}
	if moved == 1 {
		c.refusals.Add(1)
		c.m.refused.Inc()
		c.log.Warn("refused an entry: moved it whole to the refused stream, not written", "id", id, "reason", why, "refused_stream", c.refused)
	}
}
