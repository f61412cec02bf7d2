package limiter

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-dev/sluice/pkg/internal/promutil"
)

// metrics are the pipeline-side series. Names keep the seed's
// rate_coordinator_ prefix so dashboards written for it still work.
type metrics struct {
	scale        *prometheus.GaugeVec     // scale factor in force, per provider
	pressure     *prometheus.GaugeVec     // 0 ok, 1 soft, 2 hard
	acquisitions *prometheus.CounterVec   // by provider and result
	wait         *prometheus.HistogramVec // time Acquire blocked before a grant
	breaker      *prometheus.GaugeVec     // 0 closed, 1 half_open, 2 open
	replicas     *prometheus.GaugeVec     // live replicas seen at the last heartbeat
	paused       *prometheus.GaugeVec     // Acquire calls now waiting for a paused provider to resume
	ruleRefusals *prometheus.CounterVec   // decisions refused by a pacing rule, by provider and rule
	laneCalls    *prometheus.CounterVec   // acquisitions naming a lane, by provider, lane and result
	laneWait     *prometheus.HistogramVec // time Acquire blocked before a grant, by provider and lane
	redisUp      prometheus.Gauge         // 1 while Redis serves every provider, 0 while any is in outage mode
}

var waitBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	r := &promutil.Registrar{Reg: reg}
	m := &metrics{
		scale: r.GaugeVec(prometheus.GaugeOpts{
			Name: "rate_coordinator_scale_factor",
			Help: "Scale factor applied to the provider's base refill rate (0 = paused).",
		}, "provider"),
		pressure: r.GaugeVec(prometheus.GaugeOpts{
			Name: "rate_coordinator_pressure_state",
			Help: "Backpressure level recorded for the provider: 0 ok, 1 soft, 2 hard.",
		}, "provider"),
		acquisitions: r.CounterVec(prometheus.CounterOpts{
			Name: "rate_coordinator_acquisitions_total",
			Help: "Acquire and TryAcquire calls by outcome (ok, probe, rate_limited, rule_limited, paused, cooldown, circuit_open, exceeds_capacity, fail_open, fallback_*, canceled, error).",
		}, "provider", "result"),
		wait: r.HistogramVec(prometheus.HistogramOpts{
			Name:    "rate_coordinator_acquire_wait_seconds",
			Help:    "Time Acquire waited before its tokens were granted.",
			Buckets: waitBuckets,
		}, "provider"),
		breaker: r.GaugeVec(prometheus.GaugeOpts{
			Name: "rate_coordinator_breaker_state",
			Help: "Shared circuit breaker: 0 closed, 1 half_open, 2 open.",
		}, "provider"),
		replicas: r.GaugeVec(prometheus.GaugeOpts{
			Name: "rate_coordinator_live_replicas",
			Help: "Pipeline replicas sharing the provider, as of this replica's last heartbeat.",
		}, "provider"),
		paused: r.GaugeVec(prometheus.GaugeOpts{
			Name: "rate_coordinator_paused_waiters",
			Help: "Acquire calls of this replica waiting for the paused provider (scale 0) to resume.",
		}, "provider"),
		ruleRefusals: r.CounterVec(prometheus.CounterOpts{
			Name: "rate_coordinator_rule_refusals_total",
			Help: "Decisions from Redis refused by a pacing rule, by the rule reported (the one that lets the request pass last); every refusal an Acquire waited out counts.",
		}, "provider", "rule"),
		laneCalls: r.CounterVec(prometheus.CounterOpts{
			Name: "rate_coordinator_lane_acquisitions_total",
			Help: "Acquisitions that named a lane (Request.Lane), by lane and outcome (the results of rate_coordinator_acquisitions_total, where they count too).",
		}, "provider", "lane", "result"),
		laneWait: r.HistogramVec(prometheus.HistogramOpts{
			Name:    "rate_coordinator_lane_acquire_wait_seconds",
			Help:    "Time an AcquireRequest that named a lane waited before its grant, by lane.",
			Buckets: waitBuckets,
		}, "provider", "lane"),
	}
	up := r.GaugeVec(prometheus.GaugeOpts{
		Name: "rate_coordinator_redis_up",
		Help: "1 while Redis serves every provider of this replica, 0 while any provider is in outage mode (acquisitions_total{result=~\"fail_open|fallback_.*|error\"} says which).",
	})
	m.redisUp = up.WithLabelValues()
	return m, r.Err
}

// providerMetrics are one provider's series, looked up once (a label
// lookup costs more than the update) and created at first use, so that a
// provider this process only inspects shows no series.
type providerMetrics struct {
	m        *metrics
	provider string

	once                     sync.Once
	scale, pressure, breaker prometheus.Gauge
	wait                     prometheus.Observer
	results                  sync.Map // result -> prometheus.Counter
	rules                    sync.Map // rule -> prometheus.Counter of its refusals
	lanes                    sync.Map // laneResultKey -> prometheus.Counter
	laneWaits                sync.Map // lane -> prometheus.Observer
}

func (m *metrics) forProvider(provider string) *providerMetrics {
	return &providerMetrics{m: m, provider: provider}
}

func (pm *providerMetrics) init() {
	pm.once.Do(func() {
		p := pm.provider
		pm.scale, pm.pressure, pm.breaker = pm.m.scale.WithLabelValues(p), pm.m.pressure.WithLabelValues(p), pm.m.breaker.WithLabelValues(p)
		pm.wait = pm.m.wait.WithLabelValues(p)
	})
}

// waited records how long an Acquire in lane ("": none) blocked before
// its grant.
func (pm *providerMetrics) waited(lane string, d time.Duration) {
	pm.init()
	pm.wait.Observe(d.Seconds())
	if lane != "" {
		o, ok := pm.laneWaits.Load(lane)
		if !ok {
			o, _ = pm.laneWaits.LoadOrStore(lane, pm.m.laneWait.WithLabelValues(pm.provider, lane))
		}
		o.(prometheus.Observer).Observe(d.Seconds())
	}
}

// laneResultKey is a lane's series in providerMetrics.lanes.
type laneResultKey struct{ lane, result string }

// laneResult counts one acquisition in lane that ended with result.
func (pm *providerMetrics) laneResult(lane, result string) {
	key := laneResultKey{lane, result}
	c, ok := pm.lanes.Load(key)
	if !ok {
		c, _ = pm.lanes.LoadOrStore(key, pm.m.laneCalls.WithLabelValues(pm.provider, lane, result))
	}
	c.(prometheus.Counter).Inc()
}

// result counts one acquisition call that ended with result.
func (pm *providerMetrics) result(result string) {
	inc(&pm.results, pm.m.acquisitions, pm.provider, result)
}

// ruleRefused counts one decision refused by the pacing rule rule.
func (pm *providerMetrics) ruleRefused(rule string) {
	inc(&pm.rules, pm.m.ruleRefusals, pm.provider, rule)
}

// inc adds one to vec's counter for provider and label, cached in cache.
func inc(cache *sync.Map, vec *prometheus.CounterVec, provider, label string) {
	c, ok := cache.Load(label)
	if !ok {
		c, _ = cache.LoadOrStore(label, vec.WithLabelValues(provider, label))
	}
	c.(prometheus.Counter).Inc()
}

// decision records what a decision from Redis says about shared state.
func (pm *providerMetrics) decision(d Decision) {
	pm.init()
	pm.scale.Set(d.Scale)
	if v := d.Level.Rank(); v >= 0 {
		pm.pressure.Set(float64(v))
	}
	if v := d.Breaker.Rank(); v >= 0 {
		pm.breaker.Set(float64(v))
	}
}
