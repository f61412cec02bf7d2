package redistest_test

import (
	"testing"

	"github.com/sluice-dev/sluice/internal/leaktest"
)

func TestMain(m *testing.M) { leaktest.VerifyTestMain(m) }
