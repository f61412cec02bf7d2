package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/sluice-dev/sluice/pkg/config"
)

func (a *app) scaleCmd() *cli.Command {
	var source string
	return &cli.Command{
		Name:      "scale",
		Usage:     "set a provider's scale factor for every replica (0 pauses)",
		ArgsUsage: "PROVIDER FACTOR",
		Description: `Sets the rate in force to base rate × FACTOR for every replica, from now on
(the bucket is settled at the old scale first). FACTOR is in [0, max_scale]
(1 unless registered higher); 0 pauses the provider. While a feedback handler
runs, it sets the scale again at its next evaluation: use shadow mode or turn
feedback off to override for longer.

Examples:
   sluice scale ibkr 0.5
   sluice scale ibkr 0 --source "incident 4711"`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "source", Usage: "recorded as who set it", Value: "operator", Destination: &source},
		},
		Action: a.withSessionAs(func() string { return source }, 2, 1, "PROVIDER FACTOR", func(argv []string) error {
			if _, err := config.ParseNumber(argv[1]); err != nil {
				return usagef("scale: FACTOR=%q: %v, in [0, max_scale]", argv[1], err)
			}
			return nil
		}, func(c *cli.Context, s *session, argv []string) error {
			factor, _ := config.ParseNumber(argv[1])
			ch, err := s.lim.SetBudgetScale(c.Context, argv[0], factor)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "%s: scale %g -> %g (seq %d, tokens %.1f)\n", argv[0], ch.Old, ch.New, ch.Seq, ch.Tokens)
			return nil
		}),
	}
}
