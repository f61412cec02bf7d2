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
	Report                    string // the HTML report's path, or ""

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
}

// Run runs the loop, prints progress and the summary to o.Stdout and
// writes the report.
func Run(ctx context.Context, o Options) error {
	policy, err := feedback.ParsePolicy(o.Policy) // checked by the command
	if err != nil {
		return fmt.Errorf("demo: --policy: %w", err)
	}
	o.header()
	res, err := sim.Run(ctx, sim.Config{
		NewClient: o.NewClient, Prefix: o.Prefix, Provider: "ibkr",
		Rate: o.Rate, Burst: o.Burst, Replicas: o.Replicas, SinkRate: o.SinkRate, QueueCapacity: o.Queue,
		Feedback: !o.OpenLoop, Policy: policy, Dwell: o.Dwell, MaxRise: o.MaxRise,
		Duration: o.Duration, Interval: o.Interval, Logger: o.Logger, OnSample: o.progress,
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
	fmt.Fprintf(w, "%6s  %10s  %-22s  %5s  %-5s  %6s  %8s\n", "t", "admitted/s", "per replica", "scale", "level", "queue", "written")
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
	fmt.Fprintf(o.Stdout, "%6s  %10.1f  %-22s  %5.2f  %-5s  %6d  %8d\n", s.T.Round(time.Second), s.Admitted,
		truncate(strings.Join(per, "/"), 22), s.Scale, s.Level, s.QueueDepth, s.Written)
}

// summary prints the run's summary, as JSON with o.JSON.
func (o Options) summary(res sim.Result) error {
	sum := Summary{
		Feedback: !o.OpenLoop, DurationSec: o.Duration.Seconds(), Replicas: o.Replicas, Rate: o.Rate, SinkRate: o.SinkRate,
		Fetched: res.Fetched, Written: res.Written, Lost: res.Lost, MaxQueueFill: res.MaxQueueFill,
		LevelChanges: res.LevelChanges, LevelChangesPerM: res.LevelChangesPerM, SubmitsBlocked: res.SubmitsBlocked,
		Utilisation: res.Utilisation, PacingViolations: res.PacingViolations,
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
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}
