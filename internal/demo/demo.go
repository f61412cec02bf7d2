// Package demo runs `sluice demo`: the whole loop of internal/sim for a
// while, with a progress line per interval, a summary (text or JSON) and,
// if asked, a self-contained HTML report with charts.
package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/internal/sim"
	"github.com/sluice-dev/sluice/pkg/feedback"
)

// Options holds everything a demo run needs, independently of the CLI; the
// command has checked the ranges and the policy.
type Options struct {
	Duration, Interval, Dwell time.Duration
	Replicas, Queue           int
	Rate, SinkRate, MaxRise   float64
	Burst                     int64
	Policy                    string
	OpenLoop, JSON            bool
	// Lanes runs live requests beside the pull, which becomes a backfill
	// from a third of the run on (sim.Lanes).
	Lanes  bool
	Report string // the HTML report's path, or ""

	// NewClient returns a new client of the Redis the run uses, Where
	// says which (for people), Prefix is its keys' prefix.
	NewClient     func() redis.UniversalClient
	Prefix, Where string
	Stdout        io.Writer
	Logger        *slog.Logger
}

// Summary is the JSON form of a demo's result.
type Summary struct {
	Feedback         bool    `json:"feedback"`
	DurationSec      float64 `json:"duration_sec"`
	Replicas         int     `json:"replicas"`
	Rate             float64 `json:"rate"`
	SinkRate         float64 `json:"sink_rate"`
	Fetched          int64   `json:"fetched"`
	Written          int64   `json:"written"`
	Lost             int64   `json:"lost"`
	MaxQueueFill     float64 `json:"max_queue_fill"`
	LevelChanges     int64   `json:"level_changes"`
	LevelChangesPerM float64 `json:"level_changes_per_min"`
	SubmitsBlocked   int64   `json:"submits_blocked"`
	Utilisation      float64 `json:"sink_utilisation"`
	PacingViolations int64   `json:"pacing_violations"`
	// With --lanes: the median of the intervals' live p99 waits (ms),
	// before the backfill and after it started.
	LiveP99Before *float64 `json:"live_p99_ms_before_backfill,omitempty"`
	LiveP99After  *float64 `json:"live_p99_ms_with_backfill,omitempty"`
}

// Run runs the loop, prints progress and the summary to o.Stdout and
// writes the report.
func Run(ctx context.Context, o Options) error {
	policy, err := feedback.ParsePolicy(o.Policy) // checked by the command
	if err != nil {
		return fmt.Errorf("demo: --policy: %w", err)
	}
	o.header()
	var lanes *sim.Lanes
	if o.Lanes {
		lanes = &sim.Lanes{}
	}
	res, err := sim.Run(ctx, sim.Config{
		NewClient: o.NewClient, Prefix: o.Prefix, Provider: "ibkr",
		Rate: o.Rate, Burst: o.Burst, Replicas: o.Replicas, SinkRate: o.SinkRate, QueueCapacity: o.Queue,
		Feedback: !o.OpenLoop, Policy: policy, Dwell: o.Dwell, MaxRise: o.MaxRise,
		Duration: o.Duration, Interval: o.Interval, Logger: o.Logger, OnSample: o.progress, Lanes: lanes,
	})
	if err != nil {
		return err
	}
	if err := o.summary(res); err != nil {
		return err
	}
	return o.report(res)
}

// header says what the run is and heads the progress lines, unless the
// output is JSON.
func (o Options) header() {
	if o.JSON {
		return
	}
	w := o.Stdout
	fmt.Fprintf(w, "sluice demo: %d replicas pull ticks from provider %q (pacing limit %g/s, burst %d)\n", o.Replicas, "ibkr", o.Rate, o.Burst)
	fmt.Fprintf(w, "into a store that writes %g/s (queue %d); %s; %s; %v\n\n", o.SinkRate, o.Queue, o.loop(), o.Where, o.Duration)
	if o.Lanes {
		fmt.Fprintf(w, "lanes: live requests (20%% of the budget, priority 1) throughout; the pull becomes a backfill from %v\n\n", o.Duration/3)
	}
	fmt.Fprintf(w, "%6s  %10s  %-22s  %5s  %-5s  %6s  %8s%s\n", "t", "admitted/s", "per replica", "scale", "level", "queue", "written", o.laneColumns())
}

// laneColumns heads the progress lines' lane columns, with --lanes.
func (o Options) laneColumns() string {
	if !o.Lanes {
		return ""
	}
	return fmt.Sprintf("  %7s  %12s", "live/s", "live p99 ms")
}

// report writes the HTML report if one is asked for, and says where.
func (o Options) report(res sim.Result) error {
	if o.Report == "" {
		return nil
	}
	if err := WriteReport(o.Report, res, o); err != nil {
		return err
	}
	if !o.JSON {
		fmt.Fprintf(o.Stdout, "report written to %s\n", o.Report)
	}
	return nil
}

// loop says whether the loop is closed, and by which policy.
func (o Options) loop() string {
	if o.OpenLoop {
		return "feedback off (open loop)"
	}
	return "feedback on (" + o.Policy + " policy)"
}

// progress prints the progress line of a sample, unless the output is
// JSON.
func (o Options) progress(s sim.Sample) {
	if o.JSON {
		return
	}
	per := make([]string, len(s.PerReplica))
	for i, r := range s.PerReplica {
		per[i] = fmt.Sprintf("%.0f", r)
	}
	lanes := ""
	if o.Lanes {
		lanes = fmt.Sprintf("  %7.1f  %12.2f", s.Live, s.LiveP99)
	}
	fmt.Fprintf(o.Stdout, "%6s  %10.1f  %-22s  %5.2f  %-5s  %6d  %8d%s\n", s.T.Round(time.Second), s.Admitted,
		truncate(strings.Join(per, "/"), 22), s.Scale, s.Level, s.QueueDepth, s.Written, lanes)
}

// summary prints the run's summary, as JSON with o.JSON.
func (o Options) summary(res sim.Result) error {
	sum := Summary{
		Feedback: !o.OpenLoop, DurationSec: o.Duration.Seconds(), Replicas: o.Replicas, Rate: o.Rate, SinkRate: o.SinkRate,
		Fetched: res.Fetched, Written: res.Written, Lost: res.Lost, MaxQueueFill: res.MaxQueueFill,
		LevelChanges: res.LevelChanges, LevelChangesPerM: res.LevelChangesPerM, SubmitsBlocked: res.SubmitsBlocked,
		Utilisation: res.Utilisation, PacingViolations: res.PacingViolations,
	}
	if o.Lanes {
		before, after := liveP99s(res, o.Duration/3)
		sum.LiveP99Before, sum.LiveP99After = &before, &after
	}
	w := o.Stdout
	if o.JSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(sum)
	}
	fmt.Fprintf(w, "\nsummary (%s):\n", o.loop())
	fmt.Fprintf(w, "  produced %d, written %d, lost %d\n", sum.Fetched, sum.Written, sum.Lost)
	fmt.Fprintf(w, "  max queue fill %.0f%%, %d level changes (%.1f/min), %d submits blocked on a full queue\n",
		100*sum.MaxQueueFill, sum.LevelChanges, sum.LevelChangesPerM, sum.SubmitsBlocked)
	fmt.Fprintf(w, "  sink utilisation %.1f%% (steady state), %d pacing violations at the provider\n", 100*sum.Utilisation, sum.PacingViolations)
	if o.Lanes {
		fmt.Fprintf(w, "  live p99 wait (median of the intervals'): %.2f ms before the backfill, %.2f ms with it\n", *sum.LiveP99Before, *sum.LiveP99After)
	}
	return nil
}

// liveP99s are the medians of the intervals' live p99 waits before the
// backfill started at from and after (the interval it started in left out).
func liveP99s(res sim.Result, from time.Duration) (before, after float64) {
	var b, a []float64
	for i, s := range res.Samples {
		switch {
		case s.T <= from:
			b = append(b, s.LiveP99)
		case i > 0 && res.Samples[i-1].T > from:
			a = append(a, s.LiveP99)
		}
	}
	return median(b), median(a)
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}
