package feedback_test

import (
	"testing"

	"github.com/sluice-dev/sluice/internal/leaktest"
)

// TestMain fails the package's tests if any goroutine outlives them.
func TestMain(m *testing.M) { leaktest.VerifyTestMain(m) }
