// Package leaktest checks that no goroutine outlives a package's tests,
// with go-redis's own housekeeping (which ends by itself) aside.
package leaktest

import (
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// VerifyTestMain runs m and fails it if goroutines are left over. A
// goroutine that ends within 10 s of the tests (a connection closing on a
// loaded machine) is not a leak; one still there after is.
func VerifyTestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		var err error
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			err = goleak.Find(
				goleak.IgnoreTopFunction("github.com/redis/go-redis/v9/maintnotifications.(*CircuitBreakerManager).cleanupLoop"),
				goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial"))
			if err == nil || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "leaktest: goroutines outlived the tests by 10 s: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}
