package main

import (
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sluice-dev/sluice/pkg/config"
)

func (a *app) cooldownCmd() *cli.Command {
	var d time.Duration
	var scope, reason string
	var clear bool
	return &cli.Command{
		Name:      "cooldown",
		Usage:     "stop every replica of a provider for a while (or end a cooldown)",
		ArgsUsage: "PROVIDER",
		Description: `Starts a shared cooldown: every replica's acquisitions wait until it ends.
Without --for it lasts the provider's cooldown_sec. A cooldown already running
that ends later is kept. --clear ends it now.

Examples:
   sluice cooldown ibkr --for 5m --reason "pacing violation from the broker"
   sluice cooldown ibkr --clear`,
		Flags: []cli.Flag{
			durationFlag("for", "length (default: the provider's cooldown_sec)", &d, 0, config.PeriodRange),
			&cli.StringFlag{Name: "scope", Usage: "what tripped it", Value: "manual", Destination: &scope},
			&cli.StringFlag{Name: "reason", Usage: "free text", Destination: &reason},
			&cli.BoolFlag{Name: "clear", Usage: "end the cooldown now", Destination: &clear},
		},
		Action: a.withSession(1, 1, "PROVIDER", nil, func(c *cli.Context, s *session, argv []string) error {
			if clear {
				if err := s.lim.ClearCooldown(c.Context, argv[0]); err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "%s: cooldown cleared\n", argv[0])
				return nil
			}
			until, err := s.lim.TriggerCooldown(c.Context, argv[0], scope, reason, d)
			if err != nil {
				return err
			}
			if until.IsZero() {
				fmt.Fprintf(a.stdout, "%s: no cooldown (the provider's cooldown_sec is 0; give --for)\n", argv[0])
				return nil
			}
			fmt.Fprintf(a.stdout, "%s: cooling down until %s (%v from now)\n", argv[0], until.Format(time.RFC3339), time.Until(until).Round(time.Second))
			return nil
		}),
	}
}
