package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

func (a *app) breakerCmd() *cli.Command {
	return &cli.Command{
		Name:  "breaker",
		Usage: "operate a provider's shared circuit breaker",
		Subcommands: []*cli.Command{{
			Name:      "reset",
			Usage:     "close the breaker of PROVIDER now, whatever its state",
			ArgsUsage: "PROVIDER",
			Description: `Closes the shared breaker and clears its failure count, for every replica;
replicas waiting on it are told at once.

Example:
   sluice breaker reset ibkr`,
			Action: a.withSession(1, 1, "PROVIDER", nil, func(c *cli.Context, s *session, argv []string) error {
				if err := s.lim.ResetBreaker(c.Context, argv[0]); err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "%s: breaker closed\n", argv[0])
				return nil
			}),
		}},
	}
}
