package feedback

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-dev/sluice/pkg/internal/promutil"
)

type metrics struct {
	events      *prometheus.CounterVec // accepted events by level
	ignored     *prometheus.CounterVec // by reason: stale, duplicate, invalid
	target      *prometheus.GaugeVec   // scale the reports call for, per provider
	applied     *prometheus.GaugeVec   // scale set (or shadowed), per provider
	level       *prometheus.GaugeVec   // level set, per provider: 0 ok, 1 soft, 2 hard
	adjustments *prometheus.CounterVec // scale changes by provider and direction
	live        prometheus.Gauge       // live coordinators
	expired     prometheus.Counter     // coordinators forgotten after their TTL
	errors      prometheus.Counter     // failed calls to the rate coordinator
	shadow      prometheus.Gauge       // 1 in shadow mode
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	r := &promutil.Registrar{Reg: reg}
	m := &metrics{
		events: r.CounterVec(prometheus.CounterOpts{
			Name: "feedback_events_total", Help: "Pressure events accepted by the feedback handler, by level.",
		}, "level"),
		ignored: r.CounterVec(prometheus.CounterOpts{
			Name: "feedback_events_ignored_total", Help: "Pressure events ignored: stale (older seq), duplicate (same seq), invalid.",
		}, "reason"),
		target: r.GaugeVec(prometheus.GaugeOpts{
			Name: "feedback_scale_target", Help: "Scale the live coordinators' pressure calls for, before dwell and ramp.",
		}, "provider"),
		applied: r.GaugeVec(prometheus.GaugeOpts{
			Name: "feedback_scale_applied", Help: "The shared scale in force at the last evaluation, whoever set it (in shadow mode: the scale this handler would have set).",
		}, "provider"),
		level: r.GaugeVec(prometheus.GaugeOpts{
			Name: "feedback_pressure_level", Help: "Combined pressure level: 0 ok, 1 soft, 2 hard.",
		}, "provider"),
		adjustments: r.CounterVec(prometheus.CounterOpts{
			Name: "feedback_scale_adjustments_total", Help: "Scale changes made by the handler, by direction (up, down).",
		}, "provider", "direction"),
	}
	gauge := func(name, help string) prometheus.Gauge {
		return r.GaugeVec(prometheus.GaugeOpts{Name: name, Help: help}).WithLabelValues()
	}
	counter := func(name, help string) prometheus.Counter {
		return r.CounterVec(prometheus.CounterOpts{Name: name, Help: help}).WithLabelValues()
	}
	m.live = gauge("feedback_coordinators_live", "Write coordinators whose reports count now.")
	m.expired = counter("feedback_coordinators_expired_total", "Coordinators forgotten after they stopped reporting.")
	m.errors = counter("feedback_errors_total", "Failed calls from the handler to the rate coordinator.")
	m.shadow = gauge("feedback_shadow_mode", "1 when the handler only reports the scale it would set.")
	return m, r.Err
}
