package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"
)

func (a *app) registerCmd() *cli.Command {
	flags := []cli.Flag{}
	for _, pf := range providerFields {
		flags = append(flags, &cli.StringFlag{Name: strings.ReplaceAll(pf.name, "_", "-"), Usage: pf.help})
	}
	return &cli.Command{
		Name:      "register",
		Usage:     "create or update providers' shared buckets in Redis",
		ArgsUsage: "[PROVIDER]",
		Description: `Registers PROVIDER, or without it every provider of the configuration
(rate_coordinator.providers in the file, MDP_RATE_<PROVIDER>_<FIELD> in the
environment). Flags override both for PROVIDER; missing fields take the
seed's defaults (capacity 60, refill 60/s, cooldown 600 s, breaker 5 / 60 s).
Idempotent: the same config twice changes nothing. A new provider starts
full, at scale 1; an update keeps the scale in force.

Examples:
   sluice register ibkr --capacity 100 --refill-rate 60 --cooldown-sec 300
   MDP_RATE_IBKR_CAPACITY=100 sluice register ibkr
   sluice --config sluice.yaml register`,
		Flags: flags,
		Action: func(c *cli.Context) error {
			if c.NArg() > 1 {
				return usagef("register: want at most one PROVIDER, got %d arguments", c.NArg())
			}
			l, err := a.layers(c)
			if err != nil {
				return err
			}
			name := c.Args().First()
			for _, pf := range providerFields {
				if flag := strings.ReplaceAll(pf.name, "_", "-"); c.IsSet(flag) {
					if name == "" {
						return usagef("register: --%s needs a PROVIDER argument", flag)
					}
					l[providersKey+name+"."+pf.name] = value{c.String(flag), "flag --" + flag}
				}
			}
			if name != "" {
				l.addProvider(name)
			}
			cfg, err := l.parse()
			if err != nil {
				return err
			}
			names := []string{name}
			if name == "" {
				names = l.providers()
				if len(names) == 0 {
					return usagef("register: no provider configured: name one (sluice register ibkr --capacity 60) or set rate_coordinator.providers")
				}
			}
			s, err := a.openWith(c.Context, cfg)
			if err != nil {
				return err
			}
			defer s.Close()
			for _, n := range names {
				pc := cfg.Providers[n]
				res, err := s.lim.Register(c.Context, n, pc)
				if err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "%s: %s (capacity %d, refill %g/s, cooldown %v, breaker %d / %v, max scale %g)\n",
					n, res, pc.Capacity, pc.RefillRate, pc.Cooldown, pc.BreakerThreshold, pc.BreakerTimeout, pc.MaxScale)
			}
			return nil
		},
	}
}
