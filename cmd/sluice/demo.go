package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/urfave/cli/v2"

	"github.com/sluice-dev/sluice/internal/sim"
	"github.com/sluice-dev/sluice/pkg/feedback"
)

// demoArgs holds everything a demo run needs, independently of the CLI.
type demoArgs struct {
	Duration, Interval, Dwell time.Duration
	Replicas, Queue           int
	Rate, SinkRate, MaxRise   float64
	Burst                     int64
	Policy                    string
	OpenLoop, JSON            bool
	Report                    string
}

func (a *app) demoCmd() *cli.Command {
	var d demoArgs
	return &cli.Command{
		Name:  "demo",
		Usage: "run the whole loop for a while on an embedded Redis and report",
		Description: `Starts an embedded Redis (unless --redis or --redis-cluster is given), then
runs --replicas pipeline replicas, each with its own Redis client, pulling
market-data ticks from a simulated provider whose pacing limit is --rate, into
a write coordinator whose sink writes only --sink-rate items per second. The
store's pressure flows back through Redis to every replica's feedback handler.
Prints a line per --interval and a summary; --open-loop (or
feedback.enable_feedback=false) runs the same without feedback, for
comparison. feedback.policy, .dwell and .max_rise apply unless the flags of
the same name are given. With a real Redis the keys use the prefix
sluice-demo unless --prefix is given.

Examples:
   sluice demo
   sluice demo --open-loop
   sluice demo --duration 1m --replicas 5 --report demo.html
   sluice demo --policy step --sink-rate 120      # the seed's mapping, for comparison
   sluice --redis redis://localhost:6379/0 demo --json`,
		Flags: []cli.Flag{
			durationFlag("duration", "how long to run", &d.Duration, 20*time.Second, closed(time.Second, 24*time.Hour)),
			durationFlag("interval", "time between progress lines", &d.Interval, time.Second, closed(100*time.Millisecond, 24*time.Hour)),
			numberFlag("replicas", "pipeline replicas", &d.Replicas, 3, closed(1, 64)),
			numberFlag("rate", "the provider's pacing limit, requests/s (the budget)", &d.Rate, 600, above(0, 100000.0)),
			numberFlag("burst", "the budget's burst", &d.Burst, 20, closed[int64](1, 1e9)),
			numberFlag("sink-rate", "items/s the store can write", &d.SinkRate, 300, above(0, 100000.0)),
			numberFlag("queue", "the write coordinator's queue capacity", &d.Queue, 1000, closed(10, 10000000)),
			&cli.StringFlag{Name: "policy", Value: "pi", Usage: "pi[:setpoint=0.5,kp=..,ki=..,rise=..], step[:ok=1,soft=0.5,hard=0] or proportional[:start=..,stop=..,floor=..]", Destination: &d.Policy},
			durationFlag("dwell", "time the scale stays unchanged before it may rise (0: the policy's, pi none, step and proportional 5s)", &d.Dwell, 0, closed(0, 24*time.Hour)),
			numberFlag("max-rise", "soft start, largest rise per step (0: the policy's, 1)", &d.MaxRise, 0, closed(0, 1.0)),
			&cli.BoolFlag{Name: "open-loop", Usage: "no feedback: the budget never follows the store", Destination: &d.OpenLoop},
			&cli.StringFlag{Name: "report", Usage: "write a self-contained HTML report with charts to this file", Destination: &d.Report},
			&cli.BoolFlag{Name: "json", Usage: "print only the summary, as JSON", Destination: &d.JSON},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usagef("demo takes no arguments, got %q", c.Args().First())
			}
			if d.Report != "" {
				if err := checkWritable("report", d.Report); err != nil {
					return err
				}
			}
			cfg, err := a.config(c, nil)
			if err != nil {
				return err
			}
			log := a.logger(cfg) // warnings only, unless configured: the progress lines are the output
			// The feedback settings apply unless a flag says otherwise.
			d.OpenLoop = d.OpenLoop || !cfg.Feedback.Enabled
			configured := func(flag, key string) bool { return !c.IsSet(flag) && cfg.Source(key) != "default" }
			if configured("policy", "feedback.policy") {
				d.Policy = setting(cfg, "feedback.policy")
			}
			if configured("dwell", "feedback.dwell") {
				d.Dwell = cfg.Feedback.Options.Rise.Dwell
			}
			if configured("max-rise", "feedback.max_rise") {
				d.MaxRise = cfg.Feedback.Options.Rise.MaxStep
			}
			if _, err := feedback.ParsePolicy(d.Policy); err != nil {
				return usagef("demo: --policy: %v", err)
			}
			where := "embedded Redis"
			var newClient func() redis.UniversalClient
			prefix := cfg.Redis.Prefix
			if c.IsSet("redis") || c.IsSet("redis-cluster") {
				rdb, err := connect(c.Context, cfg)
				if err != nil {
					return err
				}
				rdb.Close()
				// The URL parsed just now: building more clients from it cannot fail.
				newClient = func() redis.UniversalClient { c, _ := cfg.RedisClient(); return c }
				if !c.IsSet("prefix") {
					prefix = "sluice-demo"
				}
				where = "Redis at " + cfg.RedisURL()
			} else {
				mr, err := miniredis.Run()
				if err != nil {
					return fmt.Errorf("demo: embedded Redis: %w", err)
				}
				defer mr.Close()
				newClient = func() redis.UniversalClient { return redis.NewClient(&redis.Options{Addr: mr.Addr()}) }
			}
			res, err := runDemo(c.Context, d, newClient, prefix, where, a.stdout, log)
			if err != nil {
				return err
			}
			if d.Report != "" {
				if err := writeReport(d.Report, res, d); err != nil {
					return err
				}
				if !d.JSON {
					fmt.Fprintf(a.stdout, "report written to %s\n", d.Report)
				}
			}
			return nil
		},
	}
}

// demoSummary is the JSON form of a demo's result.
type demoSummary struct {
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

// runDemo runs the loop and prints progress and the summary to w. The
// command's flags have checked d's ranges.
func runDemo(ctx context.Context, d demoArgs, newClient func() redis.UniversalClient, prefix, where string, w io.Writer, log *slog.Logger) (sim.Result, error) {
	policy, err := feedback.ParsePolicy(d.Policy) // checked by the command
	if err != nil {
		return sim.Result{}, usagef("demo: --policy: %v", err)
	}
	loop := "feedback on (" + d.Policy + " policy)"
	if d.OpenLoop {
		loop = "feedback off (open loop)"
	}
	if !d.JSON {
		fmt.Fprintf(w, "sluice demo: %d replicas pull ticks from provider %q (pacing limit %g/s, burst %d)\n", d.Replicas, "ibkr", d.Rate, d.Burst)
		fmt.Fprintf(w, "into a store that writes %g/s (queue %d); %s; %s; %v\n\n", d.SinkRate, d.Queue, loop, where, d.Duration)
		fmt.Fprintf(w, "%6s  %10s  %-22s  %5s  %-5s  %6s  %8s\n", "t", "admitted/s", "per replica", "scale", "level", "queue", "written")
	}
	res, err := sim.Run(ctx, sim.Config{
		NewClient: newClient, Prefix: prefix, Provider: "ibkr",
		Rate: d.Rate, Burst: d.Burst, Replicas: d.Replicas, SinkRate: d.SinkRate, QueueCapacity: d.Queue,
		Feedback: !d.OpenLoop, Policy: policy, Dwell: d.Dwell, MaxRise: d.MaxRise,
		Duration: d.Duration, Interval: d.Interval, Logger: log,
		OnSample: func(s sim.Sample) {
			if d.JSON {
				return
			}
			per := make([]string, len(s.PerReplica))
			for i, r := range s.PerReplica {
				per[i] = fmt.Sprintf("%.0f", r)
			}
			fmt.Fprintf(w, "%6s  %10.1f  %-22s  %5.2f  %-5s  %6d  %8d\n", s.T.Round(time.Second), s.Admitted,
				truncate(strings.Join(per, "/"), 22), s.Scale, s.Level, s.QueueDepth, s.Written)
		},
	})
	if err != nil {
		return res, err
	}
	sum := demoSummary{
		Feedback: !d.OpenLoop, DurationSec: d.Duration.Seconds(), Replicas: d.Replicas, Rate: d.Rate, SinkRate: d.SinkRate,
		Fetched: res.Fetched, Written: res.Written, Lost: res.Lost, MaxQueueFill: res.MaxQueueFill,
		LevelChanges: res.LevelChanges, LevelChangesPerM: res.LevelChangesPerM, SubmitsBlocked: res.SubmitsBlocked,
		Utilisation: res.Utilisation, PacingViolations: res.PacingViolations,
	}
	if d.JSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return res, enc.Encode(sum)
	}
	fmt.Fprintf(w, "\nsummary (%s):\n", loop)
	fmt.Fprintf(w, "  produced %d, written %d, lost %d\n", sum.Fetched, sum.Written, sum.Lost)
	fmt.Fprintf(w, "  max queue fill %.0f%%, %d level changes (%.1f/min), %d submits blocked on a full queue\n",
		100*sum.MaxQueueFill, sum.LevelChanges, sum.LevelChangesPerM, sum.SubmitsBlocked)
	fmt.Fprintf(w, "  sink utilisation %.1f%% (steady state), %d pacing violations at the provider\n", 100*sum.Utilisation, sum.PacingViolations)
	return res, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}
