package limiter_test

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-dev/sluice/internal/promutil"
)

func stringsReader(s string) *strings.Reader { return strings.NewReader(s) }

// gaugeValue reads the series name{provider=p}, failing if absent.
func gaugeValue(t testing.TB, reg *prometheus.Registry, name, p string) float64 {
	t.Helper()
	v, ok := promutil.Sum(reg, name, map[string]string{"provider": p})
	if !ok {
		t.Fatalf("metric %s{provider=%q} not found", name, p)
	}
	return v
}
