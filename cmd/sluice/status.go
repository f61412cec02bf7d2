package main

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sluice-dev/sluice/internal/status"
)

func (a *app) statusCmd() *cli.Command {
	var watch, asJSON bool
	var key string
	var every time.Duration
	return &cli.Command{
		Name:      "status",
		Usage:     "show every provider's budget, scale, pressure, breaker, cooldown, replicas and pacing rules",
		ArgsUsage: "[PROVIDER...]",
		Description: `Reads the shared state from Redis (writes nothing). Without PROVIDER, shows
every registered provider, and the pressure of every write coordinator.
A provider's pacing rules show what each holds now; keyed and spacing rules
hold per request key, shown for the key --key names.

Examples:
   sluice status
   sluice --redis redis://redis:6379/0 status ibkr --json
   sluice status --watch --interval 1s
   sluice status ibkr --key AAPL:SMART:TRADES`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "watch", Usage: "refresh until interrupted", Destination: &watch},
			durationFlag("interval", "refresh period with --watch", &every, 2*time.Second, closed(10*time.Millisecond, 24*time.Hour)),
			&cli.BoolFlag{Name: "json", Usage: "print JSON", Destination: &asJSON},
			&cli.StringFlag{Name: "key", Usage: "the request key whose keyed and spacing rules' state to show", Destination: &key},
		},
		Action: func(c *cli.Context) error {
			s, err := a.open(c, "status", c.Args().Slice())
			if err != nil {
				return err
			}
			defer s.Close()
			for {
				rep, err := status.Collect(c.Context, s.lim, s.rdb, s.cfg.Redis.Prefix, c.Args().Slice(), key)
				switch {
				case err != nil && watch:
					// Watching goes on through an outage: say so, and retry.
					fmt.Fprintf(a.stdout, "%s  no status: %v (retrying every %v)\n", time.Now().Format(time.TimeOnly), err, every)
				case err != nil:
					return err
				case asJSON:
					enc := json.NewEncoder(a.stdout)
					enc.SetIndent("", "  ")
					if err := enc.Encode(rep); err != nil {
						return err
					}
				default:
					status.Print(a.stdout, rep)
				}
				if !watch {
					return nil
				}
				select {
				case <-c.Context.Done():
					return nil
				case <-time.After(every):
				}
			}
		},
	}
}
