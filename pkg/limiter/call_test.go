package limiter

import (
	"testing"

	"github.com/redis/go-redis/v9"
)

// wrapped is a UniversalClient the limiter does not know: its options
// cannot be read, so its deadlines are not trusted.
type wrapped struct{ redis.UniversalClient }

// TestHonoursDeadlines: only a client whose socket deadlines follow the
// context (ContextTimeoutEnabled, timeouts not switched off) is called
// straight through; every other goes through a goroutine of its own.
func TestHonoursDeadlines(t *testing.T) {
	const addr = "127.0.0.1:1" // never dialled
	for _, tc := range []struct {
		name string
		rdb  redis.UniversalClient
		want bool
	}{
		{"client", redis.NewClient(&redis.Options{Addr: addr}), false},
		{"client_ctx", redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true}), true},
		{"client_ctx_no_read_deadline", redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true, ReadTimeout: -2}), false},
		{"client_ctx_no_write_deadline", redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true, WriteTimeout: -2}), false},
		{"cluster", redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{addr}}), false},
		{"cluster_ctx", redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{addr}, ContextTimeoutEnabled: true}), true},
		{"ring", redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": addr}}), false},
		{"ring_ctx", redis.NewRing(&redis.RingOptions{Addrs: map[string]string{"a": addr}, ContextTimeoutEnabled: true}), true},
		{"wrapped_ctx", wrapped{redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})}, false},
	} {
		t.Cleanup(func() { tc.rdb.Close() })
		if got := honoursDeadlines(tc.rdb); got != tc.want {
			t.Errorf("%s: honoursDeadlines = %v, want %v", tc.name, got, tc.want)
		}
	}
}
