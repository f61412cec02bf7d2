// Package redisopt reads the deadline options of a go-redis client whatever
// its type, for the packages that bound their calls by them (the limiter,
// the stream consumer).
package redisopt

import (
	"time"

	"github.com/redis/go-redis/v9"
)

// Timeouts are a client's deadline options, as its Options() holds them:
// a Client's and a ClusterClient's after go-redis applied its defaults
// (Read and Write 0 mean no timeout, -1 no deadline set on the socket at
// all), a Ring's as given (go-redis settles them per shard: -2 is no
// deadline, -1 no timeout, 0 the default).
type Timeouts struct {
	// ContextTimeout is ContextTimeoutEnabled: each round trip's socket
	// deadlines also follow its context's deadline.
	ContextTimeout bool
	// Read and Write are ReadTimeout and WriteTimeout.
	Read, Write time.Duration
}

// Of returns rdb's Timeouts and true when rdb is a *redis.Client,
// *redis.ClusterClient or *redis.Ring; for any other type (a wrapper whose
// options cannot be read) the zero Timeouts and false.
func Of(rdb redis.UniversalClient) (Timeouts, bool) {
	switch c := rdb.(type) {
	case *redis.Client:
		o := c.Options()
		return Timeouts{o.ContextTimeoutEnabled, o.ReadTimeout, o.WriteTimeout}, true
	case *redis.ClusterClient:
		o := c.Options()
		return Timeouts{o.ContextTimeoutEnabled, o.ReadTimeout, o.WriteTimeout}, true
	case *redis.Ring:
		o := c.Options()
		return Timeouts{o.ContextTimeoutEnabled, o.ReadTimeout, o.WriteTimeout}, true
	}
	return Timeouts{}, false
}
