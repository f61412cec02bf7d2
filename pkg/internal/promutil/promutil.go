// Package promutil registers collectors on an injected registerer, sharing a
// collector that is already there (several replicas in one process, tests).
package promutil

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Register registers c on reg and returns the collector to use: c itself, or
// the identical collector registered before. A nil reg registers nothing and
// returns c. A conflicting descriptor (same name, other labels or help) is an error.
func Register[T prometheus.Collector](reg prometheus.Registerer, c T) (T, error) {
	if reg == nil {
		return c, nil
	}
	err := reg.Register(c)
	if err == nil {
		return c, nil
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(T); ok {
			return existing, nil
		}
	}
	var zero T
	return zero, fmt.Errorf("register metric: %w", err)
}

// Registrar registers a series of collectors and keeps the first error, so
// that a constructor can register all its metrics and check once.
type Registrar struct {
	Reg prometheus.Registerer
	Err error
}

// GaugeVec creates and registers a gauge vector.
func (r *Registrar) GaugeVec(opts prometheus.GaugeOpts, labels ...string) *prometheus.GaugeVec {
	return add(r, prometheus.NewGaugeVec(opts, labels))
}

// CounterVec creates and registers a counter vector.
func (r *Registrar) CounterVec(opts prometheus.CounterOpts, labels ...string) *prometheus.CounterVec {
	return add(r, prometheus.NewCounterVec(opts, labels))
}

// HistogramVec creates and registers a histogram vector.
func (r *Registrar) HistogramVec(opts prometheus.HistogramOpts, labels ...string) *prometheus.HistogramVec {
	return add(r, prometheus.NewHistogramVec(opts, labels))
}

// Add registers c (a GaugeFunc, say). A collector identical to one already
// registered is not registered again: the first one stays.
func (r *Registrar) Add(c prometheus.Collector) { add(r, c) }

func add[T prometheus.Collector](r *Registrar, c T) T {
	got, err := Register(r.Reg, c)
	if err != nil {
		if r.Err == nil {
			r.Err = err
		}
		return c
	}
	return got
}

// Sum gathers g and returns the sum of the values of every series of the
// named counter, gauge or histogram (its sample count) whose labels include
// want, and whether any matched. For tests and the CLI's status views.
func Sum(g prometheus.Gatherer, name string, want map[string]string) (float64, bool) {
	mfs, err := g.Gather()
	if err != nil {
		return 0, false
	}
	var sum float64
	found := false
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if have[k] != v {
					continue series
				}
			}
			found = true
			switch {
			case m.Gauge != nil:
				sum += m.GetGauge().GetValue()
			case m.Counter != nil:
				sum += m.GetCounter().GetValue()
			case m.Histogram != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return sum, found
}
