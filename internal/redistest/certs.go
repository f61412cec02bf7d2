package redistest

import (
	"context"
	"crypto/x509"
	"testing"

	"github.com/redis/go-redis/v9"
)

// WriteCerts writes into dir a CA (ca.pem) and a certificate for 127.0.0.1
// signed by it (server.pem, server-key.pem), made for the test, and returns
// a pool that trusts the CA: for TLS servers other than Redis too.
func WriteCerts(dir string) (*x509.CertPool, error) { return writeCerts(dir) }

// CutPubSub kills every pub/sub connection of the server rdb talks to
// (CLIENT KILL TYPE pubsub) and takes SUBSCRIBE from the default user, so
// that no client can subscribe again until allow is called (the test's end
// calls it too). It returns how many connections it killed.
func CutPubSub(tb testing.TB, rdb *redis.Client) (killed int64, allow func()) {
	tb.Helper()
	ctx := context.Background()
	acl := func(rule string) error { return rdb.Do(ctx, "ACL", "SETUSER", "default", rule).Err() }
	if err := acl("-subscribe"); err != nil {
		tb.Fatal(err)
	}
	allowed := false
	allow = func() {
		if !allowed {
			allowed = true
			if err := acl("+subscribe"); err != nil {
				tb.Error(err)
			}
		}
	}
	tb.Cleanup(allow)
	n, err := rdb.ClientKillByFilter(ctx, "TYPE", "pubsub").Result()
	if err != nil {
		tb.Fatal(err)
	}
	return n, allow
}
