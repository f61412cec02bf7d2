package store

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-dev/sluice/pkg/internal/promutil"
	"github.com/sluice-dev/sluice/pkg/state"
)

// metrics of one coordinator: the seed's names exactly
// (coordinator_queue_depth, coordinator_backpressure_ok|soft|hard), all
// labelled coordinator_id.
type metrics struct {
	depth                              prometheus.Gauge
	levels                             map[state.Level]prometheus.Gauge
	written, writeErrors, deadLettered prometheus.Counter
	blocked, publishErrors             prometheus.Counter
	batch                              prometheus.Observer
	transitions                        *prometheus.CounterVec
	id                                 string
}

func newMetrics(reg prometheus.Registerer, id string) (*metrics, error) {
	r := &promutil.Registrar{Reg: reg}
	gauge := func(name, help string) prometheus.Gauge {
		return r.GaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, "coordinator_id").WithLabelValues(id)
	}
	counter := func(name, help string) prometheus.Counter {
		return r.CounterVec(prometheus.CounterOpts{Name: name, Help: help}, "coordinator_id").WithLabelValues(id)
	}
	m := &metrics{
		id:    id,
		depth: gauge("coordinator_queue_depth", "Items waiting in the write coordinator's own queue (a stream's lag is coordinator_stream_lag)."),
		levels: map[state.Level]prometheus.Gauge{
			state.OK:   gauge("coordinator_backpressure_ok", "1 while the coordinator's backpressure level is ok."),
			state.Soft: gauge("coordinator_backpressure_soft", "1 while the coordinator's backpressure level is soft."),
			state.Hard: gauge("coordinator_backpressure_hard", "1 while the coordinator's backpressure level is hard."),
		},
		written:       counter("coordinator_items_written_total", "Items written to the sink."),
		writeErrors:   counter("coordinator_write_errors_total", "Failed sink writes (each retry counts)."),
		deadLettered:  counter("coordinator_dead_letter_items_total", "Items that still failed after the retries."),
		blocked:       counter("coordinator_submits_blocked_total", "Submit calls that found the queue full and waited."),
		publishErrors: counter("coordinator_publish_errors_total", "Pressure events that could not be published."),
		batch: r.HistogramVec(prometheus.HistogramOpts{
			Name: "coordinator_batch_duration_seconds", Help: "Time to write one batch, retries included.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, "coordinator_id").WithLabelValues(id),
		transitions: r.CounterVec(prometheus.CounterOpts{
			Name: "coordinator_level_transitions_total", Help: "Backpressure level changes, by from and to.",
		}, "coordinator_id", "from", "to"),
	}
	return m, r.Err
}

func (m *metrics) setLevel(l state.Level) {
	for level, g := range m.levels {
		if level == l {
			g.Set(1)
		} else {
			g.Set(0)
		}
	}
}

func (m *metrics) transition(from, to state.Level) {
	m.transitions.WithLabelValues(m.id, string(from), string(to)).Inc()
	m.setLevel(to)
}
