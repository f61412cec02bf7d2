// Package clusterreload makes a Redis Cluster client ask for the cluster's
// slot map again after a call that failed as a dead or demoted master
// fails. go-redis learns of a new master from a MOVED redirect or from its
// reload timer (ClusterStateReloadInterval, 60 s by default); a killed
// master sends no redirect, so without a reload every call to its slots
// goes on failing on the dead address for up to a minute after its replica
// was promoted. With the hook the first failed call after the promotion
// (a service retries within a second) brings the new map.
//
// The clients config.Settings.RedisClient builds for a cluster carry the
// hook. A program that builds its own ClusterClient installs it once,
// before handing the client to the limiter, the buses, the stream producer
// and consumer or the controller:
//
//	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs, ContextTimeoutEnabled: true})
//	clusterreload.Install(cc)
package clusterreload

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// MinInterval is the least time between two reloads the hook asks for: a
// failing master fails every call, and one reload serves them all.
const MinInterval = 100 * time.Millisecond

// Reloader reloads a cluster's slot map without blocking: a
// *redis.ClusterClient (its ReloadState starts one reload in the background,
// or marks one pending if a reload is under way).
type Reloader interface {
	ReloadState(ctx context.Context)
}

// Hook is a redis.Hook that asks its Reloader for a new slot map after a
// call (or a pipeline) failed in a way that says the map may be stale (see
// Stale), at most once per MinInterval. It never changes a call or its
// error. Safe for concurrent use.
type Hook struct {
	r    Reloader
	now  func() time.Time
	last atomic.Int64 // Unix nanoseconds of the last reload asked for
}

// New returns a Hook reloading r, on the clock now (nil: time.Now).
func New(r Reloader, now func() time.Time) *Hook {
	if now == nil {
		now = time.Now
	}
	return &Hook{r: r, now: now}
}

// Install adds a Hook to c: after a failed call (see Stale), c reloads its
// slot map, at most once per MinInterval. Install it once per client.
func Install(c *redis.ClusterClient) { c.AddHook(New(c, nil)) }

// DialHook leaves dialling alone: a failed dial fails the call, which the
// process hooks see.
func (h *Hook) DialHook(next redis.DialHook) redis.DialHook { return next }

// ProcessHook runs the call, then reloads if it failed as Stale says.
func (h *Hook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if Stale(err) {
			h.reload(ctx)
		}
		return err
	}
}

// ProcessPipelineHook runs the pipeline, then reloads if it, or any of its
// commands, failed as Stale says.
func (h *Hook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		stale := Stale(err)
		for _, c := range cmds {
			stale = stale || Stale(c.Err())
		}
		if stale {
			h.reload(ctx)
		}
		return err
	}
}

// reload asks for a reload unless one was asked for less than MinInterval ago.
func (h *Hook) reload(ctx context.Context) {
	now := h.now().UnixNano()
	last := h.last.Load()
	if now-last < int64(MinInterval) || !h.last.CompareAndSwap(last, now) {
		return
	}
	h.r.ReloadState(ctx)
}

// Stale reports whether err, the outcome of a call to a cluster, says the
// slot map may be out of date: no answer (a refused or broken connection, a
// timeout, a closed pool: the master may be dead) or an answer that the
// cluster is changing hands (CLUSTERDOWN, TRYAGAIN, MASTERDOWN, LOADING,
// READONLY). Every other reply of a server (redis.Nil, NOSCRIPT, WRONGTYPE,
// NOPERM, ...) is an answer from the right node, and the caller's own
// cancellation is no fault of the cluster's: neither is stale.
func Stale(err error) bool {
	switch {
	case err == nil, errors.Is(err, redis.Nil), errors.Is(err, context.Canceled):
		return false
	case redis.IsClusterDownError(err), redis.IsTryAgainError(err), redis.IsMasterDownError(err),
		redis.IsLoadingError(err), redis.IsReadOnlyError(err):
		return true
	}
	var reply redis.Error
	return !errors.As(err, &reply)
}
