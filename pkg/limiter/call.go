package limiter

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/pkg/internal/redisopt"
)

// Every round trip the limiter makes to Redis goes through call (or, for
// the probes, bounded): it returns within CallTimeout and the caller's
// context whatever the client's options.

// honoursDeadlines reports whether rdb bounds each round trip by the
// deadline of the context it is given: a go-redis Client, ClusterClient or
// Ring with ContextTimeoutEnabled whose read and write timeouts are not
// switched off. Any other client waits for a reply as long as its
// ReadTimeout says (5 s by default), whatever the context says.
func honoursDeadlines(rdb redis.UniversalClient) bool {
	t, ok := redisopt.Of(rdb)
	return ok && t.ContextTimeout && t.Read >= 0 && t.Write >= 0
}

// roundTrip is one call to Redis: a script with its keys and arguments,
// or, when cmd is set, any other command. A value, not a closure, so that
// the fast path allocates nothing for it.
type roundTrip struct {
	script *redis.Script
	keys   []string
	args   []any
	cmd    func(ctx context.Context) (any, error)
	// argv, when set, is script's EVALSHA command in full (EVALSHA, the
	// script's hash, the count of keys, keys, then args), boxed ahead
	// (acquireArgv): sent as it is, it spares the per-call boxing of every
	// key that go-redis's Script.Run does.
	argv []any
}

func (rt roundTrip) run(ctx context.Context, rdb redis.UniversalClient) (any, error) {
	switch {
	case rt.cmd != nil:
		return rt.cmd(ctx)
	case rt.argv != nil:
		// What Script.Run does: EVALSHA, and EVAL when Redis lacks the script.
		cmd := redis.NewCmd(ctx, rt.argv...)
		cmd.SetFirstKeyPos(3) // as go-redis's own Eval: a cluster routes by the first key
		if err := rdb.Process(ctx, cmd); !isNoScript(err) {
			return cmd.Result()
		}
		return rt.script.Eval(ctx, rdb, rt.keys, rt.args...).Result()
	}
	return rt.script.Run(ctx, rdb, rt.keys, rt.args...).Result()
}

// isNoScript reports whether err says Redis does not have the script (its
// cache was flushed, or Redis restarted): Script.Run's test.
func isNoScript(err error) bool {
	return err != nil && (errors.Is(err, redis.ErrNoScript) || redis.HasErrorPrefix(err, "NOSCRIPT"))
}

// bounded makes the round trip rt and returns by the end of ctx whatever
// the client. A client that honours deadlines (Limiter.direct) is
// called straight through. For any other, rt runs in a goroutine of its
// own, and when ctx ends first bounded returns ctx's error: the abandoned
// round trip finishes in the background (when Redis answers, or at the
// client's ReadTimeout) and its answer is dropped. The command may still
// run in Redis: tokens an abandoned acquisition took are then lost to
// everyone until the bucket refills (under-admission, never over), and a
// change (a scale, a failure) may still apply, as after any call that
// timed out.
func (c *Limiter) bounded(ctx context.Context, rt roundTrip) (any, error) {
	if c.direct {
		return rt.run(ctx, c.rdb)
	}
	type answer struct {
		res any
		err error
	}
	done := make(chan answer, 1)
	detached := rt // only this copy escapes to the heap, off the fast path
	go func() {
		res, err := detached.run(ctx, c.rdb)
		done <- answer{res, err}
	}()
	select {
	case a := <-done:
		return a.res, a.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// script runs s for st within CallTimeout and ctx (see call).
func (c *Limiter) script(ctx context.Context, st *providerState, s *redis.Script, keys []string, args ...any) (any, error) {
	return c.call(ctx, st, roundTrip{script: s, keys: keys, args: args})
}

// command runs cmd for st (nil: no provider in particular) within
// CallTimeout and ctx (see call).
func (c *Limiter) command(ctx context.Context, st *providerState, cmd func(ctx context.Context) (any, error)) (any, error) {
	return c.call(ctx, st, roundTrip{cmd: cmd})
}

// call makes the round trip rt about st (nil: no provider in particular)
// within CallTimeout and ctx. While the keys' cluster slot is in motion
// (isSlotMoving) it tries again after a short backoff, within the same
// budget. No answer in time, while ctx is still live, is a stall, and a
// slot still in motion then is a slot's: both are *outageError. When ctx's
// deadline ends the call first, the error is ctx's (the caller's budget,
// which says nothing of Redis), and suspect checks Redis in the background
// with the whole CallTimeout. A redirect never reaches the caller as it
// came.
func (c *Limiter) call(ctx context.Context, st *providerState, rt roundTrip) (any, error) {
	// cctx is ctx ended at CallTimeout too: what context.WithTimeout would
	// make, without a timer per call (callDeadlines). A caller's deadline
	// that comes first bounds the call alone.
	cctx := ctx
	if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > c.opts.CallTimeout {
		call := c.deadlines.start(ctx)
		defer c.deadlines.finish(call)
		cctx = call
	}
	var moving error // the last answer that said the slot is in motion
	for attempt := 0; ; attempt++ {
		res, err := c.bounded(cctx, rt)
		if isSlotMoving(err) {
			moving = err
			if sleep(cctx, slotBackoff(attempt), nil) == nil {
				continue
			}
		}
		if err != nil {
			err = c.callError(ctx, cctx, st, err, moving)
		}
		return res, err
	}
}

// callError is call's error after the round trip about st failed with err,
// under ctx, the caller's context, and cctx, the call's (ctx bounded by
// CallTimeout); moving is the last answer that said the slot was in motion.
func (c *Limiter) callError(ctx, cctx context.Context, st *providerState, err, moving error) error {
	switch {
	case ended(ctx): // the caller gave up: its deadline, not an outage
		cause := endCause(ctx)
		if errors.Is(cause, context.DeadlineExceeded) {
			c.suspect(st)
		}
		return fmt.Errorf("%w (%v)", cause, err)
	case moving != nil && ended(cctx):
		return &outageError{true, c.opts.CallTimeout, moving}
	case ended(cctx):
		return &outageError{false, c.opts.CallTimeout, err}
	}
	return err
}

// ended reports whether ctx is done or its deadline has passed (a socket
// deadline set from it may fire a moment before ctx's own timer).
func ended(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	dl, ok := ctx.Deadline()
	return ok && !time.Now().Before(dl)
}

// endCause is the error of a ctx that ended: ctx.Err(), or
// DeadlineExceeded when its deadline has passed before its timer fired.
func endCause(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return context.DeadlineExceeded
}

// outageError is a call Redis did not serve within CallTimeout: no answer
// (a stall), or, when slot is set, a cluster slot that did not settle
// (Redis kept answering TRYAGAIN, ASK, MOVED or CLUSTERDOWN: an outage of
// the providers in that slot only). isOutage takes either for an outage.
type outageError struct {
	slot  bool
	after time.Duration
	err   error
}

func (e *outageError) Error() string {
	if e.slot {
		return fmt.Sprintf("cluster slot in motion (migration or failover) for %v (call_timeout): %v", e.after, e.err)
	}
	return fmt.Sprintf("no answer from redis within %v (call_timeout): %v", e.after, e.err)
}

func (e *outageError) Unwrap() error { return e.err }

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
