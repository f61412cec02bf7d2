package clusterreload_test

import (
	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/pkg/clusterreload"
)

// A cluster client built by hand gets the hook once, before the limiter,
// the buses or the stream use it: after a master is killed, the first call
// that fails brings the new slot map.
func ExampleInstall() {
	cc := redis.NewClusterClient(&redis.ClusterOptions{
		Addrs:                 []string{"redis-0:6379", "redis-1:6379", "redis-2:6379"},
		ContextTimeoutEnabled: true, // each round trip ends at its context's deadline
	})
	defer cc.Close()
	clusterreload.Install(cc)
	// limiter.New(cc, …), redisbus.NewSubscriber(cc, …), redisstream.NewConsumer(cc, …)
}
