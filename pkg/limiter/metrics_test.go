package limiter_test

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func stringsReader(s string) *strings.Reader { return strings.NewReader(s) }

// gaugeValue reads the value of a gauge with label provider=p, failing if absent.
func gaugeValue(t testing.TB, reg *prometheus.Registry, name, p string) float64 {
	t.Helper()
	v, ok := metricValue(t, reg, name, map[string]string{"provider": p})
	if !ok {
		t.Fatalf("metric %s{provider=%q} not found", name, p)
	}
	return v
}

// metricValue reads a gauge or counter whose labels include want.
func metricValue(t testing.TB, reg *prometheus.Registry, name string, want map[string]string) (float64, bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if have[k] != v {
					continue metrics
				}
			}
			switch {
			case m.Gauge != nil:
				return m.GetGauge().GetValue(), true
			case m.Counter != nil:
				return m.GetCounter().GetValue(), true
			case m.Histogram != nil:
				return float64(m.GetHistogram().GetSampleCount()), true
			}
		}
	}
	return 0, false
}
