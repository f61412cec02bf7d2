package main

import (
	"fmt"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/urfave/cli/v2"

	"github.com/sluice-dev/sluice/internal/demo"
	"github.com/sluice-dev/sluice/pkg/config"
	"github.com/sluice-dev/sluice/pkg/feedback"
)

func (a *app) demoCmd() *cli.Command {
	var d demo.Options
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
   sluice demo --lanes --report lanes.html        # live requests first, a backfill mid-run
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
			durationFlag("dwell", "step and proportional: time the scale stays before it may rise", &d.Dwell, time.Second, above(0, 24*time.Hour)),
			numberFlag("max-rise", "step and proportional: soft start, largest rise per step (0 = jump)", &d.MaxRise, 0, closed(0, 1.0)),
			&cli.BoolFlag{Name: "open-loop", Usage: "no feedback: the budget never follows the store", Destination: &d.OpenLoop},
			&cli.BoolFlag{Name: "lanes", Usage: "lanes (docs/lanes.md): live requests (20% of the budget, priority 1) throughout, the pull a backfill from a third of the run", Destination: &d.Lanes},
			&cli.StringFlag{Name: "report", Usage: "write a self-contained HTML report with charts to this file", Destination: &d.Report},
			&cli.BoolFlag{Name: "json", Usage: "print only the summary, as JSON", Destination: &d.JSON},
		},
		Action: func(c *cli.Context) error { return a.demo(c, d) },
	}
}

// demo checks the command line, applies the feedback settings the flags
// leave open, picks the Redis and runs.
func (a *app) demo(c *cli.Context, d demo.Options) error {
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
	d.Logger = a.logger(cfg) // warnings only, unless configured: the progress lines are the output
	demoSettings(c, cfg, &d)
	if _, err := feedback.ParsePolicy(d.Policy); err != nil {
		return usagef("demo: --policy: %v", err)
	}
	closeRedis, err := demoRedis(c, cfg, &d)
	if err != nil {
		return err
	}
	defer closeRedis()
	d.Stdout = a.stdout
	return demo.Run(c.Context, d)
}

// demoSettings applies the feedback settings unless a flag says otherwise.
func demoSettings(c *cli.Context, cfg *config.Settings, d *demo.Options) {
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
}

// demoRedis sets the Redis the demo runs on: the configured one if
// --redis or --redis-cluster is given (keys under sluice-demo unless
// --prefix is), else an embedded one that closeRedis stops.
func demoRedis(c *cli.Context, cfg *config.Settings, d *demo.Options) (closeRedis func(), err error) {
	d.Prefix = cfg.Redis.Prefix
	if !c.IsSet("redis") && !c.IsSet("redis-cluster") {
		mr, err := miniredis.Run()
		if err != nil {
			return nil, fmt.Errorf("demo: embedded Redis: %w", err)
		}
		d.Where = "embedded Redis"
		d.NewClient = func() redis.UniversalClient { return redis.NewClient(&redis.Options{Addr: mr.Addr()}) }
		return mr.Close, nil
	}
	rdb, err := connect(c.Context, cfg)
	if err != nil {
		return nil, err
	}
	rdb.Close()
	// The URL parsed just now: building more clients from it cannot fail.
	d.NewClient = func() redis.UniversalClient { c, _ := cfg.RedisClient(); return c }
	if !c.IsSet("prefix") {
		d.Prefix = "sluice-demo"
	}
	d.Where = "Redis at " + cfg.RedisURL()
	return func() {}, nil
}
