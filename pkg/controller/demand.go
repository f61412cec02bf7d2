package controller

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/pkg/keyspace"
)

// DefaultRateWindow is Options.RateWindow's default.
const DefaultRateWindow = 10 * time.Second

// holdingBack is the mean scale under which the loop holds demand back.
// While it does, and every writer's queue holds a backlog (busyFill), the
// writers' throughput is what they can write. A held-back scale alone is
// not enough: right after writers were added the queues are empty while
// the policy still raises the scale.
const holdingBack = 0.98

// minScale bounds the scale the demand is divided by: a paused budget
// (scale 0) says nothing about how much the sources want, so the demand
// reads as at most 1/minScale times what got through.
const minScale = 0.05

// demandSample is what the controller read of a stream at one instant.
type demandSample struct {
	at      time.Time
	added   int64   // entries ever appended (the group's entries-read plus its lag)
	read    int64   // entries the group ever read (XINFO GROUPS entries-read)
	scale   float64 // the lowest scale in force of the steered providers
	writers int     // consumers of the group whose coordinator reports
	busy    bool    // every live coordinator's last report had a backlog (fill at least busyFill)
}

// busyFill is the fill of a coordinator's queue from which its workers
// never wait for items: it holds more than a batch for every worker.
const busyFill = 0.1

// reading is what the controller measures of a write stream over its rate
// window: how much the sources would append if the budget were not held
// back, what one writer writes when it is busy, and so how many writers
// that demand needs.
type reading struct {
	// Appended and Written are the stream's rates over the window, items/s:
	// appended by the pipelines, read by the coordinators' group.
	Appended, Written float64
	// Scale is the mean scale in force over the window; Writers the mean
	// count of live coordinators.
	Scale, Writers float64
	// Rate is the demand, items/s: Appended ÷ Scale (Scale at least 0.05),
	// what the sources would append at the full budget.
	Rate float64
	// PerWriter is one busy writer's throughput, items/s: Written ÷
	// Writers, measured while the loop held demand back (Scale < 0.98) and
	// every live coordinator reported a queue at least 10% full (its
	// workers never wait for items) over the whole window, and
	// kept until the next such measurement; before the first, the highest
	// seen (an idle writer writes less than it can: a lower bound). 0 until
	// anything was written.
	PerWriter float64
	// Needed is Rate ÷ PerWriter: the writers that carry the demand at the
	// full budget, as a fraction; 0 while PerWriter is unknown.
	Needed float64
}

// demandMeter turns the samples of one stream into its reading; only Run's
// goroutine touches it.
type demandMeter struct {
	window    time.Duration
	samples   []demandSample
	perWriter float64 // the last busy measurement, or the highest seen before one
	busy      bool    // perWriter was measured busy
}

// add records a sample and returns the reading over the window, ok false
// while the samples span less than half the window (the first read, or
// after the stream's counters went back: a stream deleted, a group made
// again).
func (m *demandMeter) add(s demandSample) (reading, bool) {
	if n := len(m.samples); n > 0 {
		last := m.samples[n-1]
		if s.added < last.added || s.read < last.read || !s.at.After(last.at) {
			m.samples = m.samples[:0]
		}
	}
	m.samples = append(m.samples, s)
	// Keep one sample at or before the window's start, so the window is whole.
	cut := 0
	for cut+1 < len(m.samples) && !m.samples[cut+1].at.After(s.at.Add(-m.window)) {
		cut++
	}
	m.samples = append(m.samples[:0], m.samples[cut:]...)
	first := m.samples[0]
	span := s.at.Sub(first.at).Seconds()
	if len(m.samples) < 2 || span < m.window.Seconds()/2 {
		return reading{}, false
	}
	var d reading
	busy := true
	for _, x := range m.samples {
		busy = busy && x.busy
	}
	// Time-weighted means: each interval at the values read at its start.
	for i := 1; i < len(m.samples); i++ {
		dt := m.samples[i].at.Sub(m.samples[i-1].at).Seconds()
		d.Scale += m.samples[i-1].scale * dt
		d.Writers += float64(m.samples[i].writers) * dt // who read the entries up to sample i
	}
	d.Scale /= span
	d.Writers /= span
	d.Appended = float64(s.added-first.added) / span
	d.Written = float64(s.read-first.read) / span
	d.Rate = d.Appended / max(d.Scale, minScale)
	if d.Writers > 0 {
		w := d.Written / d.Writers
		switch {
		case busy && d.Scale < holdingBack:
			m.perWriter, m.busy = w, true
		case !m.busy:
			m.perWriter = max(m.perWriter, w)
		}
	}
	d.PerWriter = m.perWriter
	if d.PerWriter > 0 {
		d.Needed = d.Rate / d.PerWriter
	}
	return d, true
}

// scale reads the lowest scale in force of the providers the handler
// steers (1 for one that never had a scale set).
func (c *Controller) scale(ctx context.Context) (float64, error) {
	gctx, cancel, err := c.guard(ctx)
	if err != nil {
		return 0, err
	}
	defer cancel()
	low := 1.0
	for _, p := range c.o.Feedback.Providers {
		v, err := c.rdb.HGet(gctx, keyspace.Prefix(c.o.Prefix).Provider(p).Scale, "scale").Float64()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return 0, err
		}
		low = min(low, v)
	}
	return low, nil
}

// measure adds what was read of w to its demand and sets its gauges;
// busy says whether every live coordinator reported a queue at least
// busyFill full.
func (c *Controller) measure(w *watched, b backlog, scale float64, busy bool) {
	d, ok := w.demand.add(demandSample{at: time.Now(), added: b.read + b.lag, read: b.read, scale: scale, writers: b.alive, busy: busy})
	if !ok {
		return
	}
	c.m.demand.WithLabelValues(c.o.ID, w.Name).Set(d.Rate)
	if d.PerWriter > 0 {
		c.m.perWriter.WithLabelValues(c.o.ID, w.Name).Set(d.PerWriter)
		c.m.needed.WithLabelValues(c.o.ID, w.Name).Set(d.Needed)
	}
}
