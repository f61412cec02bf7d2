// Package leaktest checks that no goroutine outlives a package's tests,
// with go-redis's own housekeeping (which ends by itself) aside.
package leaktest

import (
	"testing"

	"go.uber.org/goleak"
)

// VerifyTestMain runs m and fails it if goroutines are left over.
func VerifyTestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("github.com/redis/go-redis/v9/maintnotifications.(*CircuitBreakerManager).cleanupLoop"),
		goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial"))
}
