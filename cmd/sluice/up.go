package main

import (
	"errors"
	"os"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sluice-dev/sluice/internal/childproc"
	"github.com/sluice-dev/sluice/internal/sim"
	"github.com/sluice-dev/sluice/internal/up"
)

func (a *app) upCmd() *cli.Command {
	var u up.Options
	return &cli.Command{
		Name:  "up",
		Usage: "run the distributed loop on this machine: redis, a controller, coordinators and pipelines as processes",
		Description: `Starts redis-server (the installed one, else an embedded Redis), one
controller, --coordinators coordinators writing to JSON-lines files at
--sink-rate items/s each, and --pipelines pipeline replicas sharing the
budget of provider ibkr (--rate/s, burst --burst), each a separate sluice
process, for --duration. Prints a line per second and a summary with
produced, written, lost and duplicated, then stops every process it started.
Settings in the environment (MDP_FB_*, SLUICE_*) reach every process:
MDP_FB_ENABLE_FEEDBACK=false sluice up runs the same with the loop open.

--scenario plays a case of the feedback matrix of docs/feedback.md (2x, 5x,
10x, sink/3, burst, two-stores: the base rate 600/s, queues of 1000, batches
of 50, sink rates and demand changed mid-run as the case says) and reports
what the table reports: max fill, sink use after 10 s, level changes a
minute, how long the admitted rate took to come within 10% of the sink rate
after each change, lost items, the largest rise of the scale. --json prints
that summary as JSON on stdout, and the progress on stderr.

Examples:
   sluice up
   sluice up --duration 1m --pipelines 5 --coordinators 3 --sink-rate 200
   MDP_FB_POLICY=step sluice up --keep --dir /tmp/sluice-up
   sluice up --scenario sink/3 --json`,
		Flags: []cli.Flag{
			durationFlag("duration", "how long the pipelines run", &u.Duration, 20*time.Second, closed(time.Second, 24*time.Hour)),
			numberFlag("pipelines", "pipeline replicas", &u.Pipelines, 3, closed(1, 32)),
			numberFlag("coordinators", "write coordinators", &u.Coordinators, 2, closed(1, 16)),
			numberFlag("rate", "the provider's budget, requests/s", &u.Rate, 600, above(0, 100000.0)),
			numberFlag("burst", "the budget's burst", &u.Burst, 20, closed(1, 1000000)),
			numberFlag("sink-rate", "items/s each coordinator's store writes", &u.SinkRate, 150, above(0, 100000.0)),
			&cli.StringFlag{Name: "dir", Usage: "where the logs and the written items go (default: a temporary directory, removed)", Destination: &u.Dir},
			&cli.BoolFlag{Name: "keep", Usage: "keep --dir's files", Destination: &u.Keep},
			&cli.StringFlag{Name: "scenario", Usage: "a case of the feedback matrix: 2x, 5x, 10x, sink/3, burst, two-stores", Destination: &u.Scenario},
			&cli.BoolFlag{Name: "json", Usage: "print the summary as JSON on stdout (the progress lines go to stderr)", Destination: &u.JSON},
		},
		Action: func(c *cli.Context) error { return a.up(c, u) },
	}
}

// up checks the command line, reads the settings the processes share and
// runs; an interrupted run exits 130.
func (a *app) up(c *cli.Context, u up.Options) error {
	if c.NArg() > 0 {
		return usagef("up takes no arguments, got %q", c.Args().First())
	}
	if u.Dir != "" {
		if err := os.MkdirAll(u.Dir, 0o755); err != nil {
			return usagef("up: --dir=%s: %v", u.Dir, errors.Unwrap(err))
		}
	}
	if u.Scenario != "" {
		cs, err := sim.FindCase(u.Scenario)
		if err != nil {
			return usagef("up: --scenario: %v", err)
		}
		if !c.IsSet("duration") {
			u.Duration = cs.Duration
		}
	}
	cfg, err := a.config(c, nil)
	if err != nil {
		return err
	}
	u.Policy, u.Feedback = setting(cfg, "feedback.policy"), cfg.Feedback.Enabled
	u.Env, u.Stdout, u.Stderr = a.environ, a.stdout, a.stderr
	if path := c.String("config"); path != "" { // the children read the same file
		abs, err := filepath.Abs(path)
		if err != nil {
			return err
		}
		u.Env = childproc.EnvWith(u.Env, "SLUICE_CONFIG="+abs)
	}
	err = up.Run(c.Context, u)
	if ie := (*up.Interrupted)(nil); errors.As(err, &ie) {
		return &exitError{code: 130, err: ie.Err}
	}
	return err
}
